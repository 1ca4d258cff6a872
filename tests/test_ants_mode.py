"""ANTs-faithful SyN: ITK's discrete Gaussian, ANTs' pyramid and convergence
test, and the options that switch them on (directly and through the patch)."""

import numpy as np
import pytest
from conftest import load_pair, smooth_field
from scipy import ndimage
from scipy.special import iv

import fastsyn
from fastsyn import fields
from fastsyn._kernels import smooth as k_smooth
from fastsyn.imwarp import ants_convergence_value
from fastsyn.pyramid import AntsScaleSpace, ants_shrink_factors


# --------------------------------------------------------- discrete Gaussian
@pytest.mark.parametrize("variance", [0.3, 1.0, 3.0, 7.5])
def test_discrete_kernel_is_its_definition(variance):
    kernel = fields.discrete_gaussian_kernel1d(variance)
    radius = kernel.size // 2
    n = np.arange(-radius, radius + 1)
    lindeberg = np.exp(-variance) * iv(np.abs(n), variance)
    # Normalised e^-t I_n(t), up to the first order holding 1 - 0.001 of the mass.
    np.testing.assert_allclose(kernel, lindeberg / lindeberg.sum(), rtol=1e-12, atol=1e-15)
    assert lindeberg.sum() >= 1 - 0.001
    assert lindeberg[1:-1].sum() < 1 - 0.001 or radius == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)


def test_discrete_kernel_width_cap():
    assert fields.discrete_gaussian_kernel1d(50.0, max_width=5).size == 2 * 6 - 1
    assert np.array_equal(fields.discrete_gaussian_kernel1d(0.0), [0.0, 1.0, 0.0])


def test_discrete_image_smoothing_matches_itk():
    """ITK's DiscreteGaussianImageFilter (through antspyx) within float32 rounding."""
    ants = pytest.importorskip("ants")
    rng = np.random.default_rng(0)
    image = rng.random((18, 19, 20)).astype(np.float32)
    for sigma in (1.0, 2.0):
        itk = ants.smooth_image(ants.from_numpy(image), sigma,
                                sigma_in_physical_coordinates=False).numpy()
        ours = fields.discrete_smooth_image_unchecked(image.copy(), sigma**2, 1)
        np.testing.assert_allclose(ours, itk, rtol=0, atol=4e-7)


@pytest.mark.parametrize("shape", [(17, 19), (11, 12, 13)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_field_smoothing_definition_and_threads(shape, dtype):
    field = smooth_field(shape, dtype, seed=3)
    runs = [fields.discrete_gaussian_smooth_field(field, 3.0, num_threads=t) for t in (1, 2, 3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    expected = field.astype(np.float64)
    for axis in range(len(shape)):
        kernel = fields.discrete_gaussian_kernel1d(3.0, max_width=shape[axis])
        expected = ndimage.convolve1d(expected, kernel, axis=axis, mode="nearest")
    fields.zero_outer_boundary(expected)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(runs[0], expected, rtol=0, atol=tol * np.abs(field).max())
    for axis in range(len(shape)):
        assert not np.take(runs[0], [0, -1], axis=axis).any()


def test_field_smoothing_blend_below_half():
    field = smooth_field((12, 13, 14), np.float64, seed=4)
    variance = 0.2
    smoothed = field.copy()
    for axis in range(3):
        kernel = fields.discrete_gaussian_kernel1d(variance, max_width=field.shape[axis])
        smoothed = ndimage.convolve1d(smoothed, kernel, axis=axis, mode="nearest")
    expected = (1 - variance / 0.5) * smoothed + (variance / 0.5) * field
    fields.zero_outer_boundary(expected)
    np.testing.assert_allclose(fields.discrete_gaussian_smooth_field(field, variance),
                               expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9,), (9, 11, 2), (12, 13, 14, 3), (40, 3, 5, 3)])
def test_fused_blend_is_the_filter_then_numpys_blend(dtype, shape):
    # The kernel filters through a scratch and blends in its last pass: the
    # values must be those of the filter on a copy and NumPy's blend, the
    # products rounded to the data's type, for every thread count.
    rng = np.random.default_rng(5)
    data = rng.standard_normal(shape).astype(dtype)
    spatial, channels = (shape, 1) if len(shape) == 1 else (shape[:-1], shape[-1])
    filtered = data.copy()
    fields._discrete_filter(filtered, spatial, channels, 0.3, 0.001, None, 1)
    expected = filtered * dtype(0.4)
    expected += dtype(0.6) * data
    kernels = fields._axis_kernels(spatial, 0.3, 0.001, None)
    for threads in (1, 2, 3):
        out = data.copy()
        scratch = np.full_like(data, np.nan)
        k_smooth.gaussian_blend_(out.reshape(-1), scratch.reshape(-1), spatial, channels,
                                 kernels, 0.4, threads)
        assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="differ in length"):
        k_smooth.gaussian_blend_(data.reshape(-1), scratch.reshape(-1)[:-1], spatial,
                                 channels, kernels, 0.4, 1)
    with pytest.raises(ValueError, match="one kernel per spatial axis"):
        k_smooth.gaussian_blend_(data.reshape(-1), scratch.reshape(-1), spatial, channels,
                                 kernels + kernels, 0.4, 1)


def test_blend_with_a_scratch_buffer_is_the_blend_without_one():
    # SyN hands its spent step buffer over as the scratch.
    field = smooth_field((11, 12, 13), np.float32, seed=6)
    reference = fields.discrete_smooth_unchecked(field.copy(), 0.3, 1)
    for threads in (1, 2, 3):
        scratch = np.full_like(field, np.nan)
        out = fields.discrete_smooth_unchecked(field.copy(), 0.3, threads, scratch=scratch)
        assert np.array_equal(out, reference)


@pytest.mark.parametrize("bad, error", [(-1.0, ValueError), (np.nan, ValueError),
                                        (np.inf, ValueError), (True, TypeError),
                                        ("3", TypeError)])
def test_bad_variances_are_named(bad, error):
    field = np.zeros((6, 6, 6, 3))
    with pytest.raises(error, match="variance"):
        fields.discrete_gaussian_smooth_field(field, bad)
    with pytest.raises(error, match="flow_sigma"):
        fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3), flow_sigma=bad)
    with pytest.raises(error, match="total_sigma"):
        fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3), total_sigma=bad)
    with pytest.raises(error, match="flow_sigma"):
        fastsyn.patch_dipy(flow_sigma=bad)


