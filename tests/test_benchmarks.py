"""pytest-benchmark suite: every kernel and end-to-end SyN, fastsyn vs stock DIPY.

Groups (``--benchmark-group-by=group``, the default): ``kernel-compose``,
``kernel-invert``, ``kernel-warp``, ``kernel-warp-nn``, ``kernel-smooth``,
``kernel-gradient``, ``kernel-cc``, ``syn-cc`` and ``syn-mi``.  Each group
holds the stock twin and fastsyn with one thread and with every CPU, for each
size.

In the default test run (``--benchmark-disable`` in pyproject's addopts) each
benchmark body runs once on small inputs, so the file stays fast.  For real
measurements::

    FASTSYN_BENCH_SIZE=128 pytest tests/test_benchmarks.py \
        --benchmark-enable --benchmark-only --benchmark-autosave
    FASTSYN_BENCH_SIZE=128 pytest tests/test_benchmarks.py \
        --benchmark-enable --benchmark-only \
        --benchmark-compare --benchmark-compare-fail=median:10%

``FASTSYN_BENCH_SIZE`` (default 32) is the edge of the kernel volumes; the SyN
pair uses the same edge (at least 40, so that the coarsest pyramid level still
fits the CC window).  The sizes benchmarked are ``SIZE // 2`` and ``SIZE``.
"""

import logging
import os

import numpy as np
import pytest
from conftest import smooth_field, smooth_image
from dipy.align import imwarp as dipy_imwarp
from dipy.align import metrics as dipy_metrics
from dipy.align import vector_fields as vf
from scipy import ndimage

import fastsyn
from fastsyn import fields

SIZE = int(os.environ.get("FASTSYN_BENCH_SIZE", "32"))
if SIZE < 8:
    raise ValueError(f"FASTSYN_BENCH_SIZE must be at least 8, got {SIZE}")
