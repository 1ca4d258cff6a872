"""Symmetric diffeomorphic registration (SyN) on fastsyn's threaded kernels.

:class:`SymmetricDiffeomorphicRegistration` has DIPY's signature plus
``num_threads`` and returns a :class:`dipy.align.imwarp.DiffeomorphicMap`.
Every stage of an iteration runs on threaded kernels: warping of the images
towards the reference, the metric (through the metric's own kernels when it
is a fastsyn metric), the Gaussian smoothing of the steps, the step
normalisation and composition, and the four fixed-point inversions (updated
in place with warm starts and shared scratch buffers).  After ``optimize``,
``stage_times`` holds the wall time spent in each stage.

The methods are written so that :func:`fastsyn.patch_dipy` can install them
on DIPY's own classes; they never call ``super()``.
"""

import logging
import math
import time
from contextlib import contextmanager

import numpy as np
import numpy.linalg as npl
from dipy.align import imwarp as dipy_imwarp
from dipy.align.imwarp import RegistrationStages, VerbosityLevels
from dipy.align.metrics import SimilarityMetric

from fastsyn import fields
from fastsyn._kernels import compose as k_compose
from fastsyn._threads import effective_threads, resolve_num_threads
from fastsyn._validation import (
    check_affine,
    check_bool,
    check_bool_or_coarse,
    check_contrast,
    check_field,
    check_image,
    check_integer,
    check_real,
    check_shape,
)
from fastsyn.fields import (
    InversionWorkspace,
    check_warp_volume,
    compose_unchecked,
    discrete_smooth_unchecked,
    invert_unchecked,
    refine_inverse_unchecked,
    repair_folds,
    resample_unchecked,
    warp_unchecked,
)
from fastsyn.imaffine import transform_image
from fastsyn.pyramid import AntsScaleSpace

__all__ = [
    "DiffeomorphicMap",
    "STAGES",
    "SymmetricDiffeomorphicRegistration",
    "ants_convergence_value",
    "ants_like",
    "check_syn_options",
    "syn_setting",
]

logger = logging.getLogger("fastsyn")

#: Stages reported in ``SymmetricDiffeomorphicRegistration.stage_times``.
STAGES = ("warping", "metric", "smoothing", "update", "inversion", "other")

_DIPY_SDR = dipy_imwarp.SymmetricDiffeomorphicRegistration
_DIPY_MAP = dipy_imwarp.DiffeomorphicMap
# DIPY's own methods, captured before any patching, for the parts fastsyn
# reuses unchanged (scale spaces, pyramid bookkeeping, final maps).
_DIPY_SDR_INIT_OPTIMIZER = _DIPY_SDR.__dict__["_init_optimizer"]
_DIPY_SDR_OPTIMIZE = _DIPY_SDR.__dict__["optimize"]
_DIPY_MAP_WARP_FUNCTION = _DIPY_MAP.__dict__["_get_warping_function"]


def _threads_of(obj):
    return resolve_num_threads(getattr(obj, "num_threads", None))


# ---------------------------------------------------------------- warping map
def _threaded_warp_function(dim, nearest, nthreads):
    def warp(volume, d1, affine_idx_in=None, affine_idx_out=None, affine_disp=None,
             out_shape=None):
        # As DIPY's maps: NaN in an image is warped, not refused (cheaper,
        # and what DIPY users get); shapes and types are checked.
        volume = check_warp_volume("image", volume, dim, nearest, finite=False,
                                   convert=True)
        field = check_field("displacement", d1, dim=dim, finite=False)
        shape = (field.shape[:dim] if out_shape is None
                 else check_shape("out_shape", out_shape, dim))
        return warp_unchecked(volume, field, affine_idx_in, affine_idx_out, affine_disp,
                              shape, nearest, nthreads)

    return warp


def _get_warping_function(self, interpolation, *, warp_coordinates=False):
    """DIPY's dispatcher, returning fastsyn's threaded warps for images."""
    if warp_coordinates or interpolation not in ("linear", "nearest"):
        return _DIPY_MAP_WARP_FUNCTION(self, interpolation,
                                       warp_coordinates=warp_coordinates)
    return _threaded_warp_function(self.dim, interpolation == "nearest",
                                   _threads_of(self))


def _contiguous_pair(a, b):
    a = np.ascontiguousarray(a)
    return a, np.ascontiguousarray(b, dtype=a.dtype)


def expand_fields(self, expand_factors, new_shape):
    """DIPY's pyramid step (resample both fields to ``new_shape``), threaded."""
    nthreads = _threads_of(self)
    forward, backward = _contiguous_pair(self.forward, self.backward)
    factors = np.asarray(expand_factors, dtype=np.float64)
    self.forward = resample_unchecked(forward, factors, new_shape, nthreads)
    self.backward = resample_unchecked(backward, factors, new_shape, nthreads)
    grid2world = dipy_imwarp.mult_aff(self.disp_grid2world, np.diag(np.append(factors, 1)))
    self.disp_shape = new_shape
    self.disp_grid2world = grid2world
    self.disp_world2grid = npl.inv(grid2world)


def compute_inversion_error(self):
    """DIPY's residual of backward∘forward and its statistics, threaded."""
    backward, forward = _contiguous_pair(self.backward, self.forward)
    # The kernel writes every output voxel: an empty buffer saves a zeroing
    # pass and lets the threads first-touch their own pages.
    return compose_unchecked(backward, forward, None, self.disp_world2grid, 1.0,
                             np.empty_like(backward), _threads_of(self))


def warp_endomorphism(self, phi):
    """DIPY's composition of two maps on the same grid, threaded."""
    nthreads = _threads_of(self)
    d1, d2 = _contiguous_pair(self.get_forward_field(), phi.get_forward_field())
    d1_inv, d2_inv = _contiguous_pair(self.get_backward_field(), phi.get_backward_field())
    w2g = self.disp_world2grid
    # (every output voxel is written: no zeroing pass, see compute_inversion_error)
    forward, _ = compose_unchecked(d1, d2, None, w2g, 1.0, np.empty_like(d1), nthreads)
    backward, _ = compose_unchecked(d2_inv, d1_inv, None, w2g, 1.0, np.empty_like(d2_inv),
                                    nthreads)
    composition = self.shallow_copy()
    composition.forward = forward
    composition.backward = backward
    return composition


