"""Jacobian determinants of displacement fields and the repair of folds
(`fastsyn.fields.jacobian_determinant`, `fastsyn.fields.repair_folds`)."""

import numpy as np
import pytest

from fastsyn.fields import jacobian_determinant, repair_folds


def _whole_field_det(field, grid2world):
    dim = field.shape[-1]
    grads = np.stack([np.stack(np.gradient(field[..., c].astype(np.float64),
                                           axis=tuple(range(dim))), -1)
                      for c in range(dim)], -2)
    return np.linalg.det(np.eye(dim) + grads @ np.linalg.inv(grid2world[:dim, :dim]))


def _cofactor_det(field, grid2world):
    """The determinant as NumPy computes it in the kernel's order of
    operations: numpy.gradient of the float64 values, the chain rule summed
    in axis order over the nonzero entries, then the cofactor expansion."""
    dim = field.shape[-1]
    inv = np.linalg.inv(grid2world[:dim, :dim])
    d = [np.gradient(field[..., c].astype(np.float64), axis=tuple(range(dim)))
         for c in range(dim)]
    jac = [[sum(d[c][m] * inv[m, k] for m in range(dim) if inv[m, k] != 0)
            + (1.0 if c == k else 0.0) for k in range(dim)] for c in range(dim)]
    if dim == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    return (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 2), (7, 2, 5), (13, 9, 11)])
def test_jacobian_determinant_is_numpys_formula_bit_for_bit_at_every_thread_count(dtype, shape):
    rng = np.random.default_rng(len(shape) + shape[0])
    c, s = np.cos(0.4), np.sin(0.4)
    oblique = np.array([[-1.5 * c, -s, 0, 3], [1.5 * s, c, 0, 1], [0, 0, 0.8, -2], [0, 0, 0, 1]])
    for grid2world in (np.eye(4), np.diag([2.0, -1.0, 3.0, 1.0]), oblique):
        field = rng.normal(0, 0.7, shape + (3,)).astype(dtype)
        ref = _cofactor_det(field, grid2world)
        for threads in (1, 2, 3):
            det = jacobian_determinant(field, grid2world, num_threads=threads)
            assert np.array_equal(det, ref)
    flat = rng.normal(0, 0.7, shape[1:] + (2,)).astype(dtype)
    affine2d = np.array([[0, 2.0, 1], [1.5, 0.5, 0], [0, 0, 1]])
    for threads in (1, 2):
        assert np.array_equal(jacobian_determinant(flat, affine2d, num_threads=threads),
                              _cofactor_det(flat, affine2d))
    big_endian = field.astype(field.dtype.newbyteorder(">"))
    assert np.array_equal(jacobian_determinant(big_endian, oblique), ref)


