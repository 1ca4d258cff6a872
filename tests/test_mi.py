"""Tests of MIMetric (Mutual Information for SyN) and its kernels."""

import numpy as np
import pytest
from conftest import load_pair, smooth_image
from scipy import ndimage

import fastsyn
from fastsyn.metrics import MIMetric, mi_from_histogram


# ------------------------------------------------------------------ helpers
def _bspline3(t):
    """Cubic B-spline, written from its textbook piecewise definition."""
    t = np.abs(t)
    out = np.zeros_like(t)
    inner = t < 1
    outer = (t >= 1) & (t < 2)
    out[inner] = 2.0 / 3.0 - t[inner] ** 2 + 0.5 * t[inner] ** 3
    out[outer] = (2.0 - t[outer]) ** 3 / 6.0
    return out


def _numpy_mi(static, moving, nbins, srange, mrange):
    """Independent NumPy MI of the Parzen model: dense (voxel x bin) window
    matrices for both images, joint histogram as their product."""
    def coords(img, rng):
        lo, hi = rng
        c = 1.0 + (img.astype(np.float64).ravel() - lo) * (nbins - 3) / (hi - lo)
        return np.clip(c, 1.0, nbins - 2.0)

    bins = np.arange(nbins, dtype=np.float64)
    ws = _bspline3(coords(static, srange)[:, None] - bins[None, :])
    wm = _bspline3(coords(moving, mrange)[:, None] - bins[None, :])
    joint = ws.T @ wm
    p = joint / joint.sum()
    ps, pm = p.sum(1), p.sum(0)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / np.outer(ps, pm)[nz]))), joint


def _pair(shape, dtype, seed=0):
    """A smooth image and a nonlinear (non-monotone) function of it, slightly
    shifted, so MI is informative and its derivative non-trivial."""
    static = smooth_image(shape, np.float64, seed=seed)
    other = smooth_image(shape, np.float64, seed=seed + 1)
    moving = np.roll(static, 1, axis=0)
    moving = (moving - moving.mean()) ** 2 + 0.3 * other
    return static.astype(dtype), moving.astype(dtype)


def _metric(static, moving, **kwargs):
    dim = static.ndim
    metric = MIMetric(dim, **kwargs)
    metric.set_static_image(static, np.eye(dim + 1), np.ones(dim), None)
    metric.set_moving_image(moving, np.eye(dim + 1), np.ones(dim), None)
    metric.initialize_iteration()
    return metric