class DiffeomorphicMap(_DIPY_MAP):
    """DIPY's :class:`~dipy.align.imwarp.DiffeomorphicMap`, warping on threads.

    Same constructor as DIPY's plus ``num_threads``; ``transform``,
    ``transform_inverse``, ``expand_fields``, ``compute_inversion_error`` and
    ``warp_endomorphism`` run on fastsyn's threaded kernels, and ``inverse``
    returns such a map.
    """

    def __init__(self, dim, disp_shape, *, disp_grid2world=None, domain_shape=None,
                 domain_grid2world=None, codomain_shape=None, codomain_grid2world=None,
                 prealign=None, num_threads=None):
        resolve_num_threads(num_threads)
        dim = check_integer("dim", dim, low=2, high=3)
        disp_shape = check_shape("disp_shape", disp_shape, dim)
        for name, shape in (("domain_shape", domain_shape), ("codomain_shape", codomain_shape)):
            if shape is not None:
                check_shape(name, shape, dim)
        for name, matrix in (("disp_grid2world", disp_grid2world),
                             ("domain_grid2world", domain_grid2world),
                             ("codomain_grid2world", codomain_grid2world),
                             ("prealign", prealign)):
            check_affine(name, matrix, dim, invertible=True)
        _DIPY_MAP.__init__(self, dim, disp_shape, disp_grid2world=disp_grid2world,
                           domain_shape=domain_shape, domain_grid2world=domain_grid2world,
                           codomain_shape=codomain_shape,
                           codomain_grid2world=codomain_grid2world, prealign=prealign)
        self.num_threads = num_threads

    def transform(self, image, *, interpolation="linear", image_world2grid=None,
                  out_shape=None, out_grid2world=None):
        """DIPY's :meth:`~dipy.align.imwarp.DiffeomorphicMap.transform` with
        checked arguments, on threads."""
        self._check_transform_args(image_world2grid, out_shape, out_grid2world)
        return _DIPY_MAP.transform(self, image, interpolation=interpolation,
                                   image_world2grid=image_world2grid,
                                   out_shape=out_shape, out_grid2world=out_grid2world)

    def transform_inverse(self, image, *, interpolation="linear", image_world2grid=None,
                          out_shape=None, out_grid2world=None):
        """DIPY's :meth:`~dipy.align.imwarp.DiffeomorphicMap.transform_inverse`
        with checked arguments, on threads."""
        self._check_transform_args(image_world2grid, out_shape, out_grid2world)
        return _DIPY_MAP.transform_inverse(self, image, interpolation=interpolation,
                                           image_world2grid=image_world2grid,
                                           out_shape=out_shape,
                                           out_grid2world=out_grid2world)

    def inverse(self):
        """DIPY's :meth:`~dipy.align.imwarp.DiffeomorphicMap.inverse` (the
        same fields, directions swapped), warping on threads too."""
        return type(self).from_dipy(_DIPY_MAP.inverse(self), self.num_threads)

    def _check_transform_args(self, image_world2grid, out_shape, out_grid2world):
        check_affine("image_world2grid", image_world2grid, self.dim, invertible=True)
        check_affine("out_grid2world", out_grid2world, self.dim, invertible=True)
        if out_shape is not None:
            check_shape("out_shape", out_shape, self.dim)

    _get_warping_function = _get_warping_function
    expand_fields = expand_fields
    compute_inversion_error = compute_inversion_error
    warp_endomorphism = warp_endomorphism

    @classmethod
    def from_dipy(cls, dmap, num_threads=None):
        """The same map (sharing its fields) as a threaded map."""
        new = cls.__new__(cls)
        new.__dict__.update(dmap.__dict__)
        new.num_threads = num_threads
        return new


# -------------------------------------------------------------- stage timing
class _StageClock:
    def __init__(self):
        self.times = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] += time.perf_counter() - start


def _metric_step(self, clock, forward):
    """Run the metric's forward/backward step; split out its smoothing time
    when the metric reports it."""
    metric = self.metric
    before = getattr(metric, "smoothing_seconds", 0.0)
    start = time.perf_counter()
    if getattr(self, "flow_sigma", None) is None or not hasattr(metric, "sigma_diff"):
        # (DIPY's SSD and EM metrics have no sigma_diff: they keep their own rule)
        step = metric.compute_forward() if forward else metric.compute_backward()
    else:
        # ANTs smooths the update in the optimizer (flow_sigma): the metric's
        # own sigma_diff smoothing would smooth it twice.
        sigma_diff = metric.sigma_diff
        metric.sigma_diff = 0.0
        try:
            step = metric.compute_forward() if forward else metric.compute_backward()
        finally:
            metric.sigma_diff = sigma_diff
    elapsed = time.perf_counter() - start
    smoothing = getattr(metric, "smoothing_seconds", 0.0) - before
    clock.times["metric"] += elapsed - smoothing
    clock.times["smoothing"] += smoothing
    return step


def _scratch_field(self, like):
    """The optimizer's one scratch field (``like``'s shape and dtype).

    An iteration uses it first as the step buffer (the step's copy, then the
    total-field smoothing's scratch) and then, once both steps
    are composed, as the inversions' workspace; the two uses never overlap,
    so they share one field's memory.
    """
    buf = getattr(self, "_step_buffer", None)
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
        buf = self._step_buffer = np.empty_like(like)
    return buf


#: Most voxels :func:`_robust_step_norm` reads (bounds its cost on fine grids).
_ROBUST_NORM_SAMPLES = 1 << 15


