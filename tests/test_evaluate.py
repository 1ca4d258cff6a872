"""Evaluation measures on arrays whose answers are known exactly."""

import numpy as np
import pytest

from fastsyn.bench.evaluate import (
    evaluate_pair,
    jacobian_determinant,
    jacobian_stats,
    label_overlap,
    ncc,
    nmi,
    target_error,
)


def _image(seed=0, shape=(12, 13, 14)):
    return np.random.default_rng(seed).random(shape)


def test_identical_images_and_labels_are_perfect():
    img = _image()
    labels = (img * 4).astype(np.int32)
    assert ncc(img, img) == pytest.approx(1.0, abs=1e-12)
    # one-to-one intensities: H(A) = H(B) = H(A, B)
    assert nmi(img, img) == pytest.approx(2.0, abs=1e-12)
    ov = label_overlap(labels, labels)
    assert ov["labels"] == [1, 2, 3]  # label 0 excluded
    assert ov["dice"] == [1.0, 1.0, 1.0] and ov["jaccard_mean"] == 1.0


def test_ncc_is_pearson_inside_the_mask():
    img = _image(1)
    assert ncc(img, 3.0 * img + 7.0) == pytest.approx(1.0, abs=1e-12)
    assert ncc(img, -img) == pytest.approx(-1.0, abs=1e-12)
    other = _image(2)
    mask = np.zeros(img.shape, bool)
    mask[2:9, 3:10, 4:11] = True
    expected = np.corrcoef(img[mask], other[mask])[0, 1]
    assert ncc(img, other, mask) == pytest.approx(expected, abs=1e-12)
    # outside the mask nothing counts
    changed = other.copy()
    changed[~mask] = 1e6
    assert ncc(img, changed, mask) == pytest.approx(expected, abs=1e-12)
    assert ncc(img, np.ones_like(img)) == 0.0


def test_shifted_image_loses_similarity():
    from scipy import ndimage
    img = ndimage.gaussian_filter(_image(3, (20, 20, 20)), 1.5)
    shifted = np.roll(img, 3, axis=0)
    assert ncc(img, shifted) < 0.9
    assert 1.0 < nmi(img, shifted) < nmi(img, img)


def test_nmi_of_independent_images_is_near_one():
    a = _image(4, (40, 40, 40))
    b = _image(5, (40, 40, 40))
    assert nmi(a, b) == pytest.approx(1.0, abs=0.02)


def test_dice_and_jaccard_of_a_shifted_cube():
    f = np.zeros((10, 10, 10), np.int16)
    f[2:6, 2:6, 2:6] = 7
    w = np.roll(f, 1, axis=0)
    ov = label_overlap(f, w)
    # overlap 3*4*4 = 48 of two 64-voxel cubes
    assert ov["labels"] == [7]
    assert ov["dice"][0] == pytest.approx(2 * 48 / 128)
    assert ov["jaccard"][0] == pytest.approx(48 / 80)


def test_labels_missing_or_extra_in_warped_map():
    f = np.zeros((6, 6, 6), np.int32)
    f[:3] = 1
    f[3:] = 2
    w = np.zeros_like(f)
    w[:3] = 1
    w[3:] = 9  # label 2 lost, label 9 only in the warped map
    ov = label_overlap(f, w)
    assert ov["labels"] == [1, 2]
    assert ov["dice"] == [1.0, 0.0]
    assert ov["dice_mean"] == pytest.approx(0.5)
    empty = label_overlap(np.zeros_like(f), w)
    assert empty["labels"] == [] and np.isnan(empty["dice_mean"])


def test_jacobian_of_identity_and_of_a_scaling():
    shape = (8, 9, 10)
    zero = np.zeros(shape + (3,))
    np.testing.assert_allclose(jacobian_determinant(zero), 1.0)
    stats = jacobian_stats(zero)
    assert stats == {"folding_pct": 0.0, "logjac_sd": 0.0}
    # u(x) = 0.1 x in world mm on an anisotropic grid: det = 1.1 ** 3 everywhere
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    idx = np.indices(shape, dtype=float)
    world = np.stack([idx[i] * affine[i, i] for i in range(3)], axis=-1)
    det = jacobian_determinant(0.1 * world, affine)
    np.testing.assert_allclose(det, 1.1 ** 3, rtol=1e-12)


def test_jacobian_of_a_folding_field():
    shape = (10, 10, 10)
    idx = np.indices(shape, dtype=float)
    disp = np.zeros(shape + (3,))
    disp[..., 0] = -2.0 * idx[0]  # x -> -x: det = -1 everywhere
    stats = jacobian_stats(disp)
    assert stats["folding_pct"] == 100.0 and np.isnan(stats["logjac_sd"])
    # fold only in half of the mask
    disp[5:, ..., 0] = 0.0
    mask = np.zeros(shape, bool)
    mask[1:4] = True   # folded slab (interior: central differences)
    mask[6:9] = True   # identity slab
    assert jacobian_stats(disp, mask=mask)["folding_pct"] == pytest.approx(50.0)


def test_target_error_and_evaluate_pair():
    shape = (6, 7, 8)
    est = np.zeros(shape + (3,))
    true = np.zeros(shape + (3,))
    true[..., 0] = 3.0
    true[..., 1] = 4.0
    assert target_error(est, true) == {"tre_mean": 5.0, "tre_median": 5.0}
    img = _image(6, shape)
    lab = (img > 0.5).astype(np.int32)
    res = evaluate_pair(img, img, lab, lab, displacement=None, true_displacement=true)
    assert res["ncc"] == pytest.approx(1.0) and res["dice_mean"] == 1.0
    assert res["tre_mean"] == 5.0 and res["folding_pct"] == 0.0
    res = evaluate_pair(img, img, lab, lab, displacement=est, affine=np.eye(4))
    assert np.isnan(res["tre_mean"]) and res["logjac_sd"] == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda a: ncc(a, a[:-1]), "shape"),
    (lambda a: ncc(a, np.where(a > 0.5, np.nan, a)), "NaN"),
    (lambda a: nmi(a, a, bins=1), "bins"),
    (lambda a: ncc(a, a, np.zeros(a.shape, bool)), "no voxels"),
    (lambda a: label_overlap(a > 0, np.zeros((2, 2))), "shape"),
    (lambda a: label_overlap(a, a), "non-integer"),
    (lambda a: jacobian_determinant(np.zeros((4, 4, 4, 2))), "displacement"),
    (lambda a: jacobian_determinant(np.zeros((4, 4, 4, 3)), np.zeros((4, 4))),
     "invertible"),
    (lambda a: target_error(np.zeros((3, 3, 3, 3)), np.zeros((3, 3, 2, 3))), "shape"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(_image(7, (6, 6, 6)))