# ------------------------------------------------------------------ value
@pytest.mark.parametrize("shape", [(23, 19), (9, 11, 10)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mi_matches_numpy_parzen_model(shape, dtype):
    static, moving = _pair(shape, dtype)
    metric = _metric(static, moving, nbins=16, num_threads=1)
    expected, joint = _numpy_mi(static, moving, 16, metric.static_range,
                                metric.moving_range)
    # float64: only summation order differs (1e-12).  float32: the windows
    # are evaluated in single precision, relative error ~1e-7 per weight.
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(metric.joint_histogram, joint, rtol=rtol,
                               atol=rtol * joint.max())
    np.testing.assert_allclose(metric.mi, expected, rtol=rtol)
    assert metric.get_energy() == -metric.mi
    assert metric.histogram_count == static.size
    # A pair that is a function of each other has much more MI than noise.
    rng = np.random.default_rng(5)
    noise = _metric(static, rng.random(shape).astype(dtype), nbins=16)
    assert metric.mi > 3 * noise.mi


def test_mi_ranges_are_robust_percentiles():
    static, moving = _pair((30, 30), np.float64)
    spiked = static.copy()
    spiked[0, 0] = 1e6                     # one outlier must not squash the bins
    metric = _metric(spiked, moving, nbins=16)
    assert metric.static_range[1] < 1e3
    assert np.isclose(metric.static_range[1], np.percentile(spiked, 99.5))
    full = _metric(spiked, moving, nbins=16, clip=(0, 100))
    assert full.static_range == (spiked.min(), 1e6)


def test_mi_from_histogram_independent_image():
    # Outer product histogram: MI is zero and every weight is zero.
    hist = np.outer([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 1.0, 0.0])
    mi, weights = mi_from_histogram(hist, hist.sum())
    assert abs(mi) < 1e-15
    assert np.allclose(weights, 0)


def _grown(mask, margin):
    """``mask`` grown by ``margin`` face-connected voxels, with array shifts."""
    out = mask.copy()
    for _ in range(margin):
        step = out.copy()
        for axis in range(mask.ndim):
            lead = [slice(None)] * mask.ndim
            lag = [slice(None)] * mask.ndim
            lead[axis], lag[axis] = slice(1, None), slice(None, -1)
            step[tuple(lead)] |= out[tuple(lag)]
            step[tuple(lag)] |= out[tuple(lead)]
        out = step
    return out


@pytest.mark.parametrize("margin", [0, 1, 2])
@pytest.mark.parametrize("rule", ["either", "both"])
def test_two_masks_combine_by_the_mask_rule(rule, margin):
    """``mask_rule``: a voxel counts where either grown mask is nonzero
    (default) or where both are; outside, no histogram mass and no update.
    ``mask_margin`` grows each mask first; the ranges keep the masks as given."""
    static, moving = _pair((24, 20), np.float64)
    sm = np.zeros(static.shape, bool)
    sm[2:14, 3:15] = True
    mm = np.zeros(static.shape, bool)
    mm[8:22, 6:18] = True
    gs, gm = _grown(sm, margin), _grown(mm, margin)
    inside = (gs | gm) if rule == "either" else (gs & gm)
    metric = _metric(static, moving, nbins=12, static_mask=sm, moving_mask=mm,
                     mask_rule=rule, mask_margin=margin, clip=(0, 100), sigma_diff=0)
    assert metric.histogram_count == inside.sum()
    assert metric.static_range == (static[sm].min(), static[sm].max())
    assert metric.moving_range == (moving[mm].min(), moving[mm].max())
    expected, _ = _numpy_mi(static[inside], moving[inside], 12, metric.static_range,
                            metric.moving_range)
    np.testing.assert_allclose(metric.mi, expected, rtol=1e-10)
    for step in (metric.compute_forward(), metric.compute_backward()):
        assert not step[~inside].any() and step[inside].any()
    if rule == "either":
        default = MIMetric(2, static_mask=sm)
        assert (default.mask_rule, default.mask_margin) == ("either", 1)
    with pytest.raises(ValueError, match="mask_rule"):
        MIMetric(2, mask_rule="and")
    for bad in (-1, 1.5, "1"):
        with pytest.raises((ValueError, TypeError), match="mask_margin"):
            MIMetric(2, mask_margin=bad)


def test_mask_and_sampling_restrict_histogram():
    static, moving = _pair((24, 20), np.float64)
    mask = np.zeros(static.shape, bool)
    mask[4:20, 3:15] = True
    metric = _metric(static, moving, nbins=12, static_mask=mask, clip=(0, 100),
                     sigma_diff=0, mask_margin=0)
    assert metric.histogram_count == mask.sum()
    expected, _ = _numpy_mi(static[mask], moving[mask], 12, metric.static_range,
                            metric.moving_range)
    np.testing.assert_allclose(metric.mi, expected, rtol=1e-10)
    assert metric.static_range == (static[mask].min(), static[mask].max())
    fw = metric.compute_forward()
    assert not fw[~mask].any()
    # Sampling: a seeded subset builds the histogram, the update stays dense.
    sampled = _metric(static, moving, nbins=12, sampling=0.5, seed=3, sigma_diff=0)
    assert 0.4 * static.size < sampled.histogram_count < 0.6 * static.size
    again = _metric(static, moving, nbins=12, sampling=0.5, seed=3, sigma_diff=0)
    assert np.array_equal(sampled.joint_histogram, again.joint_histogram)
    assert np.count_nonzero(np.abs(sampled.compute_forward()).sum(-1)) > 0.8 * static.size


# ------------------------------------------------------------- derivative
def _shifted(img, index, axis, eps):
    """``img`` with the value at ``index`` resampled at index - eps along
    ``axis`` (linear interpolation): a displacement of one voxel by -eps."""
    out = img.copy()
    step = np.zeros(img.ndim, int)
    step[axis] = 1 if eps < 0 else -1
    neighbour = tuple(np.asarray(index) + step)
    out[index] = img[index] + abs(eps) * (img[neighbour] - img[index])
    return out


@pytest.mark.parametrize("shape", [(21, 18), (10, 9, 11)])
@pytest.mark.parametrize("forward", [True, False])
def test_derivative_matches_finite_differences(shape, forward):
    # float64 so that the central difference is limited by truncation, not
    # rounding.  Moving a voxel by -eps along an axis replaces its value by a
    # linear interpolation with its neighbour; the central difference of MI
    # over +-eps then converges to (dMI/dI) times the central-difference
    # gradient, which is exactly what the step uses.  The residual is
    # O(eps * d2MI/dI2 * |one-sided gradients|), about 1e-4 relative for
    # eps = 1e-4 here, so rtol = 1e-3 with atol 1e-3 of the largest entry.
    static, moving = _pair(shape, np.float64, seed=2)
    metric = _metric(static, moving, nbins=10, sigma_diff=0, clip=(0, 100))
    step = metric.compute_forward() if forward else metric.compute_backward()
    srange, mrange = metric.static_range, metric.moving_range
    rng = np.random.default_rng(1)
    eps = 1e-4
    checked = 0
    while checked < 6:
        index = tuple(int(rng.integers(1, n - 1)) for n in shape)
        image = static if forward else moving
        if image[index] in srange + mrange:
            continue                      # range ends: derivative is one-sided
        for axis in range(len(shape)):
            vals = []
            for e in (eps, -eps):
                moved = _shifted(image, index, axis, e)
                pair = (moved, moving) if forward else (static, moved)
                vals.append(_numpy_mi(*pair, 10, srange, mrange)[0])
            fd = (vals[0] - vals[1]) / (2 * eps)
            np.testing.assert_allclose(step[index + (axis,)], fd, rtol=1e-3,
                                       atol=1e-3 * np.abs(step).max())
        checked += 1
    # Sign: a small step along the update raises MI (ascent direction),
    # applied as in SyN (the image is resampled at x - step).
    assert np.abs(step).max() > 0


def _bspline3_derivative(t):
    """Derivative of ``_bspline3``, from the same piecewise definition."""
    a = np.abs(t)
    out = np.zeros_like(t)
    inner = a < 1
    outer = (a >= 1) & (a < 2)
    out[inner] = -2.0 * t[inner] + 1.5 * t[inner] * a[inner]
    out[outer] = -np.sign(t[outer]) * (2.0 - a[outer]) ** 2 / 2.0
    return out


@pytest.mark.parametrize("shape", [(24, 22), (12, 11, 13)])
@pytest.mark.parametrize("forward", [True, False])
def test_step_matches_numpy_on_a_flat_background(shape, forward):
    # Half of each image is a flat background (a skull-stripped brain's zeros),
    # where the kernel skips the 16-bin sum because the gradient is zero: the
    # step must still be the full formula everywhere, -scale / N *
    # sum_ij W(i, j) B'(c_s - i) B(c_m - j) * grad I (static side; the
    # moving side swaps the windows), with W and the windows from NumPy.
    # A slab copied from one slice is constant along the first axis only,
    # so there a zero first component must not be taken for a flat voxel.
    static, moving = _pair(shape, np.float64, seed=4)
    half = shape[0] // 2
    for img in (static, moving):
        img -= img.min() - 0.1
        img[:half] = 0.0
        img[half + 2:half + 6] = img[half + 2]
    nbins = 12
    metric = _metric(static, moving, nbins=nbins, sigma_diff=0, clip=(0, 100))
    step = metric.compute_forward() if forward else metric.compute_backward()

    _, weights = mi_from_histogram(metric.joint_histogram, metric.histogram_count)
    bins = np.arange(nbins, dtype=np.float64)

    def coords(img, rng):
        return 1.0 + (img.ravel() - rng[0]) * (nbins - 3) / (rng[1] - rng[0])

    ts = coords(static, metric.static_range)[:, None] - bins
    tm = coords(moving, metric.moving_range)[:, None] - bins
    if forward:
        dsum = np.einsum("vi,ij,vj->v", _bspline3_derivative(ts), weights, _bspline3(tm))
        scale, image = (nbins - 3) / np.ptp(metric.static_range), static
    else:
        dsum = np.einsum("vi,ij,vj->v", _bspline3(ts), weights, _bspline3_derivative(tm))
        scale, image = (nbins - 3) / np.ptp(metric.moving_range), moving
    grad = np.stack(np.gradient(image), axis=-1)
    expected = (-scale / metric.histogram_count * dsum).reshape(shape)[..., None] * grad

    flat = ~np.any(grad != 0, axis=-1)
    assert flat.mean() > 0.3 and np.all(step[flat] == 0)
    slab = (grad[..., 0] == 0) & ~flat
    assert slab.sum() > 20 and np.count_nonzero(step[slab]) > 0
    assert np.count_nonzero(np.any(step != 0, axis=-1)) > 0.3 * step[..., 0].size
    np.testing.assert_allclose(step, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("dim", [2, 3])
def test_step_increases_mi(dim):
    shape = (40, 36) if dim == 2 else (16, 14, 15)
    static, moving = _pair(shape, np.float64, seed=4)
    metric = _metric(static, moving, nbins=16, sigma_diff=0, clip=(0, 100))
    step = metric.compute_forward()
    step *= 0.2 / np.abs(step).max()
    grid = np.indices(shape, dtype=np.float64)
    coords = grid - np.moveaxis(step, -1, 0)
    warped = ndimage.map_coordinates(static, coords, order=1, mode="nearest")
    after, _ = _numpy_mi(warped, moving, 16, metric.static_range, metric.moving_range)
    assert after > metric.mi


# --------------------------------------------------------------- threads
@pytest.mark.parametrize("shape", [(37, 29), (13, 11, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling", [None, 0.6])
def test_threads_bitwise_identical(shape, dtype, sampling):
    static, moving = _pair(shape, dtype, seed=7)
    mask = np.ones(shape, bool)
    mask[:2] = False
    results = []
    for n in (1, 2, 3):
        metric = _metric(static, moving, nbins=20, num_threads=n, sampling=sampling,
                         static_mask=mask if sampling else None, sigma_diff=1.0)
        results.append((metric.joint_histogram, metric.get_energy(),
                        metric.compute_forward(), metric.compute_backward()))
    for other in results[1:]:
        assert np.array_equal(results[0][0], other[0])
        assert results[0][1] == other[1]
        assert np.array_equal(results[0][2], other[2])
        assert np.array_equal(results[0][3], other[3])
    assert results[0][2].dtype == dtype


# ------------------------------------------------------------- bad input
def test_bad_input():
    static, moving = _pair((20, 20), np.float64)
    with pytest.raises(ValueError, match="nbins"):
        MIMetric(2, nbins=3)
    with pytest.raises(TypeError, match="nbins"):
        MIMetric(2, nbins=8.5)
    with pytest.raises(ValueError, match="dim"):
        MIMetric(4)
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sampling"):
            MIMetric(2, sampling=bad)
    with pytest.raises(ValueError, match="sigma_diff"):
        MIMetric(2, sigma_diff=-1)
    with pytest.raises(ValueError, match="clip"):
        MIMetric(2, clip=(50, 10))
    with pytest.raises(ValueError, match="num_threads"):
        MIMetric(2, num_threads=0)
    with pytest.raises(ValueError, match="static_mask"):
        MIMetric(2, static_mask=np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="moving_mask"):
        MIMetric(2, moving_mask=np.zeros((20, 20)))
    with pytest.raises(ValueError, match="static_image is constant"):
        _metric(np.full((20, 20), 3.0), moving)
    with pytest.raises(ValueError, match="moving_image is constant"):
        _metric(static, np.zeros((20, 20)))
    bad = static.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="static_image contains NaN"):
        _metric(bad, moving)
    bad = moving.copy()
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match="moving_image contains NaN"):
        _metric(static, bad)
    with pytest.raises(ValueError, match="static_mask"):
        _metric(static, moving, static_mask=np.ones((20, 24), bool))
    with pytest.raises(ValueError, match="share a grid"):
        _metric(static, moving[:, :10])


# ------------------------------------------------------------------- SyN
def _synthetic_pair_3d():
    """Blobs of three tissue classes, the moving one warped by a smooth field
    and given an inverted, nonlinear contrast."""
    shape = (24, 26, 22)
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (np.array(shape)[:, None, None, None] / 2.6)) ** 2)
                .sum(0))
    labels = np.where(r < 0.45, 2, np.where(r < 0.9, 1, 0)).astype(np.int32)
    rng = np.random.default_rng(11)
    disp = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 4)
                     for _ in range(3)])
    disp *= 3.0 / np.abs(disp).max()
    moved = grid + disp
    moving_labels = ndimage.map_coordinates(labels, moved, order=0, mode="nearest")
    tone_s = np.array([0.0, 60.0, 100.0])
    tone_m = np.array([10.0, 100.0, 40.0])     # inverted / non-monotone contrast
    static = ndimage.gaussian_filter(tone_s[labels], 0.8)
    moving = ndimage.gaussian_filter(tone_m[moving_labels], 0.8)
    return (static.astype(np.float32), moving.astype(np.float32), labels,
            moving_labels)