@pytest.mark.parametrize("name, value", [("pyramid", "itk"), ("convergence", "ANTs"),
                                         ("pyramid", "")])
def test_bad_modes_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3), **{name: value})


def test_pyramid_none_is_the_metrics_choice_but_not_a_patch_mode():
    # SymmetricDiffeomorphicRegistration: None takes the metric's preference
    # (DIPY's scale space for CC); patch_dipy has no metric to ask.
    assert fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3)).pyramid == "dipy"
    with pytest.raises(ValueError, match="pyramid"):
        fastsyn.patch_dipy(pyramid=None)


# ------------------------------------------------------------------- pyramid
@pytest.mark.parametrize("spacing, nominal, expected", [
    ((1.0, 1.0, 1.0), 4, (4, 4, 4)),
    ((1.0, 1.0, 2.5), 4, (4, 4, 2)),
    ((0.9, 1.0, 3.0), 2, (2, 2, 1)),
    ((2.0, 1.0), 8, (4, 8)),
    ((1.2, 1.2, 1.2), 1, (1, 1, 1)),
])
def test_ants_shrink_factors(spacing, nominal, expected):
    assert tuple(ants_shrink_factors(np.array(spacing), nominal)) == expected


def test_ants_scale_space_schedule():
    rng = np.random.default_rng(1)
    image = (rng.random((20, 23, 9)) * 50 + 10).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    ss = AntsScaleSpace(image, 3, image_grid2world=affine, input_spacing=np.array([1.0, 1.0, 2.5]))
    assert [tuple(ss.get_domain_shape(level)) for level in range(3)] == [
        (20, 23, 9), (10, 11, 9), (5, 5, 4)]
    np.testing.assert_allclose(ss.get_spacing(2), [4.0, 4.0, 5.0])
    np.testing.assert_allclose(ss.get_affine(2), affine @ np.diag([4.0, 4.0, 2.0, 1.0]))
    # One normalisation, before the pyramid: coarser levels are not rescaled.
    assert ss.get_image(0).min() == 0 and ss.get_image(0).max() == 1
    assert ss.get_image(2).max() < 1 and ss.get_image(2).min() > 0
    np.testing.assert_allclose(ss.get_expand_factors(2, 1), [0.5, 0.5, 0.5])
    lo, hi = float(image.min()), float(image.max())
    normalised = (image.astype(np.float64) - lo) / (hi - lo)
    expected = fields.discrete_smooth_image_unchecked(normalised.astype(np.float32), 1.0, 1)
    np.testing.assert_array_equal(ss.get_image(1), expected)


