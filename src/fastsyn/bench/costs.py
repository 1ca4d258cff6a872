"""Instruction counts of the kernels, counted under valgrind.

Wall time on a shared machine moves by several per cent from run to run; the
number of instructions a kernel executes on one thread does not.  Every case
of :mod:`fastsyn.bench.workload` builds its inputs from a fixed seed and runs
one kernel (or one SyN iteration) on one thread, all cases in one process
under ``valgrind --tool=callgrind``, the call-graph tool of the cachegrind
family (the one CodSpeed counts with): the workload calls ``os.getppid()``
just before and just after each measured call, and ``--dump-before=getppid``
makes valgrind write the counters of each stretch to a file of its own, so the
imports and set-ups of one process are paid once and kept out of every count.

Two numbers per case, read from the dump of its call:

``instructions``
    ``Ir`` (instructions executed) in fastsyn's compiled kernels: the
    extension modules under ``fastsyn/_kernels/`` (Cython functions, their
    inlined helpers, their OpenMP bodies).  This is the tracked number: it
    does not depend on the interpreter's state or on allocation addresses.
``call_instructions``
    ``Ir`` of the whole call, Python and NumPy around the kernels included
    (for reference).

Instruction counts are not time: a rewrite with fewer instructions can run
slower (memory traffic, dependency chains).  They complement the wall-time
gate (:mod:`fastsyn.bench.gate`); they never replace it.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import workload
from .sides import Side
from .workload import CASES

__all__ = [
    "CASES",
    "SIZES",
    "ValgrindMissing",
    "cost_table",
    "format_table",
    "kernel_instructions",
    "valgrind_path",
]

#: Grid sizes (cube side) of the table and the asv tracks; CI takes the first.
SIZES = (24, 32)

# Objects of the compiled kernels (an editable build, an installed wheel or a
# ``pip install --target`` folder all keep this part of the path).
_KERNEL_OBJECT = re.compile(r"fastsyn[/\\]_kernels[/\\][^/\\]+\.(so|pyd|dylib)")


class ValgrindMissing(RuntimeError):
    """valgrind is not installed."""


def valgrind_path():
    """Path of the ``valgrind`` executable.

    Returns
    -------
    str

    Raises
    ------
    ValgrindMissing
        If ``valgrind`` is not on ``PATH`` (Debian/Ubuntu: ``apt-get install valgrind``).
    """
    path = shutil.which("valgrind")
    if path is None:
        raise ValgrindMissing("valgrind is not installed (Debian/Ubuntu: apt-get install "
                              "valgrind); the instruction-count tracks need it")
    return path


def _check_cases(cases, size):
    for case in cases:
        if case not in CASES:
            raise ValueError(f"unknown cost case {case!r}; choose from {', '.join(CASES)}")
    if isinstance(size, bool) or not isinstance(size, int) or not 12 <= size <= 256:
        raise ValueError(f"size must be an integer cube side in [12, 256], got {size!r}")


def kernel_instructions(path):
    """Instructions in one callgrind dump: in the kernels and in total.

    The dump must be written with ``--compress-strings=no --compress-pos=no``.
    Only self costs are summed: the cost line after a ``calls=`` line is the
    inclusive cost of a call, counted where the callee's own lines are.

    Parameters
    ----------
    path : str or Path
        A ``callgrind.out`` file.

    Returns
    -------
    dict
        ``kernel_ir``, ``total_ir`` and ``objects`` (kernel modules that ran).
    """
    kernel = total = 0
    in_kernel, skip_next, objects, events = False, False, set(), None
    with open(path) as fh:
        for line in fh:
            head = line[:1]
            if head.isdigit():
                if skip_next:
                    skip_next = False
                    continue
                ir = int(line.split()[1])
                total += ir
                if in_kernel:
                    kernel += ir
            elif line.startswith("ob="):
                match = _KERNEL_OBJECT.search(line)
                in_kernel = match is not None
                if in_kernel:
                    objects.add(Path(match.group(0)).name.split(".")[0])
            elif line.startswith("calls="):
                skip_next = True
            elif line.startswith("events:"):
                events = line.split()[1:]
    if events is None or events[0] != "Ir":
        raise ValueError(f"{path} is not a callgrind output with Ir first")
    return {"kernel_ir": kernel, "total_ir": total, "objects": sorted(objects)}


def _callgrind(cases, size, side, workdir):
    out = Path(workdir) / "cg.out"
    cmd = [valgrind_path(), "--tool=callgrind", "--dump-before=getppid",
           "--compress-strings=no", "--compress-pos=no", f"--callgrind-out-file={out}",
           *side.command(workload.__file__, "count", ",".join(cases), size)]
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"valgrind run of {side.label} at {size}^3 failed "
                           f"(exit {proc.returncode}):\n" + "\n".join(tail))
    # Numbered dumps, one per marker: start-up and first set-up, then per case
    # its call and the next set-up (``cg.out`` itself holds the shut-down).
    dumps = sorted(Path(workdir).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) != 2 * len(cases):
        raise RuntimeError(f"expected {2 * len(cases)} callgrind dumps (one per marker), "
                           f"found {len(dumps)}: did something else call getppid()?")
    return [kernel_instructions(dumps[2 * i + 1]) for i in range(len(cases))]


def cost_table(cases=None, size=SIZES[0], *, side=None):
    """Count the instructions of several cases (one valgrind process).

    Parameters
    ----------
    cases : sequence of str, optional
        Default: every case of :data:`CASES`.
    size : int, optional
        Cube side of the grid.
    side : fastsyn.bench.sides.Side, optional
        The build of fastsyn to count (default: the one this interpreter imports).

    Returns
    -------
    list of dict
        Per case: ``case``, ``size``, ``instructions`` (in the kernels),
        ``call_instructions`` (the whole call) and ``kernels`` (modules that ran).

    Raises
    ------
    ValgrindMissing
        If valgrind is not installed.
    """
    cases = list(CASES) if cases is None else list(cases)
    _check_cases(cases, size)
    side = side or Side("this")
    with tempfile.TemporaryDirectory(prefix="fastsyn-cg-") as workdir:
        counts = _callgrind(cases, size, side, workdir)
    rows = []
    for case, c in zip(cases, counts):
        if not c["objects"]:
            raise RuntimeError(f"valgrind saw no fastsyn kernel run in {case}")
        rows.append({"case": case, "size": size, "instructions": c["kernel_ir"],
                     "call_instructions": c["total_ir"], "kernels": c["objects"]})
    return rows


def format_table(rows):
    """A plain-text table of :func:`cost_table` rows.

    Parameters
    ----------
    rows : list of dict

    Returns
    -------
    str
    """
    lines = [f"{'case':<11} {'grid':>5} {'kernel instr.':>15} {'call instr.':>15}  what",
             f"{'-' * 11} {'-' * 5} {'-' * 15} {'-' * 15}  {'-' * 40}"]
    for r in rows:
        lines.append(f"{r['case']:<11} {str(r['size']) + '^3':>5} {r['instructions']:>15,} "
                     f"{r['call_instructions']:>15,}  {CASES[r['case']]}")
    return "\n".join(lines)