def _dice(a, b):
    scores = [2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))
              for k in np.unique(a) if k != 0]
    return float(np.mean(scores))


def test_stock_dipy_syn_with_mi_improves_overlap():
    # Non-monotone contrast (the middle class is darkest in the moving
    # image): CC cannot follow it, MI can.  Measured: Dice 0.86 before,
    # 0.95 with MI, 0.42 with CC; the margins below leave room for rounding
    # differences between machines.
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    static, moving, slabels, mlabels = _synthetic_pair_3d()
    before = _dice(slabels, mlabels)
    results = {}
    for name, metric in (("mi", MIMetric(3, nbins=16, num_threads=2)),
                         ("cc", CCMetric(3))):
        sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=[20, 10])
        mapping = sdr.optimize(static, moving)
        warped = mapping.transform(mlabels, interpolation="nearest")
        results[name] = _dice(slabels, warped)
    assert results["mi"] > before + 0.04, (before, results)
    assert results["mi"] > results["cc"] + 0.1, (before, results)


def test_fastsyn_syn_with_mi_threads_identical():
    import fastsyn

    static, moving, _, _ = _synthetic_pair_3d()
    fields = []
    for n in (1, 2):
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, nbins=16), level_iters=[10, 5], num_threads=n)
        mapping = sdr.optimize(static, moving)
        fields.append((mapping.forward, mapping.backward))
    assert np.array_equal(fields[0][0], fields[1][0])
    assert np.array_equal(fields[0][1], fields[1][1])
    assert np.abs(fields[0][0]).max() > 0


