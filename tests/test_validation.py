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
    with pytest.raises(ValueError, match="moving image is constant"):
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
