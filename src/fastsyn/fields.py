"""Threaded displacement-field operations with DIPY's names.

Each function mirrors its twin in :mod:`dipy.align.vector_fields` (same
arguments, same results up to floating-point rounding) and adds
``num_threads``.  Results are bitwise identical for every thread count.
Arguments are validated here; the ``_kernels`` extension modules assume
checked, C-contiguous input.
"""

from collections import namedtuple

import numpy as np

from fastsyn._kernels import compose as k_compose
from fastsyn._kernels import gradient as k_gradient
from fastsyn._kernels import invert as k_invert
from fastsyn._kernels import smooth as k_smooth
from fastsyn._kernels import warp as k_warp
from fastsyn._threads import effective_threads, parallel_grain, resolve_num_threads
from fastsyn._validation import (
    check_affine,
    check_direction,
    check_field,
    check_image,
    check_integer,
    check_out,
    check_real,
    check_shape,
    check_spacing,
    direction_rows,
    flat_affine,
)

__all__ = [
    "InversionResult",
    "compose_vector_fields_2d",
    "compose_vector_fields_3d",
    "FOLD_REPAIR_MIN_DET",
    "discrete_gaussian_kernel1d",
    "discrete_gaussian_smooth_field",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "image_gradient",
    "invert_displacement_field",
    "invert_vector_field_fixed_point_2d",
    "invert_vector_field_fixed_point_3d",
    "jacobian_determinant",
    "parallel_grain",
    "repair_folds",
    "resample_displacement_field",
    "warp_2d",
    "warp_2d_nn",
    "warp_3d",
    "warp_3d_nn",
]

InversionResult = namedtuple("InversionResult", ["field", "iterations", "error"])