def _register_fixture(pair, metric):
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration

    sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=[10, 10, 5])
    mapping = sdr.optimize(pair["static"], pair["moving"],
                           static_grid2world=pair["static_affine"],
                           moving_grid2world=pair["moving_affine"])
    labels = mapping.transform(pair["moving_labels"], interpolation="nearest")
    return _dice(pair["static_labels"], labels)


@pytest.mark.parametrize("name", ["pair3d_multimodal", "pair3d_inverted"])
def test_mi_syn_on_multimodal_fixtures(name):
    # Measured (levels 10/10/5): multimodal Dice 0.69 -> 0.79 with MI
    # (CC 0.32); inverted 0.78 -> 0.85 with MI (CC 0.26).  The margins
    # (0.03) are well below those gains, to stay robust across machines.
    from dipy.align.metrics import CCMetric

    pair = load_pair(name)
    before = _dice(pair["static_labels"], pair["moving_labels"])
    mask = pair["static_mask"].astype(bool)
    dice_mi = _register_fixture(pair, MIMetric(3, nbins=32, static_mask=mask))
    assert dice_mi > before + 0.03, (before, dice_mi)
    if name == "pair3d_inverted":
        dice_cc = _register_fixture(pair, CCMetric(3))
        assert dice_mi > dice_cc + 0.03, (before, dice_mi, dice_cc)


# --------------------------------------- MI's own SyN settings (issue 18)
def _count_inversions(monkeypatch):
    import fastsyn.imwarp as fs_imwarp

    counts = {"calls": 0, "sweeps": 0}
    real = fs_imwarp.invert_unchecked

    def counting(*args, **kwargs):
        result = real(*args, **kwargs)
        counts["calls"] += 1
        counts["sweeps"] += result.iterations
        return result

    monkeypatch.setattr(fs_imwarp, "invert_unchecked", counting)
    return counts