def _robust_step_norm(step, inv_spacing, percentile):
    """The ``percentile`` of the voxel norms (in voxels) of ``step`` on a
    regular grid of its voxels inside the boundary: every second one along
    each axis, or sparser where that would be more than
    :data:`_ROBUST_NORM_SAMPLES`; 0 when there is none."""
    spatial = step.shape[:-1]
    stride = 2
    while math.prod(-(-(n - 2) // stride) for n in spatial) > _ROBUST_NORM_SAMPLES:
        stride += 1
    inner = step[(slice(1, -1, stride),) * len(spatial)]
    if inner.size == 0:
        return 0.0
    scaled = np.multiply(inner, inv_spacing, dtype=np.float64)  # one float64 copy
    squared = np.einsum("...i,...i->...", scaled, scaled).ravel()
    # the norm is monotone in its square: the order statistics are the same
    return math.sqrt(float(np.percentile(squared, percentile)))


def _moving_share_at_level(self):
    """The moving image's share of this level's motion: the run's coarse share
    (``coarse_moving_share_used``) on every level but the finest where it is
    set, else ``moving_share``."""
    coarse = getattr(self, "coarse_moving_share_used", None)
    if coarse is not None and self.current_level > 0:
        return coarse
    return getattr(self, "moving_share", 0.5)


def _side_idle_so_far(self, forward):
    """Whether one side (``forward``: the static one) has a zero share of the
    motion on this level and on every level before it."""
    idle = 1.0 if forward else 0.0  # the moving share that leaves that side still
    if _moving_share_at_level(self) != idle:
        return False
    # the coarse levels come first and share one value
    if self.current_level > 0 or self.levels == 1:
        return True
    coarse = getattr(self, "coarse_moving_share_used", None)
    return coarse is None or coarse == idle


def _apply_step(self, field, step, world2grid, spacing, nthreads, direction):
    """Zero the step's boundary, scale it to unit maximum norm (in voxels;
    with ``step_percentile`` below 100, unit norm at that percentile) and
    compose it into ``field`` in place, as DIPY's ``_iterate`` does.  With
    a moving share (:func:`_moving_share_at_level`) other than 0.5 the two
    sides' step lengths are ``2 * (1 - share) * step_length`` (the static
    side, ``forward``) and ``2 * share * step_length`` (the moving side).

    The metric's array is only read (DIPY copies it too): the boundary is
    zeroed in a buffer owned by the optimizer.
    """
    if np.shape(step) != field.shape:
        raise ValueError(f"the metric's {direction} step has shape {np.shape(step)}, "
                         f"expected {field.shape}")
    step = np.ascontiguousarray(step, dtype=field.dtype)
    buf = _scratch_field(self, field)
    flow_sigma = getattr(self, "flow_sigma", None)
    if flow_sigma is not None:
        # ANTs: ITK's discrete Gaussian on the update (which also fixes its
        # boundary), then the normalisation below.
        np.copyto(buf, step)
        step = discrete_smooth_unchecked(buf, flow_sigma, nthreads)
    inv_spacing = np.ascontiguousarray(1.0 / np.asarray(spacing, dtype=np.float64))
    partial = np.empty(step.shape[0], dtype=np.float64)
    prepare = k_compose.prepare_step_3d if self.dim == 3 else k_compose.prepare_step_2d
    nrm = prepare(step, buf, inv_spacing, partial,
                  effective_threads(nthreads, step.size // self.dim))
    if not np.isfinite(nrm):
        raise FloatingPointError(
            f"the metric's {direction} step holds NaN or infinite values at level "
            f"{self.current_level}, iteration {len(self.energy_list)} "
            "(the metric diverged; check the images and the metric's parameters)")
    percentile = getattr(self, "step_percentile", 100.0)
    if percentile < 100 and nrm > 0:
        nrm = _robust_step_norm(buf, inv_spacing, percentile) or nrm
    share = _moving_share_at_level(self)
    # 2 * 0.5 is exactly 1: DIPY's symmetric split keeps its step bitwise
    length = self.step_length * 2.0 * (share if direction == "backward" else 1.0 - share)
    # DIPY divides the step by its norm and then composes with step_length;
    # folding 1/nrm into the composition's time scaling saves a full pass
    # (values differ by one rounding of the step).
    scale = length / nrm if nrm > 0 else length
    compose_unchecked(field, buf, None, world2grid, scale, field, nthreads)
    total_sigma = getattr(self, "total_sigma", 0.0)
    if total_sigma > 0:
        # The step is composed: its buffer is the smoothing's scratch.
        discrete_smooth_unchecked(field, total_sigma, nthreads, scratch=buf)


def _invert_models(self, world2grid, spacing, nthreads, max_iter=None):
    """The four warm-started inversions of DIPY's ``__invert_models``, in
    place, sharing one scratch workspace; with ``reinvert=False`` only the
    first two (forward fields into backward ones).  ``max_iter`` caps the
    fixed-point sweeps of each (default ``inv_iter``, DIPY's loop); with
    ``fused_inversion`` a capped inversion runs that many fused sweeps
    (:func:`_refine`) instead."""
    fused = max_iter is not None and getattr(self, "fused_inversion", False)
    max_iter = self.inv_iter if max_iter is None else max_iter
    ws = getattr(self, "_inversion_workspace", None)
    shape, dtype = self.static_to_ref.forward.shape, self.static_to_ref.forward.dtype
    q = _scratch_field(self, self.static_to_ref.forward)
    if ws is None or ws.q is not q:
        ws = self._inversion_workspace = InversionWorkspace(shape, dtype, q=q)
    spacing = np.asarray(spacing, dtype=np.float64)
    for dmap in (self.static_to_ref, self.moving_to_ref):
        dmap.forward = np.ascontiguousarray(dmap.forward, dtype=dtype)
        dmap.backward = np.ascontiguousarray(dmap.backward, dtype=dtype)
    reinvert = getattr(self, "reinvert", True)
    if reinvert == "coarse":  # every level but the finest
        reinvert = self.current_level > 0
    steps = [("forward", "backward")] + ([("backward", "forward")] if reinvert else [])
    for source, target in steps:
        for side, dmap in (("static", self.static_to_ref), ("moving", self.moving_to_ref)):
            d, out = getattr(dmap, source), getattr(dmap, target)
            if fused:
                _refine(self, (side, target), d, world2grid, spacing, out, max_iter,
                        nthreads, ws)
            else:
                invert_unchecked(d, world2grid, spacing, max_iter, self.inv_tol, out,
                                 nthreads, ws)


#: Damping of the fused inversion sweeps (DIPY's first sweep's).
_REFINE_EPSILON = 0.75


def _refine(self, key, d, world2grid, spacing, out, sweeps, nthreads, ws):
    """``sweeps`` fused sweeps of one inverse; the clipping length of each
    is the previous sweep's largest residual of the same field (none for the
    first sweep of a level)."""
    state = self._refine_maxlen
    shape, maxlen = state.get(key, (None, np.inf))
    if shape != d.shape:
        maxlen = np.inf
    for _ in range(sweeps):
        maxlen = _REFINE_EPSILON * refine_inverse_unchecked(
            d, world2grid, spacing, out, maxlen, nthreads, ws, epsilon=_REFINE_EPSILON)
    state[key] = (d.shape, maxlen)


def _iterate(self):
    """One symmetric iteration, DIPY's algorithm on threaded stages.

    Returns the derivative of the energy profile (``np.inf`` until the
    energy window is full), as DIPY does.
    """
    clock = self._stage_clock
    nthreads = _threads_of(self)
    level = self.current_level
    current_moving = self.moving_ss.get_image(level)
    current_static = self.static_ss.get_image(level)
    disp_shape = self.static_ss.get_domain_shape(level)
    disp_grid2world = self.static_ss.get_affine(level)
    disp_world2grid = self.static_ss.get_affine_inv(level)
    disp_spacing = self.static_ss.get_spacing(level)

    with clock("warping"):
        wstatic = self.static_to_ref.transform_inverse(
            current_static, interpolation="linear", image_world2grid=None,
            out_shape=disp_shape, out_grid2world=disp_grid2world)
        wmoving = self.moving_to_ref.transform_inverse(
            current_moving, interpolation="linear", image_world2grid=None,
            out_shape=disp_shape, out_grid2world=disp_grid2world)

    with clock("metric"):
        self.metric.set_moving_image(wmoving, disp_grid2world, disp_spacing,
                                     self.static_direction)
        self.metric.use_moving_image_dynamics(current_moving, self.moving_to_ref.inverse())
        self.metric.set_static_image(wstatic, disp_grid2world, disp_spacing,
                                     self.static_direction)
        self.metric.use_static_image_dynamics(current_static, self.static_to_ref.inverse())
        self.metric.initialize_iteration()

    if self.callback is not None:
        self.callback(self, RegistrationStages.ITER_START)

    # A side that has not moved on any level yet and does not move on this
    # one is skipped where the metric's energy does not come from the step
    # (MI's comes from the histogram): composing a zero-length step into a
    # zero field, and smoothing that field, would leave it as it is.
    skip = getattr(self.metric, "energy_at_initialization", False)
    for forward, field, direction in ((True, self.static_to_ref.forward, "forward"),
                                      (False, self.moving_to_ref.forward, "backward")):
        if skip and _side_idle_so_far(self, forward):
            energy = self.metric.get_energy()
        else:
            step = _metric_step(self, clock, forward)
            energy = self.metric.get_energy()
            with clock("update"):
                _apply_step(self, field, step, disp_world2grid, disp_spacing, nthreads,
                            direction)
            del step
        if forward:
            fw_energy = energy
        else:
            bw_energy = energy

    n_iter = len(self.energy_list)
    if getattr(self, "convergence", "dipy") == "ants":
        self.energy_list.append(fw_energy + bw_energy)
        der = ants_convergence_value(self.energy_list)
    else:
        der = np.inf
        if len(self.energy_list) >= self.energy_window:
            der = self._get_energy_derivative()
        self.energy_list.append(fw_energy + bw_energy)
    if self.verbosity >= VerbosityLevels.DIAGNOSE:
        ch = "-" if np.isnan(der) else der
        logger.info(f"{n_iter}:\t{fw_energy:.6f}\t{bw_energy:.6f}"
                    f"\t{(fw_energy + bw_energy):.6f}\t{ch}")

    with clock("inversion"):
        _invert_models(self, disp_world2grid, disp_spacing, nthreads,
                       getattr(self, "inversion_sweeps", None))

    if self.callback is not None:
        self.callback(self, RegistrationStages.ITER_END)
    self.metric.free_iteration()
    self.iterations_run = getattr(self, "iterations_run", 0) + 1
    return der


def _log_residual(label, dmap):
    _, stats = dmap.compute_inversion_error()
    logger.info(f"{label}: {stats[1]:0.6f} ({stats[2]:0.6f})")


def _repair_final_folds(self):
    """``repair_folds``: smooth the final map's fields where they fold.

    Folds are made in the inversions and the final composition, a few
    voxels where a field is nearly singular; :func:`fastsyn.fields.repair_folds`
    averages each field around them until none is left.
    """
    dmap = self.static_to_moving
    self.folds_repaired = {}
    for name in ("forward", "backward"):
        field = np.ascontiguousarray(getattr(dmap, name))
        if not field.flags.writeable:
            field = field.copy()
        self.folds_repaired[name] = repair_folds(field, dmap.disp_grid2world,
                                                 num_threads=self.num_threads)
        setattr(dmap, name, field)


def _optimize(self):
    """DIPY's multi-scale loop (``_optimize``), coarsest level first.

    DIPY also computes three inversion residuals at the end whose only use
    is a DIAGNOSE-level log line (the last one on an unthreaded DIPY map,
    about 3 % of a 128^3 CC run): here they are computed only when they are
    logged.  The registration itself is unchanged.
    """
    self.full_energy_profile = []
    if self.callback is not None:
        self.callback(self, RegistrationStages.OPT_START)
    for level in reversed(range(self.levels)):
        if self.verbosity >= VerbosityLevels.STATUS:
            logger.info(f"Optimizing level {level}")
        self.current_level = level
        self.metric.set_levels_below(self.levels - level)
        self.metric.set_levels_above(level)
        if level < self.levels - 1:
            factors = self.static_ss.get_expand_factors(level + 1, level)
            shape = self.static_ss.get_domain_shape(level)
            self.static_to_ref.expand_fields(factors, shape)
            self.moving_to_ref.expand_fields(factors, shape)
        self.niter = 0
        self.energy_list = []
        derivative = np.inf
        if self.callback is not None:
            self.callback(self, RegistrationStages.SCALE_START)
        max_iter = self.level_iters[self.levels - 1 - level]
        while self.niter < max_iter and self.opt_tol < derivative:
            derivative = self._iterate()
            self.niter += 1
        if getattr(self, "inversion_sweeps", None) is not None and self.niter > 0:
            # The iterations inverted with a few sweeps only: the level ends
            # with inversions to DIPY's tolerance (inv_iter, inv_tol).
            with self._stage_clock("inversion"):
                _invert_models(self, self.static_ss.get_affine_inv(level),
                               self.static_ss.get_spacing(level), _threads_of(self))
        self.full_energy_profile.extend(self.energy_list)
        if self.callback is not None:
            self.callback(self, RegistrationStages.SCALE_END)
    # The iterations' scratch field is not needed past the last level:
    # released before the final composition, whose two new fields set the
    # run's peak memory otherwise.
    self._step_buffer = None
    self._inversion_workspace = None
    # MI's last iteration still holds the reference maps' inverses, which
    # share their fields: once the run ends DIPY copies every field, and
    # those links would keep the four originals beside the copies (the
    # run's peak memory at 1 mm).  DIPY's own metrics keep no maps.
    free_run = getattr(self.metric, "free_run", None)
    if free_run is not None:
        free_run()
    diagnose = self.verbosity >= VerbosityLevels.DIAGNOSE
    if diagnose:
        _log_residual("Static-Reference Residual error", self.static_to_ref)
        _log_residual("Moving-Reference Residual error", self.moving_to_ref)
    self.static_to_moving = self.moving_to_ref.warp_endomorphism(
        self.static_to_ref.inverse()).inverse()
    if getattr(self, "repair_folds", False):
        _repair_final_folds(self)
    if diagnose:
        _log_residual("Final residual error", self.static_to_moving)
    if self.callback is not None:
        self.callback(self, RegistrationStages.OPT_END)


def _init_optimizer(self, static, moving, static_grid2world, moving_grid2world, prealign):
    """DIPY's initialisation (or its twin on ANTs' pyramid); the reference
    maps then warp on threads."""
    if getattr(self, "pyramid", "dipy") == "ants":
        _init_ants_pyramid(self, static, moving, static_grid2world, moving_grid2world,
                           prealign)
    else:
        _DIPY_SDR_INIT_OPTIMIZER(self, static, moving, static_grid2world,
                                 moving_grid2world, prealign)
    nthreads = getattr(self, "num_threads", None)
    self.static_to_ref = DiffeomorphicMap.from_dipy(self.static_to_ref, nthreads)
    self.moving_to_ref = DiffeomorphicMap.from_dipy(self.moving_to_ref, nthreads)
    self._stage_clock = _StageClock()
    self._inversion_workspace = None
    self._refine_maxlen = {}
    self.iterations_run = 0


def _init_ants_pyramid(self, static, moving, static_grid2world, moving_grid2world,
                       prealign):
    """DIPY's ``_init_optimizer`` with :class:`~fastsyn.pyramid.AntsScaleSpace`
    in place of DIPY's scale space (same maps, same reference grid)."""
    self._connect_functions()
    dim = self.dim
    directions = {}
    for side, grid2world in (("static", static_grid2world), ("moving", moving_grid2world)):
        direction, spacing = dipy_imwarp.get_direction_and_spacings(grid2world, dim)
        full = np.eye(dim + 1)
        full[:dim, :dim] = direction
        directions[side] = (full, spacing)
    self.static_direction, static_spacing = directions["static"]
    self.moving_direction, moving_spacing = directions["moving"]
    nthreads = getattr(self, "num_threads", None)
    self.moving_ss = AntsScaleSpace(moving, self.levels, image_grid2world=moving_grid2world,
                                    input_spacing=moving_spacing, num_threads=nthreads)
    self.static_ss = AntsScaleSpace(static, self.levels, image_grid2world=static_grid2world,
                                    input_spacing=static_spacing, num_threads=nthreads)
    disp_shape = self.static_ss.get_domain_shape(self.levels - 1)
    disp_grid2world = self.static_ss.get_affine(self.levels - 1)
    prealign_inv = None if prealign is None else npl.inv(prealign)
    for name, image, grid2world, pre in (("static_to_ref", static, static_grid2world, None),
                                          ("moving_to_ref", moving, moving_grid2world,
                                           prealign_inv)):
        dmap = _DIPY_MAP(dim=dim, disp_shape=disp_shape, disp_grid2world=disp_grid2world,
                         domain_shape=image.shape, domain_grid2world=grid2world,
                         codomain_shape=static.shape, codomain_grid2world=static_grid2world,
                         prealign=pre)
        dmap.allocate()
        setattr(self, name, dmap)


def ants_convergence_value(energies, window=8):
    """ANTs' convergence value of an energy profile (ITK's
    ``WindowConvergenceMonitoringFunction``).

    The last ``window`` energies, each divided by the sum of the absolute
    energies of the whole level, are fitted with a linear B-spline of two
    control points on [0, 1] (ITK's scattered-data B-spline approximation:
    per-point control estimates averaged with squared-weight weighting); the
    value is minus its slope.  ``np.inf`` until the window is full.

    Parameters
    ----------
    energies : sequence of float
        Energies of the current level, oldest first.
    window : int, optional
        ANTs' window (8 in ``antsRegistration``'s SyN).

    Returns
    -------
    float
    """
    if len(energies) < window:
        return np.inf
    total = float(np.sum(np.abs(energies)))
    if total == 0:
        return 0.0
    values = np.asarray(energies[-window:], dtype=np.float64) / total
    t = np.arange(window, dtype=np.float64) / (window - 1)
    weights = np.stack([1.0 - t, t])              # the two linear B-spline bases
    norm = (weights ** 2).sum(axis=0)
    estimates = weights * values / norm           # each point's estimate per control point
    squared = weights ** 2
    control = (squared * estimates).sum(axis=1) / squared.sum(axis=1)
    return float(-(control[1] - control[0]))


def _connect_functions(self):
    """Bind DIPY's attribute names to the threaded kernels."""
    nthreads = getattr(self, "num_threads", None)
    if self.dim == 2:
        invert, compose = (fields.invert_vector_field_fixed_point_2d,
                           fields.compose_vector_fields_2d)
    else:
        invert, compose = (fields.invert_vector_field_fixed_point_3d,
                           fields.compose_vector_fields_3d)

    def invert_vector_field(*args, **kwargs):
        kwargs.setdefault("num_threads", nthreads)
        return invert(*args, **kwargs)

    def compose_fields(*args, **kwargs):
        kwargs.setdefault("num_threads", nthreads)
        return compose(*args, **kwargs)

    self.invert_vector_field = invert_vector_field
    self.compose = compose_fields


def _validate_inputs(self, static, moving, static_grid2world, moving_grid2world,
                     prealign):
    dim = self.dim
    # DIPY computes in float32 and converts whatever np.asarray can convert.
    static = check_image("static", static, dim=dim, dtype=np.float32)
    moving = check_image("moving", moving, dim=dim, dtype=np.float32)
    for name, image in (("static", static), ("moving", moving)):
        check_contrast(name, image)
    check_affine("static_grid2world", static_grid2world, dim, invertible=True)
    check_affine("moving_grid2world", moving_grid2world, dim, invertible=True)
    check_affine("prealign", prealign, dim, invertible=True)
    return static, moving


#: ANTs' convergence threshold (``antsRegistration --convergence [..,1e-7,8]``).
_ANTS_THRESHOLD = 1e-7


def check_syn_options(*, pyramid="dipy", flow_sigma=None, total_sigma=0.0,
                      convergence="dipy", reinvert=True):
    """Validate the ANTs-style options of SyN; returns them as a dict."""
    reinvert = check_bool_or_coarse("reinvert", reinvert)
    if pyramid not in ("dipy", "ants"):
        raise ValueError(f"pyramid must be 'dipy' or 'ants', got {pyramid!r}")
    if convergence not in ("dipy", "ants"):
        raise ValueError(f"convergence must be 'dipy' or 'ants', got {convergence!r}")
    flow_sigma = check_real("flow_sigma", flow_sigma, low=0, allow_none=True)
    total_sigma = check_real("total_sigma", total_sigma, low=0)
    return {"pyramid": pyramid, "flow_sigma": flow_sigma, "total_sigma": total_sigma,
            "convergence": convergence, "reinvert": reinvert}


#: DIPY's values of the SyN settings a metric may prefer others for
#: (``syn_defaults``, e.g. :attr:`fastsyn.MIMetric.syn_defaults`).
DIPY_SYN_SETTINGS = {"step_length": 0.25, "pyramid": "dipy", "total_sigma": 0.0,
                     "reinvert": True, "inversion_sweeps": 0, "fused_inversion": False,
                     "repair_folds": False, "step_percentile": 100.0, "moving_share": 0.5,
                     "coarse_moving_share": None}


def _metric_preferences(metric):
    """``prefer(name, value)``: ``value`` if given, else the metric's
    ``syn_defaults`` entry, else DIPY's value."""
    prefs = getattr(metric, "syn_defaults", None)
    prefs = prefs if isinstance(prefs, dict) else {}

    def prefer(name, value):
        if value is not None:
            return value
        return prefs.get(name, DIPY_SYN_SETTINGS[name])
    return prefer


def syn_setting(metric, name):
    """The value of the SyN setting ``name`` (a key of
    :data:`DIPY_SYN_SETTINGS`) that :class:`SymmetricDiffeomorphicRegistration`
    takes with ``metric`` (a metric or its class) when it is not given."""
    return _metric_preferences(metric)(name, None)


@contextmanager
def _metric_threads(metric, num_threads):
    """Let a fastsyn metric with ``num_threads=None`` follow the optimizer."""
    if hasattr(metric, "num_threads") and metric.num_threads is None:
        metric.num_threads = num_threads
        try:
            yield
        finally:
            metric.num_threads = None
    else:
        yield


#: When the coarse levels' moving share is the metric's preference and not
#: given, a run in which ``auto_masks`` masks the moving image by its nonzero
#: region (a skull-stripped image facing a whole head) takes ``moving_share``
#: there instead: moved alone, such an image is drawn towards the head's
#: scalp (the real-anatomy study's whole heads without masks lose 0.008 to
#: 0.019 a pair on those pairs with it; docs/mi-study.md).
COARSE_SHARE_RULE = "stripped-moving-image-facing-a-head-keeps-moving_share-on-coarse-levels"


def _coarse_share_for_run(sdr):
    """The coarse levels' moving share for one run (:data:`COARSE_SHARE_RULE`),
    once the metric's automatic masks are chosen; None: ``moving_share``."""
    if (sdr.coarse_moving_share is not None and not sdr._coarse_share_given
            and "moving" in getattr(sdr.metric, "auto_masked", ())):
        logger.info("SyN: the moving image is skull-stripped and faces a whole head; "
                    "both images move on the coarse levels too (give coarse_moving_share "
                    "to choose)")
        return None
    return sdr.coarse_moving_share


@contextmanager
def _zero_background_masks(metric, static, moving, static_grid2world, moving_grid2world,
                           prealign):
    """MI's masks for a skull-stripped image that meets a whole head, and a
    whole head stripped by its brain mask (``MIMetric.auto_masks``), for the
    length of one run; yields the images to register."""
    choose = getattr(metric, "masks_for_zero_background", None)
    if choose is None or not getattr(metric, "auto_masks", False):
        yield static, moving
        return
    static, moving = metric.strip_by_masks(static, moving)
    # The two images are compared on the static grid, where the prealigned
    # moving image covers it; nearest neighbour keeps the zeros exact.  A
    # moving image already on that grid (the harness's prealigned pairs) is
    # compared as it is.
    eye = np.eye(static.ndim + 1)
    prealign, static_grid2world, moving_grid2world = (
        eye if m is None else np.asarray(m, dtype=np.float64)
        for m in (prealign, static_grid2world, moving_grid2world))
    if (static.shape == moving.shape and np.array_equal(prealign, eye)
            and np.array_equal(static_grid2world, moving_grid2world)):
        moving_on_static, covered = moving, None
    else:
        # Static grid index -> moving grid index, resampled on threads (as
        # DIPY's AffineMap.transform would, serially).
        index_map = npl.inv(moving_grid2world) @ prealign @ static_grid2world
        threads = getattr(metric, "num_threads", None)
        moving_on_static = transform_image(moving, index_map, static.shape, nearest=True,
                                           num_threads=threads)
        covered = transform_image(np.ones(moving.shape, np.uint8), index_map, static.shape,
                                  nearest=True, num_threads=threads) != 0
    with choose(static, moving, moving_on_static, covered):
        yield static, moving


class SymmetricDiffeomorphicRegistration(_DIPY_SDR):
    r"""Symmetric Diffeomorphic Registration (SyN) on threaded kernels.

    DIPY's :class:`~dipy.align.imwarp.SymmetricDiffeomorphicRegistration`
    with the same parameters and results (up to floating-point rounding), plus
    ``num_threads``.  Results are bitwise identical for every thread count.

    Parameters
    ----------
    metric : SimilarityMetric
        The metric to optimise (fastsyn's :class:`~fastsyn.CCMetric` or
        :class:`~fastsyn.MIMetric`, or any DIPY metric).
    level_iters : list of int, optional
        Iterations per pyramid level, coarsest first (default [100, 100, 25]).
    step_length : float or None, optional
        Length of the largest update vector at each iteration (voxels);
        None: the metric's preference, else DIPY's 0.25 (see Notes).
    ss_sigma_factor : float, optional
        Scale-space smoothing factor.
    opt_tol : float, optional
        Stop a level when the convergence value falls below this (default
        1e-5, DIPY's; 1e-7, ANTs', with ``convergence="ants"``).
    inv_iter : int, optional
        Maximum fixed-point iterations of each field inversion.
    inv_tol : float, optional
        Inversion tolerance (mean residual, voxels).
    callback : callable, optional
        ``callback(registration, stage)`` called as DIPY does.
    num_threads : int or None, optional
        Threads to use (None: OpenMP default, honouring ``OMP_NUM_THREADS``;
        negative: counts back from the number of CPUs).  A fastsyn metric
        whose own ``num_threads`` is None follows this value.
    pyramid : {"dipy", "ants"} or None, optional
        DIPY's scale space, or ANTs' pyramid (:mod:`fastsyn.pyramid`: integer
        shrink factors ``2**level``, ITK's discrete Gaussian of ``level``
        voxels, intensities normalised once); None: the metric's
        preference, else ``"dipy"``.
    flow_sigma : float or None, optional
        ANTs' update-field variance (voxels): every update is smoothed with
        ITK's discrete Gaussian in the optimizer
        (:func:`fastsyn.fields.discrete_gaussian_smooth_field`) and the
        metric's own ``sigma_diff`` smoothing is skipped.  None keeps DIPY's
        behaviour (the metric smooths).
    total_sigma : float or None, optional
        ANTs' total-field variance (voxels): the accumulated fields are
        smoothed the same way after every composition (0: never); None: the
        metric's preference, else 0.
    convergence : {"dipy", "ants"}, optional
        DIPY's energy-derivative test (window ``energy_window``), or ANTs'
        (:func:`ants_convergence_value`, window 8).
    reinvert : bool or None, optional
        After inverting the updated forward fields into the backward ones,
        invert the backward fields back into the forward ones, as DIPY does
        (True, four inversions per iteration).  False keeps the forward
        fields as the updates left them and inverts only once (two
        inversions per iteration: about half the inversion time); the final
        map is built from them the same way.  ``"coarse"``: re-invert at every
        level but the finest (the coarse levels, where a large deformation
        is made, keep the projection onto invertible fields).  None: the
        metric's preference, else True.
    inversion_sweeps : int or None, optional
        Fixed-point sweeps of each inversion inside the iterations (each is
        warm-started from the previous iteration's inverse, which is close);
        every level then ends with inversions to ``inv_iter``/``inv_tol``.
        0 (DIPY's rule): every inversion runs to ``inv_tol`` or ``inv_iter``
        sweeps.  None: the metric's preference, else 0.
    fused_inversion : bool or None, optional
        With ``inversion_sweeps``: each of those sweeps updates the inverse
        in the same pass as its residual, clipping with the previous sweep's
        largest residual (DIPY's loop clips with the current one, which
        needs a second pass over the field).  None: the metric's preference,
        else False.
    repair_folds : bool or None, optional
        After the final composition, average the map's forward and backward
        fields around every point whose Jacobian determinant is at most
        0.05, until none is left (:func:`fastsyn.fields.repair_folds`; a few
        voxels where a field is nearly singular, made by the inversions and
        the composition).  None: the metric's preference, else False.
    step_percentile : float or None, optional
        The percentile of the step's voxel norms (inside its boundary) that
        ``step_length`` scales to, 50 to 100.  100 (DIPY's rule): the largest
        norm, so that one outlying voxel (noise, a vessel) throttles the
        whole update; below 100 the few voxels above the percentile move
        further than ``step_length``.  The percentile is taken on every
        second voxel along each axis, or a sparser regular grid of at most
        2**15 voxels on larger grids (NumPy, so the result does not depend on
        the thread count).  None: the metric's preference, else 100.
    moving_share : float or None, optional
        The moving image's share of each iteration's motion, 0 to 1: the
        moving side's step is ``2 * moving_share * step_length`` and the
        static side's ``2 * (1 - moving_share) * step_length``.  0.5 (DIPY's
        rule) moves both images to the midpoint alike; 1 moves the moving
        image alone, as greedy does, and 0 the static image alone.  None:
        the metric's preference, else 0.5.
    coarse_moving_share : float or None, optional
        The moving image's share on every pyramid level but the finest, 0 to
        1 (``moving_share`` then applies to the finest level only): 1 moves
        the moving image alone where the large deformation is made, as
        greedy does, and both images on the finest level.  A side that has
        not moved yet and has no share of a level is not computed there
        (with a metric whose energy does not depend on the step, such as
        ``MIMetric``).  None: the metric's preference (``MIMetric``: 1,
        except in a run where ``auto_masks`` masks the moving image as a
        skull-stripped image facing a whole head: ``moving_share`` there,
        see :data:`COARSE_SHARE_RULE`), else ``moving_share`` on every
        level; give it the value of ``moving_share`` for one share on every
        level.

    Attributes
    ----------
    stage_times : dict
        After :meth:`optimize`: wall seconds per stage (``warping``,
        ``metric``, ``smoothing``, ``update``, ``inversion``, ``other``)
        and ``total``.
    iterations_run : int
        Number of SyN iterations performed over all levels.
    folds_repaired : dict
        With ``repair_folds``, after :meth:`optimize`: ``{"forward": (rounds,
        left), "backward": (rounds, left)}``, the rounds of averaging each
        field took and its points still folded (0 unless the rounds ran out).
    coarse_moving_share_used : float or None
        During and after :meth:`optimize`: the moving share the coarse
        levels take in that run (None: ``moving_share``, as on the finest
        level).

    Notes
    -----
    ``step_length``, ``pyramid``, ``total_sigma``, ``reinvert``,
    ``inversion_sweeps``, ``fused_inversion``, ``repair_folds``,
    ``step_percentile``, ``moving_share`` and ``coarse_moving_share`` left
    at None take the
    metric's ``syn_defaults``
    (a dict; :attr:`fastsyn.MIMetric.syn_defaults` holds the settings the
    real-anatomy study chose for MI), else DIPY's values
    (:data:`DIPY_SYN_SETTINGS`).  With fastsyn's ``CCMetric`` or any DIPY
    metric the registration is therefore DIPY's algorithm.
    """

    def __init__(self, metric, *, level_iters=None, step_length=None,
                 ss_sigma_factor=0.2, opt_tol=None, inv_iter=20, inv_tol=1e-3,
                 callback=None, num_threads=None, pyramid=None, flow_sigma=None,
                 total_sigma=None, convergence="dipy", reinvert=None,
                 inversion_sweeps=None, fused_inversion=None, repair_folds=None,
                 step_percentile=None, moving_share=None, coarse_moving_share=None):
        resolve_num_threads(num_threads)
        if not isinstance(metric, SimilarityMetric):
            raise TypeError("metric must be a SimilarityMetric (e.g. fastsyn.CCMetric or "
                            f"fastsyn.MIMetric), got {type(metric).__name__}")
        if level_iters is not None:
            if isinstance(level_iters, (str, bytes)) or np.ndim(level_iters) != 1:
                raise TypeError(f"level_iters must be a list of iteration counts, got "
                                f"{level_iters!r}")
            if len(level_iters) == 0:
                raise ValueError(f"level_iters must be a non-empty list of iteration "
                                 f"counts, got {level_iters!r}")
            level_iters = [check_integer(f"level_iters[{i}]", n, low=0)
                           for i, n in enumerate(level_iters)]
        prefer = _metric_preferences(metric)
        step_length, pyramid, total_sigma, reinvert, inversion_sweeps = (
            prefer(name, value) for name, value in (
                ("step_length", step_length), ("pyramid", pyramid),
                ("total_sigma", total_sigma), ("reinvert", reinvert),
                ("inversion_sweeps", inversion_sweeps)))
        fused_inversion = prefer("fused_inversion", fused_inversion)
        repair_folds = prefer("repair_folds", repair_folds)
        step_percentile = check_real("step_percentile", prefer("step_percentile",
                                                               step_percentile),
                                     low=50, high=100)
        moving_share = check_real("moving_share", prefer("moving_share", moving_share),
                                  low=0, high=1)
        coarse_share_given = coarse_moving_share is not None
        coarse_moving_share = check_real(
            "coarse_moving_share", prefer("coarse_moving_share", coarse_moving_share),
            low=0, high=1, allow_none=True)
        check_bool("fused_inversion", fused_inversion)
        check_bool("repair_folds", repair_folds)
        step_length = check_real("step_length", step_length, low=0, low_inclusive=False)
        ss_sigma_factor = check_real("ss_sigma_factor", ss_sigma_factor, low=0)
        options = check_syn_options(pyramid=pyramid, flow_sigma=flow_sigma,
                                    total_sigma=total_sigma, convergence=convergence,
                                    reinvert=reinvert)
        if opt_tol is None:
            opt_tol = _ANTS_THRESHOLD if options["convergence"] == "ants" else 1e-5
        opt_tol = check_real("opt_tol", opt_tol)
        inv_iter = check_integer("inv_iter", inv_iter, low=0)
        inversion_sweeps = check_integer("inversion_sweeps", inversion_sweeps, low=0)
        inv_tol = check_real("inv_tol", inv_tol, low=0)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        _DIPY_SDR.__init__(self, metric, level_iters=level_iters, step_length=step_length,
                           ss_sigma_factor=ss_sigma_factor, opt_tol=opt_tol,
                           inv_iter=inv_iter, inv_tol=inv_tol, callback=callback)
        self.num_threads = num_threads
        # 0: DIPY's rule (every inversion to inv_tol), kept as None
        self.inversion_sweeps = inversion_sweeps or None
        self.fused_inversion = bool(fused_inversion)
        self.repair_folds = bool(repair_folds)
        self.step_percentile = step_percentile
        self.moving_share = moving_share
        self.coarse_moving_share = coarse_moving_share
        self._coarse_share_given = coarse_share_given
        self.coarse_moving_share_used = None
        self.folds_repaired = {}
        for name, value in options.items():
            setattr(self, name, value)
        self.stage_times = {}
        self.iterations_run = 0

    _connect_functions = _connect_functions
    _init_optimizer = _init_optimizer
    _iterate = _iterate
    _optimize = _optimize

    def optimize(self, static, moving, *, static_grid2world=None, moving_grid2world=None,
                 prealign=None):
        """Run SyN; DIPY's :meth:`optimize` with validated inputs.

        Parameters
        ----------
        static, moving : array, shape (R, C) or (S, R, C)
            The images (any real dtype; computed in float32 as DIPY does).
        static_grid2world, moving_grid2world : array, shape (dim+1, dim+1), optional
            Voxel-to-world transforms.
        prealign : array, shape (dim+1, dim+1), optional
            Affine pre-aligning the moving image to the static one.

        Returns
        -------
        static_to_moving : DiffeomorphicMap
            The map taking the moving image to the static one with
            ``transform`` (a :class:`dipy.align.imwarp.DiffeomorphicMap`
            whose warps run on fastsyn's threads).
        """
        static, moving = _validate_inputs(self, static, moving, static_grid2world,
                                          moving_grid2world, prealign)
        start = time.perf_counter()
        with _metric_threads(self.metric, self.num_threads), _zero_background_masks(
                self.metric, static, moving, static_grid2world, moving_grid2world,
                prealign) as (static, moving):
            self.coarse_moving_share_used = _coarse_share_for_run(self)
            result = _DIPY_SDR_OPTIMIZE(self, static, moving,
                                        static_grid2world=static_grid2world,
                                        moving_grid2world=moving_grid2world,
                                        prealign=prealign)
        total = time.perf_counter() - start
        times = dict(self._stage_clock.times)
        times["other"] = max(0.0, total - sum(times[s] for s in STAGES if s != "other"))
        times["total"] = total
        self.stage_times = times
        self.static_to_moving = DiffeomorphicMap.from_dipy(result, self.num_threads)
        return self.static_to_moving


def ants_like(metric, level_iters=(40, 20, 0), *, num_threads=None, **overrides):
    r"""SyN configured as ANTs' ``SyNOnly`` (``ants.registration`` defaults).

    Parameters
    ----------
    metric : SimilarityMetric
        E.g. ``fastsyn.CCMetric(3, radius=4)`` (ANTs' ``CC[.., 1, 4]``) or
        ``fastsyn.MIMetric(3, nbins=32, partial_volume=False)`` (ANTs'
        ``Mattes[.., 1, 32]``, which interpolates on every level).
    level_iters : sequence of int, optional
        Iterations per level, coarsest first (ANTs' ``reg_iterations``).
    num_threads : int or None, optional
        Threads to use.
    **overrides
        Any other :class:`SymmetricDiffeomorphicRegistration` argument.

    Returns
    -------
    SymmetricDiffeomorphicRegistration

    Notes
    -----
    How the parameters correspond:

    ==================  ======================  =====================================
    fastsyn / DIPY      ANTs                    meaning (unit)
    ==================  ======================  =====================================
    ``step_length``     ``grad_step`` (0.2)     largest update per iteration (voxels)
    ``flow_sigma``      ``flow_sigma`` (3)      update-field smoothing (variance, voxels)
    ``total_sigma``     ``total_sigma`` (0)     total-field smoothing (variance, voxels)
    ``level_iters``     ``reg_iterations``      iterations per level, coarsest first
    ``pyramid="ants"``  ``4x2x1`` / ``2x1x0vox``  shrink factors / smoothing sigmas
    ``convergence``     ``[.., 1e-7, 8]``       threshold and window of the test
    ``sigma_diff``      (none)                  DIPY's metric-side smoothing (std,
                                                voxels), skipped when ``flow_sigma``
                                                is set
    ==================  ======================  =====================================
    """
    # ANTs scales each update to its largest voxel norm (step_percentile=100)
    # and moves both images alike on every level (moving_share and
    # coarse_moving_share 0.5), whatever the metric prefers.
    settings = dict(pyramid="ants", flow_sigma=3.0, total_sigma=0.0, convergence="ants",
                    step_length=0.2, step_percentile=100.0, moving_share=0.5,
                    coarse_moving_share=0.5)
    settings.update(overrides)
    return SymmetricDiffeomorphicRegistration(metric, level_iters=list(level_iters),
                                              num_threads=num_threads, **settings)
