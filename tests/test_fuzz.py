"""Property-based fuzzing of the public numerical API (project issue 8).

Each target (compose, invert, warp, warp_nn, smooth, ITK's discrete
smoothing of a field, gradient, Jacobian determinant, CC step, MI step)
runs as a hypothesis loop in a child process (this file executed with
``sys.executable``), so a segfault or an abort is a failed test with the
signal and the last example tried, not a dead pytest run.

Properties checked on every example:

1. no crash (the child exits normally);
2. either a ValueError/TypeError whose message names an argument of the
   call, or a finite result (where the inputs are finite);
3. "clean" input (every axis at least 2 long, finite values of moderate
   size) is accepted;
4. bitwise identical results (or the same error) for 1, 2 and 3 threads,
   with ``parallel_grain(1)`` so that tiny inputs really are split;
5. equal to the stock twin (``dipy.align.vector_fields``, numpy, scipy or
   DIPY's CCMetric) where the twin accepts the input and the values are of
   moderate size, within the tolerances of ``TOLERANCES`` below (the
   reasons are next to each).  The twin only runs on moderate inputs because
   DIPY itself casts huge coordinates to int (undefined behaviour).

Examples are derandomized (fixed sequence); their number per target is the
``--fuzz-examples`` option (``tests/conftest.py``, default small, see
``tox -e fuzz`` for the long run).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# The worker needs hypothesis (the `fuzz` tox env installs it; the `test`
# extra does not list it yet).
pytest.importorskip("hypothesis")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _isolation import describe_returncode, real_threads  # noqa: E402

TARGETS = ["compose", "invert", "warp", "warp_nn", "smooth", "discrete_smooth", "gradient",
           "jacobian", "cc", "mi", "mi_pv"]
THREADS = (1, 2, 3)

# Tolerances against the twin, in units of eps(dtype) times the largest
# magnitude involved (see each check for what "magnitude" is).
TOLERANCES = {
    # DIPY rounds the interpolated vector to the field dtype, then scales and
    # adds; fastsyn rounds once.  The target point is computed in double by
    # both.  <= 3 ulp of |d1| + |t| |d2|; 8 leaves room.
    "compose": 8,
    # Same rule as the composition, per fixed-point iteration; errors add up
    # over at most max_iter (<= 20) iterations while the map contracts.
    "invert": 40,
    # DIPY accumulates the 2^dim corners in the image dtype, fastsyn in
    # double: <= 2^dim + 1 roundings of max |image|.
    "warp": 16,
    # scipy and fastsyn both accumulate in double and round per axis pass;
    # the order of the taps differs: a few ulp of max |input|.
    "smooth": 8,
    # The same per axis pass, three passes and the blend: 8 ulp of max |field|.
    "discrete_smooth": 8,
    # numpy divides by the spacing in double and rounds once; the rotation
    # by ``direction`` adds dim products: 4 ulp of max |gradient| (x |R|).
    "gradient": 4,
}


# ======================================================= worker (child side)
def _eps(dtype):
    return float(np.finfo(dtype).eps)


def _affine(kind, dim, rng):
    n = dim + 1
    if kind == "none":
        return None
    a = np.eye(n)
    if kind == "identity":
        return a
    if kind == "permutation":
        a[:dim, :dim] = np.eye(dim)[rng.permutation(dim)]
    elif kind == "shear":
        a[:dim, :dim] += np.triu(rng.uniform(-0.5, 0.5, (dim, dim)), 1)
        a[:dim, dim] = rng.uniform(-2, 2, dim)
    elif kind == "scale_shift":
        a[:dim, :dim] = np.diag(rng.uniform(0.3, 2.5, dim))
        a[:dim, dim] = rng.uniform(-3, 3, dim)
    elif kind == "rotation":
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        a[:dim, :dim] = q
    elif kind == "near_singular":
        v = rng.standard_normal(dim)
        a[:dim, :dim] = np.outer(v, v) + 1e-12 * np.eye(dim)
    return a


AFFINES = ["none", "identity", "permutation", "shear", "scale_shift", "rotation",
           "near_singular"]
MAGNITUDES = [0.0, 1e-30, 1e-3, 1.0, 5.0, 1e30]
# Mostly clean values: a poisoned array is refused before anything else is
# exercised.
POISON = [None] * 9 + [float("nan"), float("inf"), float("-inf")]
SIZES = [1, 2, 3, 4, 5, 7]


def _array(shape, dtype, magnitude, poison, rng, *, signed=True):
    values = rng.random(shape)
    if signed:
        values = 2 * values - 1
    values = (values * magnitude).astype(dtype)
    if poison is not None and values.size:
        values.flat[rng.integers(values.size)] = poison
    return values


def _moderate(*arrays, limit=1e6):
    return all(a is None or (np.isfinite(a).all() and np.abs(a).max(initial=0) <= limit)
               for a in arrays)


def _clean(shapes, *arrays):
    return all(min(s) >= 2 for s in shapes) and _moderate(*arrays)


class Violation(AssertionError):
    pass


def _names_argument(exc, names):
    text = str(exc).lower()
    return any(n.lower() in text for n in names)


def _run_threads(fn, names):
    """fn(num_threads) for 1, 2, 3 threads; returns ('error', exc) or ('ok', result)
    after checking that every thread count did the same."""
    outcomes = []
    for t in THREADS:
        try:
            outcomes.append(("ok", fn(t)))
        except (ValueError, TypeError) as exc:
            if not _names_argument(exc, names):
                raise Violation(f"{type(exc).__name__} does not name an argument "
                                f"{names}: {exc}") from exc
            outcomes.append(("error", exc))
        except Exception as exc:
            raise Violation(f"raised {type(exc).__name__} (not ValueError/TypeError): "
                            f"{exc}") from exc
    kinds = {k for k, _ in outcomes}
    if len(kinds) != 1:
        raise Violation(f"outcome depends on the thread count: {[k for k, _ in outcomes]}")
    if outcomes[0][0] == "error":
        msgs = {f"{type(e).__name__}: {e}" for _, e in outcomes}
        if len(msgs) != 1:
            raise Violation(f"error depends on the thread count: {msgs}")
        return outcomes[0]
    first = _parts(outcomes[0][1])
    for t, (_, other) in zip(THREADS[1:], outcomes[1:]):
        for a, b in zip(first, _parts(other)):
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True) \
                    or a.tobytes() != b.tobytes():
                raise Violation(f"result with {t} threads differs bitwise from 1 thread")
    return outcomes[0]


def _parts(result):
    if isinstance(result, tuple):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]


def _check_finite(result, inputs_finite):
    if inputs_finite:
        for p in _parts(result):
            if p.dtype.kind == "f" and not np.isfinite(p).all():
                raise Violation(f"non-finite result ({np.count_nonzero(~np.isfinite(p))} "
                                f"of {p.size} values) from finite input")


def _close(ours, ref, atol, what):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise Violation(f"{what}: shape {ours.shape} != twin's {ref.shape}")
    diff = np.abs(ours - ref)
    if not (diff <= atol).all():
        i = np.unravel_index(np.argmax(diff), diff.shape)
        raise Violation(f"{what}: differs from the twin by {diff.max():.3g} at {i} "
                        f"(ours {ours[i]!r}, twin {ref[i]!r}, tolerance {atol:.3g})")


def _common(kind, results, clean, inputs_finite):
    if kind == "error":
        if clean:
            raise Violation(f"clean input refused: {results}")
        return False
    _check_finite(results, inputs_finite)
    return True


# ------------------------------------------------------------------ targets
def _strategies():
    from hypothesis import strategies as st

    return dict(
        dim=st.sampled_from([2, 3]),
        sizes=st.lists(st.sampled_from(SIZES), min_size=3, max_size=3),
        sizes2=st.lists(st.sampled_from(SIZES), min_size=3, max_size=3),
        dtype=st.sampled_from(["float32", "float64"]),
        magnitude=st.sampled_from(MAGNITUDES),
        magnitude2=st.sampled_from(MAGNITUDES),
        poison=st.sampled_from(POISON),
        poison2=st.sampled_from(POISON),
        affine1=st.sampled_from(AFFINES),
        affine2=st.sampled_from(AFFINES),
        affine3=st.sampled_from(AFFINES),
        seed=st.integers(0, 2**32 - 1),
    )


def target_compose(ex):
    from dipy.align import vector_fields as vfu

    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    s1, s2 = tuple(ex["sizes"][:dim]), tuple(ex["sizes2"][:dim])
    d1 = _array(s1 + (dim,), dtype, ex["magnitude"], ex["poison"], rng)
    d2 = _array(s2 + (dim,), dtype, ex["magnitude2"], ex["poison2"], rng)
    a, b = _affine(ex["affine1"], dim, rng), _affine(ex["affine2"], dim, rng)
    t = float(rng.choice([0.0, 0.5, 1.0, -2.0]))
    fn = getattr(fields, f"compose_vector_fields_{dim}d")
    kind, res = _run_threads(lambda nt: fn(d1, d2, a, b, t, num_threads=nt),
                             ["d1", "d2", "premult_index", "premult_disp", "time_scaling"])
    if not _common(kind, res, _clean((s1, s2), d1, d2), _moderate(d1, d2, limit=np.inf)):
        return
    if _moderate(d1, d2):
        comp, _ = getattr(vfu, f"compose_vector_fields_{dim}d")(d1, d2, a, b, t, None)
        scale = np.abs(d1).max(initial=0) + abs(t) * np.abs(d2).max(initial=0)
        _close(res[0], comp, TOLERANCES["compose"] * _eps(dtype) * scale, "compose")


def target_invert(ex):
    from dipy.align import vector_fields as vfu
    from scipy import ndimage

    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    shape = tuple(ex["sizes"][:dim])
    # Smooth fields: the fixed-point iteration contracts for small ones, so
    # a comparison with DIPY is meaningful.
    d = _array(shape + (dim,), np.float64, 1.0, None, rng)
    for c in range(dim):
        d[..., c] = ndimage.gaussian_filter(d[..., c], 1.0)
    d = (d / max(np.abs(d).max(), 1e-300) * ex["magnitude"]).astype(dtype)
    if ex["poison"] is not None:
        d.flat[rng.integers(d.size)] = ex["poison"]
    w2g = _affine(ex["affine1"], dim, rng)
    spacing = rng.uniform(0.5, 2.0, dim)
    max_iter = int(rng.choice([0, 1, 5, 20]))
    tol = float(rng.choice([0.0, 1e-3, 0.1]))
    fn = getattr(fields, f"invert_vector_field_fixed_point_{dim}d")
    kind, res = _run_threads(lambda nt: fn(d, w2g, spacing, max_iter, tol, num_threads=nt),
                             ["d", "d_world2grid", "spacing", "max_iter", "tol"])
    if not _common(kind, res, _clean((shape,), d, w2g), _moderate(d, w2g, limit=np.inf)):
        return
    if (_moderate(d) and ex["magnitude"] <= 1.0
            and ex["affine1"] in ("none", "identity", "permutation", "rotation")):
        ref = np.asarray(getattr(vfu, f"invert_vector_field_fixed_point_{dim}d")(
            d, w2g, spacing, max_iter, tol, None))
        scale = max(np.abs(ref).max(initial=0), np.abs(d).max(initial=0))
        _close(res, ref, TOLERANCES["invert"] * _eps(dtype) * scale, "invert")


def _target_warp(ex, nearest):
    from dipy.align import vector_fields as vfu

    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    fshape, vshape = tuple(ex["sizes"][:dim]), tuple(ex["sizes2"][:dim])
    d1 = _array(fshape + (dim,), dtype, ex["magnitude"], ex["poison"], rng)
    vol = _array(vshape, dtype, ex["magnitude2"] or 1.0, ex["poison2"], rng, signed=False)
    if nearest and ex["seed"] % 3 == 0:
        vol = (vol * 7).astype(np.int32) if _moderate(vol) else vol
    a, b, c = (_affine(ex[k], dim, rng) for k in ("affine1", "affine2", "affine3"))
    # With an affine_idx_in the sampling grid may differ from the field's
    # grid (DIPY interpolates the field there, zero outside).
    out_shape = fshape if a is None else tuple(int(s) for s in rng.choice(SIZES, dim))
    name = f"warp_{dim}d" + ("_nn" if nearest else "")
    fn = getattr(fields, name)
    kind, res = _run_threads(lambda nt: fn(vol, d1, a, b, c, out_shape, num_threads=nt),
                             ["volume", "image", "d1", "affine_idx_in", "affine_idx_out",
                              "affine_disp", "out_shape"])
    finite = _moderate(d1, limit=np.inf) and (vol.dtype.kind != "f" or
                                              _moderate(vol, limit=np.inf))
    if not _common(kind, res, _clean((fshape, vshape, out_shape), d1,
                                     vol.astype(np.float64)), finite):
        return
    if _moderate(d1, vol.astype(np.float64)):
        ref = np.asarray(getattr(vfu, name)(vol, d1, a, b, c,
                                            np.asarray(out_shape, dtype=np.int32)))
        if nearest:
            if not np.array_equal(res, ref):
                raise Violation(f"{name}: {np.count_nonzero(res != ref)} of {ref.size} "
                                "voxels differ from DIPY")
        else:
            scale = np.abs(vol).max(initial=0)
            _close(res, ref, TOLERANCES["warp"] * _eps(dtype) * scale, name)


def target_warp(ex):
    _target_warp(ex, False)


def target_warp_nn(ex):
    _target_warp(ex, True)


def target_smooth(ex):
    from scipy import ndimage

    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    shape = tuple(ex["sizes"][:dim])
    vector = ex["seed"] % 2 == 1
    arr = _array(shape + ((dim,) if vector else ()), dtype, ex["magnitude"], ex["poison"], rng)
    sigma = float(rng.choice([0.0, 0.3, 1.0, 2.5, 10.0]))
    kind, res = _run_threads(
        lambda nt: fields.gaussian_smooth(arr, sigma, vector=vector, num_threads=nt),
        ["array", "sigma"])
    if not _common(kind, res, _clean((shape,), arr), _moderate(arr, limit=np.inf)):
        return
    if _moderate(arr):
        if vector:
            ref = np.stack([ndimage.gaussian_filter(arr[..., c].astype(np.float64), sigma)
                            for c in range(dim)], -1)
        else:
            ref = ndimage.gaussian_filter(arr.astype(np.float64), sigma)
        _close(res, ref, TOLERANCES["smooth"] * _eps(dtype) * np.abs(arr).max(initial=0),
               "gaussian_smooth")


def target_discrete_smooth(ex):
    from scipy import ndimage

    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    shape = tuple(ex["sizes"][:dim])
    field = _array(shape + (dim,), dtype, ex["magnitude"], ex["poison"], rng)
    # Below 0.5 the kernel filters through a scratch and blends in its last pass.
    variance = float(rng.choice([0.0, 0.2, 0.3, 0.49, 0.5, 1.5, 4.0]))
    kind, res = _run_threads(
        lambda nt: fields.discrete_gaussian_smooth_field(field, variance, num_threads=nt),
        ["field", "variance"])
    if not _common(kind, res, _clean((shape,), field), _moderate(field, limit=np.inf)):
        return
    if _moderate(field) and variance > 0:
        ref = field.astype(np.float64)
        for axis, size in enumerate(shape):
            kernel = fields.discrete_gaussian_kernel1d(variance, max_width=size)
            ref = ndimage.convolve1d(ref, kernel, axis=axis, mode="nearest")
        if variance < 0.5:
            ref = (1 - variance / 0.5) * ref + (variance / 0.5) * field
        fields.zero_outer_boundary(ref)
        _close(res, ref, TOLERANCES["discrete_smooth"] * _eps(dtype) * np.abs(field).max(initial=0),
               "discrete_gaussian_smooth_field")


def target_gradient(ex):
    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    shape = tuple(ex["sizes"][:dim])
    img = _array(shape, dtype, ex["magnitude"], ex["poison"], rng)
    spacing = rng.uniform(0.5, 2.0, dim)
    direction = _affine(ex["affine1"], dim, rng)
    kind, res = _run_threads(
        lambda nt: fields.image_gradient(img, spacing, direction, num_threads=nt),
        ["image", "spacing", "direction"])
    if not _common(kind, res, _clean((shape,), img), _moderate(img, limit=np.inf)):
        return
    if _moderate(img) and min(shape) >= 2:
        grad = np.stack([g / s for g, s in zip(np.gradient(img.astype(np.float64)), spacing)],
                        -1)
        rot = np.eye(dim) if direction is None else direction[:dim, :dim]
        ref = grad @ rot.T
        scale = np.abs(grad).max(initial=0) * max(1.0, np.abs(rot).sum(1).max())
        _close(res, ref, TOLERANCES["gradient"] * _eps(dtype) * scale, "image_gradient")


def target_jacobian(ex):
    from test_folds import _cofactor_det

    from fastsyn import fields

    dim, dtype, rng = ex["dim"], np.dtype(ex["dtype"]), np.random.default_rng(ex["seed"])
    shape = tuple(ex["sizes"][:dim]) + (dim,)
    field = _array(shape, dtype, ex["magnitude"], ex["poison"], rng)
    grid2world = _affine(ex["affine1"], dim, rng)
    kind, res = _run_threads(
        lambda nt: fields.jacobian_determinant(field, grid2world, num_threads=nt),
        ["field", "grid2world"])
    if not _common(kind, res, _clean((shape[:-1],), field) and ex["affine1"] != "near_singular",
                   _moderate(field, limit=1e100)):
        return
    # The twin is NumPy's formula in the kernel's order of operations: equal
    # bit for bit (both in float64, no fused multiply-add).
    ref = _cofactor_det(field, np.eye(dim + 1) if grid2world is None else grid2world)
    if not np.array_equal(res, ref, equal_nan=True):
        raise Violation(f"jacobian_determinant differs from NumPy's formula by "
                        f"{np.nanmax(np.abs(res - ref)):.3g}")


def _metric_images(ex, rng):
    dim, dtype = ex["dim"], np.dtype(ex["dtype"])
    shape = tuple(s + 4 for s in ex["sizes"][:dim]) if ex["seed"] % 2 else \
        tuple(ex["sizes"][:dim])
    static = _array(shape, dtype, ex["magnitude"] or 1.0, ex["poison"], rng, signed=False)
    moving = _array(shape, dtype, ex["magnitude2"] or 1.0, ex["poison2"], rng, signed=False)
    spacing = rng.uniform(0.5, 2.0, dim)
    direction = _affine(rng.choice(["identity", "permutation", "rotation"]), dim, rng)
    return shape, static, moving, spacing, direction


def _drive(metric, static, moving, spacing, direction):
    dim = static.ndim
    metric.set_moving_image(moving, np.eye(dim + 1), spacing, direction)
    metric.set_static_image(static, np.eye(dim + 1), spacing, direction)
    metric.initialize_iteration()
    fw = np.array(metric.compute_forward())
    bw = np.array(metric.compute_backward())
    energy = np.float64(metric.get_energy())
    metric.free_iteration()
    return fw, bw, energy


def target_cc(ex):
    from dipy.align.metrics import CCMetric as DipyCC

    import fastsyn

    rng = np.random.default_rng(ex["seed"])
    shape, static, moving, spacing, direction = _metric_images(ex, rng)
    dim = len(shape)
    radius = int(rng.choice([1, 2]))
    sigma = float(rng.choice([0.0, 1.0, 2.0]))
    kind, res = _run_threads(
        lambda nt: _drive(fastsyn.CCMetric(dim, radius=radius, sigma_diff=sigma,
                                           num_threads=nt), static, moving, spacing, direction),
        ["static", "moving", "image", "spacing", "direction", "radius"])
    clean = _clean((shape,), static, moving) and min(shape) >= 2 * radius + 1
    if not _common(kind, res, clean, _moderate(static, moving, limit=np.inf)):
        return
    if _moderate(static, moving) and np.dtype(ex["dtype"]) == np.float32:
        ref = _drive(DipyCC(dim, sigma_diff=sigma, radius=radius), static, moving, spacing,
                     direction)
        # As tests/test_kernels.py: DIPY squares in float32 before summing the
        # windows; the variance terms cancel, so 1e-5 of the largest step.
        for ours, theirs, what in zip(res[:2], ref[:2], ("forward", "backward")):
            _close(ours, theirs, 1e-5 * np.abs(theirs).max(initial=0), f"CC {what}")


def target_mi(ex):
    import fastsyn

    rng = np.random.default_rng(ex["seed"])
    shape, static, moving, spacing, direction = _metric_images(ex, rng)
    dim = len(shape)
    nbins = int(rng.choice([4, 8, 32]))
    sampling = None if ex["seed"] % 3 else 0.5
    kind, res = _run_threads(
        lambda nt: _drive(fastsyn.MIMetric(dim, nbins=nbins, sampling=sampling,
                                           seed=ex["seed"] % 1000, num_threads=nt),
                          static, moving, spacing, direction),
        ["static", "moving", "image", "spacing", "direction", "nbins"])
    clean = _clean((shape,), static, moving) and np.ptp(static) > 0 and np.ptp(moving) > 0
    _common(kind, res, clean, _moderate(static, moving, limit=np.inf))


def target_mi_pv(ex):
    # Partial volume reads the moving image's own voxels around points that a
    # map of any field and matrices puts anywhere (NaN and inf included): the
    # kernels must stay in bounds and thread-invariant.
    import fastsyn

    rng = np.random.default_rng(ex["seed"])
    shape, static, moving, spacing, direction = _metric_images(ex, rng)
    dim, dtype = len(shape), np.dtype(ex["dtype"])
    source_shape = tuple(ex["sizes2"][:dim])
    source = _array(source_shape, dtype, ex["magnitude2"] or 1.0, None, rng, signed=False)
    field = _array(shape + (dim,), np.float32, ex["magnitude"], ex["poison2"], rng)
    try:
        dmap = fastsyn.DiffeomorphicMap(
            dim, shape, domain_shape=shape, codomain_shape=source_shape,
            codomain_grid2world=_affine(ex["affine1"], dim, rng),
            prealign=_affine(ex["affine2"], dim, rng))
    except ValueError:
        return  # a singular matrix: refused by the map, never reaches the metric
    dmap.forward = field
    dmap.backward = field
    nbins = int(rng.choice([4, 8, 32]))

    def run(nt):
        metric = fastsyn.MIMetric(dim, nbins=nbins, partial_volume=True, num_threads=nt)
        metric.set_moving_image(moving, np.eye(dim + 1), spacing, direction)
        metric.set_static_image(static, np.eye(dim + 1), spacing, direction)
        metric.use_moving_image_dynamics(source, dmap.inverse() if ex["seed"] % 2 else dmap)
        metric.initialize_iteration()
        result = (np.array(metric.compute_forward()), np.array(metric.compute_backward()),
                  np.float64(metric.get_energy()))
        metric.free_iteration()
        return result

    kind, res = _run_threads(run, ["static", "moving", "image", "spacing", "direction",
                                   "nbins", "histogram"])
    # Clean: finite images that vary, a map within a voxel of the identity
    # onto a grid of the same shape (most points inside the source).
    clean = (_clean((shape, source_shape), static, moving, source) and np.ptp(static) > 0
             and np.ptp(moving) > 0 and np.ptp(source) > 0 and source_shape == shape
             and ex["affine1"] in ("none", "identity") and ex["affine2"] in ("none", "identity")
             and _moderate(field, limit=0.4))
    _common(kind, res, clean, _moderate(static, moving, source, field, limit=np.inf))


BASE_EXAMPLE = dict(dim=3, sizes=[4, 5, 3], sizes2=[4, 5, 3], dtype="float64", magnitude=1.0,
                    magnitude2=1.0, poison=None, poison2=None, affine1="none",
                    affine2="none", affine3="none", seed=0)

#: Examples always tried first (hypothesis ``@example``): inputs behind known
#: defects, so that a short run cannot miss them.
EXPLICIT = {
    # An identity affine_idx_in with a field on a coarser grid than the
    # output (was read out of bounds: the identity was taken for None).
    "warp": [dict(sizes=[2, 2, 2], sizes2=[7, 7, 7], affine1="identity", seed=1),
             dict(dim=2, sizes=[2, 3, 1], sizes2=[7, 7, 1], affine1="identity", seed=1)],
    "warp_nn": [dict(sizes=[2, 2, 2], sizes2=[7, 7, 7], affine1="identity", seed=1)],
    # Zero-length and size-1 axes.
    "compose": [dict(sizes=[1, 5, 3], sizes2=[4, 1, 3])],
    "jacobian": [dict(sizes=[2, 1, 3]), dict(dim=2, sizes=[2, 2, 1], affine1="rotation")],
    "smooth": [dict(sizes=[1, 3, 4], seed=1), dict(dim=2, sizes=[2, 2, 1], seed=3)],
    "discrete_smooth": [dict(sizes=[1, 3, 4], seed=0), dict(dim=2, sizes=[2, 1, 1], seed=0)],
    # A float32 image of huge values: the window sums overflow float32.
    "cc": [dict(dtype="float32", sizes=[7, 7, 7], magnitude=1e30, magnitude2=1e30, seed=1)],
}


def _describe(ex):
    return json.dumps({k: (repr(v) if isinstance(v, float) else v) for k, v in ex.items()})


def worker(target, examples):
    """Run one target's hypothesis loop; print JSON lines on stdout."""
    from hypothesis import HealthCheck, Phase, example, given, settings
    from hypothesis import strategies as st

    check = globals()[f"target_{target}"]
    strategy = st.fixed_dictionaries(_strategies())
    out = sys.stdout

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              print_blob=False, report_multiple_bugs=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(ex):
        out.write(json.dumps({"try": _describe(ex)}) + "\n")
        out.flush()
        check(ex)

    for ex in EXPLICIT.get(target, ()):
        run = example(dict(BASE_EXAMPLE, **ex))(run)
    failures = []
    try:
        with real_threads():
            run()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        excs = getattr(exc, "exceptions", None) or [exc]
        for e in excs:
            notes = "\n".join(getattr(e, "__notes__", []))
            failures.append(f"{type(e).__name__}: {e}\n{notes}".strip())
    out.write(json.dumps({"result": {"failures": failures}}) + "\n")
    out.flush()
    os._exit(0)


# ====================================================== pytest (parent side)
@pytest.fixture
def fuzz_examples(request):
    return request.config.getoption("--fuzz-examples")


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target, fuzz_examples):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), target,
                           str(fuzz_examples)], capture_output=True, text=True,
                          timeout=600 + 10 * fuzz_examples)
    last_try, result = None, None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            last_try = msg.get("try", last_try)
            result = msg.get("result", result)
    assert proc.returncode == 0 and result is not None, (
        f"fuzz worker for {target!r} died ({describe_returncode(proc.returncode)}); "
        f"last example tried: {last_try}; stderr: {proc.stderr[-1500:]}")
    assert not result["failures"], (
        f"{target}: {len(result['failures'])} failing propert(y/ies):\n\n"
        + "\n\n".join(result["failures"]))


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
