"""Affine registration with DIPY's interface on fastsyn's threaded kernels.

:func:`affine_registration`, :class:`AffineRegistration` and
:class:`MutualInformationMetric` take the arguments of their namesakes in
``dipy.align`` (DIPY 1.12) plus ``num_threads``, and return the same objects
(DIPY's ``AffineMap``, or ``(resampled, matrix)``).

What is the same as DIPY: the pipelines (centre of mass, then translation,
rigid, rigid with isotropic or anisotropic scaling, affine), the isotropic
scale space (its shrink factors, sigmas and normalisations), the Parzen
histogram (cubic B-spline, 2 bins of padding, DIPY's normalisation), the
moving-image gradient (central differences half a voxel away along each world
axis), the transform Jacobians (taken from DIPY's own transform classes), the
optimiser (DIPY's ``Optimizer``, L-BFGS-B by default, the same options and
per-level iteration caps).

What is new: with dense sampling (the default) one threaded kernel
(``fastsyn._kernels.affine.parzen_mi_dense``) resamples the moving image,
takes its gradient, fills the joint histogram and the histogram's parameter
gradient in a single pass over the static grid, where DIPY makes four passes
on one thread and allocates a gradient field at every evaluation.  The scale
space is smoothed with fastsyn's threaded Gaussian (scipy's kernel and
boundary) and, inside one :func:`affine_registration` call, built once for
all the steps of the pipeline instead of once per step.  The static image is
resampled per level and the result at the end with threaded kernels.

Sums are accumulated per block of slices fixed by the image shape and merged
in block order: results are bitwise identical for every ``num_threads``.
They differ from DIPY's in the last bits (DIPY sums all voxels in one running
sum; the kernel also forms the gradient taps and the spline weights in
cheaper but algebraically equal ways, see its module comment), which the
optimiser can amplify into small differences of the final transform, and
into a different number of metric evaluations near convergence (where its
line search works on differences of the order of the rounding);
``tests/test_imaffine.py`` states the tolerances.

Sparse sampling (``sampling_proportion`` not None) runs DIPY's own code for
the histogram and its gradient, on one thread.
"""

from contextlib import nullcontext
from warnings import warn

import numpy as np
import numpy.linalg as npl
from dipy.align import VerbosityLevels
from dipy.align import imaffine as _dipy
from dipy.align import transforms as _tf
from dipy.align.imwarp import get_direction_and_spacings
from dipy.align.parzenhist import compute_parzen_mi
from dipy.align.scalespace import IsotropicScaleSpace, ScaleSpace
from dipy.core.optimize import Optimizer
from dipy.utils.logging import logger

from fastsyn._kernels import affine as k_affine
from fastsyn._threads import effective_threads, resolve_num_threads
from fastsyn._validation import check_affine, check_contrast, check_image, check_integer, check_real
from fastsyn.fields import smooth_unchecked

__all__ = [
    "AffineMap",
    "AffineRegistration",
    "MutualInformationMetric",
    "PIPELINE_STEPS",
    "affine_registration",
    "transform_image",
]

AffineMap = _dipy.AffineMap

# DIPY's own methods, kept before any patch replaces them on DIPY's class.
_DIPY_SETUP = _dipy.MutualInformationMetric.__dict__["setup"]
_DIPY_UPDATE = _dipy.MutualInformationMetric.__dict__["_update_mutual_information"]

#: Pipeline step -> transform class, per dimension (DIPY's step names).
PIPELINE_STEPS = {
    "center_of_mass": {2: None, 3: None},
    "translation": {2: _tf.TranslationTransform2D, 3: _tf.TranslationTransform3D},
    "rigid": {2: _tf.RigidTransform2D, 3: _tf.RigidTransform3D},
    "rigid_isoscaling": {2: _tf.RigidIsoScalingTransform2D,
                         3: _tf.RigidIsoScalingTransform3D},
    "rigid_scaling": {2: _tf.RigidScalingTransform2D, 3: _tf.RigidScalingTransform3D},
    "affine": {2: _tf.AffineTransform2D, 3: _tf.AffineTransform3D},
}

# Slices (rows in 2D) are cut into this many blocks at most, and at least
# _MIN_BLOCKS where the image has that many; one block per _BLOCK_VOXELS in
# between.  A function of the shape only, so the sums never depend on threads.
_MIN_BLOCKS = 8
_MAX_BLOCKS = 64
_BLOCK_VOXELS = 16384


