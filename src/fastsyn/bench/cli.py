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
        [--out FILE.json]
    fastsyn report --results DIR [--speed FILE] [--profile FILE] --out reports/

``bench speed``, ``profile`` and ``report`` are implemented in their own modules
(:mod:`fastsyn.bench.speed`, :mod:`fastsyn.bench.profile`,
:mod:`fastsyn.bench.report`), imported only when the subcommand runs.
"""

import argparse
import importlib
import json
import sys

__all__ = ["main", "build_parser"]

_CONVERTERS = {"lpba40": "convert_lpba40", "mrbrains18": "convert_mrbrains18",
               "oasis": "convert_oasis"}


class CommandError(Exception):
    """A user error reported as ``fastsyn: error: ...`` with exit status 2."""


def _int_list(text, what):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"{what} must be comma-separated integers, got {text!r}")
    if not values:
        raise CommandError(f"{what} must not be empty")
    return values


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


# --------------------------------------------------------------------------- prepare
def _cmd_prepare(args):
    from pathlib import Path

    from . import datasets

    func = getattr(datasets, _CONVERTERS[args.dataset], None)
    if func is None:
        raise CommandError(f"converter for {args.dataset} is not available")
    src = Path(args.src)
    if not src.exists():
        raise CommandError(f"SRC folder not found: {src}")
    result = func(src, Path(args.dst))
    print(f"prepared {args.dataset} from {src} into {args.dst}")
    return result


# --------------------------------------------------------------------------- bench run
def _cmd_run(args):
    from .run import run_benchmark

    levels = _int_list(args.levels, "--levels")
    if any(v < 0 for v in levels):
        raise CommandError(f"--levels must be >= 0, got {args.levels!r}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise CommandError("--methods must name at least one method")
    from .methods import METHODS
    unknown = [m for m in methods if m.lower() not in METHODS]
    if unknown:
        raise CommandError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    modalities = ([m.strip() for m in args.modalities.split(",") if m.strip()]
                  if args.modalities else None)
    try:
        summary = run_benchmark(
            args.dataset, methods, args.metric, modalities=modalities,
            sample=args.sample, seed=args.seed, threads=args.threads, levels=levels,
            results_dir=args.results, workers=args.workers, dask=args.dask,
            progress=not args.quiet, resolution=args.resolution,
            cache_dir=args.cache_dir)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished record is kept; rerun the same "
              "command to continue", file=sys.stderr)
        return 130
    for name, reason in summary["unavailable"].items():
        print(f"method {name}: unavailable ({reason})", file=sys.stderr)
    print(f"{summary['dataset']}: {summary['pairs']} pairs, {summary['skipped']} "
          f"already finished, {summary['ok']} records written, "
          f"{summary['errors']} errors -> {summary['results_dir']}")
    return 1 if summary["errors"] else 0


# --------------------------------------------------------------------------- bench table
def _cmd_table(args):
    from pathlib import Path

    from .store import ResultStore
    from .tables import format_table, summary_table, table_json

    if not Path(args.results).is_dir():
        raise CommandError(f"results folder not found: {args.results}")
    records = ResultStore(args.results).records()
    datasets = sorted({r.get("dataset") for r in records if r.get("dataset")})
    if args.dataset:
        if args.dataset not in datasets:
            raise CommandError(f"no records of dataset {args.dataset!r} in {args.results}")
        datasets = [args.dataset]
    if not datasets:
        raise CommandError(f"no records in {args.results}")
    if args.format == "json":
        out = {d: table_json(summary_table(records, d)) for d in datasets}
        print(json.dumps(out, indent=2))
        return 0
    for i, d in enumerate(datasets):
        rows = summary_table(records, d)
        if args.format == "markdown":
            print(f"{'' if i == 0 else chr(10)}### {d}\n")
            print(format_table(rows, "markdown"), end="")
            errs = [f"{r['Method']}: {r['errors']}" for r in rows if r["errors"]]
            if errs:
                print(f"\nfailed pairs — {', '.join(errs)}")
        else:
            text = format_table(rows, "csv")
            lines = text.splitlines()
            if i == 0:
                print("Dataset," + lines[0])
            for line in lines[1:]:
                print(f"{d},{line}")
    return 0


# --------------------------------------------------------------------------- hooks
def _hook(module, func):
    """Handler that imports ``fastsyn.bench.<module>`` only when it runs."""

    def handler(args):
        name = f"fastsyn.bench.{module}"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name in (name, "fastsyn.bench"):
                raise CommandError(f"this subcommand needs {name}, which is not "
                                   "installed in this version of fastsyn")
            raise
        entry = getattr(mod, func, None)
        if entry is None:
            raise CommandError(f"{name} has no {func}(args) entry point")
        result = entry(args)
        return result if isinstance(result, int) else 0

    return handler


# --------------------------------------------------------------------------- parser
def build_parser():
    """The ``fastsyn`` argument parser."""
    p = argparse.ArgumentParser(
        prog="fastsyn",
        description="fastsyn: fast SyN registration — data preparation, benchmarks, "
                    "profiles and reports")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    pp = sub.add_parser("prepare", help="convert a public dataset to the folder layout")
    pp.add_argument("dataset", choices=sorted(_CONVERTERS))
    pp.add_argument("src", metavar="SRC", help="dataset as distributed")
    pp.add_argument("dst", metavar="DST", help="output folder")
    pp.set_defaults(func=_cmd_prepare)

    pb = sub.add_parser("bench", help="accuracy and speed benchmarks")
    bsub = pb.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)

    br = bsub.add_parser("run", help="register and evaluate a cohort (resumable)")
    br.add_argument("--dataset", required=True, metavar="NAME_OR_DIR",
                    help="embedded-mono, embedded-multi or a dataset folder")
    br.add_argument("--methods", required=True, metavar="LIST",
                    help="comma-separated: fastsyn,dipy,ants,greedy")
    br.add_argument("--metric", required=True, choices=("cc", "mi"))
    br.add_argument("--modalities", default=None, metavar="LIST",
                    help="comma-separated modalities to pair, e.g. t1,t2")
    br.add_argument("--sample", type=_positive_int, default=None, metavar="N",
                    help="run N pairs drawn with --seed (default: all pairs)")
    br.add_argument("--seed", type=int, default=0, metavar="S")
    br.add_argument("--threads", type=_positive_int, default=1, metavar="T",
                    help="threads per registration (default 1)")
    br.add_argument("--levels", default="20,20,10", metavar="L1,L2,...",
                    help="iterations per level, coarsest first (default 20,20,10)")
    br.add_argument("--workers", type=_positive_int, default=None, metavar="W",
                    help="concurrent pairs (default cores // threads)")
    br.add_argument("--dask", default=None, metavar="local|ADDRESS",
                    help="run on Dask: a LocalCluster or a scheduler address")
    br.add_argument("--resolution", type=_positive_float, default=2.0, metavar="MM",
                    help="voxel size of the embedded cohorts (default 2)")
    br.add_argument("--cache-dir", default=None, metavar="DIR",
                    help="cache for built cohorts and prealigned pairs")
    br.add_argument("--results", required=True, metavar="RESULTS_DIR")
    br.add_argument("--quiet", action="store_true", help="no progress bar")
    br.set_defaults(func=_cmd_run)

    bt = bsub.add_parser("table", help="summary table of a results folder")
    bt.add_argument("--results", required=True, metavar="RESULTS_DIR")
    bt.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"))
    bt.add_argument("--dataset", default=None, help="only this dataset")
    bt.set_defaults(func=_cmd_table)

    # ---- hook: implemented in fastsyn.bench.speed:main_speed(args)
    bs = bsub.add_parser("speed", help="kernel and end-to-end timings")
    bs.add_argument("--size", type=_positive_int, default=128)
    bs.add_argument("--threads", default=None, metavar="T1,T2,...")
    bs.add_argument("--repeat", type=_positive_int, default=3)
    bs.add_argument("--levels", default="20,20,10")
    bs.add_argument("--metric", default="cc,mi")
    bs.add_argument("--external", default=None,
                    help="tools timed alongside (default: ants,greedy when installed)")
    bs.add_argument("--ants-cc", action="store_true",
                    help="also time ANTs with CC (many minutes at 128^3)")
    bs.add_argument("--no-syn", action="store_true", help="kernels only")
    bs.add_argument("--out", default=None, metavar="FILE.json")
    bs.add_argument("--quick", action="store_true")
    bs.set_defaults(func=_hook("speed", "main_speed"))

    # ---- hook: implemented in fastsyn.bench.profile:main_profile(args)
    pr = sub.add_parser("profile", help="per-stage time breakdown of one registration")
    pr.add_argument("--pair", default=None, metavar="NAME")
    pr.add_argument("--fixed", default=None, metavar="F")
    pr.add_argument("--moving", default=None, metavar="M")
    pr.add_argument("--metric", default="cc", choices=("cc", "mi"))
    pr.add_argument("--threads", type=_positive_int, default=None, metavar="T")
    pr.add_argument("--out", default=None, metavar="FILE.json")
    pr.set_defaults(func=_hook("profile", "main_profile"))

    # ---- hook: implemented in fastsyn.bench.report:main_report(args)
    rp = sub.add_parser("report", help="HTML report")
    rp.add_argument("--results", required=True, metavar="DIR")
    rp.add_argument("--speed", default=None, metavar="FILE")
    rp.add_argument("--profile", default=None, metavar="FILE")
    rp.add_argument("--out", required=True, metavar="reports/")
    rp.set_defaults(func=_hook("report", "main_report"))

    from .demo import add_parser as add_demo_parser

    add_demo_parser(sub)
    return p


def main(argv=None):
    """Run the ``fastsyn`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Exit status (0 success, 1 some pairs failed, 2 usage error,
        130 interrupted).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "profile" and args.pair is None and (args.fixed is None) != (
            args.moving is None):
        parser.error("profile: give --pair NAME, or both --fixed and --moving")
    try:
        status = args.func(args)
    except CommandError as exc:
        print(f"fastsyn: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"fastsyn: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
