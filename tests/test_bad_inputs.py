"""Bad input to the public numerical API: a clear error or a correct result,
never a crash (project issue 8).

The cases are data: ``CASES`` is a list of :class:`Case` (entry point x bad
input x expected outcome), so ``len(CASES)`` is the size of the table, and
``REGRESSIONS`` holds the known defects that must stay fixed.  Every case
runs in a worker process (:mod:`_isolation`): a case that reads out of
bounds, divides by zero in C (SIGFPE) or aborts fails as "crashed the
process: killed by signal N" and the other cases still run.

Expected outcomes
-----------------
``ValueError`` / ``TypeError``
    Raised, and the message matches ``match`` (case-insensitive), which names
    the offending argument.
``refuse``
    ``ValueError`` or ``TypeError`` naming the argument (the type of a
    wrong-typed scalar such as ``1.5`` for an integer count is debatable).
``equal``
    Accepted, and the result equals ``ref()`` (the same call on the
    converted input, bitwise; or stock DIPY within ``atol``).
``equal_or_refuse``
    Either of the two.  Used where stock DIPY has no settled behaviour: a
    big-endian array (DIPY's kernels refuse it with a message that names no
    argument, DIPY's high-level code converts it), a boolean label map for
    nearest-neighbour warping, an integer image handed straight to a metric,
    a NaN in an image being warped (DIPY propagates it), and
    ``num_threads=2**40`` (clamping is fine).
``error``
    Any exception (not a crash) whose message matches ``match``; for a
    numerical failure inside ``optimize`` (NaN step).

Policy, where DIPY is silent or unsafe: zero-size axes are a ValueError
everywhere (DIPY returns empty arrays or reads out of bounds); a size-1 axis
works as in DIPY (same result within the DIPY tolerance of
``tests/test_kernels.py``) or is a ValueError naming the argument; NaN/inf in
fields, affines and scalar parameters are a ValueError; ``True`` where a
number is expected is a TypeError; an affine must be exactly
``(dim + 1, dim + 1)`` (a direction may also be ``(dim, dim)``, the shape
DIPY's metrics document); spacing and direction must match the dimension.
"""

import os
import re
import sys
from typing import Callable, NamedTuple, Optional

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _isolation import run_worker, worker_main  # noqa: E402

import fastsyn  # noqa: E402
from fastsyn import fields  # noqa: E402


class Case(NamedTuple):
    id: str
    call: Callable[[], object]
    expect: str
    match: Optional[str] = None
    ref: Optional[Callable[[], object]] = None
    atol: float = 0.0


EPS64 = np.finfo(np.float64).eps
TOO_MANY_CPUS = -((os.cpu_count() or 1) + 1)


# ----------------------------------------------------------------- inputs
def _rng(seed):
    return np.random.default_rng(seed)


def image(shape, dtype=np.float64, seed=0):
    return _rng(seed).random(shape).astype(dtype)


def field(shape, dtype=np.float64, seed=1, amplitude=0.6):
    dim = len(shape)
    values = (_rng(seed).random(tuple(shape) + (dim,)) - 0.5) * 2 * amplitude
    return values.astype(dtype)


def smooth_image(shape, seed=0):
    from scipy import ndimage

    return (ndimage.gaussian_filter(_rng(seed).random(shape), 1.5) * 100).astype(np.float32)


def shear(dim, scale=0.9):
    a = np.eye(dim + 1)
    a[:dim, :dim] *= scale
    a[0, 1] = 0.1
    a[:dim, dim] = 0.3
    return a