def _block_bounds(shape):
    """First slice of each block of the static grid, then the slice count."""
    nslices = shape[0]
    nblocks = int(np.prod(shape)) // _BLOCK_VOXELS
    nblocks = min(nslices, max(_MIN_BLOCKS, min(_MAX_BLOCKS, nblocks)))
    return np.linspace(0, nslices, nblocks + 1).round().astype(np.intp)


def _rows(matrix, dim):
    """The first ``dim`` rows of a homogeneous matrix, flattened."""
    return np.ascontiguousarray(np.asarray(matrix, dtype=np.float64)[:dim, : dim + 1]).ravel()


def jacobian_coefficients(transform, theta, grid2space):
    r"""A transform's parameter Jacobian as an affine function of grid indices.

    For every DIPY transform, :math:`T(\theta) x` is affine in ``x`` for fixed
    :math:`\theta`, so its derivative with respect to :math:`\theta` is affine
    in ``x`` too.  Probing DIPY's own ``transform.jacobian`` at the origin and
    the unit vectors gives its coefficients exactly; composing them with
    ``grid2space`` expresses the Jacobian at the grid point ``idx``.

    Parameters
    ----------
    transform : dipy.align.transforms.Transform
        The transform (2D or 3D).
    theta : array, shape (n,)
        Its parameters.
    grid2space : array, shape (dim + 1, dim + 1)
        Maps grid indices to the points where DIPY evaluates the Jacobian.

    Returns
    -------
    coefficients : array, shape (dim, n, dim + 1)
        ``J[d, p](idx) = coefficients[d, p, :dim] @ idx + coefficients[d, p, dim]``.
    """
    dim = transform.get_dim()
    theta = np.ascontiguousarray(theta, dtype=np.float64)
    at_origin = np.asarray(transform.jacobian(theta, np.zeros(dim)))
    coef = np.empty(at_origin.shape + (dim + 1,))
    for axis in range(dim):
        unit = np.zeros(dim)
        unit[axis] = 1.0
        coef[..., axis] = np.asarray(transform.jacobian(theta, unit)) - at_origin
    coef[..., dim] = at_origin
    return np.ascontiguousarray(coef @ np.asarray(grid2space, dtype=np.float64))


# ------------------------------------------------------------------ the metric
def _metric_threads(metric):
    n = getattr(metric, "num_threads", None)
    if n is None:
        n = getattr(metric, "_registration_threads", None)
    return resolve_num_threads(n)


def _metric_setup(self, transform, static, moving, static_grid2world=None,
                  moving_grid2world=None, starting_affine=None, static_mask=None,
                  moving_mask=None):
    """DIPY's ``MutualInformationMetric.setup``, then the kernel's inputs."""
    _DIPY_SETUP(self, transform, static, moving, static_grid2world=static_grid2world,
                moving_grid2world=moving_grid2world, starting_affine=starting_affine,
                static_mask=static_mask, moving_mask=moving_mask)
    self._fastsyn_dense = None
    if self.sampling_proportion is not None:
        return
    empty = np.zeros(0, dtype=np.int32)
    dim = self.dim
    H = self.histogram
    static = np.ascontiguousarray(self.static, dtype=np.float64).ravel()
    smask = (empty if self.static_mask is None
             else np.ascontiguousarray(self.static_mask, dtype=np.int32).ravel())
    # The static voxels' bins do not change while the optimiser runs.
    sbins = np.empty(static.size, dtype=np.int16)
    k_affine.static_bins(static, smask, float(H.smin), float(H.sdelta), H.nbins,
                         H.padding, sbins, effective_threads(_metric_threads(self),
                                                             static.size))
    self._fastsyn_dense = {
        "sbins": sbins,
        "moving": _compact(self.moving),
        "mmask": (empty if self.moving_mask is None
                  else np.ascontiguousarray(self.moving_mask, dtype=np.int32).ravel()),
        "zero_blocks": _zero_blocks(self.moving, self.moving_world2grid,
                                    self.moving_spacing),
        "w2g": _rows(self.moving_world2grid, dim),
        "spacing": np.ascontiguousarray(self.moving_spacing[:dim], dtype=np.float64),
        "bounds": _block_bounds(self.static.shape),
    }


