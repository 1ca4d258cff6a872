"""Bad input gets a clear error that names the argument; nothing crashes."""

import numpy as np
import pytest

import fastsyn
from fastsyn import fields
from fastsyn._threads import resolve_num_threads


@pytest.mark.parametrize("value, error", [(0, ValueError), (1.5, TypeError), ("2", TypeError),
                                          (True, TypeError), (-10_000, ValueError)])
def test_bad_num_threads(value, error):
    with pytest.raises(error, match="num_threads"):
        resolve_num_threads(value)
    with pytest.raises(error, match="num_threads"):
        fields.compose_vector_fields_3d(np.zeros((4, 4, 4, 3), np.float32),
                                        np.zeros((4, 4, 4, 3), np.float32), None, None, 1.0,
                                        num_threads=value)
    with pytest.raises(error, match="num_threads"):
        fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3), num_threads=value)


def test_num_threads_rules(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_num_threads(None) == 3
    assert resolve_num_threads(5) == 5
    assert resolve_num_threads(-1) == fastsyn._threads.cpu_count()


def test_field_errors():
    good = np.zeros((5, 6, 7, 3), np.float32)
    with pytest.raises(ValueError, match="d1"):
        fields.compose_vector_fields_3d(np.zeros((5, 6, 7, 2), np.float32), good, None, None, 1)
    with pytest.raises(TypeError, match="d2"):
        fields.compose_vector_fields_3d(good, good.astype(np.float64), None, None, 1)
    with pytest.raises(TypeError, match="d1"):
        fields.compose_vector_fields_3d(good.astype(np.int32), good, None, None, 1)
    bad = good.copy()
    bad[1, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="d2 contains NaN"):
        fields.compose_vector_fields_3d(good, bad, None, None, 1)
    with pytest.raises(ValueError, match="comp must not share memory"):
        fields.compose_vector_fields_3d(good, good, None, None, 1, comp=good)
    with pytest.raises(ValueError, match="premult_disp"):
        fields.compose_vector_fields_3d(good, good.copy(), None, np.eye(3), 1)
    with pytest.raises(ValueError, match="d_world2grid"):
        fields.invert_vector_field_fixed_point_3d(good, np.full((4, 4), np.inf), np.ones(3),
                                                  5, 1e-3)
    with pytest.raises(ValueError, match="spacing"):
        fields.invert_vector_field_fixed_point_3d(good, np.eye(4), np.array([1, 0, 1]), 5, 1e-3)
    with pytest.raises(ValueError, match="volume"):
        fields.warp_3d(np.zeros((5, 6), np.float32), good)
    with pytest.raises(ValueError, match="out_shape"):
        fields.warp_3d(np.zeros((5, 6, 7), np.float32), good, out_shape=(5, 6, 8))


def test_registration_input_errors():
    img = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3, radius=2),
                                                     level_iters=[1])
    with pytest.raises(ValueError, match="static must have 3 dimensions"):
        sdr.optimize(img[0], img)
    nan = img.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="moving contains NaN"):
        sdr.optimize(img, nan)
    with pytest.raises(ValueError, match="moving has no contrast"):
        sdr.optimize(img, np.ones_like(img))
    singular = np.eye(4)
    singular[2, 2] = 0
    with pytest.raises(ValueError, match="static_grid2world is singular"):
        sdr.optimize(img, img, static_grid2world=singular)
    with pytest.raises(ValueError, match="prealign"):
        sdr.optimize(img, img, prealign=np.eye(3))
    with pytest.raises(TypeError, match="static must be an array"):
        sdr.optimize(None, img)


def test_metric_errors():
    with pytest.raises(ValueError, match="dim"):
        fastsyn.CCMetric(4)
    with pytest.raises(ValueError, match="radius"):
        fastsyn.CCMetric(3, radius=0)
    with pytest.raises(ValueError, match="sigma_diff"):
        fastsyn.CCMetric(3, sigma_diff=float("nan"))
    metric = fastsyn.CCMetric(3, radius=4)
    small = np.ones((6, 20, 20), np.float32)
    metric.set_static_image(small, np.eye(4), np.ones(3), np.eye(4))
    metric.set_moving_image(small, np.eye(4), np.ones(3), np.eye(4))
    with pytest.raises(ValueError, match="too small"):
        metric.initialize_iteration()


# ------------------------------------------------------------- thread policy
def test_effective_threads_follows_the_grain():
    from fastsyn._threads import DEFAULT_GRAIN, effective_threads, parallel_grain

    # conftest forces a grain of 1 for every test (never from the environment).
    assert effective_threads(4, 3) == 3
    assert effective_threads(4, 10**6) == 4
    with parallel_grain(DEFAULT_GRAIN):
        assert effective_threads(4, DEFAULT_GRAIN - 1) == 1
        assert effective_threads(4, 2 * DEFAULT_GRAIN) == 2
        assert effective_threads(4, 10**9) == 4
    assert effective_threads(4, 3) == 3  # restored
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="voxels_per_thread"):
            with parallel_grain(bad):
                pass


def test_grain_is_not_read_from_the_environment(monkeypatch):
    from fastsyn._threads import effective_threads

    monkeypatch.setenv("FASTSYN_GRAIN", "1000000000")
    assert effective_threads(3, 3000) == 3


def test_huge_num_threads_is_refused_before_the_kernels():
    with pytest.raises(ValueError, match="num_threads"):
        resolve_num_threads(2**40)
    # Up to a C int it is fine: capped by the work, results unchanged.
    d = np.zeros((4, 4, 4, 3), np.float32)
    out, _ = fields.compose_vector_fields_3d(d, d, None, None, 1.0, num_threads=2**31 - 1)
    assert np.array_equal(out, d)


# ------------------------------------------------------ metric geometry input
@pytest.mark.parametrize("metric_cls", [fastsyn.CCMetric, fastsyn.MIMetric])
def test_metric_direction_3x3_equals_4x4(metric_cls):
    """DIPY documents a (dim, dim) direction for metrics but its SyN passes
    (dim + 1, dim + 1); both must give the same step (a (3, 3) matrix used to
    be read as 12 values: out of bounds, and a wrong gradient)."""
    rng = np.random.default_rng(0)
    static = rng.random((12, 13, 14)).astype(np.float32)
    moving = rng.random((12, 13, 14)).astype(np.float32)
    rot = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    full = np.eye(4)
    full[:3, :3] = rot
    steps = []
    for direction in (rot, full):
        metric = metric_cls(3)
        metric.set_static_image(static, np.eye(4), np.ones(3), direction)
        metric.set_moving_image(moving, np.eye(4), np.ones(3), direction)
        metric.initialize_iteration()
        steps.append(metric.compute_forward())
    assert np.array_equal(steps[0], steps[1])
    assert np.abs(steps[0]).max() > 0


@pytest.mark.parametrize("metric_cls", [fastsyn.CCMetric, fastsyn.MIMetric])
@pytest.mark.parametrize("spacing, direction, match", [
    (np.ones(2), None, "static_spacing"),
    (np.ones(4), None, "static_spacing"),
    (np.array([1.0, 0.0, 1.0]), None, "static_spacing"),
    (np.ones(3), np.eye(2), "static_direction"),
    (np.ones(3), np.eye(5), "static_direction"),
])
def test_metric_geometry_of_the_wrong_size(metric_cls, spacing, direction, match):
    metric = metric_cls(3)
    with pytest.raises(ValueError, match=match):
        metric.set_static_image(np.ones((8, 8, 8), np.float32), np.eye(4), spacing, direction)