# ---------------------------------------------------------- bad variants
def _poison(arr, value):
    arr = np.array(arr, copy=True)
    arr.flat[arr.size // 2] = value
    return arr


def _strided(arr):
    # The same values seen through a view with a step of 2 on axis 0.
    big = np.zeros((2 * arr.shape[0],) + arr.shape[1:], dtype=arr.dtype)
    big[::2] = arr
    return big[::2]


ARRAY_VARIANTS = {
    "ndim-minus-1": lambda a: np.ascontiguousarray(a[0]),
    "ndim-plus-1": lambda a: a[None],
    "zero-size-axis0": lambda a: a[:0],
    "zero-size-axis1": lambda a: a[:, :0],
    "size-1-axis1": lambda a: np.ascontiguousarray(a[:, :1]),
    "fortran-order": np.asfortranarray,
    "strided-view": _strided,
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "int32": lambda a: np.round(a * 10).astype(np.int32),
    "bool": lambda a: a > 0.5,
    "object": lambda a: a.astype(object),
    "nan": lambda a: _poison(a, np.nan),
    "inf": lambda a: _poison(a, np.inf),
}


class Entry(NamedTuple):
    """A public function, good arguments, and what each argument is."""
    fn: Callable
    good: Callable[[], dict]
    arrays: dict  # argument -> "field" | "image" | "labels" | "float-image"
    affines: tuple = ()
    twin: Optional[Callable[[dict], object]] = None
    twin_atol: float = 0.0  # tolerance vs the twin, in ulp of the largest input
    dim: int = 3
    scalars: tuple = ()  # (variant id, argument, value, expect, match)


def _vfu():
    import dipy.align.vector_fields as vfu
    return vfu


def _i32(shape):
    return None if shape is None else np.asarray(shape, dtype=np.int32)


def _warp_twin(name):
    def twin(k):
        volume = k.get("volume", k.get("image"))
        if not name.endswith("_nn"):
            volume = np.asarray(volume, dtype=k["d1"].dtype)
        return getattr(_vfu(), name)(volume, k["d1"], k.get("affine_idx_in"),
                                     k.get("affine_idx_out"), k.get("affine_disp"),
                                     _i32(k.get("out_shape")))
    return twin


def _compose_twin(dim, k):
    comp, stats = getattr(_vfu(), f"compose_vector_fields_{dim}d")(
        k["d1"], k["d2"], k["premult_index"], k["premult_disp"], k["time_scaling"], None)
    # DIPY reports 0/0 = NaN statistics when no vector lands inside d2's grid;
    # 0 (what fastsyn reports) is as good.
    return np.asarray(comp), np.nan_to_num(np.asarray(stats), nan=0.0)


def _gradient_twin(k):
    img = k["image"]
    spacing = np.ones(img.ndim) if k.get("spacing") is None else k["spacing"]
    return np.stack([g / s for g, s in zip(np.gradient(img), spacing)], -1)


def _smooth_twin(k):
    from scipy import ndimage
    arr = k["array"]
    if k.get("vector"):
        return np.stack([ndimage.gaussian_filter(arr[..., c], k["sigma"])
                         for c in range(arr.shape[-1])], -1)
    return ndimage.gaussian_filter(arr, k["sigma"])


def _bad_scalar(name, values):
    """Standard bad values of a float parameter."""
    return tuple((f"{name}={v!r}", name, v,
                  "TypeError" if isinstance(v, (bool, str)) else "ValueError", name)
                 for v in values)


FLOAT_BAD = (float("nan"), float("inf"), True, "1")

ENTRIES = {
    "compose_vector_fields_3d": Entry(
        fields.compose_vector_fields_3d,
        lambda: dict(d1=field((5, 6, 7)), d2=field((5, 6, 7), seed=2), premult_index=None,
                     premult_disp=None, time_scaling=0.5),
        {"d1": "field", "d2": "field"}, ("premult_index", "premult_disp"),
        lambda k: _compose_twin(3, k),
        8, 3, _bad_scalar("time_scaling", FLOAT_BAD)),
    "compose_vector_fields_2d": Entry(
        fields.compose_vector_fields_2d,
        lambda: dict(d1=field((6, 7)), d2=field((6, 7), seed=2), premult_index=None,
                     premult_disp=None, time_scaling=0.5),
        {"d1": "field", "d2": "field"}, ("premult_index", "premult_disp"),
        lambda k: _compose_twin(2, k),
        8, 2, _bad_scalar("time_scaling", FLOAT_BAD)),
    "invert_vector_field_fixed_point_3d": Entry(
        fields.invert_vector_field_fixed_point_3d,
        lambda: dict(d=field((5, 6, 7), amplitude=0.3), d_world2grid=np.eye(4),
                     spacing=np.ones(3), max_iter=10, tol=1e-3),
        {"d": "field"}, ("d_world2grid",),
        lambda k: _vfu().invert_vector_field_fixed_point_3d(
            k["d"], k["d_world2grid"], k["spacing"], k["max_iter"], k["tol"], None),
        40, 3,
        _bad_scalar("tol", FLOAT_BAD) + (
            ("max_iter=-1", "max_iter", -1, "ValueError", "max_iter"),
            ("max_iter=1.5", "max_iter", 1.5, "refuse", "max_iter"),
            ("max_iter=True", "max_iter", True, "TypeError", "max_iter"),
            ("spacing-len-2", "spacing", np.ones(2), "ValueError", "spacing"),
            ("spacing-len-4", "spacing", np.ones(4), "ValueError", "spacing"),
            ("spacing-nan", "spacing", np.array([1, np.nan, 1]), "ValueError", "spacing"),
            ("spacing-zero", "spacing", np.array([1, 0, 1.0]), "ValueError", "spacing"),
            ("start-wrong-shape", "start", field((5, 6, 6)), "ValueError", "start"))),
    "invert_vector_field_fixed_point_2d": Entry(
        fields.invert_vector_field_fixed_point_2d,
        lambda: dict(d=field((6, 7), amplitude=0.3), d_world2grid=np.eye(3),
                     spacing=np.ones(2), max_iter=10, tolerance=1e-3),
        {"d": "field"}, ("d_world2grid",),
        lambda k: _vfu().invert_vector_field_fixed_point_2d(
            k["d"], k["d_world2grid"], k["spacing"], k["max_iter"], k["tolerance"], None),
        40, 2,
        _bad_scalar("tolerance", (float("nan"), float("inf"), True)) + (
            ("spacing-len-3", "spacing", np.ones(3), "ValueError", "spacing"),
            ("spacing-len-1", "spacing", np.ones(1), "ValueError", "spacing"))),
    "invert_displacement_field": Entry(
        fields.invert_displacement_field,
        lambda: dict(d=field((5, 6, 7), amplitude=0.3), d_world2grid=np.eye(4),
                     spacing=np.ones(3), max_iter=10, tol=1e-3),
        {"d": "field"}, ("d_world2grid",), None, 0, 3,
        (("dim=2-for-3d-field", "dim", 2, "ValueError", "dim|2D|3D"),)),
    "warp_3d": Entry(
        fields.warp_3d,
        lambda: dict(volume=image((6, 7, 8)), d1=field((5, 6, 7)), affine_idx_in=shear(3),
                     affine_idx_out=shear(3, 1.1), affine_disp=None, out_shape=(5, 6, 7)),
        {"volume": "float-image", "d1": "field"},
        ("affine_idx_in", "affine_idx_out", "affine_disp"), _warp_twin("warp_3d"), 16, 3,
        (("out_shape-len-2", "out_shape", (5, 6), "ValueError", "out_shape"),
         ("out_shape-zero", "out_shape", (5, 0, 7), "ValueError", "out_shape"),
         ("out_shape-negative", "out_shape", (5, -6, 7), "ValueError", "out_shape"),
         ("out_shape-float", "out_shape", (5.5, 6, 7), "refuse", "out_shape"),
         ("out_shape-huge", "out_shape", (2**40, 2**40, 2**40), "refuse", "out_shape"))),
    "warp_3d_nn": Entry(
        fields.warp_3d_nn,
        lambda: dict(volume=image((6, 7, 8)), d1=field((5, 6, 7)), affine_idx_in=shear(3),
                     affine_idx_out=shear(3, 1.1), affine_disp=None, out_shape=(5, 6, 7)),
        {"volume": "labels", "d1": "field"},
        ("affine_idx_in", "affine_idx_out", "affine_disp"), _warp_twin("warp_3d_nn"), 0, 3,
        (("out_shape-zero", "out_shape", (0, 6, 7), "ValueError", "out_shape"),)),
    "warp_2d": Entry(
        fields.warp_2d,
        lambda: dict(image=image((7, 8)), d1=field((6, 7)), affine_idx_in=shear(2),
                     affine_idx_out=shear(2, 1.1), affine_disp=None, out_shape=(6, 7)),
        {"image": "float-image", "d1": "field"},
        ("affine_idx_in", "affine_idx_out", "affine_disp"), _warp_twin("warp_2d"), 16, 2,
        (("out_shape-len-3", "out_shape", (6, 7, 1), "ValueError", "out_shape"),
         ("out_shape-zero", "out_shape", (6, 0), "ValueError", "out_shape"))),
    "warp_2d_nn": Entry(
        fields.warp_2d_nn,
        lambda: dict(image=image((7, 8)), d1=field((6, 7)), affine_idx_in=shear(2),
                     affine_idx_out=shear(2, 1.1), affine_disp=None, out_shape=(6, 7)),
        {"image": "labels", "d1": "field"},
        ("affine_idx_in", "affine_idx_out", "affine_disp"), _warp_twin("warp_2d_nn"), 0, 2,
        (("out_shape-zero", "out_shape", (0, 7), "ValueError", "out_shape"),)),
    "image_gradient": Entry(
        fields.image_gradient,
        lambda: dict(image=image((5, 6, 7)), spacing=np.array([1.0, 1.5, 2.0]),
                     direction=None),
        {"image": "float-image"}, ("direction",), _gradient_twin, 4, 3,
        (("spacing-len-2", "spacing", np.ones(2), "ValueError", "spacing"),
         ("spacing-len-4", "spacing", np.ones(4), "ValueError", "spacing"),
         ("spacing-nan", "spacing", np.array([1, np.nan, 1]), "ValueError", "spacing"),
         ("spacing-inf", "spacing", np.array([1, np.inf, 1]), "ValueError", "spacing"),
         ("spacing-bool", "spacing", True, "refuse", "spacing"))),
    "gaussian_smooth": Entry(
        fields.gaussian_smooth,
        lambda: dict(array=image((5, 6, 7)), sigma=1.0),
        {"array": "float-image"}, (), _smooth_twin, 8, 3,
        _bad_scalar("sigma", FLOAT_BAD + (-1.0,)) + (
            ("out-wrong-shape", "out", np.zeros((5, 6, 6)), "ValueError", "out"),)),
    "gaussian_smooth_vector": Entry(
        lambda **k: fields.gaussian_smooth(vector=True, **k),
        lambda: dict(array=field((5, 6, 7)), sigma=1.0),
        {"array": "field"}, (), lambda k: _smooth_twin(dict(k, vector=True)), 8, 3,
        _bad_scalar("sigma", (float("nan"), float("inf"), True, -1.0))),
    "resample_displacement_field": Entry(
        fields.resample_displacement_field,
        lambda: dict(field=field((5, 6, 7)), factors=np.full(3, 0.5), out_shape=(9, 11, 13)),
        {"field": "field"}, (),
        lambda k: _vfu().resample_displacement_field_3d(k["field"], k["factors"],
                                                        _i32(k["out_shape"])), 16, 3,
        (("factors-len-2", "factors", np.ones(2), "ValueError", "factors"),
         ("factors-nan", "factors", np.array([0.5, np.nan, 0.5]), "ValueError", "factors"),
         ("factors-zero", "factors", np.array([0.5, 0, 0.5]), "ValueError", "factors"),
         ("out_shape-zero", "out_shape", (9, 0, 13), "ValueError", "out_shape"))),
}


def _array_expectation(entry_name, entry, arg, kind, variant):
    """Expected outcome of ``variant`` applied to array argument ``arg``."""
    if variant == "ndim-minus-1" and entry_name == "gaussian_smooth":
        return "equal", "twin"  # a 2D image is valid input
    if variant in ("ndim-minus-1", "ndim-plus-1", "zero-size-axis0", "zero-size-axis1"):
        return "ValueError", "twin"
    if variant == "size-1-axis1":
        if entry_name == "image_gradient":  # numpy.gradient refuses a size-1 axis
            return "ValueError", "twin"
        return "ok_or_ValueError", "twin"
    if variant in ("fortran-order", "strided-view"):
        return "equal", "good"
    if variant == "big-endian":
        return "equal_or_refuse", "good"
    if variant == "int32":
        return ("equal", "twin") if kind == "labels" else ("TypeError", None)
    if variant == "bool":
        return ("equal_or_refuse", "as-uint8") if kind == "labels" else ("TypeError", None)
    if variant == "object":
        return "TypeError", None
    if variant in ("nan", "inf"):
        if kind in ("float-image", "labels") and entry_name.startswith("warp"):
            return "equal_or_refuse", "twin"
        return "ValueError", None
    raise AssertionError(variant)


def _affine_variants(dim):
    n = dim + 1
    nan = np.eye(n)
    nan[0, 1] = np.nan
    inf = np.eye(n)
    inf[1, n - 1] = np.inf
    return {
        f"{n + 1}x{n + 1}": np.eye(n + 1),
        f"{n - 1}x{n - 1}": np.eye(n - 1),
        f"{n - 1}x{n}": np.eye(n)[:-1],
        "nan": nan,
        "inf": inf,
        "1d": np.ones(n * n),
        "object": np.eye(n).astype(object),
    }


def entry_name_takes_2d_or_3d(name):
    return name == "image_gradient"


def _call(entry, kwargs):
    return lambda: entry.fn(**kwargs())


def _twin_ref(entry, kwargs):
    return lambda: entry.twin(kwargs())


def _entry_cases():
    cases = []
    for name, entry in ENTRIES.items():
        def good_result(entry=entry):
            return entry.fn(**entry.good())
        # Arrays.
        for arg, kind in entry.arrays.items():
            for variant, make in ARRAY_VARIANTS.items():
                expect, ref_kind = _array_expectation(name, entry, arg, kind, variant)

                def kwargs(entry=entry, arg=arg, make=make):
                    k = entry.good()
                    k[arg] = make(k[arg])
                    return k

                ref, atol = None, 0.0
                if ref_kind == "good":
                    ref = good_result
                elif ref_kind == "twin" and entry.twin is not None:
                    ref, atol = _twin_ref(entry, kwargs), entry.twin_atol
                elif ref_kind == "as-uint8":
                    def ref(entry=entry, arg=arg, make=make):
                        k = entry.good()
                        k[arg] = make(k[arg]).astype(np.uint8)
                        return entry.fn(**k)
                if expect in ("ok_or_ValueError", "equal", "equal_or_refuse") and ref is None:
                    continue  # no twin to compare with
                match = re.escape(arg)
                if variant == "ndim-minus-1" and entry_name_takes_2d_or_3d(name):
                    match = f"{match}|spacing"  # the 3D spacing no longer fits
                cases.append(Case(f"{name}-{arg}-{variant}", _call(entry, kwargs), expect,
                                  match, ref, atol))
        # Affines.
        for arg in entry.affines:
            for variant, value in _affine_variants(entry.dim).items():
                def kwargs(entry=entry, arg=arg, value=value):
                    return dict(entry.good(), **{arg: value})
                expect, ref = "ValueError", None
                if variant == "object":
                    expect = "refuse"
                elif arg == "direction" and variant == f"{entry.dim}x{entry.dim}":
                    # Direction cosines may come as (dim, dim), the shape
                    # DIPY's metrics document: the same rotation as (dim+1)^2.
                    def ref(entry=entry, arg=arg):
                        return entry.fn(**dict(entry.good(), **{arg: np.eye(entry.dim + 1)}))
                    expect = "equal"
                elif variant == f"{entry.dim}x{entry.dim + 1}":
                    # DIPY reads only the first dim rows: the missing last
                    # row (0 ... 0 1) may be accepted as implied.
                    def ref(entry=entry, arg=arg):
                        return entry.fn(**dict(entry.good(), **{arg: np.eye(entry.dim + 1)}))
                    expect = "equal_or_refuse"
                cases.append(Case(f"{name}-{arg}-{variant}", _call(entry, kwargs), expect,
                                  re.escape(arg), ref))
        # Scalars and other arguments.
        for variant, arg, value, expect, match in entry.scalars:
            def kwargs(entry=entry, arg=arg, value=value):
                return dict(entry.good(), **{arg: value})
            cases.append(Case(f"{name}-{variant}", _call(entry, kwargs), expect, match))
        # num_threads.
        cases.extend(_num_threads_cases(name, lambda nt, entry=entry: entry.fn(
            **entry.good(), num_threads=nt)))
    return cases


def _num_threads_cases(name, run):
    """``run(num_threads)`` -> result; one case per bad value."""
    one = lambda: run(1)  # noqa: E731
    return [
        Case(f"{name}-num_threads=0", lambda: run(0), "ValueError", "num_threads"),
        Case(f"{name}-num_threads=-(cpus+1)", lambda: run(TOO_MANY_CPUS), "ValueError",
             "num_threads"),
        Case(f"{name}-num_threads=-10**6", lambda: run(-10**6), "ValueError", "num_threads"),
        Case(f"{name}-num_threads=2**40", lambda: run(2**40), "equal_or_refuse",
             "num_threads", one),
        Case(f"{name}-num_threads=1.5", lambda: run(1.5), "TypeError", "num_threads"),
        Case(f"{name}-num_threads=2.0", lambda: run(2.0), "TypeError", "num_threads"),
        Case(f"{name}-num_threads=True", lambda: run(True), "TypeError", "num_threads"),
        Case(f"{name}-num_threads=np.int64(2)", lambda: run(np.int64(2)), "equal", None, one),
    ]


# --------------------------------------------------------------- cross-shape
def _mismatch_cases():
    f3, f2 = field((5, 6, 7)), field((6, 7))
    return [
        Case("compose_vector_fields_3d-d2-is-2d-field",
             lambda: fields.compose_vector_fields_3d(f3, f2, None, None, 1.0), "ValueError",
             "d2"),
        Case("compose_vector_fields_3d-d2-float32-d1-float64",
             lambda: fields.compose_vector_fields_3d(f3, f3.astype(np.float32), None, None,
                                                     1.0), "TypeError", "d2"),
        Case("compose_vector_fields_3d-comp-wrong-shape",
             lambda: fields.compose_vector_fields_3d(f3, f3, None, None, 1.0,
                                                     np.zeros((5, 6, 6, 3))), "ValueError",
             "comp"),
        Case("compose_vector_fields_3d-d2-zero-size-d1-normal",
             lambda: fields.compose_vector_fields_3d(f3, np.zeros((0, 6, 7, 3)), None, None,
                                                     1.0), "ValueError", "d2"),
        Case("compose_vector_fields_3d-zero-size-fields",
             lambda: fields.compose_vector_fields_3d(np.zeros((0, 4, 4, 3)),
                                                     np.zeros((0, 4, 4, 3)), None, None, 1.0),
             "ValueError", "d1"),
        Case("warp_3d-volume-2d-field-3d",
             lambda: fields.warp_3d(image((6, 7)), f3), "ValueError", "volume"),
        Case("warp_3d-field-grid-differs-from-out_shape-without-affine",
             lambda: fields.warp_3d(image((5, 6, 7)), f3, None, None, None, (6, 6, 7)),
             "ValueError", "out_shape"),
        Case("warp_2d-field-3d",
             lambda: fields.warp_2d(image((6, 7)), f3), "ValueError", "d1"),
        Case("invert_displacement_field-out-shares-d",
             lambda: fields.invert_displacement_field(f3, None, np.ones(3), 5, 1e-3, out=f3),
             "ValueError", "out"),
        Case("gaussian_smooth-vector-field-zero-size",
             lambda: fields.gaussian_smooth(np.zeros((0, 4, 4, 3)), 1.0, vector=True),
             "ValueError", "array"),
        Case("gaussian_smooth-vector-field-zero-components",
             lambda: fields.gaussian_smooth(np.zeros((4, 4, 4, 0)), 1.0, vector=True),
             "ValueError", "array"),
        Case("image_gradient-4d", lambda: fields.image_gradient(image((3, 4, 5, 6))),
             "ValueError", "image"),
    ]


# ---------------------------------------------------------------- metrics
def run_metric(metric, static=None, moving=None, grid2world=None, spacing=None,
               direction=None, dim=3):
    """Drive a metric as DIPY's optimizer does; returns (forward, backward, energy)."""
    shape = (12, 12, 12) if dim == 3 else (16, 16)
    static = smooth_image(shape, 1) if static is None else static
    moving = smooth_image(shape, 2) if moving is None else moving
    grid2world = np.eye(dim + 1) if grid2world is None else grid2world
    spacing = np.ones(dim) if spacing is None else spacing
    direction = np.eye(dim + 1) if direction is None else direction
    metric.set_moving_image(moving, grid2world, spacing, direction)
    metric.set_static_image(static, grid2world, spacing, direction)
    metric.initialize_iteration()
    forward = np.array(metric.compute_forward())
    backward = np.array(metric.compute_backward())
    energy = metric.get_energy()
    metric.free_iteration()
    return forward, backward, energy


def _metric_cases(name, make, work_dtype):
    """Image and geometry cases for ``make(**kw)`` -> metric (3D); the metric
    converts integer images to ``work_dtype``."""
    img = smooth_image((12, 12, 12), 1)
    mov = smooth_image((12, 12, 12), 2)

    def run(**kw):
        return lambda: run_metric(make(), **kw)

    def good():
        return run_metric(make())

    def as_float(dtype):
        return lambda: run_metric(make(), static=img.astype(np.int32).astype(dtype),
                                  moving=mov.astype(np.int32).astype(dtype))

    bad_dir = np.eye(4)
    bad_dir[0, 0] = np.nan
    cases = [
        Case(f"{name}-static-2d", run(static=img[0]), "ValueError", "static"),
        Case(f"{name}-static-4d", run(static=img[None]), "ValueError", "static"),
        Case(f"{name}-static-moving-shapes-differ", run(moving=mov[:, :, :11]),
             "ValueError", "static|moving"),
        Case(f"{name}-static-zero-size", run(static=img[:0], moving=mov[:0]), "ValueError",
             "static|moving"),
        Case(f"{name}-static-size-1-axis", run(static=img[:, :1], moving=mov[:, :1]),
             "ValueError", "static|moving"),
        Case(f"{name}-static-nan", run(static=_poison(img, np.nan)), "ValueError", "static"),
        Case(f"{name}-moving-inf", run(moving=_poison(mov, np.inf)), "ValueError", "moving"),
        Case(f"{name}-static-fortran-order", run(static=np.asfortranarray(img)), "equal",
             None, good),
        Case(f"{name}-static-strided-view", run(static=_strided(img)), "equal", None, good),
        Case(f"{name}-static-big-endian", run(static=img.astype(">f4")),
             "equal_or_refuse", "static", good),
        Case(f"{name}-images-int32", run(static=img.astype(np.int32), moving=mov.astype(
            np.int32)), "equal_or_refuse", "static|moving", as_float(work_dtype)),
        Case(f"{name}-static-bool", run(static=img > 50), "equal_or_refuse", "static",
             lambda: run_metric(make(), static=(img > 50).astype(work_dtype))),
        Case(f"{name}-static-object", run(static=img.astype(object)), "TypeError", "static"),
        Case(f"{name}-spacing-len-2", run(spacing=np.ones(2)), "ValueError", "spacing"),
        Case(f"{name}-spacing-len-4", run(spacing=np.ones(4)), "ValueError", "spacing"),
        Case(f"{name}-spacing-nan", run(spacing=np.array([1, np.nan, 1])), "ValueError",
             "spacing"),
        Case(f"{name}-spacing-zero", run(spacing=np.array([1, 0, 1.0])), "ValueError",
             "spacing"),
        Case(f"{name}-direction-3x3", run(direction=np.eye(3)), "equal", None, good),
        Case(f"{name}-direction-5x5", run(direction=np.eye(5)), "ValueError", "direction"),
        Case(f"{name}-direction-nan", run(direction=bad_dir), "ValueError", "direction"),
        Case(f"{name}-grid2world-5x5", run(grid2world=np.eye(5)), "ValueError",
             "affine|grid2world"),
    ]
    return cases


def _cc_cases():
    cc = fastsyn.CCMetric
    cases = _metric_cases("CCMetric", lambda: cc(3, radius=2), np.float32)
    for arg, values in (("sigma_diff", (float("nan"), float("inf"), -1.0, True)),
                        ("radius", (0, -1, 1.5, True, float("nan"), 10**12))):
        for v in values:
            expect = "TypeError" if isinstance(v, bool) else (
                "refuse" if isinstance(v, float) and arg == "radius" else "ValueError")
            cases.append(Case(f"CCMetric-{arg}={v!r}", lambda arg=arg, v=v: run_metric(
                cc(3, **{arg: v})), expect, arg))
    cases += [
        Case("CCMetric-dim=4", lambda: cc(4), "ValueError", "dim"),
        Case("CCMetric-dim=True", lambda: cc(True), "refuse", "dim"),
        Case("CCMetric-dim=3.0", lambda: cc(3.0), "refuse", "dim"),
    ]
    cases += _num_threads_cases("CCMetric", lambda nt: run_metric(cc(3, radius=2,
                                                                     num_threads=nt)))
    return cases


def _mi_cases():
    mi = fastsyn.MIMetric
    cases = _metric_cases("MIMetric", lambda: mi(3, nbins=16), np.float64)
    ok = lambda **kw: lambda: run_metric(mi(3, **kw))  # noqa: E731
    cases += [
        Case("MIMetric-nbins=10**6", ok(nbins=10**6), "ValueError",
             r"nbins.*(memory|bytes|[KMGT]i?B)|(memory|bytes|[KMGT]i?B).*nbins"),
        Case("MIMetric-nbins=2**40", ok(nbins=2**40), "ValueError", "nbins"),
        Case("MIMetric-nbins=3", ok(nbins=3), "ValueError", "nbins"),
        Case("MIMetric-nbins=0", ok(nbins=0), "ValueError", "nbins"),
        Case("MIMetric-nbins=-5", ok(nbins=-5), "ValueError", "nbins"),
        Case("MIMetric-nbins=16.0", ok(nbins=16.0), "TypeError", "nbins"),
        Case("MIMetric-nbins=True", ok(nbins=True), "TypeError", "nbins"),
        Case("MIMetric-nbins=np.int64(16)", ok(nbins=np.int64(16)), "equal", None,
             ok(nbins=16)),
        Case("MIMetric-seed=-1", ok(seed=-1, sampling=0.5), "ValueError", "seed"),
        Case("MIMetric-seed=True", ok(seed=True), "TypeError", "seed"),
        Case("MIMetric-seed=1.5", ok(seed=1.5), "TypeError", "seed"),
        Case("MIMetric-seed=np.int64(5)", ok(seed=np.int64(5), sampling=0.5), "equal", None,
             ok(seed=5, sampling=0.5)),
        Case("MIMetric-sigma_diff=nan", ok(sigma_diff=float("nan")), "ValueError",
             "sigma_diff"),
        Case("MIMetric-sigma_diff=inf", ok(sigma_diff=float("inf")), "ValueError",
             "sigma_diff"),
        Case("MIMetric-sigma_diff=True", ok(sigma_diff=True), "TypeError", "sigma_diff"),
        Case("MIMetric-smooth=nan", ok(smooth=float("nan")), "ValueError", "smooth|sigma"),
        Case("MIMetric-sampling=0", ok(sampling=0.0), "ValueError", "sampling"),
        Case("MIMetric-sampling=1.5", ok(sampling=1.5), "ValueError", "sampling"),
        Case("MIMetric-sampling=nan", ok(sampling=float("nan")), "ValueError", "sampling"),
        Case("MIMetric-sampling=True", ok(sampling=True), "TypeError", "sampling"),
        Case("MIMetric-clip-reversed", ok(clip=(90, 10)), "ValueError", "clip"),
        Case("MIMetric-clip-nan", ok(clip=(float("nan"), 90)), "ValueError", "clip"),
        Case("MIMetric-clip-over-100", ok(clip=(0, 101)), "ValueError", "clip"),
        Case("MIMetric-clip-three-values", ok(clip=(0, 50, 100)), "ValueError", "clip"),
        Case("MIMetric-static_mask-2d", ok(static_mask=np.ones((12, 12))), "ValueError",
             "static_mask"),
        Case("MIMetric-static_mask-object", ok(static_mask=np.ones((12, 12, 12), object)),
             "TypeError", "static_mask"),
        Case("MIMetric-static_mask-zero-size", ok(static_mask=np.ones((0, 12, 12))),
             "ValueError", "static_mask"),
        Case("MIMetric-dim=4", lambda: mi(4), "ValueError", "dim"),
        Case("MIMetric-dim=True", lambda: mi(True), "refuse", "dim"),
    ]
    cases += _num_threads_cases("MIMetric", lambda nt: run_metric(mi(3, nbins=16,
                                                                     num_threads=nt)))
    return cases


# ------------------------------------------------------------ registration
def _register(metric=None, images=None, optimize_kw=None, **kw):
    static, moving = images or (smooth_image((12, 12, 12), 1), smooth_image((12, 12, 12), 2))
    metric = fastsyn.CCMetric(3, radius=2) if metric is None else metric
    kw.setdefault("level_iters", [2])
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(metric, **kw)
    mapping = sdr.optimize(static, moving, **(optimize_kw or {}))
    return np.array(mapping.forward), np.array(mapping.backward)


def _sdr_cases():
    reg = lambda **kw: lambda: _register(**kw)  # noqa: E731
    cases = [
        Case("SDR-metric=object()", reg(metric=object()), "TypeError", "metric"),
        Case("SDR-metric=None", lambda: fastsyn.SymmetricDiffeomorphicRegistration(None),
             "refuse", "metric"),
        Case("SDR-metric-class-not-instance", reg(metric=fastsyn.CCMetric), "TypeError",
             "metric"),
        Case("SDR-metric-2d-images-3d", reg(metric=fastsyn.CCMetric(2, radius=2)),
             "ValueError", "dim|metric|static"),
        Case("SDR-level_iters=[]", reg(level_iters=[]), "ValueError", "level_iters"),
        Case("SDR-level_iters=[-1]", reg(level_iters=[-1]), "ValueError", "level_iters"),
        Case("SDR-level_iters=[2,-3]", reg(level_iters=[2, -3]), "ValueError", "level_iters"),
        Case("SDR-level_iters=[1.5]", reg(level_iters=[1.5]), "refuse", "level_iters"),
        Case("SDR-level_iters=[True]", reg(level_iters=[True]), "TypeError", "level_iters"),
        Case("SDR-level_iters=5", reg(level_iters=5), "TypeError", "level_iters"),
        Case("SDR-level_iters=[nan]", reg(level_iters=[float("nan")]), "refuse",
             "level_iters"),
        Case("SDR-inv_iter=-1", reg(inv_iter=-1), "ValueError", "inv_iter"),
        Case("SDR-inv_iter=1.5", reg(inv_iter=1.5), "refuse", "inv_iter"),
        Case("SDR-inv_iter=True", reg(inv_iter=True), "TypeError", "inv_iter"),
        Case("SDR-ss_sigma_factor=-1", reg(ss_sigma_factor=-1.0), "ValueError",
             "ss_sigma_factor"),
        Case("SDR-step_length=0", reg(step_length=0.0), "ValueError", "step_length"),
        Case("SDR-step_length=-1", reg(step_length=-1.0), "ValueError", "step_length"),
    ]
    for arg in ("step_length", "opt_tol", "inv_tol", "ss_sigma_factor"):
        for v in (float("nan"), float("inf"), float("-inf"), True, "0.1"):
            expect = "TypeError" if isinstance(v, (bool, str)) else "ValueError"
            cases.append(Case(f"SDR-{arg}={v!r}", reg(**{arg: v}), expect, arg))
    cases += _num_threads_cases("SDR", lambda nt: _register(num_threads=nt))
    img = smooth_image((12, 12, 12), 1)
    mov = smooth_image((12, 12, 12), 2)
    nan = np.eye(4)
    nan[0, 3] = np.nan
    opt = lambda **kw: lambda: _register(optimize_kw=kw)  # noqa: E731
    cases += [
        Case("SDR-optimize-static_grid2world-5x5", opt(static_grid2world=np.eye(5)),
             "ValueError", "static_grid2world"),
        Case("SDR-optimize-static_grid2world-3x3", opt(static_grid2world=np.eye(3)),
             "ValueError", "static_grid2world"),
        Case("SDR-optimize-moving_grid2world-3x4", opt(moving_grid2world=np.eye(4)[:3]),
             "ValueError", "moving_grid2world"),
        Case("SDR-optimize-moving_grid2world-nan", opt(moving_grid2world=nan), "ValueError",
             "moving_grid2world"),
        Case("SDR-optimize-prealign-5x5", opt(prealign=np.eye(5)), "ValueError", "prealign"),
        Case("SDR-optimize-prealign-inf", opt(prealign=np.where(np.isnan(nan), np.inf, nan)),
             "ValueError", "prealign"),
        Case("SDR-optimize-static-zero-size",
             lambda: _register(images=(img[:0], mov[:0])), "ValueError", "static"),
        Case("SDR-optimize-static-2d-moving-3d",
             lambda: _register(images=(img[0], mov)), "ValueError", "static"),
        Case("SDR-optimize-images-object-converted-like-dipy",
             lambda: _register(images=(img.astype(object), mov.astype(object))), "equal",
             None, lambda: _register(images=(img, mov))),
        Case("SDR-optimize-images-fortran-order",
             lambda: _register(images=(np.asfortranarray(img), np.asfortranarray(mov))),
             "equal", None, lambda: _register(images=(img, mov))),
        Case("SDR-optimize-images-int32-converted-like-dipy",
             lambda: _register(images=(img.astype(np.int32), mov.astype(np.int32))), "equal",
             None, lambda: _register(images=(img.astype(np.int32).astype(np.float32),
                                             mov.astype(np.int32).astype(np.float32)))),
    ]
    return cases


# ------------------------------------------------------- DiffeomorphicMap
def _maps(patched=False):
    """A fastsyn map and the same DIPY map (3D, 6^3 grid, small random field)."""
    from dipy.align.imwarp import DiffeomorphicMap as DipyMap

    fwd = field((6, 6, 6), np.float32, seed=3, amplitude=0.8)
    bwd = field((6, 6, 6), np.float32, seed=4, amplitude=0.8)
    maps = []
    for cls in (fastsyn.DiffeomorphicMap, DipyMap):
        m = cls(3, (6, 6, 6), disp_grid2world=np.eye(4), domain_shape=(6, 6, 6),
                domain_grid2world=np.eye(4), codomain_shape=(6, 6, 6),
                codomain_grid2world=np.eye(4))
        m.forward, m.backward = fwd.copy(), bwd.copy()
        maps.append(m)
    return maps


def _map_cases():
    vol = image((6, 6, 6), np.float32, seed=5)

    def ours(method="transform", **kw):
        return lambda: getattr(_maps()[0], method)(kw.pop("image", vol), **kw)

    def dipys(method="transform", **kw):
        return lambda: getattr(_maps()[1], method)(kw.pop("image", vol), **kw)

    cases = [
        Case("DiffeomorphicMap-transform-image-2d", ours(image=vol[0]), "ValueError",
             "image"),
        Case("DiffeomorphicMap-transform-image-zero-size", ours(image=vol[:0]), "ValueError",
             "image"),
        Case("DiffeomorphicMap-transform-image-object-linear-like-dipy",
             ours(image=vol.astype(object)), "equal", None, dipys(image=vol.astype(object)),
             16 * np.finfo(np.float32).eps),
        Case("DiffeomorphicMap-transform-out_shape-zero", ours(out_shape=(6, 0, 6)),
             "ValueError", "out_shape"),
        Case("DiffeomorphicMap-transform-out_shape-len-2", ours(out_shape=(6, 6)),
             "ValueError", "out_shape"),
        Case("DiffeomorphicMap-transform-image_world2grid-5x5",
             ours(image_world2grid=np.eye(5)), "ValueError", "image_world2grid"),
        Case("DiffeomorphicMap-transform-out_grid2world-3x3",
             ours(out_grid2world=np.eye(3)), "ValueError", "out_grid2world"),
        Case("DiffeomorphicMap-transform-interpolation-cubic", ours(interpolation="cubic"),
             "equal_or_refuse", "interpolation", dipys(interpolation="cubic"),
             16 * np.finfo(np.float32).eps),
        Case("DiffeomorphicMap-transform-int-image-linear-like-dipy",
             ours(image=np.round(vol * 9).astype(np.int64)), "equal", None,
             dipys(image=np.round(vol * 9).astype(np.int64)), 16 * np.finfo(np.float32).eps * 9),
        Case("DiffeomorphicMap-transform-labels-nearest-like-dipy",
             ours(image=np.round(vol * 9).astype(np.int32), interpolation="nearest"),
             "equal", None,
             dipys(image=np.round(vol * 9).astype(np.int32), interpolation="nearest")),
        Case("DiffeomorphicMap-transform-fortran-image", ours(image=np.asfortranarray(vol)),
             "equal", None, ours()),
        Case("DiffeomorphicMap-transform_inverse-image-zero-size",
             ours("transform_inverse", image=vol[:0]), "ValueError", "image"),
        Case("DiffeomorphicMap-disp_shape-zero",
             lambda: fastsyn.DiffeomorphicMap(3, (0, 6, 6)), "ValueError", "disp_shape"),
    ]
    cases += _num_threads_cases("DiffeomorphicMap",
                                lambda nt: _map_with_threads(nt).transform(vol))
    return cases


def _map_with_threads(nt):
    m = fastsyn.DiffeomorphicMap(3, (6, 6, 6), num_threads=nt)
    m.forward = field((6, 6, 6), np.float32, seed=3)
    m.backward = field((6, 6, 6), np.float32, seed=4)
    return m


def _patch_cases():
    vol = image((6, 6, 6), np.float32, seed=5)

    def patched(nt):
        with fastsyn.patch_dipy(num_threads=nt):
            return _maps()[1].transform(vol)

    return _num_threads_cases("patch_dipy", patched)


CASES = (_entry_cases() + _mismatch_cases() + _cc_cases() + _mi_cases() + _sdr_cases()
         + _map_cases() + _patch_cases())


# ------------------------------------------------------------ regressions
def _defect_a():
    """warp with an identity affine_idx_in and a field on a smaller grid than
    out_shape: must equal DIPY (fastsyn once took the identity for None and
    indexed the 3^3 field with 6^3 indices)."""
    vfu = _vfu()
    cases = []
    for name, dim in (("warp_3d", 3), ("warp_3d_nn", 3), ("warp_2d", 2), ("warp_2d_nn", 2)):
        def args(dim=dim):
            vol = image((6,) * dim, np.float64, seed=0)
            return (vol, np.zeros((3,) * dim + (dim,)), np.eye(dim + 1), None, None,
                    (6,) * dim)

        def ours(name=name, args=args):
            return getattr(fields, name)(*args())

        def ref(name=name, args=args):
            a = list(args())
            a[-1] = _i32(a[-1])
            return np.asarray(getattr(vfu, name)(*a))
        cases.append(Case(f"defect-a-{name}-identity-affine-small-field", ours, "equal",
                          None, ref, 16 * EPS64))

    vol = image((6, 6, 6), np.float32, seed=0)

    def small_maps():
        from dipy.align.imwarp import DiffeomorphicMap as DipyMap
        out = []
        for cls in (fastsyn.DiffeomorphicMap, DipyMap):
            m = cls(3, (3, 3, 3), disp_grid2world=np.eye(4), domain_shape=(6, 6, 6),
                    domain_grid2world=np.eye(4), codomain_shape=(6, 6, 6),
                    codomain_grid2world=np.eye(4))
            m.allocate()
            out.append(m)
        return out

    for method in ("transform", "transform_inverse"):
        for interp in ("linear", "nearest"):
            def ours(method=method, interp=interp):
                return getattr(small_maps()[0], method)(
                    vol, interpolation=interp, out_shape=_i32((6, 6, 6)),
                    out_grid2world=np.eye(4))

            def ref(method=method, interp=interp):
                return getattr(small_maps()[1], method)(
                    vol, interpolation=interp, out_shape=_i32((6, 6, 6)),
                    out_grid2world=np.eye(4))

            def patched(method=method, interp=interp):
                with fastsyn.patch_dipy():
                    return ref(method, interp)
            atol = 16 * np.finfo(np.float32).eps
            cases.append(Case(f"defect-a-DiffeomorphicMap-{method}-{interp}-larger-out_shape",
                              ours, "equal", None, ref, atol))
            cases.append(Case(f"defect-a-patch_dipy-{method}-{interp}-larger-out_shape",
                              patched, "equal", None, ref, atol))
    return cases


def _defect_b():
    """Zero-length axes must be a ValueError, not SIGFPE or a bad read."""
    return [
        Case(f"defect-b-gaussian_smooth-{label}",
             lambda shape=shape, vector=vector: fields.gaussian_smooth(
                 np.zeros(shape), 1.0, vector=vector), "ValueError", "array")
        for label, shape, vector in (
            ("image-zero-axis0", (0, 5, 5), False), ("image-zero-axis2", (5, 5, 0), False),
            ("vector-zero-axis0", (0, 5, 5, 3), True), ("vector-zero-axis1", (5, 0, 5, 3), True),
            ("vector-2d-zero-axis0", (0, 5, 2), True))
    ] + [
        Case(f"defect-b-compose_vector_fields_{dim}d-zero-size-{'x'.join(map(str, shape))}",
             lambda dim=dim, shape=shape: getattr(fields, f"compose_vector_fields_{dim}d")(
                 np.zeros(shape), np.zeros(shape), None, None, 1.0), "ValueError", "d1")
        for dim, shape in ((3, (0, 4, 4, 3)), (3, (4, 4, 0, 3)), (2, (0, 4, 2)))
    ]


class RecordingCC(fastsyn.CCMetric):
    """CCMetric that keeps what it returned (and a private copy), and can
    poison one forward step with ``bad``."""

    def __init__(self, *args, bad=None, bad_call=3, **kw):
        super().__init__(*args, **kw)
        self.bad, self.bad_call = bad, bad_call
        self.calls = 0
        self.returned = []

    def _record(self, step):
        self.returned.append((step, np.array(step, copy=True)))
        return step

    def compute_forward(self):
        step = super().compute_forward()
        self.calls += 1
        if self.bad is not None and self.calls == self.bad_call:
            step[...] = 0
            step[5, 5, 5] = self.bad
        return self._record(step)

    def compute_backward(self):
        return self._record(super().compute_backward())


def _steps_untouched(metric):
    changed = [i for i, (step, copy) in enumerate(metric.returned)
               if not np.array_equal(step, copy, equal_nan=True)]
    if changed:
        raise AssertionError(f"optimize modified {len(changed)} of {len(metric.returned)} "
                             f"steps returned by the metric in place (calls {changed[:5]})")
    return True


def _defect_c():
    static = smooth_image((16, 16, 16), 1)
    moving = smooth_image((16, 16, 16), 2)

    def ours():
        metric = RecordingCC(3, radius=2)
        fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[3]).optimize(
            static, moving)
        return _steps_untouched(metric)

    def patched():
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration as DipySDR
        metric = RecordingCC(3, radius=2)
        with fastsyn.patch_dipy():
            DipySDR(metric, level_iters=[3]).optimize(static, moving)
        return _steps_untouched(metric)

    def poisoned(bad):
        def run():
            metric = RecordingCC(3, radius=2, bad=bad, bad_call=3)
            mapping = fastsyn.SymmetricDiffeomorphicRegistration(
                metric, level_iters=[5]).optimize(static, moving)
            return (f"optimize returned normally (forward field finite: "
                    f"{bool(np.isfinite(mapping.forward).all())})")
        return run

    # The third forward step is poisoned: single level, so level 0 (or 1),
    # iteration 2 (0-based) or 3 (1-based).
    where = r"(?=.*level\D{0,20}[01]\b)(?=.*iteration\D{0,20}[23]\b)"
    return [
        Case("defect-c-optimize-leaves-metric-steps-untouched", ours, "equal", None,
             lambda: True),
        Case("defect-c-patched-dipy-leaves-metric-steps-untouched", patched, "equal", None,
             lambda: True),
        Case("defect-c-nan-step-stops-with-level-and-iteration", poisoned(np.nan), "error",
             where),
        Case("defect-c-inf-step-stops-with-level-and-iteration", poisoned(np.inf), "error",
             where),
    ]