def _zero_blocks(moving, world2grid, spacing):
    """The kernel's table of all-zero 4-voxel windows of the moving image.

    Brain images are mostly background: a static voxel whose moved point and
    gradient taps fall where the moving image is 0 contributes a known
    histogram entry and no gradient, and the kernel skips its seven samples.
    Entry ``f + 2`` (per axis, ``f`` in -2 .. n) is 1 when voxels ``f - 1 ..
    f + 2`` hold only zeros (voxels outside the grid count as zeros).  Empty
    (disabled) when a gradient tap can lie a voxel or more from the point.
    """
    dim = moving.ndim
    # Tap offsets in moving grid units: 0.5 * spacing[p] * world2grid[:, p].
    taps = np.abs(np.asarray(world2grid)[:dim, :dim] * (0.5 * np.asarray(spacing)[:dim]))
    if taps.max(axis=1).max() >= 0.999:
        return np.zeros(0, dtype=np.uint8)
    nonzero = np.pad(moving != 0, 3)
    for axis in range(dim):
        # any() over each window of 4 along the axis, as four shifted views
        n = nonzero.shape[axis] - 3
        view = [slice(None)] * dim
        window = None
        for shift in range(4):
            view[axis] = slice(shift, shift + n)
            part = nonzero[tuple(view)]
            window = part.copy() if window is None else np.logical_or(window, part, out=window)
        nonzero = window
    # Window start (f - 1) + 3 in padded units: f + 2 for f = -2 .. n.
    sl = tuple(slice(0, n + 3) for n in moving.shape)
    return np.ascontiguousarray(~nonzero[sl], dtype=np.uint8).ravel()


def _compact(image):
    """The image as float32 when that holds its values exactly (the scale
    space stores float32 images): the kernel samples it in double all the
    same, with the same bits, and reads half the memory."""
    flat = np.ascontiguousarray(image, dtype=np.float64).ravel()
    single = flat.astype(np.float32)
    return single if np.array_equal(single, flat) else flat


def _metric_update(self, params, update_gradient=True):
    """DIPY's ``_update_mutual_information`` (dense sampling on the fused
    threaded kernel, sparse sampling on DIPY's code)."""
    state = getattr(self, "_fastsyn_dense", None)
    if state is None:
        return _DIPY_UPDATE(self, params, update_gradient=update_gradient)
    dim = self.dim
    current = self.transform.param_to_matrix(params)
    static2prealigned = self.static_grid2world
    if self.starting_affine is not None:
        current = current.dot(self.starting_affine)
        static2prealigned = self.starting_affine.dot(static2prealigned)
    # Raises DIPY's AffineInversionError/AffineInvalidValuesError, which the
    # optimiser's callbacks turn into an infinite distance, as in DIPY.
    self.affine_map.set_affine(current)
    to_world = current.dot(self.static_grid2world)
    # The product AffineMap.transform forms, so the sampled points are DIPY's.
    to_moving = npl.inv(self.moving_grid2world).dot(to_world)

    H = self.histogram
    n = self.transform.get_number_of_parameters()
    if H.joint_grad is None or H.joint_grad.shape != (H.nbins, H.nbins, n):
        H.joint_grad = np.zeros((H.nbins, H.nbins, n))
    if update_gradient:
        jac = jacobian_coefficients(self.transform, params, static2prealigned).ravel()
    else:
        jac = np.zeros(1)
    nthreads = effective_threads(_metric_threads(self), state["sbins"].size)
    k_affine.parzen_mi_dense(
        state["sbins"], self.static.shape, state["moving"], self.moving.shape,
        state["mmask"], state["zero_blocks"], _rows(to_moving, dim),
        _rows(to_world, dim), state["w2g"], state["spacing"], jac, n,
        float(H.mmin), float(H.mdelta), H.padding, state["bounds"],
        bool(update_gradient), H.joint, H.smarginal, H.mmarginal, H.joint_grad,
        nthreads)
    grad = self.metric_grad if update_gradient else None
    self.metric_val = compute_parzen_mi(H.joint, H.joint_grad, H.smarginal,
                                        H.mmarginal, grad)


def _check_nbins(nbins):
    # Fewer than 5 bins leave no bin between the two paddings of 2.
    return check_integer("nbins", nbins, low=5, high=4096)


def _check_sampling(value):
    if value is None:
        return None
    return check_real("sampling_proportion", value, low=0, low_inclusive=False, high=1)


