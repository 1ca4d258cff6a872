"""The one place where ``num_threads`` is resolved.

The rules are DIPY's (``dipy.utils.omp.determine_num_threads``): ``None`` means
the OpenMP default, which honours ``OMP_NUM_THREADS``; a positive integer is
taken as it is; a negative integer counts back from the number of CPUs
(``-1`` is all of them, ``-2`` all but one); ``0`` is an error.
"""

import numbers
import os

__all__ = ["resolve_num_threads", "cpu_count"]


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