REGRESSIONS = _defect_a() + _defect_b() + _defect_c()


# -------------------------------------------------------------- evaluation
def _flatten(result):
    if isinstance(result, (tuple, list)):
        out = []
        for r in result:
            out.extend(_flatten(r))
        return out
    if isinstance(result, (bool, np.bool_)):
        return [np.asarray(result)]
    if result is None:
        return []
    return [np.asarray(result)]


def _compare(result, ref, atol):
    """None if ``result`` equals ``ref`` (within ``atol`` scaled by the largest
    finite magnitude of ``ref``), else a description of the difference."""
    ours, theirs = _flatten(result), _flatten(ref)
    if len(ours) != len(theirs):
        return f"result has {len(ours)} parts, expected {len(theirs)}"
    for n, (a, b) in enumerate(zip(ours, theirs)):
        if a.shape != b.shape:
            return f"part {n}: shape {a.shape}, expected {b.shape}"
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if not np.array_equal(np.isnan(a64), np.isnan(b64)):
                return f"part {n}: NaN in different places"
            finite = np.isfinite(b64)
            scale = np.abs(b64[finite]).max() if finite.any() else 0.0
            tol = atol * max(scale, 1.0)
            fa, fb = np.nan_to_num(a64, nan=0.0), np.nan_to_num(b64, nan=0.0)
            both_inf = np.isinf(fa) & np.isinf(fb) & (np.sign(fa) == np.sign(fb))
            diff = np.where(both_inf, 0.0, np.abs(fa - fb))
            if not (diff <= tol).all():
                where = np.unravel_index(np.argmax(diff), diff.shape)
                return (f"part {n}: max |difference| {diff.max():.3g} at {where} "
                        f"(got {a64[where]!r}, expected {b64[where]!r}; tolerance {tol:.3g})")
        elif not np.array_equal(a, b):
            return f"part {n}: {np.count_nonzero(a != b)} of {a.size} values differ"
    return None