class MutualInformationMetric(_dipy.MutualInformationMetric):
    """DIPY's Parzen mutual information for affine registration, threaded.

    Parameters
    ----------
    nbins : int, optional
        Number of histogram bins (at least 5; default 32).
    sampling_proportion : None or float in (0, 1], optional
        None for dense sampling (every voxel, fastsyn's kernel); a proportion
        for DIPY's sparse sampling (DIPY's code, one thread).
    num_threads : int or None, optional
        Threads for the dense kernel; None takes the registration's (or the
        OpenMP default).
    """

    def __init__(self, nbins=32, sampling_proportion=None, *, num_threads=None):
        nbins = _check_nbins(nbins)
        sampling_proportion = _check_sampling(sampling_proportion)
        if num_threads is not None:
            resolve_num_threads(num_threads)
        super().__init__(nbins=nbins, sampling_proportion=sampling_proportion)
        self.num_threads = num_threads

    setup = _metric_setup
    _update_mutual_information = _metric_update


# ------------------------------------------------------------ the scale space
def _normalized(image):
    image = image.astype(np.float64)
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo)


def _shrink_factors(spacing, factor):
    """Per-axis shrink factors of one level: ``factor`` along the finest axis,
    and along each other axis the factor in 1..factor whose spacing is
    closest to the finest axis' new spacing (DIPY's isotropic rule)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    dim = spacing.shape[0]
    finest = int(np.argmin(spacing))
    target = spacing[finest] * factor
    shrink = np.full(dim, float(factor))
    for axis in range(dim):
        if axis == finest:
            continue
        best = abs(spacing[axis] * factor - target)
        for f in range(1, int(factor)):
            gap = abs(spacing[axis] * f - target)
            if gap < best:
                shrink[axis], best = f, gap
    return shrink


def isotropic_scale_space(image, factors, sigmas, grid2world, spacing, num_threads):
    """DIPY's ``IsotropicScaleSpace`` (``mask0=False``), smoothed on threads.

    Returns a ``dipy.align.scalespace.IsotropicScaleSpace`` holding the same
    levels: level 0 the image normalised to [0, 1]; level ``i`` the image
    smoothed with ``sigmas[L - 1 - i]`` voxels (scipy's Gaussian, reflecting
    edges), normalised, with grid shrunk by DIPY's isotropic factors.  Images
    are float32, as DIPY stores them.
    """
    dim = image.ndim
    levels = len(factors)
    if len(sigmas) != levels:
        raise ValueError("sigmas and factors must have the same length")
    ss = IsotropicScaleSpace.__new__(IsotropicScaleSpace)
    size = np.array(image.shape)
    ss.dim, ss.num_levels = dim, levels
    ss.images = [_normalized(image).astype(np.float32)]
    ss.domain_shapes = [size.astype(np.int32)]
    ss.spacings = [spacing]
    ss.scalings = [np.ones(dim)]
    ss.affines = [grid2world]
    ss.affine_invs = [None if grid2world is None else npl.inv(grid2world)]
    ss.sigmas = [np.ones(dim) * sigmas[levels - 1]]
    nthreads = effective_threads(num_threads, image.size)
    for level in range(1, levels):
        factor = factors[levels - 1 - level]
        shrink = _shrink_factors(spacing, factor)
        scale = np.diag(np.append(shrink, 1.0))
        affine = scale if grid2world is None else grid2world.dot(scale)
        sigma = sigmas[levels - 1 - level]
        smooth = np.array(image, dtype=np.float64, order="C")
        smooth_unchecked(smooth, float(sigma), 1, nthreads)
        ss.images.append(_normalized(smooth).astype(np.float32))
        ss.domain_shapes.append((size / shrink).astype(np.int32))
        ss.spacings.append(np.asarray(spacing, dtype=np.float64) * shrink)
        ss.scalings.append(shrink)
        ss.affines.append(affine)
        ss.affine_invs.append(npl.inv(affine))
        ss.sigmas.append(np.ones(dim) * sigma)
    return ss


# ------------------------------------------------------------------ resampling
def transform_image(image, comp, shape, *, nearest=False, num_threads=None):
    """Resample ``image`` at ``comp @ (index, 1)`` for every index of ``shape``.

    Linear (image cast to float64, zero-padded partial sums at the edge) or
    nearest neighbour (image's dtype), as DIPY's ``transform_*_affine[_nn]``.

    Parameters
    ----------
    image : array, 2D or 3D
        The image.
    comp : array, shape (dim + 1, dim + 1)
        Output grid index to image grid index.
    shape : sequence of int
        Output grid shape.
    nearest : bool, optional
        Nearest-neighbour interpolation.
    num_threads : int or None, optional
        Threads to use.
    """
    dim = image.ndim
    nthreads = effective_threads(resolve_num_threads(num_threads), int(np.prod(shape)))
    rows = _rows(comp, dim)
    shape = tuple(int(s) for s in shape)
    if nearest:
        src = np.ascontiguousarray(image)
        if src.dtype == np.bool_:
            src = src.view(np.uint8)
        out = np.zeros(shape, dtype=src.dtype)
        kernel = k_affine.transform_affine_nn_3d if dim == 3 else k_affine.transform_affine_nn_2d
    else:
        src = np.ascontiguousarray(image, dtype=np.float64)
        out = np.zeros(shape, dtype=np.float64)
        kernel = k_affine.transform_affine_3d if dim == 3 else k_affine.transform_affine_2d
    kernel(src, rows, out, nthreads)
    return out.astype(np.bool_) if image.dtype == np.bool_ else out


def _resample_to(image, from_grid2world, shape, to_grid2world, *, nearest, num_threads):
    comp = npl.inv(from_grid2world).dot(to_grid2world)
    return transform_image(image, comp, shape, nearest=nearest, num_threads=num_threads)


# -------------------------------------------------------------- registration
def _init_optimizer(self, static, moving, transform, params0, static_grid2world,
                    moving_grid2world, starting_affine, static_mask, moving_mask):
    """DIPY's ``AffineRegistration._init_optimizer`` with a threaded scale
    space, reused across the steps of one :func:`affine_registration`."""
    self.dim = static.ndim
    self.transform = transform
    self.nparams = transform.get_number_of_parameters()
    if np.all(static_mask == 0):
        warn("static_mask is all zeros, setting to None (which means the entire "
             "volume will be used)", UserWarning, stacklevel=3)
        static_mask = None
    if np.all(moving_mask == 0):
        warn("moving_mask is all zeros, setting to None", UserWarning, stacklevel=3)
        moving_mask = None
    self.static_mask, self.moving_mask = static_mask, moving_mask

    self.params0 = (transform.get_identity_parameters() if params0 is None else params0)
    self.starting_affine = _starting_affine(starting_affine, self.dim, static,
                                            static_grid2world, moving,
                                            moving_grid2world, static_mask,
                                            moving_mask)
    cache = getattr(self, "_fastsyn_ss_cache", None)
    key = (static, moving, static_mask, moving_mask, static_grid2world, moving_grid2world)
    if cache is not None and cache.get("key") is not None and all(
            a is b for a, b in zip(cache["key"], key)):
        self.static_ss, self.moving_ss = cache["spaces"]
        return
    nthreads = resolve_num_threads(getattr(self, "num_threads", None))
    spaces = []
    for image, mask, grid2world in ((static, static_mask, static_grid2world),
                                    (moving, moving_mask, moving_grid2world)):
        _, spacing = get_direction_and_spacings(grid2world, self.dim)
        values = image[mask == 1] if mask is not None else image
        lo, hi = np.min(values), np.max(values)
        image = (image.astype(np.float64) - lo) / (hi - lo)
        if self.use_isotropic:
            spaces.append(isotropic_scale_space(image, self.factors, self.sigmas,
                                                grid2world, spacing, nthreads))
        else:
            spaces.append(ScaleSpace(image, self.levels, image_grid2world=grid2world,
                                     input_spacing=spacing,
                                     sigma_factor=self.ss_sigma_factor, mask0=False))
    self.static_ss, self.moving_ss = spaces
    if cache is not None:
        cache["key"], cache["spaces"] = key, (self.static_ss, self.moving_ss)


def _starting_affine(starting_affine, dim, static, static_grid2world, moving,
                     moving_grid2world, static_mask, moving_mask):
    """DIPY's ``starting_affine`` choices: None, a matrix, or 'mass',
    'voxel-origin', 'centers'."""
    if starting_affine is None:
        return np.eye(dim + 1)
    if isinstance(starting_affine, str):
        if starting_affine == "mass":
            s = static if static_mask is None else static * static_mask
            m = moving if moving_mask is None else moving * moving_mask
            return _dipy.transform_centers_of_mass(s, static_grid2world, m,
                                                   moving_grid2world).affine
        if starting_affine == "voxel-origin":
            return _dipy.transform_origins(static, static_grid2world, moving,
                                           moving_grid2world).affine
        if starting_affine == "centers":
            return _dipy.transform_geometric_centers(static, static_grid2world, moving,
                                                     moving_grid2world).affine
        raise ValueError("Invalid starting_affine strategy")
    if isinstance(starting_affine, np.ndarray) and starting_affine.shape >= (dim, dim + 1):
        return starting_affine
    raise ValueError("Invalid starting_affine matrix")


def _serial_blas():
    """One BLAS thread while the optimiser runs.

    scipy's L-BFGS-B (1.15) makes a few BLAS calls on vectors of the
    parameter count at every iteration; with a multi-threaded OpenBLAS each
    call wakes its thread pool, which cost ~3 ms of CPU per iteration here
    (~0.02 ms on one thread), and more in wall time on a loaded machine.
    Arrays that small are computed by the same single-threaded code either
    way, so the results do not change.  The previous limits are restored on
    exit.  A no-op without ``threadpoolctl`` (a dependency of scikit-learn,
    which nilearn brings in).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with nilearn
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _optimize(self, static, moving, transform, params0, static_grid2world=None,
              moving_grid2world=None, starting_affine=None, ret_metric=False,
              static_mask=None, moving_mask=None):
    """DIPY's ``AffineRegistration.optimize``: coarse to fine, each level
    optimised by DIPY's ``Optimizer`` from the identity, the result composed
    into the starting affine."""
    self._init_optimizer(static, moving, transform, params0, static_grid2world,
                         moving_grid2world, starting_affine, static_mask, moving_mask)
    nthreads = resolve_num_threads(getattr(self, "num_threads", None))
    self.metric._registration_threads = getattr(self, "num_threads", None)
    shape0 = self.static_ss.get_image(0).shape
    static_g2w0 = self.static_ss.get_affine(0)
    moving_shape0 = self.moving_ss.get_image(0).shape
    moving_g2w0 = self.moving_ss.get_affine(0)
    identity = np.eye(self.dim + 1)
    opt = None
    with _serial_blas():
        for level in range(self.levels - 1, -1, -1):
            self.current_level = level
            max_iter = self.level_iters[-1 - level]
            if self.verbosity >= VerbosityLevels.STATUS:
                logger.info(f"Optimizing level {level} [max iter: {max_iter}]")
            shape = self.static_ss.get_domain_shape(level)
            g2w = self.static_ss.get_affine(level)
            src_g2w = identity if static_g2w0 is None else static_g2w0
            dst_g2w = identity if g2w is None else g2w
            current_static = _resample_to(self.static_ss.get_image(level), src_g2w, shape,
                                          dst_g2w, nearest=False, num_threads=nthreads)
            current_mask = None
            if self.static_mask is not None:
                current_mask = _resample_to(self.static_mask, src_g2w, shape, dst_g2w,
                                            nearest=True,
                                            num_threads=nthreads).astype(np.int32)
            self.metric.setup(transform, current_static, self.moving_ss.get_image(level),
                              static_grid2world=g2w, moving_grid2world=moving_g2w0,
                              starting_affine=self.starting_affine,
                              static_mask=current_mask, moving_mask=self.moving_mask)
            if self.options is None:
                self.options = {"gtol": 1e-4}
            self.options["maxfun" if self.method == "L-BFGS-B" else "maxiter"] = max_iter
            opt = Optimizer(self.metric.distance_and_gradient, self.params0,
                            method=self.method, jac=True, options=self.options)
            step = self.transform.param_to_matrix(opt.xopt)
            self.starting_affine = step.dot(self.starting_affine)
            self.params0 = self.transform.get_identity_parameters()
    result = AffineMap(self.starting_affine, domain_grid_shape=shape0,
                       domain_grid2world=static_g2w0, codomain_grid_shape=moving_shape0,
                       codomain_grid2world=moving_g2w0)
    if ret_metric:
        return result, opt.xopt, opt.fopt
    return result


class AffineRegistration(_dipy.AffineRegistration):
    """DIPY's ``AffineRegistration`` on fastsyn's threaded kernels.

    Parameters
    ----------
    metric : MutualInformationMetric or None, optional
        None for :class:`MutualInformationMetric` with default settings.
    level_iters, sigmas, factors, method, ss_sigma_factor, options, verbosity
        As DIPY's (defaults [1000, 500, 100], [3, 1, 0], [4, 2, 1],
        'L-BFGS-B').
    num_threads : int or None, optional
        Threads for the scale space, the resampling and (unless the metric
        sets its own) the metric.
    """

    def __init__(self, metric=None, level_iters=None, sigmas=None, factors=None,
                 method="L-BFGS-B", ss_sigma_factor=None, options=None,
                 verbosity=VerbosityLevels.STATUS, *, num_threads=None):
        resolve_num_threads(num_threads)
        if metric is None:
            metric = MutualInformationMetric()
        level_iters = _check_levels(level_iters, sigmas, factors, ss_sigma_factor)
        super().__init__(metric=metric, level_iters=level_iters, sigmas=sigmas,
                         factors=factors, method=method, ss_sigma_factor=ss_sigma_factor,
                         options=options, verbosity=verbosity)
        self.num_threads = num_threads

    _init_optimizer = _init_optimizer
    optimize = _optimize


def _check_levels(level_iters, sigmas, factors, ss_sigma_factor):
    """level_iters, sigmas and factors: equal lengths, sane values."""
    if level_iters is None:
        return None
    if isinstance(level_iters, (str, bytes)) or not hasattr(level_iters, "__len__"):
        raise TypeError(f"level_iters must be a sequence of integers, got {level_iters!r}")
    level_iters = [check_integer(f"level_iters[{i}]", v, low=0)
                   for i, v in enumerate(level_iters)]
    if ss_sigma_factor is None:
        for name, values, low in (("sigmas", sigmas, 0), ("factors", factors, 1)):
            if values is None:
                continue
            if len(values) != len(level_iters):
                raise ValueError(f"{name} must have one entry per level "
                                 f"({len(level_iters)}), got {len(values)}")
            for i, v in enumerate(values):
                if name == "factors":
                    check_integer(f"factors[{i}]", v, low=low)
                else:
                    check_real(f"sigmas[{i}]", v, low=low)
    return level_iters


# ------------------------------------------------------------- the pipeline
def _load(name, data, affine):
    if isinstance(data, np.ndarray):
        if affine is None:
            raise ValueError(f"{name}_affine is required when {name} is an array")
        return data, affine
    from dipy.io.utils import read_img_arr_or_path

    return read_img_arr_or_path(data, affine=affine)


def _pipeline_names(pipeline):
    from dipy.align import _public

    names = []
    for i, step in enumerate(pipeline):
        if callable(step):
            for key, (func, _) in _public._METHOD_DICT.items():
                if step is func:
                    step = key
                    break
        if not isinstance(step, str) or step not in PIPELINE_STEPS:
            raise ValueError(f"pipeline[{i}] must be one of {list(PIPELINE_STEPS)}, "
                             f"got {step!r}")
        names.append(step)
    return names


def affine_registration(moving, static, moving_affine=None, static_affine=None,
                        pipeline=None, starting_affine=None, metric="MI",
                        level_iters=None, sigmas=None, factors=None, ret_metric=False,
                        moving_mask=None, static_mask=None, optimizer_options=None,
                        *, num_threads=None, **metric_kwargs):
    """DIPY's ``dipy.align.affine_registration`` on fastsyn's threaded kernels.

    Parameters
    ----------
    moving, static : array, nibabel image or path
        The images (2D or 3D arrays; DIPY itself takes 3D only).
    moving_affine, static_affine : array, shape (dim + 1, dim + 1)
        Grid-to-world matrices (required for arrays).
    pipeline : sequence of str, optional
        Steps run in order, from ``center_of_mass``, ``translation``,
        ``rigid``, ``rigid_isoscaling``, ``rigid_scaling``, ``affine``
        (default: center_of_mass, translation, rigid, affine).
    starting_affine : array, optional
        Initial matrix (default identity).
    metric : str, optional
        'MI' (the only metric, as in DIPY).
    level_iters, sigmas, factors : sequence, optional
        Scale space: iterations per level (coarsest first, default
        [1000, 500, 100]), smoothing sigmas in voxels ([3, 1, 0]), shrink
        factors ([4, 2, 1]).
    ret_metric : bool, optional
        Also return the last step's optimal parameters and metric value.
    moving_mask, static_mask : array, optional
        Masks (voxels != 0 used) on each image's grid.
    optimizer_options : dict, optional
        Options for scipy's minimiser.
    num_threads : int or None, optional
        Threads (None: OpenMP default; negative counts back from all CPUs).
    **metric_kwargs
        ``nbins`` (default 32) and ``sampling_proportion`` (default None:
        dense) of :class:`MutualInformationMetric`.

    Returns
    -------
    resampled : array
        The moving image resampled on the static grid (float64).
    final_affine : array, shape (dim + 1, dim + 1)
        The matrix mapping static world points to moving world points.
    xopt, fopt
        With ``ret_metric``: the last step's parameters and -MI.
    """
    nthreads = resolve_num_threads(num_threads)
    if metric != "MI":
        raise ValueError(f"metric must be 'MI', got {metric!r}")
    (static, moving, static_affine, moving_affine, static_mask,
     moving_mask) = _checked_pair(static, moving, static_affine, moving_affine, static_mask,
                                  moving_mask)
    dim = static.ndim
    starting_was_supplied = starting_affine is not None
    if starting_affine is None:
        starting_affine = np.eye(dim + 1)
    starting_affine = check_affine("starting_affine", starting_affine, dim,
                                   invertible=True)
    if pipeline is None:
        pipeline = ["center_of_mass", "translation", "rigid", "affine"]
    if isinstance(pipeline, str) or not hasattr(pipeline, "__iter__"):
        raise TypeError(f"pipeline must be a sequence of step names, got {pipeline!r}")
    pipeline = _pipeline_names(pipeline)
    if pipeline == ["center_of_mass"] and ret_metric:
        raise ValueError("center of mass registration cannot return any quality metric.")
    if level_iters is None:
        level_iters = [1000, 500, 100]
    sigmas = sigmas or [3, 1, 0.0]
    factors = factors or [4, 2, 1]

    metric_obj = MutualInformationMetric(**metric_kwargs)
    affreg = AffineRegistration(metric=metric_obj, level_iters=level_iters, sigmas=sigmas,
                                factors=factors, options=optimizer_options, verbosity=0,
                                num_threads=nthreads)
    affreg._fastsyn_ss_cache = {}
    xopt = fopt = None
    for step in pipeline:
        logger.info(f"Running {step} step from affine registration...")
        if step == "center_of_mass":
            if starting_was_supplied:
                warn("starting_affine overwritten by center_of_mass transform",
                     UserWarning, stacklevel=2)
            s = static if static_mask is None else static * static_mask
            m = moving if moving_mask is None else moving * moving_mask
            starting_affine = _dipy.transform_centers_of_mass(
                s, static_affine, m, moving_affine).affine
            continue
        transform = PIPELINE_STEPS[step][dim]()
        xform, xopt, fopt = affreg.optimize(
            static, moving, transform, None, static_grid2world=static_affine,
            moving_grid2world=moving_affine, starting_affine=starting_affine,
            ret_metric=True, static_mask=static_mask, moving_mask=moving_mask)
        starting_affine = xform.affine
    final_affine = starting_affine.copy()
    comp = npl.inv(moving_affine).dot(final_affine.dot(static_affine))
    resampled = transform_image(moving, comp, static.shape, num_threads=nthreads)
    if ret_metric:
        return resampled, final_affine, xopt, fopt
    return resampled, final_affine


def _checked_pair(static, moving, static_affine, moving_affine, static_mask, moving_mask):
    """The two images (arrays, nibabel images or paths), their grid-to-world
    matrices and masks, checked; every problem names its argument."""
    static, static_affine = _load("static", static, static_affine)
    moving, moving_affine = _load("moving", moving, moving_affine)
    static = check_image("static", static, numeric=True)
    moving = check_image("moving", moving, numeric=True)
    dim = static.ndim
    if moving.ndim != dim:
        raise ValueError(f"moving must have {dim} dimensions like static, "
                         f"got shape {moving.shape}")
    static_affine = check_affine("static_affine", static_affine, dim, invertible=True)
    moving_affine = check_affine("moving_affine", moving_affine, dim, invertible=True)
    static_mask = _check_mask("static_mask", static_mask, static.shape)
    moving_mask = _check_mask("moving_mask", moving_mask, moving.shape)
    check_contrast("static", static, static_mask)
    check_contrast("moving", moving, moving_mask)
    return static, moving, static_affine, moving_affine, static_mask, moving_mask


def _check_mask(name, mask, shape):
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have the image's shape {tuple(shape)}, "
                         f"got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric or boolean, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr
