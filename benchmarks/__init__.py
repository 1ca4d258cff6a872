"""airspeed velocity (asv) benchmarks for fastsyn.

Modules
-------
benchmark_kernels
    Each threaded kernel against its stock DIPY/NumPy/SciPy twin:
    ``time_*``, ``peakmem_*`` and ``track_*`` (speed-up ratios measured in one
    process and serial-versus-threaded equality).
benchmark_syn
    End-to-end SyN (CC and MI) on a synthetic pair built in ``setup``.
benchmark_accuracy
    Label Dice on the fixture pairs and serial-versus-threaded field
    differences after a full SyN run.

Sizes
-----
The default sizes keep ``asv run --quick`` to a few minutes on two cores.
Set ``FASTSYN_ASV_LARGE=1`` to add 128^3 kernels and a 96^3 SyN pair.

Thread counts are given as ``1`` and ``"all"`` (every CPU: ``num_threads=-1``
in DIPY's convention), so results stay comparable across machines.

This module holds the small helpers shared by the benchmark modules.
"""

import os
import time

import numpy as np
from scipy import ndimage

__all__ = [
    "ALL",
    "LARGE",
    "THREADS",
    "kernel_shapes",
    "median_time",
    "nthreads_of",
    "shape_of",
    "smooth_field",
    "smooth_image",
    "synthetic_pair",
]

#: Whether the large sizes are enabled (``FASTSYN_ASV_LARGE=1``).
LARGE = os.environ.get("FASTSYN_ASV_LARGE", "0").strip().lower() not in ("", "0", "false",
                                                                         "no")
#: The thread-count parameter value meaning "every CPU".
ALL = "all"
#: Thread counts benchmarked.
THREADS = [1, ALL]


def kernel_shapes():
    """Shapes (as ``"SxRxC"`` strings) used by the kernel benchmarks.

    Returns
    -------
    list of str
        ``["64x64x64"]``, plus ``"128x128x128"`` when ``FASTSYN_ASV_LARGE`` is set.
    """
    shapes = ["64x64x64"]
    if LARGE:
        shapes.append("128x128x128")
    return shapes


def shape_of(text):
    """Parse a ``"SxRxC"`` parameter into a tuple of ints.

    Parameters
    ----------
    text : str
        The shape, e.g. ``"64x64x64"``.

    Returns
    -------
    tuple of int
    """
    return tuple(int(s) for s in str(text).split("x"))


def nthreads_of(value):
    """Translate a thread parameter into a ``num_threads`` argument.

    Parameters
    ----------
    value : int or str
        ``1`` or ``"all"``.

    Returns
    -------
    int
        The value itself, or -1 (all CPUs) for ``"all"``.
    """
    return -1 if value == ALL else int(value)


def smooth_field(shape, dtype, *, amplitude=2.0, seed=0):
    """A random smooth displacement field (voxels) of a given spatial shape.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape (2D or 3D).
    dtype : dtype
        float32 or float64.
    amplitude : float, optional
        Largest component, in voxels.
    seed : int, optional
        Random seed.

    Returns
    -------
    ndarray, shape ``shape + (len(shape),)``
    """
    rng = np.random.default_rng(seed)
    dim = len(shape)
    sigma = max(1.0, min(shape) / 8)
    field = np.empty(tuple(shape) + (dim,), dtype=np.float64)
    for c in range(dim):
        comp = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        field[..., c] = comp * (amplitude / (np.abs(comp).max() + 1e-12))
    return np.ascontiguousarray(field, dtype=dtype)


def smooth_image(shape, dtype, *, seed=0):
    """A random smooth image with values in about [0, 100].

    Parameters
    ----------
    shape : tuple of int
        Spatial shape.
    dtype : dtype
        Output dtype.
    seed : int, optional
        Random seed.

    Returns
    -------
    ndarray
    """
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0) * 100.0
    return np.ascontiguousarray(img, dtype=dtype)


def synthetic_pair(shape=(64, 64, 64), *, seed=0, amplitude=3.0, nlabels=8):
    """A static/moving pair with label maps, related by a known smooth warp.

    The static image is a blurred piecewise-constant phantom (a few nested
    ellipsoids and random regions); the moving image and labels are the static
    ones warped by a smooth random displacement.

    Parameters
    ----------
    shape : tuple of int, optional
        Grid shape (3D).
    seed : int, optional
        Random seed.
    amplitude : float, optional
        Largest displacement component, in voxels.
    nlabels : int, optional
        Number of foreground labels.

    Returns
    -------
    dict
        ``static``, ``moving`` (float32), ``static_labels``, ``moving_labels``
        (int32), ``affine`` (identity grid-to-world).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    r = np.sqrt(sum(((g - c) / (0.42 * s)) ** 2 for g, c, s in zip(grid, centre, shape)))
    inside = r < 1.0
    # Random regions inside the ellipsoid: nearest of a few random seeds.
    seeds = centre + (rng.random((nlabels, 3)) - 0.5) * np.asarray(shape) * 0.6
    dist = np.stack([sum((g - s) ** 2 for g, s in zip(grid, p)) for p in seeds])
    labels = (np.argmin(dist, axis=0) + 1).astype(np.int32)
    labels[~inside] = 0
    levels = np.concatenate([[0.0], rng.uniform(20, 100, nlabels)])
    static = ndimage.gaussian_filter(levels[labels], 1.0).astype(np.float32)
    disp = smooth_field(shape, np.float64, amplitude=amplitude, seed=seed + 1)
    coords = grid + np.moveaxis(disp, -1, 0)
    moving = ndimage.map_coordinates(static, coords, order=1, mode="nearest")
    moving_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest")
    return {
        "static": static,
        "moving": moving.astype(np.float32),
        "static_labels": labels,
        "moving_labels": moving_labels.astype(np.int32),
        "affine": np.eye(4),
    }


def median_time(*funcs, repeat=5):
    """Median wall time of each function, calls interleaved.

    The functions are called in turn (``f0, f1, ..., f0, f1, ...``) so that a
    change in machine load affects them alike.

    Parameters
    ----------
    *funcs : callable
        Functions of no argument.
    repeat : int, optional
        Calls of each function.

    Returns
    -------
    list of float
        Median seconds per function, in the order given.
    """
    samples = [[] for _ in funcs]
    for _ in range(repeat):
        for i, f in enumerate(funcs):
            start = time.perf_counter()
            f()
            samples[i].append(time.perf_counter() - start)
    return [float(np.median(s)) for s in samples]
