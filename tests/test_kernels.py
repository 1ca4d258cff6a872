"""Every kernel: bitwise equal across thread counts, and equal to its DIPY /
NumPy / SciPy twin within a stated floating-point tolerance."""

import dipy.align.vector_fields as vfu
import numpy as np
import pytest
from conftest import smooth_field, smooth_image
from dipy.align.metrics import CCMetric as DipyCCMetric
from scipy import ndimage

import fastsyn
from fastsyn import fields

# Shapes that do not divide evenly by 2 or 3 threads.
SHAPES = [(23, 29, 19), (41, 37)]
DTYPES = [np.float32, np.float64]
THREADS = (1, 2, 3)
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def _affines(dim):
    index = np.eye(dim + 1)
    index[:dim, :dim] *= 0.95
    index[:dim, dim] = 0.7
    disp = np.eye(dim + 1)
    disp[:dim, :dim] = 1.1
    disp[:dim, :dim] += np.diag(np.full(dim, -0.1))
    return index, disp


def _assert_all_equal(results):
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first, other):
            assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_compose(shape, dtype):
    dim = len(shape)
    d1 = smooth_field(shape, dtype, seed=1, amplitude=3)
    d2 = smooth_field(shape, dtype, seed=2, amplitude=3)
    index, disp = _affines(dim)
    ours = getattr(fields, f"compose_vector_fields_{dim}d")
    runs = [ours(d1, d2, index, disp, 0.7, num_threads=t) for t in THREADS]
    _assert_all_equal(runs)
    comp, stats = runs[0]
    ref_comp, ref_stats = getattr(vfu, f"compose_vector_fields_{dim}d")(
        d1, d2, index, disp, 0.7, None)
    # DIPY rounds the interpolated vector to the field dtype before scaling
    # and adding d1; fastsyn rounds once.  That is at most ~2 ulp of the
    # result: 4 ulp of the largest vector leaves room.
    atol = 4 * EPS[dtype] * np.abs(ref_comp).max()
    np.testing.assert_allclose(comp, ref_comp, rtol=0, atol=atol)
    # Statistics are accumulated in double in both; rounding of the inputs
    # dominates: 1e-6 relative (float32), 1e-12 (float64).
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-6 if dtype is np.float32 else 1e-12)


