"""The one place where thread counts are decided.

``num_threads`` follows DIPY's rules (``dipy.utils.omp.determine_num_threads``):
``None`` means the OpenMP default, which honours ``OMP_NUM_THREADS``; a
positive integer is taken as it is; a negative integer counts back from the
number of CPUs (``-1`` is all of them, ``-2`` all but one); ``0`` is an error.

The kernels then get a plain thread count from :func:`effective_threads`,
which also weighs the size of the work (the *grain*): a parallel region costs
a barrier, so small inputs run on fewer threads.  Results never depend on the
count; only speed does.  The kernels keep no thread state of their own.
"""

import numbers
import os
from contextlib import contextmanager

__all__ = [
    "DEFAULT_GRAIN",
    "cpu_count",
    "effective_threads",
    "parallel_grain",
    "resolve_num_threads",
]

#: Voxels a thread needs before another thread pays for its barrier.  Below
#: it extra threads cost more than they save, and on a busy machine, where a
#: descheduled thread holds up every barrier, far more.
DEFAULT_GRAIN = 32768
_grain = DEFAULT_GRAIN

# The largest count OpenMP's C interface can take (an int).
_MAX_THREADS = 2**31 - 1


def cpu_count():
    """Number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _openmp_default():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return cpu_count()


def resolve_num_threads(num_threads, *, name="num_threads"):
    """Turn a user's ``num_threads`` into a positive thread count.

    Parameters
    ----------
    num_threads : int or None
        ``None`` for the OpenMP default (``OMP_NUM_THREADS`` if set, else all
        CPUs), ``n > 0`` for ``n`` threads, ``n < 0`` for ``cpu_count + 1 + n``.
    name : str, optional
        Argument name used in error messages.

    Returns
    -------
    int
        The number of threads to use, at least 1.

    Raises
    ------
    TypeError
        If ``num_threads`` is not ``None`` or an integer (``bool`` is refused).
    ValueError
        If ``num_threads`` is 0 or counts back past the first CPU.
    """
    if num_threads is None:
        return _openmp_default()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(
            f"{name} must be None or an integer, got {type(num_threads).__name__} "
            f"({num_threads!r})"
        )
    num_threads = int(num_threads)
    if num_threads > _MAX_THREADS:
        raise ValueError(f"{name}={num_threads} is larger than any OpenMP thread count "
                         f"(at most {_MAX_THREADS})")
    if num_threads == 0:
        raise ValueError(f"{name} must not be 0 (use None for the OpenMP default)")
    if num_threads < 0:
        ncpu = cpu_count()
        resolved = ncpu + 1 + num_threads
        if resolved < 1:
            raise ValueError(
                f"{name}={num_threads} leaves no thread on a machine with {ncpu} CPUs"
            )
        return resolved
    return num_threads


def effective_threads(num_threads, work):
    """Threads worth using for ``work`` voxels, at most ``num_threads``.

    Parameters
    ----------
    num_threads : int
        A count already resolved by :func:`resolve_num_threads`.
    work : int
        Number of voxels (or other units of equal cost) the kernel processes.

    Returns
    -------
    int
        ``min(num_threads, work // grain)``, at least 1.
    """
    return int(max(1, min(num_threads, int(work) // _grain)))


@contextmanager
def parallel_grain(voxels_per_thread):
    """Temporarily change how many voxels a thread needs before work is split
    (default :data:`DEFAULT_GRAIN`).

    Results never depend on it; equivalence checks set it to 1 so that small
    inputs really run on several threads.

    Parameters
    ----------
    voxels_per_thread : int
        Positive number of voxels.
    """
    global _grain
    if (isinstance(voxels_per_thread, bool)
            or not isinstance(voxels_per_thread, numbers.Integral)
            or voxels_per_thread < 1):
        raise ValueError(f"voxels_per_thread must be a positive integer, got "
                         f"{voxels_per_thread!r}")
    old = _grain
    _grain = int(voxels_per_thread)
    try:
        yield
    finally:
        _grain = old