# --------------------------------------------------------------- convergence
def test_ants_convergence_value():
    assert ants_convergence_value([1.0] * 7) == np.inf
    assert ants_convergence_value([-2.0] * 8) == pytest.approx(0.0, abs=1e-15)
    # Window 2: the control points are the two normalised values themselves.
    assert ants_convergence_value([3.0, 1.0], window=2) == pytest.approx(0.5)
    falling = list(np.linspace(-1.0, -2.0, 12))
    assert ants_convergence_value(falling) > 0
    assert ants_convergence_value(falling[::-1]) < 0


# ------------------------------------------------------------------ SyN runs
ANTS_OPTIONS = dict(pyramid="ants", flow_sigma=3.0, total_sigma=0.5, convergence="ants",
                    step_length=0.2)


@pytest.fixture(scope="module")
def pair():
    return load_pair("pair3d")


def _run(pair, threads, **options):
    metric = fastsyn.CCMetric(3, radius=2)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[6, 4, 2],
                                                     num_threads=threads, **options)
    mapping = sdr.optimize(pair["static"], pair["moving"],
                           static_grid2world=pair["static_affine"],
                           moving_grid2world=pair["moving_affine"])
    return mapping, metric


def test_ants_mode_is_bitwise_across_threads(pair):
    ref, metric = _run(pair, 1, **ANTS_OPTIONS)
    assert metric.sigma_diff == 2.0  # switched off only while the optimizer smooths
    for threads in (2, 3):
        other, _ = _run(pair, threads, **ANTS_OPTIONS)
        assert np.array_equal(ref.forward, other.forward)
        assert np.array_equal(ref.backward, other.backward)


def test_ants_mode_differs_from_dipy_and_registers(pair):
    dipy_style, _ = _run(pair, 2)
    ants_style, _ = _run(pair, 2, **ANTS_OPTIONS)
    assert not np.allclose(dipy_style.forward, ants_style.forward)
    labels = pair["moving_labels"]
    fixed = pair["static_labels"]

    def dice(warped):
        values = [v for v in np.unique(fixed) if v]
        return np.mean([2 * np.sum((fixed == v) & (warped == v))
                        / (np.sum(fixed == v) + np.sum(warped == v)) for v in values])

    before = dice(labels)
    after = dice(ants_style.transform(labels, interpolation="nearest"))
    assert after > before + 0.05, (before, after)


def test_patch_carries_the_ants_options(pair):
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration as DipySDR
    from dipy.align.metrics import CCMetric as DipyCC

    ours, _ = _run(pair, 2, **ANTS_OPTIONS)
    options = {k: v for k, v in ANTS_OPTIONS.items() if k != "step_length"}
    with fastsyn.patch_dipy(num_threads=2, **options):
        sdr = DipySDR(DipyCC(3, radius=2), level_iters=[6, 4, 2], step_length=0.2,
                      opt_tol=1e-7)
        patched = sdr.optimize(pair["static"], pair["moving"],
                               static_grid2world=pair["static_affine"],
                               moving_grid2world=pair["moving_affine"])
    assert not hasattr(DipySDR, "flow_sigma")
    np.testing.assert_array_equal(patched.forward, ours.forward)


def test_ants_like_preset():
    sdr = fastsyn.ants_like(fastsyn.MIMetric(3), num_threads=1)
    assert (sdr.pyramid, sdr.flow_sigma, sdr.total_sigma, sdr.convergence) == (
        "ants", 3.0, 0.0, "ants")
    assert sdr.step_length == 0.2 and sdr.opt_tol == 1e-7 and sdr.level_iters == [40, 20, 0]
    # ANTs scales each update to its largest norm and moves both images
    # alike, whatever MI's own defaults prefer
    assert fastsyn.MIMetric.syn_defaults["step_percentile"] < 100
    assert fastsyn.MIMetric.syn_defaults["moving_share"] != 0.5
    assert (sdr.step_percentile, sdr.moving_share, sdr.coarse_moving_share) == (100.0, 0.5, 0.5)
    assert fastsyn.ants_like(fastsyn.CCMetric(3), flow_sigma=1.0).flow_sigma == 1.0
    assert fastsyn.ants_like(fastsyn.MIMetric(3), moving_share=0.7).moving_share == 0.7


def test_flow_sigma_with_a_metric_without_sigma_diff(pair):
    """DIPY's SSD metric has no sigma_diff: the ANTs update smoothing still runs."""
    from dipy.align.metrics import SSDMetric

    sdr = fastsyn.SymmetricDiffeomorphicRegistration(SSDMetric(3), level_iters=[3, 2, 1],
                                                     flow_sigma=3.0, num_threads=2)
    mapping = sdr.optimize(pair["static"], pair["moving"],
                           static_grid2world=pair["static_affine"],
                           moving_grid2world=pair["moving_affine"])
    assert np.isfinite(mapping.forward).all() and np.abs(mapping.forward).max() > 0