def test_fused_inversions_follow_dipys_rule_at_the_shipped_step_scaling():
    # The comparison below pins DIPY's step scaling; with MI's own
    # (step_percentile=99.5, larger deformations) the shipped fused sweeps
    # must stay close to DIPY's inversions (both re-inverting at every level).
    # Measured when written: 0.10 of the largest displacement (0.12 with
    # moving_share=0.5); without re-inversion 0.78.  With one share on every
    # level (coarse_moving_share=moving_share, as here) 0.247 at the defaults
    # of 2026-12-07.  The shipped moving image alone on the coarse levels
    # doubles its steps there, and one sweep lags them further (0.44); on
    # the 30 real tune pairs that costs no Dice: DIPY's inversions at every
    # level give 0.6845 there against the shipped 0.6910 (docs/mi-study.md,
    # "The moving image alone on the coarse levels").
    static, moving, _, _ = _synthetic_pair_3d()
    share = MIMetric.syn_defaults["moving_share"]
    fields = []
    for options in ({"reinvert": True, "inversion_sweeps": 0, "fused_inversion": False},
                    {"reinvert": True}):
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, nbins=16), level_iters=[6, 4], num_threads=2,
            coarse_moving_share=share, **options)
        assert sdr.step_percentile == MIMetric.syn_defaults["step_percentile"] < 100
        fields.append(sdr.optimize(static, moving).forward)
    dipy_rule, fused = fields
    assert np.abs(fused - dipy_rule).max() < 0.25 * np.abs(dipy_rule).max()


def test_fewer_inversions_are_deterministic_and_cheaper(monkeypatch):
    static, moving, _, _ = _synthetic_pair_3d()
    counts = _count_inversions(monkeypatch)
    runs = {}
    for options in ({"reinvert": True, "inversion_sweeps": 0},
                    {"reinvert": False, "inversion_sweeps": 1, "fused_inversion": False},
                    {"reinvert": True, "inversion_sweeps": 1, "fused_inversion": True}):
        for n in (1, 2):
            counts.update(calls=0, sweeps=0)
            # DIPY's step scaling and shares: the comparison is of the inversions alone
            sdr = fastsyn.SymmetricDiffeomorphicRegistration(
                MIMetric(3, nbins=16), level_iters=[6, 4], num_threads=n,
                step_percentile=100, coarse_moving_share=0.5, moving_share=0.5, **options)
            mapping = sdr.optimize(static, moving)
            key = "fused" if options.get("fused_inversion") else options["reinvert"]
            runs[(key, n)] = (mapping.forward, mapping.backward, dict(counts),
                              sdr.iterations_run)
    dipy_rule, cheap = runs[(True, 1)], runs[(False, 1)]
    for key in ((True, 2), (False, 2), ("fused", 2)):  # identical for every thread count
        assert np.array_equal(runs[key][0], runs[(key[0], 1)][0])
        assert np.array_equal(runs[key][1], runs[(key[0], 1)][1])
    iterations = cheap[3]
    # two inversions per iteration of one sweep each, plus the two
    # full inversions that end each of the two levels
    assert cheap[2]["calls"] == 2 * iterations + 2 * 2
    assert cheap[2]["sweeps"] < dipy_rule[2]["sweeps"] / 2
    assert dipy_rule[2]["calls"] == 4 * dipy_rule[3]
    # the forward fields stay close to DIPY's rule (displacements of a few voxels)
    assert np.abs(cheap[0] - dipy_rule[0]).max() < 0.5 * np.abs(dipy_rule[0]).max()
    # fused sweeps: DIPY's loop runs only for the full inversions ending each level
    fused = runs[("fused", 1)]
    assert fused[2]["calls"] == 4 * 2
    assert np.abs(fused[0] - dipy_rule[0]).max() < 0.5 * np.abs(dipy_rule[0]).max()


def test_syn_settings_follow_the_metric_unless_given():
    from fastsyn.imwarp import DIPY_SYN_SETTINGS, syn_setting

    cc = fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3))
    for name, value in DIPY_SYN_SETTINGS.items():
        got = getattr(cc, name)
        assert (got or 0) == value if name == "inversion_sweeps" else got == value
    mi = fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3))
    for name, value in MIMetric.syn_defaults.items():
        got = getattr(mi, name)
        assert (got or 0) == value if name == "inversion_sweeps" else got == value
    for name in DIPY_SYN_SETTINGS:  # what the harness records for a None
        assert syn_setting(MIMetric, name) == MIMetric.syn_defaults.get(
            name, DIPY_SYN_SETTINGS[name])
        assert syn_setting(fastsyn.CCMetric(3), name) == DIPY_SYN_SETTINGS[name]
    explicit = fastsyn.SymmetricDiffeomorphicRegistration(
        MIMetric(3), pyramid="dipy", reinvert=True, inversion_sweeps=0, step_length=0.25,
        total_sigma=0.0, repair_folds=False)
    assert (explicit.pyramid, explicit.reinvert, explicit.inversion_sweeps,
            explicit.step_length, explicit.total_sigma, explicit.repair_folds) == (
        "dipy", True, None, 0.25, 0.0, False)
    with pytest.raises(TypeError, match="repair_folds"):
        fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3), repair_folds="yes")
    with pytest.raises(ValueError, match="inversion_sweeps"):
        fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3), inversion_sweeps=-1)
    with pytest.raises(TypeError, match="reinvert"):
        fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3), reinvert="no")