SIZES = sorted({max(8, SIZE // 2), SIZE})
SYN_SIZE = max(40, SIZE)
SYN_LEVELS = [10, 10, 5] if SIZE > 32 else [4, 3, 2]
ALL = "all"
THREADS = [1, ALL]
SIGMA = 2.0


def _n(threads):
    return -1 if threads == ALL else threads


_CACHE = {}


def _inputs(size, dtype=np.float32):
    key = (size, np.dtype(dtype).name)
    if key not in _CACHE:
        shape = (size, size, size)
        _CACHE[key] = {
            "field": smooth_field(shape, dtype, seed=1),
            "field2": smooth_field(shape, dtype, seed=2),
            "image": smooth_image(shape, dtype, seed=3),
            "image2": smooth_image(shape, dtype, seed=4),
        }
    return _CACHE[key]


def _pair(size):
    key = ("pair", size)
    if key not in _CACHE:
        shape = (size, size, size)
        static = smooth_image(shape, np.float32, seed=5)
        moving = fields.warp_3d(static, smooth_field(shape, np.float32, amplitude=2.0,
                                                    seed=6))
        _CACHE[key] = (static, moving)
    return _CACHE[key]


@pytest.fixture(autouse=True)
def _quiet_dipy():
    logger = logging.getLogger("dipy")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def _images_on(metric, static, moving):
    eye, ones = np.eye(4), np.ones(3)
    metric.set_static_image(static, eye, ones, eye)
    metric.set_moving_image(moving, eye, ones, eye)
    return metric


# ------------------------------------------------------------------ compose
@pytest.mark.benchmark(group="kernel-compose")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_compose_fastsyn(benchmark, size, threads):
    d = _inputs(size)
    out = np.empty_like(d["field"])
    comp, stats = benchmark(fields.compose_vector_fields_3d, d["field"], d["field2"], None,
                            None, 1.0, out, num_threads=_n(threads))
    assert comp.shape == d["field"].shape and np.isfinite(stats).all()


@pytest.mark.benchmark(group="kernel-compose")
@pytest.mark.parametrize("size", SIZES)
def test_compose_dipy(benchmark, size):
    d = _inputs(size)
    out = np.empty_like(d["field"])
    benchmark(vf.compose_vector_fields_3d, d["field"], d["field2"], None, None, 1.0, out)


# ------------------------------------------------------------------- invert
@pytest.mark.benchmark(group="kernel-invert")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_invert_fastsyn(benchmark, size, threads):
    d = _inputs(size)
    inv = benchmark(fields.invert_vector_field_fixed_point_3d, d["field"], None,
                    np.ones(3), 20, 1e-3, num_threads=_n(threads))
    assert inv.shape == d["field"].shape


@pytest.mark.benchmark(group="kernel-invert")
@pytest.mark.parametrize("size", SIZES)
def test_invert_dipy(benchmark, size):
    d = _inputs(size)
    benchmark(vf.invert_vector_field_fixed_point_3d, d["field"], None, np.ones(3), 20, 1e-3)


# --------------------------------------------------------------------- warp
@pytest.mark.benchmark(group="kernel-warp")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_warp_fastsyn(benchmark, size, threads):
    d = _inputs(size)
    out = benchmark(fields.warp_3d, d["image"], d["field"], num_threads=_n(threads))
    assert out.shape == d["image"].shape


@pytest.mark.benchmark(group="kernel-warp")
@pytest.mark.parametrize("size", SIZES)
def test_warp_dipy(benchmark, size):
    d = _inputs(size)
    benchmark(vf.warp_3d, d["image"], d["field"])


@pytest.mark.benchmark(group="kernel-warp-nn")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_warp_nn_fastsyn(benchmark, size, threads):
    d = _inputs(size)
    out = benchmark(fields.warp_3d_nn, d["image"], d["field"], num_threads=_n(threads))
    assert out.shape == d["image"].shape


@pytest.mark.benchmark(group="kernel-warp-nn")
@pytest.mark.parametrize("size", SIZES)
def test_warp_nn_dipy(benchmark, size):
    d = _inputs(size)
    benchmark(vf.warp_3d_nn, d["image"], d["field"])


# ---------------------------------------------------------------- smoothing
@pytest.mark.benchmark(group="kernel-smooth")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_smooth_fastsyn(benchmark, size, threads):
    d = _inputs(size)
    out = np.empty_like(d["field"])
    benchmark(fields.gaussian_smooth, d["field"], SIGMA, vector=True, out=out,
              num_threads=_n(threads))


@pytest.mark.benchmark(group="kernel-smooth")
@pytest.mark.parametrize("size", SIZES)
def test_smooth_dipy(benchmark, size):
    d = _inputs(size)
    out = np.empty_like(d["field"])

    def smooth():
        for c in range(3):
            out[..., c] = ndimage.gaussian_filter(d["field"][..., c], SIGMA)

    benchmark(smooth)


# ----------------------------------------------------------------- gradient
@pytest.mark.benchmark(group="kernel-gradient")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_gradient_fastsyn(benchmark, size, threads):
    d = _inputs(size)
    g = benchmark(fields.image_gradient, d["image"], num_threads=_n(threads))
    assert g.shape == d["image"].shape + (3,)


@pytest.mark.benchmark(group="kernel-gradient")
@pytest.mark.parametrize("size", SIZES)
def test_gradient_dipy(benchmark, size):
    d = _inputs(size)
    benchmark(np.gradient, d["image"])


# ----------------------------------------------------------------------- CC
@pytest.mark.benchmark(group="kernel-cc")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_cc_iteration_fastsyn(benchmark, size, threads):
    """Factors, forward and backward steps (with smoothing) of one iteration."""
    if size < 9:
        pytest.skip("CC radius 4 needs at least 9 voxels per axis")
    d = _inputs(size)
    metric = _images_on(fastsyn.CCMetric(3, num_threads=_n(threads)), d["image"],
                        d["image2"])

    def iteration():
        metric.initialize_iteration()
        return metric.compute_forward(), metric.compute_backward()

    fw, bw = benchmark(iteration)
    assert fw.shape == bw.shape == d["image"].shape + (3,)


@pytest.mark.benchmark(group="kernel-cc")
@pytest.mark.parametrize("size", SIZES)
def test_cc_iteration_dipy(benchmark, size):
    if size < 9:
        pytest.skip("CC radius 4 needs at least 9 voxels per axis")
    d = _inputs(size)
    metric = _images_on(dipy_metrics.CCMetric(3), d["image"], d["image2"])

    def iteration():
        metric.initialize_iteration()
        return metric.compute_forward(), metric.compute_backward()

    benchmark(iteration)


# --------------------------------------------------------------- end to end
def _syn(registration, metric, static, moving, **kwargs):
    sdr = registration(metric, level_iters=list(SYN_LEVELS), **kwargs)
    return sdr.optimize(static, moving, static_grid2world=np.eye(4),
                        moving_grid2world=np.eye(4))


def _pedantic(benchmark, fn):
    # SyN runs are long: a fixed small number of rounds instead of calibration.
    return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="syn-cc")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", [SYN_SIZE])
def test_syn_cc_fastsyn(benchmark, size, threads):
    static, moving = _pair(size)
    mapping = _pedantic(benchmark, lambda: _syn(
        fastsyn.SymmetricDiffeomorphicRegistration, fastsyn.CCMetric(3), static, moving,
        num_threads=_n(threads)))
    assert mapping.forward.shape == static.shape + (3,)


@pytest.mark.benchmark(group="syn-cc")
@pytest.mark.parametrize("size", [SYN_SIZE])
def test_syn_cc_dipy(benchmark, size):
    static, moving = _pair(size)
    _pedantic(benchmark, lambda: _syn(dipy_imwarp.SymmetricDiffeomorphicRegistration,
                                      dipy_metrics.CCMetric(3), static, moving))


@pytest.mark.benchmark(group="syn-mi")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", [SYN_SIZE])
def test_syn_mi_fastsyn(benchmark, size, threads):
    try:
        metric_cls = fastsyn.MIMetric
    except (AttributeError, ImportError) as exc:
        pytest.skip(f"MIMetric unavailable: {exc}")
    static, moving = _pair(size)
    mapping = _pedantic(benchmark, lambda: _syn(
        fastsyn.SymmetricDiffeomorphicRegistration, metric_cls(3), static, moving,
        num_threads=_n(threads)))
    assert mapping.forward.shape == static.shape + (3,)