def _folded_field(shape=(30, 31, 32), amplitude=12.0):
    """A displacement that flips sign across a plane inside a Gaussian bump:
    the points on either side cross each other (folds), none far from it."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    centre = [(n - 1) / 2 for n in shape]
    bump = np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / 8)
    field = np.zeros(shape + (3,), dtype=np.float32)
    field[..., 0] = -amplitude * bump * np.sign(z - centre[0] + 0.25)
    return field


def test_jacobian_determinant_matches_the_whole_field_formula():
    rng = np.random.default_rng(3)
    field = rng.normal(0, 0.4, (19, 12, 11, 3)).astype(np.float32)  # blocks of 8 slices
    c, s = np.cos(0.3), np.sin(0.3)
    grid2world = np.array([[-2.0 * c, -s, 0, 10], [2.0 * s, c, 0, -4], [0, 0, 1.5, 2],
                           [0, 0, 0, 1]])
    det = jacobian_determinant(field, grid2world)
    assert det.shape == field.shape[:3] and det.dtype == np.float64
    np.testing.assert_allclose(det, _whole_field_det(field, grid2world), atol=1e-12)
    flat = rng.normal(0, 0.4, (9, 10, 2))
    affine2d = np.array([[0, 2.0, 1], [1.5, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(jacobian_determinant(flat, affine2d),
                               _whole_field_det(flat, affine2d), atol=1e-12)
    np.testing.assert_allclose(jacobian_determinant(np.zeros((4, 5, 6, 3))), 1.0)
    with pytest.raises(ValueError, match="displacement field"):
        jacobian_determinant(np.zeros((4, 5, 6)))


def test_repair_folds_unfolds_only_around_the_folds():
    grid2world = np.diag([-2.0, 2.0, 2.0, 1.0])
    field = _folded_field()
    before = jacobian_determinant(field, grid2world)
    assert (before <= 0).sum() > 20
    repaired = field.copy()
    rounds, left = repair_folds(repaired, grid2world, num_threads=1)
    threaded = field.copy()
    assert repair_folds(threaded, grid2world, num_threads=3) == (rounds, left)
    assert np.array_equal(threaded, repaired)
    after = jacobian_determinant(repaired, grid2world)
    assert rounds > 0 and left == 0 and after.min() > 0.05
    assert repaired.dtype == np.float32
    changed = np.any(repaired != field, axis=-1)
    folded = np.argwhere(before <= 0.05)
    for point in np.argwhere(changed):                     # nothing far from a fold moves
        assert np.abs(folded - point).max(axis=1).min() <= rounds + 1
    assert changed.sum() < 0.2 * changed.size


def test_repair_folds_leaves_a_regular_field_alone():
    rng = np.random.default_rng(0)
    field = rng.normal(0, 0.05, (12, 13, 14, 3)).astype(np.float32)
    copy = field.copy()
    assert repair_folds(field, np.eye(4)) == (0, 0)
    assert np.array_equal(field, copy)
    folded = _folded_field()
    stuck = folded.copy()
    assert repair_folds(stuck, max_rounds=0) == (0, int((jacobian_determinant(folded) <= 0.05)
                                                        .sum()))
    assert np.array_equal(stuck, folded)
    with pytest.raises(ValueError, match="C-contiguous"):
        repair_folds(folded[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        repair_folds(folded.tolist())
    with pytest.raises(ValueError, match="max_rounds"):
        repair_folds(folded, max_rounds=-1)


def _repair_over_the_whole_array(field, grid2world, min_det=0.05, max_rounds=100):
    """repair_folds as first written: each round dilates, bounds and rechecks
    over the whole array (the windows of the means and determinants as in
    fastsyn)."""
    from scipy import ndimage

    dim = field.shape[-1]
    spatial = field.shape[:-1]
    det = jacobian_determinant(field, grid2world)
    for rounds in range(max_rounds):
        bad = det <= min_det
        if not bad.any():
            return rounds, 0
        region = ndimage.binary_dilation(bad, structure=np.ones((3,) * dim, dtype=bool))
        idx = np.nonzero(region)
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
        win = tuple(slice(max(a - 2, 0), min(b + 2, s)) for a, b, s in zip(lo, hi, spatial))
        sub = field[win]
        mean = ndimage.uniform_filter(sub, size=(3,) * dim + (1,), mode="nearest")
        sub[region[win]] = mean[region[win]]
        sub_det = jacobian_determinant(sub, grid2world)
        inner = tuple(slice(max(a - 1, 0), min(b + 1, s)) for a, b, s in zip(lo, hi, spatial))
        det[inner] = sub_det[tuple(slice(i.start - w.start, i.stop - w.start)
                                   for i, w in zip(inner, win))]
    return max_rounds, int(np.count_nonzero(det <= min_det))


def test_repair_folds_in_boxes_equals_the_whole_array_rule():
    """The repair works in boxes around the folds; the result is the
    whole-array rule's bit for bit, with two folds far apart and one at the
    array's edge, in 3D and 2D."""
    grid2world = np.diag([-2.0, 2.0, 1.5, 1.0])
    field = np.zeros((40, 36, 38, 3), dtype=np.float32)
    field[2:32, 1:32, 3:35] = _folded_field()
    field[:12, 20:, 20:, 1] += 10 * _folded_field((12, 16, 18))[..., 0]   # at the edge z = 0
    before = jacobian_determinant(field, grid2world) <= 0
    assert before[:12, 20:, 20:].any() and before[2:32, 1:20, 3:20].any()
    original = field.copy()
    expected = field.copy()
    counts = _repair_over_the_whole_array(expected, grid2world)
    assert counts[0] > 0 and counts == repair_folds(field, grid2world)
    assert np.array_equal(field, expected)
    moved = np.any(field != original, axis=-1)            # both folds were repaired
    assert moved[:12, 20:, 20:].any() and moved[2:32, 1:20, 3:20].any()
    # stopped after two rounds: the same field and the same count of points left
    early, early_expected = original.copy(), original.copy()
    counts = _repair_over_the_whole_array(early_expected, grid2world, max_rounds=2)
    assert counts[1] > 0 and repair_folds(early, grid2world, max_rounds=2) == counts
    assert np.array_equal(early, early_expected)
    flat = np.ascontiguousarray(_folded_field((3, 40, 41))[1, ..., :2][..., ::-1] * 0.5)
    flat[:, :12] += np.ascontiguousarray(_folded_field((3, 40, 12))[1, ..., :2])
    flat_expected = flat.copy()
    affine2d = np.diag([1.0, 2.0, 1.0])
    counts = _repair_over_the_whole_array(flat_expected, affine2d)
    assert counts[0] > 0
    assert repair_folds(flat, affine2d) == counts
    assert np.array_equal(flat, flat_expected)