def _describe(exc):
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _matches(case, exc):
    return case.match is None or re.search(case.match, str(exc), re.IGNORECASE | re.DOTALL)


def evaluate(case):
    """Run ``case``; returns (passed, what happened)."""
    try:
        result = case.call()
    except Exception as exc:  # noqa: BLE001 - every exception is an outcome here
        raised = exc
    else:
        raised = None

    if case.expect in ("ValueError", "TypeError"):
        wanted = ValueError if case.expect == "ValueError" else TypeError
        if raised is None:
            return False, f"returned normally; expected {case.expect} matching /{case.match}/"
        ok = isinstance(raised, wanted) and _matches(case, raised)
        return ok, f"raised {_describe(raised)}"
    if case.expect in ("refuse", "error"):
        wanted = (ValueError, TypeError) if case.expect == "refuse" else Exception
        if raised is None:
            extra = f" ({result})" if isinstance(result, str) else ""
            return False, f"returned normally{extra}; expected an error matching /{case.match}/"
        return bool(isinstance(raised, wanted) and _matches(case, raised)), \
            f"raised {_describe(raised)}"
    # Outcomes that may (or must) return a result.
    if raised is not None:
        if case.expect in ("equal_or_refuse", "ok_or_ValueError"):
            wanted = (ValueError, TypeError) if case.expect == "equal_or_refuse" else ValueError
            if isinstance(raised, wanted) and _matches(case, raised):
                return True, f"refused: {_describe(raised)}"
        return False, f"raised {_describe(raised)}"
    try:
        ref = case.ref()
    except Exception as exc:  # noqa: BLE001
        return False, f"returned, but the reference raised {_describe(exc)}"
    diff = _compare(result, ref, case.atol)
    if diff is not None:
        return False, f"returned a different result: {diff}"
    finite = all(np.isfinite(p).all() for p in _flatten(result) if p.dtype.kind == "f")
    ref_finite = all(np.isfinite(p).all() for p in _flatten(ref) if p.dtype.kind == "f")
    if finite or not ref_finite:
        return True, "returned the expected result"
    return False, "returned non-finite values"


