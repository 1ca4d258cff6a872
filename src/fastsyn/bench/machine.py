"""What a measurement ran on: the CPU, the thread counts, the installed
packages and the git commit of the code.

Every measuring command stores this beside its figures (``fastsyn bench
speed``, ``fastsyn profile``) and the report shows it, so a figure can be
traced to the machine and the commit that produced it.
"""

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGES", "collect_environment", "cpu_model", "git_commit", "timestamp"]

#: Distributions whose installed versions the environment lists.
PACKAGES = ("fastsyn", "dipy", "numpy", "scipy", "nibabel", "nilearn", "matplotlib",
            "antspyx", "picsl-greedy", "line-profiler", "pytest-benchmark", "asv", "dask")


def cpu_model():
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(start=None):
    """Commit and dirty flag (tracked files changed) of the git work tree
    holding ``start`` (default: this package), or None outside one."""
    start = Path(start or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True,
                             text=True, timeout=10, check=False)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=start, capture_output=True, text=True, timeout=10,
                               check=False)
        return {"commit": commit, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def timestamp():
    """The local time, to the second, in ISO format."""
    return _dt.datetime.now().isoformat(timespec="seconds")


def collect_environment():
    """Describe the machine and software the measurements ran on.

    Returns
    -------
    dict
        ``cpu``, ``cores`` (logical CPUs), ``cores_usable`` (CPU affinity),
        ``threads_all`` (what ``num_threads=-1`` resolves to),
        ``omp_num_threads``, ``python``, ``platform``, ``packages``
        (installed versions), ``git`` (commit and dirty flag, or None) and
        ``timestamp``.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        import fastsyn

        threads_all = fastsyn.resolve_num_threads(-1)
    except Exception:  # noqa: BLE001 - a broken build must not stop the report
        threads_all = usable
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "threads_all": threads_all,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git": git_commit(),
        "timestamp": timestamp(),
    }
