"""The ``fastsyn`` command.

::

    fastsyn prepare lpba40|mrbrains18|oasis SRC DST
    fastsyn bench run --dataset NAME_OR_DIR --methods fastsyn,dipy,ants,greedy \\
        --metric cc|mi [--modalities t1,t2] [--sample N] [--seed S] [--threads T] \\
        [--levels 20,20,10] [--workers W] [--dask local|ADDRESS] [--resolution MM] \\
        --results RESULTS_DIR
    fastsyn bench table --results RESULTS_DIR [--format markdown|csv|json]
    fastsyn bench speed [--size 128] [--threads 1,2] [--repeat 3] [--out FILE.json] [--quick]
    fastsyn profile [--pair NAME | --fixed F --moving M] [--metric cc|mi] [--threads T] \\
        [--levels 20,10,5] [--out FILE.json]
    fastsyn report --results DIR [--speed FILE] [--profile FILE] --out reports/
    fastsyn demo [--out reports/] [--quick]
    fastsyn register FIXED MOVING --out PREFIX [--metric cc|mi] \\
        [--transform rigid|affine|syn] [--threads N] [--levels 20,20,10] \\
        [--fixed-mask M] [--moving-mask M] [--labels L]

Each command group is one module of this package with an
``add_parser(subparsers)`` function: it declares the options and sets a
handler that only turns the parsed arguments into keyword arguments for a
function of :mod:`fastsyn.bench`, which does the work and can be called from
Python directly.  Heavy imports happen inside the handlers, so ``--help``
stays fast.  A new group (e.g. ``register``) is a new module listed in
:data:`COMMANDS`.
"""

import importlib
import sys

from ._common import CommandError, Parser, fail

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

#: Command-group modules of this package, in ``--help`` order.
COMMANDS = ("prepare", "bench", "profile", "report", "demo", "register")


def build_parser():
    """The ``fastsyn`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = Parser(prog="fastsyn",
                    description="fastsyn: fast SyN registration — data preparation, "
                                "benchmarks, profiles and reports")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv=None):
    """Run the ``fastsyn`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Exit status: 0 success, 1 some pairs failed, 2 usage error,
        130 interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except CommandError as exc:
        return fail(exc)
    # The library's own checks (bad files, layouts, values) are user errors too.
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError) as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("\nfastsyn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    if status is None:
        return 0
    if not isinstance(status, int) or isinstance(status, bool):
        raise TypeError(f"the {args.command} handler returned {status!r}, not an exit status")
    return status