ALL = {c.id: c for c in CASES + REGRESSIONS}
_IDS = [c.id for c in CASES + REGRESSIONS]
_DUPLICATES = sorted({i for i in _IDS if _IDS.count(i) > 1})
assert not _DUPLICATES, f"duplicate case ids: {_DUPLICATES}"


# ------------------------------------------------------------------ pytest
@pytest.fixture(scope="module")
def outcomes(request):
    """Run the selected cases of this module in worker processes, once."""
    ids = [item.callspec.params["case_id"] for item in request.session.items
           if getattr(item, "module", None) is sys.modules[__name__]
           and hasattr(item, "callspec") and "case_id" in item.callspec.params]
    return run_worker([sys.executable, os.path.abspath(__file__)], ids or list(ALL))


def _check(outcomes, case_id):
    outcome = outcomes.get(case_id)
    assert outcome is not None, f"{case_id}: no outcome"
    case = ALL[case_id]
    assert outcome["ok"], (f"{case_id}: expected {case.expect}"
                           f"{f' /{case.match}/' if case.match else ''}; "
                           f"{outcome['observed']}")


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input(outcomes, case_id):
    _check(outcomes, case_id)


@pytest.mark.parametrize("case_id", [c.id for c in REGRESSIONS])
def test_known_defect(outcomes, case_id):
    _check(outcomes, case_id)


def test_table_size():
    """The table covers every public entry point (guards against cases being
    silently dropped by the generator)."""
    assert len(CASES) >= 400
    prefixes = {c.id.split("-")[0] for c in CASES}
    for name in list(ENTRIES) + ["CCMetric", "MIMetric", "SDR", "DiffeomorphicMap",
                                 "patch_dipy"]:
        assert name in prefixes, name


if __name__ == "__main__":
    worker_main(lambda cid: evaluate(ALL[cid]))