def test_repair_folds_option_repairs_both_final_fields(monkeypatch):
    """``repair_folds=True`` ends with the repair of both final fields (bitwise
    the same on 1 and 2 threads); MI's defaults call it, CC's (DIPY's value)
    and an explicit False never do."""
    import fastsyn.imwarp as fs_imwarp

    static, moving, _, _ = _synthetic_pair_3d()
    calls = []
    real = fs_imwarp.repair_folds

    def recording(field, grid2world, **kwargs):
        calls.append(field.shape)
        return real(field, grid2world, **kwargs)

    monkeypatch.setattr(fs_imwarp, "repair_folds", recording)
    maps = []
    for n in (1, 2):
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, nbins=16), level_iters=[6, 4], num_threads=n, reinvert=False,
            total_sigma=0.3, repair_folds=True)
        maps.append(sdr.optimize(static, moving))
        assert set(sdr.folds_repaired) == {"forward", "backward"}
        assert all(left == 0 for _, left in sdr.folds_repaired.values())
    assert calls == [maps[0].forward.shape] * 4
    assert np.array_equal(maps[0].forward, maps[1].forward)
    assert np.array_equal(maps[0].backward, maps[1].backward)
    calls.clear()
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3, nbins=16), level_iters=[2])
    sdr.optimize(static, moving)
    assert len(calls) == 2 and set(sdr.folds_repaired) == {"forward", "backward"}
    calls.clear()
    for sdr in (fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3), level_iters=[2]),
                fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3, nbins=16), level_iters=[2],
                                                           repair_folds=False)):
        sdr.optimize(static, moving)
        assert calls == [] and sdr.folds_repaired == {}


def test_coarse_reinversion_reinverts_every_level_but_the_finest(monkeypatch):
    static, moving, _, _ = _synthetic_pair_3d()
    counts = _count_inversions(monkeypatch)
    runs = []
    for n in (1, 2):
        counts.update(calls=0, sweeps=0)
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, nbins=16), level_iters=[3, 2], num_threads=n, reinvert="coarse",
            inversion_sweeps=0)
        runs.append(sdr.optimize(static, moving))
        assert sdr.reinvert == "coarse" and sdr.iterations_run == 5
        assert counts["calls"] == 4 * 3 + 2 * 2   # four inversions, then two at the finest
    assert np.array_equal(runs[0].forward, runs[1].forward)
    assert np.array_equal(runs[0].backward, runs[1].backward)
    with pytest.raises(TypeError, match="'coarse'"):
        fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3), reinvert="fine")


def test_coarse_reinversion_survives_the_large_deformation_fixture():
    """Without any re-inversion, the small multimodal fixture's registration
    with the Parzen histogram on every level ends below its rigid start;
    re-inverting the coarse levels keeps it above.  (With partial-volume
    histograms on the coarse levels, MI's default, both stay above: 0.78
    without re-inversion, measured, against the rigid start's 0.69.)"""
    from pathlib import Path

    pair = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "pair3d_multimodal.npz")

    def dice_after(reinvert, partial_volume=False):
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, partial_volume=partial_volume), level_iters=[20, 10, 5],
            num_threads=2, reinvert=reinvert, total_sigma=0.3, repair_folds=True)
        mapping = sdr.optimize(pair["static"], pair["moving"],
                               static_grid2world=pair["static_affine"],
                               moving_grid2world=pair["moving_affine"])
        warped = mapping.transform(pair["moving_labels"].astype(np.float32),
                                   interpolation="nearest")
        return _label_dice(pair["static_labels"], warped)

    before = _label_dice(pair["static_labels"], pair["moving_labels"])
    assert dice_after(False) < before < dice_after("coarse")
    assert before < dice_after("coarse", partial_volume="coarse")


def _label_dice(fixed, warped):
    labels = [v for v in np.unique(fixed) if v != 0]
    return np.mean([2 * np.sum((fixed == v) & (warped == v))
                    / (np.sum(fixed == v) + np.sum(warped == v)) for v in labels])