def test_compose_in_place_matches_out_of_place():
    d1 = smooth_field((20, 21, 22), np.float32, seed=3)
    d2 = smooth_field((20, 21, 22), np.float32, seed=4)
    expected, _ = fields.compose_vector_fields_3d(d1, d2, None, None, 0.5)
    in_place = d1.copy()
    fields.compose_vector_fields_3d(in_place, d2, None, None, 0.5, comp=in_place)
    assert np.array_equal(in_place, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_invert(shape, dtype):
    dim = len(shape)
    d = smooth_field(shape, dtype, seed=5, amplitude=2.5)
    w2g = np.eye(dim + 1)
    w2g[:dim, :dim] *= 0.8
    spacing = np.full(dim, 1.25)
    runs = [fields.invert_displacement_field(d, w2g, spacing, 20, 1e-3, num_threads=t)
            for t in THREADS]
    assert len({(r.iterations, r.error) for r in runs}) == 1
    _assert_all_equal([(r.field,) for r in runs])
    ref = np.asarray(getattr(vfu, f"invert_vector_field_fixed_point_{dim}d")(
        d, w2g, spacing, 20, 1e-3, None))
    # Same iterations, same step rule; per iteration the composition differs
    # by ~2 ulp (see test_compose), accumulated over <= 20 iterations.
    atol = 40 * EPS[dtype] * np.abs(ref).max()
    np.testing.assert_allclose(runs[0].field, ref, rtol=0, atol=atol)
    # And it is an inverse: p(x) + d(x + p(x)) ~ 0, checked with DIPY's own
    # composition (zero outside the grid, so the border does not count).
    residual, _ = getattr(vfu, f"compose_vector_fields_{dim}d")(
        runs[0].field, d, None, w2g, 1.0, None)
    assert np.abs(np.asarray(residual)).mean() < 0.01 * np.abs(d).mean()


def test_invert_warm_start_and_dipy_wrapper():
    d = smooth_field((20, 24, 22), np.float32, seed=6, amplitude=2)
    w2g, sp = np.eye(4), np.ones(3)
    cold = fields.invert_displacement_field(d, w2g, sp, 20, 1e-3)
    warm = fields.invert_displacement_field(d, w2g, sp, 20, 1e-3, start=cold.field)
    assert warm.iterations < cold.iterations
    ref = np.asarray(vfu.invert_vector_field_fixed_point_3d(d, w2g, sp, 20, 1e-3,
                                                             cold.field))
    ours = fields.invert_vector_field_fixed_point_3d(d, w2g, sp, 20, 1e-3, cold.field)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=40 * EPS[np.float32] * 2.5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_refine_sweeps_converge_to_the_inverse(shape, dtype):
    """refine_inverse_unchecked (one fused sweep: residual and clipped update in
    one pass, clipping length from the previous sweep) converges to the same
    inverse as DIPY's loop, identically on every thread count."""
    dim = len(shape)
    d = np.ascontiguousarray(smooth_field(shape, dtype, seed=5, amplitude=2.5))
    w2g = np.eye(dim + 1)
    w2g[:dim, :dim] *= 0.8
    spacing = np.full(dim, 1.25)
    ref = fields.invert_displacement_field(d, w2g, spacing, 50, 1e-5).field
    runs = []
    for t in THREADS:
        p = np.zeros_like(d)
        maxlen, residuals = np.inf, []
        for _ in range(30):
            largest = fields.refine_inverse_unchecked(d, w2g, spacing, p, maxlen, t,
                                                      epsilon=0.75)
            residuals.append(largest)
            maxlen = 0.75 * largest
        runs.append((p, residuals))
    for p, residuals in runs[1:]:
        assert np.array_equal(p, runs[0][0]) and residuals == runs[0][1]
    p, residuals = runs[0]
    assert residuals[-1] < 1e-4 * residuals[0]  # measured 3e-7 (3D), 4e-8 (2D)
    # where a composition leaves the grid neither loop updates, so the border
    # converges differently; the inverse itself agrees
    assert np.abs(p - ref).mean() < 0.01 * np.abs(ref).mean()  # measured 0.004, 0.0006


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_linear_and_nearest(shape, dtype):
    dim = len(shape)
    d = smooth_field(shape, dtype, seed=7, amplitude=3)
    image = smooth_image(shape, dtype, seed=8)
    labels = (image > np.percentile(image, 40)).astype(np.int32) + (image > 60)
    index, disp = _affines(dim)
    out_shape = np.array(shape, dtype=np.int32)
    ours = getattr(fields, f"warp_{dim}d")
    ours_nn = getattr(fields, f"warp_{dim}d_nn")
    runs = [(ours(image, d, index, index, disp, out_shape, num_threads=t),
             ours_nn(labels, d, index, index, disp, out_shape, num_threads=t))
            for t in THREADS]
    _assert_all_equal(runs)
    warped, warped_nn = runs[0]
    ref = np.asarray(getattr(vfu, f"warp_{dim}d")(image, d, index, index, disp, out_shape))
    # DIPY accumulates the 2^dim corners in the image dtype (one rounding per
    # corner) and the sampled displacement in the field dtype; fastsyn
    # accumulates in double.  16 ulp of the image range covers both.
    atol = 16 * EPS[dtype] * np.abs(image).max()
    np.testing.assert_allclose(warped, ref, rtol=0, atol=atol)
    ref_nn = np.asarray(getattr(vfu, f"warp_{dim}d_nn")(labels, d, index, index, disp,
                                                        out_shape))
    # Nearest neighbour can only differ where a sample lands within rounding
    # of a half-voxel tie (the sampled displacement is not rounded to the
    # field dtype here): allow 1 in 10^4 voxels.
    assert np.mean(warped_nn != ref_nn) <= 1e-4
    assert warped_nn.dtype == labels.dtype


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient(shape, dtype):
    dim = len(shape)
    image = smooth_image(shape, dtype, seed=9)
    spacing = np.linspace(0.8, 1.7, dim)
    runs = [(fields.image_gradient(image, spacing, num_threads=t),) for t in THREADS]
    _assert_all_equal(runs)
    ref = np.stack([g / s for g, s in zip(np.gradient(image), spacing)], -1)
    # numpy divides by the spacing in double and rounds once: 1 ulp.
    np.testing.assert_allclose(runs[0][0], ref, rtol=2 * EPS[dtype], atol=0)


@pytest.mark.parametrize("shape", SHAPES + [(5, 6, 40)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_gaussian_smoothing(shape, dtype, sigma):
    dim = len(shape)
    field = smooth_field(shape, dtype, seed=10)
    runs = [(fields.gaussian_smooth(field, sigma, vector=True, num_threads=t),)
            for t in THREADS]
    _assert_all_equal(runs)
    ref = np.stack([ndimage.gaussian_filter(field[..., c], sigma) for c in range(dim)], -1)
    # Both accumulate in double and round per axis pass; the summation order
    # of the taps differs: a few ulp of the field's range.
    np.testing.assert_allclose(runs[0][0], ref, rtol=0,
                               atol=8 * EPS[dtype] * np.abs(field).max())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_line_filter_symmetric_and_general_kernels(symmetric, dtype):
    """The kernel's two paths: mirrored taps added first (a symmetric kernel,
    every Gaussian) and the plain sum (any other kernel), against scipy's
    correlation with the same reflected borders, along every axis in turn."""
    from fastsyn._kernels import smooth as k_smooth

    field = smooth_field((9, 11, 13), dtype, seed=14)
    w = np.array([0.1, 0.2, 0.4, 0.2, 0.1]) if symmetric else np.array(
        [0.05, 0.15, 0.45, 0.25, 0.1])
    runs = []
    for t in THREADS:
        out = field.copy()
        k_smooth.gaussian_filter_(out.reshape(-1), out.shape[:-1], 3, w, t)
        runs.append((out,))
    _assert_all_equal(runs)
    ref = field.astype(np.float64)
    for axis in range(3):
        ref = ndimage.correlate1d(ref, w, axis=axis, mode="reflect")
    np.testing.assert_allclose(runs[0][0], ref, rtol=0,
                               atol=8 * EPS[dtype] * np.abs(field).max())


@pytest.mark.parametrize("shape", SHAPES)
def test_cc_metric_steps(shape):
    dim = len(shape)
    static = smooth_image(shape, np.float32, seed=11)
    moving = smooth_image(shape, np.float32, seed=12)
    static[:3] = 0  # flat windows must give exactly zero, as in DIPY
    spacing = np.linspace(1.0, 2.0, dim)
    grid = np.eye(dim + 1)

    def run(metric):
        metric.set_static_image(static, grid, spacing, np.eye(dim + 1))
        metric.set_moving_image(moving, grid, spacing, np.eye(dim + 1))
        metric.initialize_iteration()
        fw = metric.compute_forward()
        energy = metric.get_energy()
        return np.array(metric.factors), fw, energy, metric.compute_backward()

    runs = [run(fastsyn.CCMetric(dim, num_threads=t)) for t in THREADS]
    _assert_all_equal(runs)
    factors, fw, energy, bw = runs[0]
    ref_factors, ref_fw, ref_energy, ref_bw = run(DipyCCMetric(dim))
    # Window sums are exact in double in both; DIPY squares in float32 first.
    # The variance terms cancel, so compare relative to each channel's range.
    scale = np.abs(ref_factors).reshape(-1, 5).max(0)
    assert (np.abs(factors - ref_factors).reshape(-1, 5).max(0) <= 1e-5 * scale).all()
    # Steps inherit that 1e-5 relative error (then smoothed identically).
    for ours, ref in ((fw, ref_fw), (bw, ref_bw)):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert energy == pytest.approx(ref_energy, rel=1e-5)


def test_cc_flat_windows_are_exactly_zero():
    shape = (20, 20, 20)
    static = np.zeros(shape, np.float32)
    static[5:15, 5:15, 5:15] = smooth_image((10, 10, 10), np.float32)
    moving = np.roll(static, 1, axis=0)
    metric = fastsyn.CCMetric(3, num_threads=2)
    metric.set_static_image(static, np.eye(4), np.ones(3), np.eye(4))
    metric.set_moving_image(moving, np.eye(4), np.ones(3), np.eye(4))
    metric.initialize_iteration()
    assert np.all(metric.factors[:, :, 19, 2:] == 0)
    assert np.isfinite(metric.compute_forward()).all()


def test_parallel_grain_changes_threads_not_results():
    d = smooth_field((30, 31, 29), np.float32, seed=13)
    w2g, sp = np.eye(4), np.ones(3)
    default = fields.invert_displacement_field(d, w2g, sp, 20, 1e-3, num_threads=3)
    with fields.parallel_grain(10**9):  # forces one thread
        single = fields.invert_displacement_field(d, w2g, sp, 20, 1e-3, num_threads=3)
    assert np.array_equal(default.field, single.field)
    with pytest.raises(ValueError, match="voxels_per_thread"):
        with fields.parallel_grain(0):
            pass


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_resample(shape, dtype):
    dim = len(shape)
    field = smooth_field(shape, dtype, seed=14)
    factors = np.full(dim, 0.5)
    out_shape = np.array([2 * s - 1 for s in shape], dtype=np.int32)
    runs = [(fields.resample_displacement_field(field, factors, out_shape, num_threads=t),)
            for t in THREADS]
    _assert_all_equal(runs)
    ref = np.asarray(getattr(vfu, f"resample_displacement_field_{dim}d")(
        field, factors, out_shape))
    # DIPY accumulates the corners in the field dtype, fastsyn in double.
    np.testing.assert_allclose(runs[0][0], ref, rtol=0,
                               atol=16 * EPS[dtype] * np.abs(field).max())


def test_map_level_change_and_composition_match_dipy():
    import dipy.align.imwarp as dipy_imwarp

    from fastsyn.imwarp import DiffeomorphicMap

    shape = (14, 16, 12)
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    stock = dipy_imwarp.DiffeomorphicMap(3, shape, disp_grid2world=grid, domain_shape=shape,
                                         domain_grid2world=grid, codomain_shape=shape,
                                         codomain_grid2world=grid)
    stock.forward = smooth_field(shape, np.float32, seed=15)
    stock.backward = smooth_field(shape, np.float32, seed=16)
    ours = DiffeomorphicMap.from_dipy(stock.shallow_copy(), num_threads=2)
    tol = dict(rtol=0, atol=1e-5)
    for a, b in zip(ours.compute_inversion_error(), stock.compute_inversion_error()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # The inverse is a threaded map too, warping as DIPY's inverse does.
    inverse = ours.inverse()
    assert type(inverse) is DiffeomorphicMap and inverse.num_threads == 2
    labels = np.random.default_rng(3).integers(0, 4, shape).astype(np.int32)
    for interpolation in ("nearest", "linear"):
        np.testing.assert_allclose(
            inverse.transform(labels, interpolation=interpolation),
            stock.inverse().transform(labels, interpolation=interpolation), **tol)
    ours_e = ours.warp_endomorphism(ours.inverse())
    stock_e = stock.warp_endomorphism(stock.inverse())
    np.testing.assert_allclose(ours_e.forward, stock_e.forward, **tol)
    np.testing.assert_allclose(ours_e.backward, stock_e.backward, **tol)
    new_shape = np.array([27, 31, 23], dtype=np.int32)
    ours.expand_fields(np.array([0.5, 0.5, 0.5]), new_shape)
    stock.expand_fields(np.array([0.5, 0.5, 0.5]), new_shape)
    np.testing.assert_allclose(ours.forward, stock.forward, **tol)
    np.testing.assert_allclose(ours.backward, stock.backward, **tol)
    np.testing.assert_array_equal(ours.disp_world2grid, stock.disp_world2grid)


# Targets exactly on and just around the grid's edges: the whole-cell fast
# paths of the composition, the inversion and the linear warp decide "inside"
# from 0 <= x < n - 1, which must agree with DIPY's corner-by-corner rule
# (x = n - 1 exactly is outside for a composition, -0.0 and 0 are inside).
_EDGE_TARGETS = (0.0, -0.0, -1e-9, 1e-9, 5.5, 6.0 - 1e-9, 6.0, 6.0 + 1e-9, 6.5, -0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_targets_match_dipy(dtype):
    shape = (7, 7, 7)               # n - 1 = 6 on every axis
    d2 = smooth_field(shape, dtype, seed=11, amplitude=2)
    image = smooth_image(shape, dtype, seed=12)
    grid = np.indices(shape, dtype=np.float64)
    for axis in range(3):
        for target in _EDGE_TARGETS:
            d1 = np.zeros(shape + (3,), dtype=np.float64)
            d1[..., axis] = target - grid[axis]      # every voxel lands on `target`
            d1 = d1.astype(dtype)
            ours, _ = fields.compose_vector_fields_3d(d1, d2, None, None, 1.0)
            ref, _ = vfu.compose_vector_fields_3d(d1, d2, None, None, 1.0, None)
            ref = np.asarray(ref)
            # Same voxels zeroed (outside), same values elsewhere (test_compose's bound).
            assert np.array_equal(ours == 0, ref == 0), (axis, target)
            atol = 4 * EPS[dtype] * max(np.abs(ref).max(), 1)
            np.testing.assert_allclose(ours, ref, rtol=0, atol=atol)
            warped = fields.warp_3d(image, d1, None, None, None, np.array(shape, np.int32))
            ref_w = np.asarray(vfu.warp_3d(image, d1, None, None, None,
                                           np.array(shape, np.int32)))
            np.testing.assert_allclose(warped, ref_w, rtol=0,
                                       atol=16 * EPS[dtype] * np.abs(image).max())