# ---------------------------------------------------------------- composition
def compose_unchecked(d1, d2, premult_index, premult_disp, time_scaling, comp, nthreads):
    """Kernel call for checked, C-contiguous, same-dtype fields."""
    dim = d1.shape[-1]
    partial = np.zeros((d1.shape[0], 4), dtype=np.float64)
    ia, ia_none = flat_affine(premult_index, dim)
    da, da_none = flat_affine(premult_disp, dim)
    kernel = k_compose.compose_3d if dim == 3 else k_compose.compose_2d
    kernel(d1, d2, ia, ia_none, da, da_none, float(time_scaling), comp, partial,
           effective_threads(nthreads, d1.size // dim))
    return comp, np.asarray(k_compose.merge_stats(partial), dtype=np.float64)


def _compose(dim, d1, d2, premult_index, premult_disp, time_scaling, comp, num_threads):
    nthreads = resolve_num_threads(num_threads)
    d1 = check_field("d1", d1, dim=dim)
    d2 = check_field("d2", d2, dim=dim, dtype=d1.dtype)
    premult_index = check_affine("premult_index", premult_index, dim)
    premult_disp = check_affine("premult_disp", premult_disp, dim)
    time_scaling = check_real("time_scaling", time_scaling)
    if comp is None:
        comp = np.empty_like(d1)  # the kernel writes every voxel
    else:
        check_out("comp", comp, d1, "d1")
        if np.shares_memory(comp, d2):
            raise ValueError(
                "comp must not share memory with d2: d2 values are read while comp "
                "is written"
            )
    return compose_unchecked(d1, d2, premult_index, premult_disp, time_scaling, comp, nthreads)


def compose_vector_fields_3d(d1, d2, premult_index, premult_disp, time_scaling,
                             comp=None, *, num_threads=None):
    r"""Compose two 3D displacement fields.

    ``comp[i] = d1[i] + t * d2[A i + B d1[i]]`` with trilinear interpolation
    of ``d2``; voxels whose target falls outside ``d2``'s grid get a zero
    vector, as in DIPY.

    Parameters
    ----------
    d1 : array, shape (S, R, C, 3)
        First displacement field (float32 or float64).
    d2 : array, shape (S', R', C', 3)
        Second displacement field, same dtype as ``d1``.
    premult_index : array, shape (4, 4) or None
        The matrix A (None for the identity).
    premult_disp : array, shape (4, 4) or None
        The matrix B (None for the identity).
    time_scaling : float
        The factor t.
    comp : array, shape (S, R, C, 3), optional
        Output buffer; may be ``d1`` itself (in-place update) but must not
        share memory with ``d2``.
    num_threads : int or None, optional
        Threads to use (None: OpenMP default; negative: counts back from
        the number of CPUs).

    Returns
    -------
    comp : array, shape (S, R, C, 3)
        The composition.
    stats : array, shape (3,)
        Maximum norm, root-mean-square norm and the spread of the squared
        norms of the composed vectors, as DIPY reports them.
    """
    return _compose(3, d1, d2, premult_index, premult_disp, time_scaling, comp, num_threads)


def compose_vector_fields_2d(d1, d2, premult_index, premult_disp, time_scaling,
                             comp=None, *, num_threads=None):
    r"""Compose two 2D displacement fields.

    The 2D twin of :func:`compose_vector_fields_3d` (fields of shape
    (R, C, 2), affines of shape (3, 3)).
    """
    return _compose(2, d1, d2, premult_index, premult_disp, time_scaling, comp, num_threads)


def resample_unchecked(field, factors, out_shape, nthreads):
    dim = field.shape[-1]
    # Like the warp and composition kernels, the kernel writes every output
    # voxel: no zeroing pass, and each thread first-touches its own pages.
    out = np.empty(tuple(int(s) for s in out_shape) + (dim,), dtype=field.dtype)
    factors = np.ascontiguousarray(factors, dtype=np.float64)
    kernel = k_compose.resample_3d if dim == 3 else k_compose.resample_2d
    kernel(field, factors, out, effective_threads(nthreads, out.size // dim))
    return out


def resample_displacement_field(field, factors, out_shape, *, num_threads=None):
    r"""Resample a displacement field: ``out[i] = field[diag(factors) i]``.

    DIPY's ``resample_displacement_field_{2d,3d}`` (used when the pyramid
    moves to a finer level) plus ``num_threads``; linear interpolation with
    DIPY's zero-padded border.

    Parameters
    ----------
    field : array, shape (R, C, 2) or (S, R, C, 3)
        The field (float32 or float64).
    factors : array, shape (dim,)
        Scale from the output grid to ``field``'s grid.
    out_shape : sequence of int
        Output grid shape.
    num_threads : int or None, optional
        Threads to use.

    Returns
    -------
    resampled : array, shape out_shape + (dim,)
    """
    nthreads = resolve_num_threads(num_threads)
    field = check_field("field", field)
    dim = field.shape[-1]
    factors = check_spacing("factors", factors, dim)
    out_shape = check_shape("out_shape", out_shape, dim)
    return resample_unchecked(field, factors, out_shape, nthreads)


# ------------------------------------------------------------------ inversion
class InversionWorkspace:
    """Scratch buffers for repeated inversions of same-shaped fields.

    ``q`` may be a caller's scratch field of that shape and dtype: an
    inversion overwrites it before reading it, so its contents are free.
    """

    def __init__(self, shape, dtype, q=None):
        if q is None:
            q = np.empty(shape, dtype=dtype)
        elif q.shape != tuple(shape) or q.dtype != dtype or not q.flags.c_contiguous:
            raise ValueError(f"q must be a C-contiguous {np.dtype(dtype)} array of shape "
                             f"{tuple(shape)}, got {q.dtype} {q.shape}")
        self.q = q
        self.partial_sum = np.empty(shape[0], dtype=np.float64)
        self.partial_max = np.empty(shape[0], dtype=np.float64)

    def fits(self, shape, dtype):
        return self.q.shape == tuple(shape) and self.q.dtype == dtype


def _inversion_setup(d, d_world2grid, nthreads, workspace):
    """(dim, workspace, flat world-to-grid, its identity flag, threads) of an
    inversion of ``d``."""
    dim = d.shape[-1]
    if workspace is None or not workspace.fits(d.shape, d.dtype):
        workspace = InversionWorkspace(d.shape, d.dtype)
    w2g, w2g_none = flat_affine(d_world2grid, dim)
    return dim, workspace, w2g, w2g_none, effective_threads(nthreads, d.size // dim)


def invert_unchecked(d, d_world2grid, spacing, max_iter, tol, out, nthreads,
                     workspace=None):
    """Invert ``d`` into ``out`` (holding the warm start); checked input."""
    dim, workspace, w2g, w2g_none, nthreads = _inversion_setup(d, d_world2grid, nthreads,
                                                               workspace)
    if dim == 3:
        iters, error = k_invert.invert_3d(
            out, d, w2g, w2g_none, spacing[0], spacing[1], spacing[2], int(max_iter),
            float(tol), workspace.q, workspace.partial_sum, workspace.partial_max, nthreads)
    else:
        iters, error = k_invert.invert_2d(
            out, d, w2g, w2g_none, spacing[0], spacing[1], int(max_iter), float(tol),
            workspace.q, workspace.partial_sum, workspace.partial_max, nthreads)
    return InversionResult(out, int(iters), float(error))


def refine_inverse_unchecked(d, d_world2grid, spacing, out, maxlen, nthreads,
                             workspace=None, epsilon=0.5):
    """One fused fixed-point sweep of the inverse ``out`` of ``d`` (in place).

    Unlike :func:`invert_unchecked` (DIPY's loop: the update of a sweep is
    clipped with that sweep's largest residual, which costs a second pass),
    the clipping length ``maxlen`` (voxels) is the caller's, normally the
    previous sweep's residual times ``epsilon``; ``inf`` does not clip.

    Returns
    -------
    float
        The largest residual norm (voxels) of this sweep, before its update.
    """
    dim, workspace, w2g, w2g_none, nthreads = _inversion_setup(d, d_world2grid, nthreads,
                                                               workspace)
    if dim == 3:
        return k_invert.refine_3d(out, d, w2g, w2g_none, spacing[0], spacing[1],
                                  spacing[2], float(maxlen), float(epsilon),
                                  workspace.partial_max, nthreads)
    return k_invert.refine_2d(out, d, w2g, w2g_none, spacing[0], spacing[1],
                              float(maxlen), float(epsilon), workspace.partial_max,
                              nthreads)


def invert_displacement_field(d, d_world2grid, spacing, max_iter, tol, *, start=None,
                              out=None, num_threads=None, dim=None, _tol_name="tol"):
    r"""Fixed-point inversion of a displacement field (Chen et al., 2008).

    Same algorithm, step rule and stopping rule as DIPY's
    ``invert_vector_field_fixed_point_{2d,3d}``, with the composition, the
    residual norms and the update fused into one threaded sweep.

    Parameters
    ----------
    d : array, shape (R, C, 2) or (S, R, C, 3)
        The field to invert (float32 or float64).
    d_world2grid : array, shape (dim + 1, dim + 1) or None
        World-to-grid transform of ``d``'s grid.
    spacing : array, shape (dim,)
        Voxel size.
    max_iter : int
        Maximum number of fixed-point iterations.
    tol : float
        Stop when the mean residual norm (in voxels) falls below ``tol``.
    start : array, optional
        Initial guess (warm start); zero if None.
    out : array, optional
        Output buffer (may be ``start``: the warm start is then updated in
        place, saving a copy).
    num_threads : int or None, optional
        Threads to use.
    dim : {2, 3}, optional
        Require a field of this dimension.

    Returns
    -------
    InversionResult
        ``(field, iterations, error)``.
    """
    nthreads = resolve_num_threads(num_threads)
    d = check_field("d", d, dim=dim)
    dim = d.shape[-1]
    d_world2grid = check_affine("d_world2grid", d_world2grid, dim)
    spacing = check_spacing("spacing", spacing, dim)
    max_iter = check_integer("max_iter", max_iter, low=0)
    tol = check_real(_tol_name, tol, low=0)
    if out is not None:
        check_out("out", out, d, "d")
        if np.shares_memory(out, d):
            raise ValueError("out must not share memory with d")
    if start is not None:
        start = check_field("start", start, dim=dim)
        if start.shape != d.shape:
            raise ValueError(f"start must have shape {d.shape}, got {start.shape}")
    if out is None:
        out = np.zeros_like(d) if start is None else start.astype(d.dtype, copy=True)
    elif start is None:
        out[...] = 0
    elif start is not out:
        out[...] = start
    return invert_unchecked(d, d_world2grid, spacing, max_iter, tol, out, nthreads)


def invert_vector_field_fixed_point_3d(d, d_world2grid, spacing, max_iter, tol,
                                       start=None, *, num_threads=None):
    r"""Invert a 3D displacement field; DIPY's signature plus ``num_threads``.

    See :func:`invert_displacement_field` for the parameters.

    Returns
    -------
    p : array, shape (S, R, C, 3)
        The inverse displacement field.
    """
    return invert_displacement_field(d, d_world2grid, spacing, max_iter, tol,
                                     start=start, num_threads=num_threads, dim=3).field


def invert_vector_field_fixed_point_2d(d, d_world2grid, spacing, max_iter, tolerance,
                                       start=None, *, num_threads=None):
    r"""Invert a 2D displacement field; DIPY's signature plus ``num_threads``.

    See :func:`invert_displacement_field` for the parameters.
    """
    return invert_displacement_field(d, d_world2grid, spacing, max_iter, tolerance,
                                     start=start, num_threads=num_threads, dim=2,
                                     _tol_name="tolerance").field


# -------------------------------------------------------------------- warping
_NN_TYPES = (np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16,
             np.int32, np.uint32, np.int64, np.uint64)


def check_warp_volume(name, volume, dim, nearest, *, finite=True, convert=False):
    """An image to warp, in a type the kernels read: any numeric type for
    nearest neighbour (booleans as uint8); for linear interpolation
    float32/float64, or with ``convert`` any numeric type converted to
    float32 (DIPY's maps convert, its ``warp_3d`` does not)."""
    volume = check_image(name, volume, dim=dim, numeric=nearest or convert, finite=finite)
    if nearest:
        if volume.dtype.type not in _NN_TYPES:
            volume = volume.astype(np.int64 if volume.dtype.kind in "iu" else np.float64)
    elif volume.dtype.type not in (np.float32, np.float64):
        volume = volume.astype(np.float32 if volume.dtype.kind in "biu" else np.float64)
    return volume


def warp_unchecked(volume, field, affine_idx_in, affine_idx_out, affine_disp,
                   out_shape, nearest, nthreads):
    dim = field.shape[-1]
    out = np.empty(tuple(int(s) for s in out_shape), dtype=volume.dtype)  # all written
    # Skipping an identity A reads the field at the output index: only in
    # bounds when the output grid is the field's grid.
    a_in, a_in_none = flat_affine(affine_idx_in, dim,
                                  skip_identity=out.shape == field.shape[:dim])
    a_out, a_out_none = flat_affine(affine_idx_out, dim)
    a_disp, a_disp_none = flat_affine(affine_disp, dim)
    if dim == 3:
        kernel = k_warp.warp_3d_nn if nearest else k_warp.warp_3d
    else:
        kernel = k_warp.warp_2d_nn if nearest else k_warp.warp_2d
    kernel(volume, field, a_in, a_in_none, a_out, a_out_none, a_disp, a_disp_none, out,
           effective_threads(nthreads, out.size))
    return out


def sample_points_unchecked(field, affine_idx_in, affine_idx_out, affine_disp, out_shape,
                            dtype, nthreads):
    """The grid coordinates ``C d[A i] + B i`` at which :func:`warp_unchecked`
    with the same arguments samples each output voxel, shape ``out_shape +
    (dim,)`` in ``dtype`` (the field's precision or wider)."""
    dim = field.shape[-1]
    shape = tuple(int(s) for s in out_shape)
    out = np.empty(shape + (dim,), dtype=dtype)  # all written
    a_in, a_in_none = flat_affine(affine_idx_in, dim,
                                  skip_identity=shape == field.shape[:dim])
    a_out, a_out_none = flat_affine(affine_idx_out, dim)
    a_disp, a_disp_none = flat_affine(affine_disp, dim)
    kernel = k_warp.sample_points_3d if dim == 3 else k_warp.sample_points_2d
    kernel(np.ascontiguousarray(field, dtype=dtype), a_in, a_in_none, a_out, a_out_none,
           a_disp, a_disp_none, out, effective_threads(nthreads, out.size // dim))
    return out


def _warp(dim, volume, d1, affine_idx_in, affine_idx_out, affine_disp, out_shape,
          nearest, num_threads):
    nthreads = resolve_num_threads(num_threads)
    field = check_field("d1", d1, dim=dim)
    volume = check_warp_volume("image" if dim == 2 else "volume", volume, dim, nearest)
    affine_idx_in = check_affine("affine_idx_in", affine_idx_in, dim)
    affine_idx_out = check_affine("affine_idx_out", affine_idx_out, dim)
    affine_disp = check_affine("affine_disp", affine_disp, dim)
    out_shape = field.shape[:dim] if out_shape is None else check_shape("out_shape",
                                                                         out_shape, dim)
    if affine_idx_in is None and out_shape != field.shape[:dim]:
        raise ValueError(
            f"out_shape {out_shape} must equal the field's grid {field.shape[:dim]} "
            "when affine_idx_in is None"
        )
    return warp_unchecked(volume, field, affine_idx_in, affine_idx_out, affine_disp,
                          out_shape, nearest, nthreads)


_WARP_DOC = r"""Warp a {dim}D {what} through a displacement field ({interp}).

    ``warped[i] = {what}[C * d1[A i] + B i]``, DIPY's ``{twin}`` plus
    ``num_threads``.

    Parameters
    ----------
    {what} : array, shape {shape}
        The {what} to warp{dtypes}.
    d1 : array, shape {fshape}
        Displacement field (float32 or float64).
    affine_idx_in, affine_idx_out, affine_disp : array, shape ({n}, {n}) or None
        The matrices A, B and C (None for the identity).
    out_shape : sequence of int, optional
        Sampling grid shape (default: the field's grid).
    num_threads : int or None, optional
        Threads to use.

    Returns
    -------
    warped : array, shape out_shape
        The warped {what}, same dtype as the input.
    """


def warp_3d(volume, d1, affine_idx_in=None, affine_idx_out=None, affine_disp=None,
            out_shape=None, *, num_threads=None):
    return _warp(3, volume, d1, affine_idx_in, affine_idx_out, affine_disp, out_shape,
                 False, num_threads)


def warp_3d_nn(volume, d1, affine_idx_in=None, affine_idx_out=None, affine_disp=None,
               out_shape=None, *, num_threads=None):
    return _warp(3, volume, d1, affine_idx_in, affine_idx_out, affine_disp, out_shape,
                 True, num_threads)


def warp_2d(image, d1, affine_idx_in=None, affine_idx_out=None, affine_disp=None,
            out_shape=None, *, num_threads=None):
    return _warp(2, image, d1, affine_idx_in, affine_idx_out, affine_disp, out_shape,
                 False, num_threads)


def warp_2d_nn(image, d1, affine_idx_in=None, affine_idx_out=None, affine_disp=None,
               out_shape=None, *, num_threads=None):
    return _warp(2, image, d1, affine_idx_in, affine_idx_out, affine_disp, out_shape,
                 True, num_threads)


for _fn, _dim, _nn in ((warp_3d, 3, False), (warp_3d_nn, 3, True),
                       (warp_2d, 2, False), (warp_2d_nn, 2, True)):
    _fn.__doc__ = _WARP_DOC.format(
        dim=_dim, what="volume" if _dim == 3 else "image",
        interp="nearest neighbour" if _nn else ("trilinear" if _dim == 3 else "bilinear"),
        twin=_fn.__name__, shape="(S, R, C)" if _dim == 3 else "(R, C)",
        fshape="(S', R', C', 3)" if _dim == 3 else "(R', C', 2)", n=_dim + 1,
        dtypes=" (any numeric type)" if _nn else " (float32 or float64)")


# ------------------------------------------------------------------ gradients
def gradient_unchecked(image, spacing, direction, out, nthreads):
    dim = image.ndim
    dflat, dnone = direction_rows(direction, dim)
    kernel = k_gradient.gradient_3d if dim == 3 else k_gradient.gradient_2d
    kernel(image, spacing, dflat, dnone, out, effective_threads(nthreads, image.size))
    return out


def image_gradient(image, spacing=None, direction=None, *, num_threads=None):
    r"""Image gradient in physical space, as DIPY's SyN metrics compute it.

    ``numpy.gradient`` of the image, divided by the voxel size and
    re-oriented by the grid direction, in one threaded pass.

    Parameters
    ----------
    image : array, shape (R, C) or (S, R, C)
        float32 or float64 image.
    spacing : array, shape (dim,), optional
        Voxel size (1 if None).
    direction : array, shape (dim + 1, dim + 1), optional
        Grid direction (rotation part is applied; None for the identity).
    num_threads : int or None, optional
        Threads to use.

    Returns
    -------
    grad : array, shape image.shape + (dim,)
    """
    nthreads = resolve_num_threads(num_threads)
    image = check_image("image", image)
    dim = image.ndim
    spacing = np.ones(dim) if spacing is None else check_spacing("spacing", spacing, dim)
    direction = check_direction("direction", direction, dim)
    out = np.empty(image.shape + (dim,), dtype=image.dtype)
    return gradient_unchecked(image, spacing, direction, out, nthreads)


# ------------------------------------------------------------------ smoothing
def gaussian_kernel1d(sigma, truncate=4.0):
    """scipy.ndimage's normalised Gaussian kernel (radius int(truncate*sigma+0.5))."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * x * x)
    return phi / phi.sum()


def smooth_unchecked(array, sigma, channels, nthreads):
    """In-place Gaussian of a checked C-contiguous array (last axis = channels
    when ``channels > 1``)."""
    spatial = array.shape[:-1] if channels > 1 else array.shape
    if sigma > 0:
        k_smooth.gaussian_filter_(array.reshape(-1), tuple(spatial), channels,
                                 gaussian_kernel1d(sigma),
                                 effective_threads(nthreads, array.size // channels))
    return array


def gaussian_smooth(array, sigma, *, vector=False, out=None, num_threads=None):
    r"""Gaussian smoothing, scipy.ndimage.gaussian_filter(mode="reflect").

    Parameters
    ----------
    array : array
        A 2D/3D image, or with ``vector=True`` a field of shape
        spatial + (dim,) smoothed per component (as DIPY's metrics do).
    sigma : float
        Standard deviation in voxels (kernel truncated at 4 sigma).
    vector : bool, optional
        Treat the last axis as vector components.
    out : array, optional
        Output buffer (may be ``array`` itself for in-place smoothing).
    num_threads : int or None, optional
        Threads to use.

    Returns
    -------
    smoothed : array
    """
    nthreads = resolve_num_threads(num_threads)
    if vector:
        arr = check_field("array", array)
    else:
        arr = check_image("array", array)
    sigma = check_real("sigma", sigma, low=0)
    if out is None:
        out = arr.copy()
    elif out is not arr:
        check_out("out", out, arr, "array")[...] = arr
    channels = arr.shape[-1] if vector else 1
    return smooth_unchecked(out, float(sigma), channels, nthreads)


# --------------------------------------------------- ITK's discrete Gaussian
def discrete_gaussian_kernel1d(variance, *, max_error=0.001, max_width=None):
    r"""ITK's discrete Gaussian kernel (``itk::GaussianOperator``).

    Lindeberg's discrete analogue of the Gaussian: the coefficients are
    :math:`e^{-t} I_n(t)` (modified Bessel functions, :math:`t` the variance
    in voxels), taken outwards until the kernel holds ``1 - max_error`` of
    its mass, then normalised to sum to one.  ITK evaluates the Bessel
    functions with polynomial approximations (relative error about 1e-7);
    here they come from :func:`scipy.special.ive`, so coefficients agree
    with ITK's to about 1e-7.

    Parameters
    ----------
    variance : float
        Variance in voxels (ANTs' unit for SyN's update and total fields).
    max_error : float, optional
        Mass allowed outside the kernel (ITK's ``MaximumError``; ANTs uses
        0.001).
    max_width : int, optional
        ITK's ``MaximumKernelWidth``: stop once the half-kernel (centre
        included) holds more than this many coefficients (ANTs passes the
        field's size along the axis).

    Returns
    -------
    kernel : array, shape (2 r + 1,)
    """
    from scipy.special import ive

    variance = check_real("variance", variance, low=0)
    max_error = check_real("max_error", max_error, low=0, low_inclusive=False, high=1)
    if max_width is not None:
        max_width = check_integer("max_width", max_width, low=1)
    coeff = [float(ive(0, variance)), float(ive(1, variance))]
    mass = coeff[0] + 2.0 * coeff[1]
    order = 2
    while mass < 1.0 - max_error:
        c = float(ive(order, variance))
        coeff.append(c)
        mass += 2.0 * c
        if c <= 0.0 or (max_width is not None and len(coeff) > max_width):
            break
        order += 1
    half = np.asarray(coeff) / mass
    return np.ascontiguousarray(np.concatenate([half[:0:-1], half]))


def discrete_gaussian_smooth_field(field, variance, *, out=None, num_threads=None):
    r"""Smooth a displacement field as ANTs' SyN does (ITK's
    ``GaussianSmoothDisplacementField``).

    Each component is filtered along every axis with
    :func:`discrete_gaussian_kernel1d` (``max_error`` 0.001, kernel no wider
    than the field along that axis), the border repeating the edge value
    (ITK's zero-flux Neumann condition).  Below a variance of 0.5 the result
    is blended with the unsmoothed field as ITK does it (weight
    ``1 - variance / 0.5`` on the smoothed field, ``variance / 0.5`` on the
    original), and the outermost voxels are set to zero so the boundary does
    not move.

    Parameters
    ----------
    field : array, shape (R, C, 2) or (S, R, C, 3)
        float32 or float64 displacement field.
    variance : float
        Variance in voxels; 0 returns the field unchanged (boundary included).
    out : array, optional
        Output buffer (may be ``field`` for in-place smoothing).
    num_threads : int or None, optional
        Threads to use; results are identical for every count.

    Returns
    -------
    smoothed : array, same shape and dtype as ``field``
    """
    nthreads = resolve_num_threads(num_threads)
    arr = check_field("field", field)
    variance = check_real("variance", variance, low=0)
    if out is None:
        out = arr.copy()
    elif out is not arr:
        check_out("out", out, arr, "field")[...] = arr
    return discrete_smooth_unchecked(out, variance, nthreads)


def discrete_smooth_unchecked(field, variance, nthreads, scratch=None):
    """In place :func:`discrete_gaussian_smooth_field` of a checked field.

    Below a variance of 0.5 the filter's passes run in ``scratch`` (a
    C-contiguous array of the field's shape and type that the caller no
    longer needs; its values are overwritten) or, without one, in a new
    array, and the last pass blends into the field.
    """
    if variance <= 0:
        return field
    dim = field.shape[-1]
    spatial = field.shape[:-1]
    if variance < 0.5:
        if scratch is None:
            scratch = np.empty_like(field)
        kernels = _axis_kernels(spatial, variance, 0.001, None)
        # ITK's weights, kept as they are: the smoothed field gets 1 - 2 t and
        # the original 2 t (so the blend jumps to "all smoothed" at t = 0.5).
        k_smooth.gaussian_blend_(field.reshape(-1), scratch.reshape(-1), tuple(spatial), dim,
                                 kernels, 1.0 - variance / 0.5,
                                 effective_threads(nthreads, field.size // dim))
    else:
        _discrete_filter(field, spatial, dim, variance, 0.001, None, nthreads)
    zero_outer_boundary(field)
    return field


def discrete_smooth_image_unchecked(image, variance, nthreads, *, max_error=0.01,
                                    max_width=32):
    """In place discrete Gaussian of a checked C-contiguous image, as ITK's
    ``DiscreteGaussianImageFilter`` with its defaults (and ANTs' pyramid)."""
    if variance > 0:
        _discrete_filter(image, image.shape, 1, variance, max_error, max_width, nthreads)
    return image


def _axis_kernels(spatial, variance, max_error, max_width):
    """The discrete Gaussian of each axis, no wider than ``max_width`` or,
    where that is None, than the axis."""
    return tuple(discrete_gaussian_kernel1d(variance, max_error=max_error,
                                            max_width=size if max_width is None else max_width)
                 for size in spatial)


def _discrete_filter(array, spatial, channels, variance, max_error, max_width, nthreads):
    flat = array.reshape(-1)
    threads = effective_threads(nthreads, array.size // channels)
    for axis, kernel in enumerate(_axis_kernels(spatial, variance, max_error, max_width)):
        k_smooth.gaussian_filter_(flat, tuple(spatial), channels, kernel, threads, axis, True)


def zero_outer_boundary(field):
    """Set the outermost voxels of a field (every face) to zero, in place."""
    for axis in range(field.ndim - 1):
        index = [slice(None)] * field.ndim
        for end in (0, -1):
            index[axis] = end
            field[tuple(index)] = 0
    return field


# ---------------------------------------------------------------- folding
def jacobian_determinant(field, grid2world=None, *, num_threads=None):
    """Jacobian determinant of ``x -> x + field(x)`` at every grid point.

    Parameters
    ----------
    field : array, shape (S, R, C, 3) or (R, C, 2)
        Displacement in world units on a grid.
    grid2world : array, shape (dim + 1, dim + 1), optional
        The grid's grid-to-world matrix (default identity).
    num_threads : int or None, optional
        Threads: None for the OpenMP default, n < 0 for all CPUs but
        ``-n - 1``.  Each point is computed alone, so the values do not
        depend on it.

    Returns
    -------
    ndarray of float64, the grid's shape
        Values <= 0 are folded points.  Derivatives are ``numpy.gradient``'s
        (central differences inside, one-sided at the edges) of the float64
        values, mapped to world units through the grid's linear part.
    """
    field = check_field("field", field)
    dim = field.shape[-1]
    grid2world = check_affine("grid2world", grid2world, dim, invertible=True)
    linear = np.eye(dim) if grid2world is None else grid2world[:dim, :dim]
    inv_linear = np.linalg.inv(linear)
    spatial = field.shape[:-1]          # check_field: each axis at least 2 long
    flat = field.reshape(-1).astype(field.dtype.type, copy=False)   # native byte order
    det = np.empty(spatial, dtype=np.float64)
    k_gradient.jacobian_determinant_(flat, tuple(spatial), np.ascontiguousarray(inv_linear),
                                     det.reshape(-1), resolve_num_threads(num_threads))
    return det


def _bounds(mask, within):
    """(lo, hi) of the box holding the true points of ``mask[within]`` (a
    tuple of slices with steps of 1), in ``mask``'s indices (hi is one past
    the last), or None when there is none."""
    part = mask[within]
    lo, hi = [], []
    for axis, window in enumerate(within):
        hit = np.flatnonzero(part.any(axis=tuple(a for a in range(part.ndim) if a != axis)))
        if hit.size == 0:
            return None
        lo.append(window.start + int(hit[0]))
        hi.append(window.start + int(hit[-1]) + 1)
    return lo, hi


def _widen(bounds, margin, shape):
    """Slices of the box ``bounds`` widened by ``margin`` on every side,
    clipped to ``shape``."""
    lo, hi = bounds
    return tuple(slice(max(a - margin, 0), min(b + margin, n)) for a, b, n in zip(lo, hi, shape))


#: Jacobian determinant below which :func:`repair_folds` smooths a field.
FOLD_REPAIR_MIN_DET = 0.05


def repair_folds(field, grid2world=None, *, min_det=FOLD_REPAIR_MIN_DET, max_rounds=100,
                 num_threads=None):
    """Average a displacement field locally until no point folds, in place.

    Each round finds the points whose Jacobian determinant is at most
    ``min_det`` and replaces the field on them and their neighbours (a
    3 x ... x 3 box) by its mean over the same box; it stops when none is
    left or after ``max_rounds``.  Fields with no such point are not
    touched.  The determinants are computed point by point and the averages
    by serial SciPy, so the result does not depend on ``num_threads``.

    Parameters
    ----------
    field : ndarray, shape (S, R, C, 3) or (R, C, 2)
        Displacement in world units, C-contiguous, float32 or float64;
        modified in place.
    grid2world : array, optional
        The grid's grid-to-world matrix (default identity).
    min_det : float
        Determinants at or below it are repaired (default 0.05).
    max_rounds : int
    num_threads : int or None, optional
        Threads of the determinants (see :func:`jacobian_determinant`).

    Returns
    -------
    rounds : int
        Rounds that changed the field (0: it had no fold).
    folded : int
        Points still at or below ``min_det`` afterwards.
    """
    from scipy import ndimage

    if not isinstance(field, np.ndarray) or not field.flags.c_contiguous \
            or not field.flags.writeable:
        raise ValueError("field must be a writeable C-contiguous ndarray (repaired in place)")
    check_field("field", field)
    min_det = check_real("min_det", min_det)
    max_rounds = check_integer("max_rounds", max_rounds, low=0)
    dim = field.shape[-1]
    det = jacobian_determinant(field, grid2world, num_threads=num_threads)
    spatial = field.shape[:-1]
    box = np.ones((3,) * dim, dtype=bool)
    bad = det <= min_det
    # Where bad points can be: the whole field, then the window whose
    # determinants the last round recomputed (outside it nothing changed).
    search = tuple(slice(0, n) for n in spatial)
    for rounds in range(max_rounds):
        found = _bounds(bad, search)
        if found is None:
            return rounds, 0
        # Every array-wide pass costs more than a round on a few folds, so
        # each round works in the bad points' box: widened by one it holds
        # every changed point (the dilation), by two every determinant that
        # changes, by three every neighbour those read.  The windows are the
        # ones the whole-array rule used, so the values are its values.
        win = _widen(found, 3, spatial)
        sub = field[win]
        changed = ndimage.binary_dilation(bad[win], structure=box)
        mean = ndimage.uniform_filter(sub, size=(3,) * dim + (1,), mode="nearest")
        sub[changed] = mean[changed]
        sub_det = jacobian_determinant(sub, grid2world, num_threads=num_threads)
        inner = _widen(found, 2, spatial)
        det[inner] = sub_det[tuple(slice(i.start - w.start, i.stop - w.start)
                                   for i, w in zip(inner, win))]
        bad[inner] = det[inner] <= min_det
        search = inner
    return max_rounds, int(np.count_nonzero(bad))