# ------------------------------------------------- zero background (auto_masks)
def _head_and_brain(shape=(28, 30, 26), seed=0):
    """A 'head' (signal inside a large ellipsoid, a bright rim for the scalp)
    and a 'brain' (the inner ellipsoid only, exactly zero outside)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape) - 1) / 2
    radius = np.sqrt(sum(((g - c) / (s / 2)) ** 2 for g, c, s in zip(grid, centre, shape)))
    tissue = 0.5 + 0.3 * np.sin(grid[0] / 3) * np.cos(grid[1] / 4)
    head = np.where(radius < 0.95, np.where(radius > 0.75, 1.0, tissue), 0.02)
    head = head + 0.01 * rng.random(shape)
    brain = np.where(radius < 0.65, 1.0 - tissue, 0.0)
    return head, brain


def test_zero_background_sides_finds_a_stripped_image_facing_a_head():
    from fastsyn.metrics.mi import zero_background_sides

    head, brain = _head_and_brain()
    assert zero_background_sides(head, brain) == ("moving",)
    assert zero_background_sides(brain, head) == ("static",)
    # Two stripped images, or two heads: nothing to mask.
    assert zero_background_sides(brain, np.roll(brain, 1, axis=0)) == ()
    assert zero_background_sides(head, np.roll(head, 1, axis=1)) == ()
    # Only where the moving image covers the static grid are they compared.
    covered = np.zeros(head.shape, bool)
    covered[:, :, :2] = True       # a slab outside both the head and the brain
    assert zero_background_sides(head, brain, covered) == ()
    covered[:, :, 4:22] = True     # and the middle: the head's rim faces zeros
    assert zero_background_sides(head, brain, covered) == ("moving",)


def test_background_only_mask_tells_a_brain_mask_on_a_stripped_image_from_one_on_a_head():
    from fastsyn.metrics.mi import background_only_mask

    head, brain = _head_and_brain()
    inside = brain != 0
    assert background_only_mask(brain, inside)
    assert background_only_mask(brain, np.ones(brain.shape, bool))
    # A mask one voxel short of the image (a nearest-neighbour mask beside a
    # linearly resampled image) still leaves out only background.
    assert background_only_mask(brain, ndimage.binary_erosion(inside))
    # Two voxels short, or half the brain, or a brain mask on a head: signal
    # is left out.
    assert not background_only_mask(brain, ndimage.binary_erosion(inside, iterations=2))
    assert not background_only_mask(brain, inside & (np.indices(brain.shape)[0] < 14))
    assert not background_only_mask(head, inside)
    # A mask with a lesion cut out of it is kept, though it leaves out less
    # than 1 % of the signal.
    big_head, big_brain = _head_and_brain(shape=(48, 50, 46))
    grid = np.indices(big_brain.shape)
    lesion = sum((g - c) ** 2 for g, c in zip(grid, (24, 25, 23))) <= 9
    cut = (big_brain != 0) & ~lesion
    assert np.count_nonzero(lesion) < 0.01 * np.count_nonzero(big_brain)
    assert background_only_mask(big_brain, big_brain != 0)
    assert not background_only_mask(big_brain, cut)
    # A mask on another grid, or an image without signal, is never set aside.
    assert not background_only_mask(brain, inside[::2, ::2, ::2])
    assert not background_only_mask(np.zeros(brain.shape), inside)


def test_brain_mask_on_head_tells_it_from_a_lesion_cut_out_or_a_small_region():
    from fastsyn.metrics.mi import brain_mask_on_head, mask_outline

    head, brain = _head_and_brain(shape=(48, 50, 46))
    inside = brain != 0
    assert brain_mask_on_head(head, inside)
    # A skull-stripped image and its own mask, or a mask a voxel short of it.
    assert not brain_mask_on_head(brain, inside)
    assert not brain_mask_on_head(brain, ndimage.binary_erosion(inside))
    # A lesion cut out of the brain is a hole that the outline fills, even
    # a large one: the mask leaves out 14 % of the signal, its outline none.
    grid = np.indices(brain.shape)
    lesion = sum((g - c) ** 2 for g, c in zip(grid, (24, 25, 23))) <= 64
    cut = inside & ~lesion
    assert np.count_nonzero(lesion & inside) > 0.1 * np.count_nonzero(inside)
    assert np.array_equal(mask_outline(cut), inside)
    assert not brain_mask_on_head(brain, cut)
    # A notch at the brain's edge is left out by the outline too, but a
    # small one only restricts MI; half the brain is stripped.
    notch = inside & ~(sum((g - c) ** 2 for g, c in zip(grid, (24, 25, 8))) <= 16)
    assert not brain_mask_on_head(brain, notch)
    assert brain_mask_on_head(brain, inside & (grid[0] < 24))
    # A small region of interest on a head holds too little to strip by.
    roi = sum((g - c) ** 2 for g, c in zip(grid, (24, 25, 23))) <= 16
    assert not brain_mask_on_head(head, roi)
    # A mask on another grid, an empty mask's outline, an image without signal.
    assert not brain_mask_on_head(head, inside[::2, ::2, ::2])
    assert not mask_outline(np.zeros(brain.shape, bool)).any()
    assert not brain_mask_on_head(np.zeros(brain.shape), inside)


def test_auto_masks_register_a_head_stripped_by_its_brain_mask():
    """A whole head with its brain mask registers as the head stripped by
    the mask, without masks; auto_masks=False restricts MI to the masks."""
    head, brain = _head_and_brain()
    inside = brain != 0
    other_head = np.roll(head, 1, axis=0)
    other_inside = np.roll(inside, 1, axis=0)
    stripped = fastsyn.SymmetricDiffeomorphicRegistration(
        MIMetric(3, nbins=16), level_iters=[4, 3], num_threads=2).optimize(
        np.where(other_inside, other_head, 0), np.where(inside, head, 0))
    for auto in (True, False):
        metric = MIMetric(3, nbins=16, static_mask=other_inside, moving_mask=inside,
                          auto_masks=auto)
        result = fastsyn.SymmetricDiffeomorphicRegistration(
            metric, level_iters=[4, 3], num_threads=2).optimize(other_head, head)
        assert metric.images_stripped == (("static", "moving") if auto else ())
        # Stripped, the masks leave out only background: set aside.
        assert metric.masks_set_aside == (("static", "moving") if auto else ())
        # The masks are back after the run.
        assert metric.static_mask is not None and metric.moving_mask is not None
        assert np.array_equal(result.forward, stripped.forward) == auto
    # A head with its mask against a head without one: stripped, its zeros
    # face the other's scalp, so its mask stays and restricts MI.
    metric = MIMetric(3, nbins=16, moving_mask=inside)
    fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[2, 2],
                                               num_threads=2).optimize(other_head, head)
    assert metric.images_stripped == ("moving",) and metric.masks_set_aside == ()
    # A one-voxel mask is no brain to strip by: it restricts MI to a constant.
    one = np.zeros(head.shape, bool)
    one[14, 15, 13] = True
    with pytest.raises(ValueError, match="constant"):
        fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, nbins=16, static_mask=one, moving_mask=one), level_iters=[2, 2],
            num_threads=2).optimize(other_head, head)


def test_auto_masks_compare_the_images_where_dipy_would_resample_them(monkeypatch):
    """The moving image and its coverage on the static grid, under a
    prealignment and grids of their own, are DIPY's nearest-neighbour
    resampling (made on threads)."""
    from dipy.align.imaffine import AffineMap

    head, brain = _head_and_brain()
    static_g2w = np.diag([2.0, 2.0, 2.0, 1.0])
    static_g2w[:3, 3] = (-20, -25, -18)
    moving_g2w = np.diag([1.9, 2.1, 2.0, 1.0])
    angle = 0.1
    prealign = np.eye(4)
    prealign[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    prealign[:3, 3] = (1.5, -2.0, 3.0)
    seen = {}
    original = MIMetric.masks_for_zero_background

    def spy(self, static, moving, moving_on_static, covered=None):
        seen.update(moving=moving, moving_on_static=moving_on_static, covered=covered)
        return original(self, static, moving, moving_on_static, covered)

    monkeypatch.setattr(MIMetric, "masks_for_zero_background", spy)
    fastsyn.SymmetricDiffeomorphicRegistration(MIMetric(3, nbins=16), level_iters=[1],
                                               num_threads=2).optimize(
        head, brain, static_grid2world=static_g2w, moving_grid2world=moving_g2w,
        prealign=prealign)
    dipy_map = AffineMap(prealign, domain_grid_shape=head.shape, domain_grid2world=static_g2w,
                         codomain_grid_shape=brain.shape, codomain_grid2world=moving_g2w)
    assert np.array_equal(seen["moving_on_static"],
                          dipy_map.transform(seen["moving"], interpolation="nearest"))
    expected = dipy_map.transform(np.ones(brain.shape, np.float32), interpolation="nearest") != 0
    assert not expected.all() and np.array_equal(seen["covered"], expected)


def test_a_stripped_moving_image_facing_a_head_moves_with_it_on_the_coarse_levels():
    head, brain = _head_and_brain()
    share = MIMetric.syn_defaults["moving_share"]

    def run(static, moving, **kwargs):
        reg = fastsyn.SymmetricDiffeomorphicRegistration(
            MIMetric(3, nbins=16), level_iters=[4, 3], num_threads=2, **kwargs)
        return reg, reg.optimize(static, moving)

    # the stripped image moving towards the head: one share on every level,
    # exactly as if coarse_moving_share were moving_share's value
    reg, default = run(head, brain)
    assert reg.metric.auto_masked == ("moving",) and reg.coarse_moving_share_used is None
    assert reg.coarse_moving_share == MIMetric.syn_defaults["coarse_moving_share"]
    _, one_share = run(head, brain, coarse_moving_share=share)
    assert np.array_equal(default.forward, one_share.forward)
    # a coarse share that is given is kept
    reg, alone = run(head, brain, coarse_moving_share=1.0)
    assert reg.coarse_moving_share_used == 1.0
    assert not np.array_equal(default.forward, alone.forward)
    # the head moving towards the stripped image keeps the preference
    reg, _ = run(brain, head)
    assert reg.metric.auto_masked == ("static",) and reg.coarse_moving_share_used == 1.0


def test_auto_masks_mask_a_stripped_image_for_one_run():
    head, brain = _head_and_brain()
    runs = {}
    for auto in (True, False):
        metric = MIMetric(3, nbins=16, auto_masks=auto)
        reg = fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[4, 3],
                                                         num_threads=2)
        runs[auto] = reg.optimize(head, brain)
        assert metric.auto_masked == (("moving",) if auto else ())
        # The run's mask does not outlive it.
        assert metric.moving_mask is None and metric.static_mask is None
    assert not np.array_equal(runs[True].forward, runs[False].forward)
    # A given mask that leaves out some of the image's signal is kept:
    # nothing is chosen for that side.
    half = (brain != 0) & (np.indices(brain.shape)[0] < brain.shape[0] // 2)
    metric = MIMetric(3, nbins=16, moving_mask=half)
    fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[2, 2],
                                               num_threads=2).optimize(head, brain)
    assert metric.auto_masked == () and metric.masks_set_aside == ()
    assert metric.moving_mask is not None
    # One that leaves out only the zero background (here: none at all) stays
    # where the image's zeros face the head's signal ...
    metric = MIMetric(3, nbins=16, moving_mask=np.ones(brain.shape, bool))
    fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[2, 2],
                                               num_threads=2).optimize(head, brain)
    assert metric.masks_set_aside == () and metric.auto_masked == ()
    # ... and is set aside between two stripped images, so that brain masks
    # there give what no masks give (unless auto_masks=False).
    other = np.roll(brain, 1, axis=0)
    plain = fastsyn.SymmetricDiffeomorphicRegistration(
        MIMetric(3, nbins=16), level_iters=[4, 3], num_threads=2).optimize(other, brain)
    for auto in (True, False):
        metric = MIMetric(3, nbins=16, static_mask=other != 0, moving_mask=brain != 0,
                          auto_masks=auto)
        result = fastsyn.SymmetricDiffeomorphicRegistration(
            metric, level_iters=[4, 3], num_threads=2).optimize(other, brain)
        assert metric.masks_set_aside == (("static", "moving") if auto else ())
        assert metric.auto_masked == ()
        assert metric.moving_mask is not None and metric.static_mask is not None
        assert np.array_equal(result.forward, plain.forward) == auto
    with pytest.raises(TypeError, match="auto_masks"):
        MIMetric(3, auto_masks="yes")
