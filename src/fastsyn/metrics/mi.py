"""Mutual Information similarity metric for SyN.

:class:`MIMetric` follows Mattes et al. (2003): the joint intensity histogram
of the two images is built with cubic B-spline Parzen windows and the mutual
information of that smooth histogram is differentiated analytically with
respect to the displacement at every voxel.  Unlike the one-sided Mattes
model (box window on the fixed image), both sides use the cubic window,
because symmetric normalisation moves both images and so needs the
derivative with respect to either of them.

On every pyramid level but the finest (``partial_volume="coarse"``, the
default) each image instead gets its own partial-volume histogram
(Maes et al. 1997, as greedy's), which reads that image's own voxels
rather than interpolated values.

The histograms and the dense derivatives run in fastsyn's threaded kernels
(:mod:`fastsyn._kernels.mi`, :mod:`fastsyn._kernels.mi_pv`); results are
bitwise identical for every ``num_threads``.

References
----------
.. [Mattes03] Mattes, D., Haynor, D. R., Vesselle, H., Lewellen, T. K. and
   Eubank, W. "PET-CT image registration in the chest using free-form
   deformations", IEEE Transactions on Medical Imaging, 22(1), 120-128, 2003.
.. [Maes97] Maes, F., Collignon, A., Vandermeulen, D., Marchal, G. and
   Suetens, P. "Multimodality image registration by maximization of mutual
   information", IEEE Transactions on Medical Imaging, 16(2), 187-198, 1997
   (partial-volume interpolation, ``partial_volume``).
"""

import logging
import time
from contextlib import contextmanager

import numpy as np
from dipy.align.imwarp import mult_aff as dipy_mult_aff
from dipy.align.metrics import SimilarityMetric
from scipy import ndimage

from fastsyn._kernels import mi as k_mi
from fastsyn._kernels import mi_pv as k_pv
from fastsyn._threads import resolve_num_threads
from fastsyn._validation import check_bool, check_bool_or_coarse, check_integer, check_real
from fastsyn.fields import sample_points_unchecked, smooth_unchecked
from fastsyn.metrics._base import MetricInputs, check_metric_dim, step_geometry

__all__ = ["AUTO_MASK_RULES", "MASK_RULES", "MAX_NBINS", "MIMetric", "background_only_mask",
           "mi_from_histogram", "zero_background_sides"]

#: Upper bound of ``nbins`` (memory of the per-slice partial histograms).
MAX_NBINS = 256
#: How ``static_mask`` and ``moving_mask`` combine on the common grid.
MASK_RULES = ("either", "both")

# Flags of the per-voxel ``use`` array handed to the kernels.
_DERIV = np.uint8(1)   # the voxel gets an update (inside the masks)
_HIST = np.uint8(2)    # the voxel enters the histogram (masks and sample)
_DUMMY_USE = np.zeros(1, dtype=np.uint8)

# Rows per partial histogram of a 2D image (a 3D image uses one slice).
_ROWS_PER_CHUNK = 8


def mi_from_histogram(hist, count):
    """Mutual information and per-bin weights of a joint Parzen histogram.

    Parameters
    ----------
    hist : array, shape (nbins, nbins)
        Joint histogram (static bins along the first axis).
    count : float
        Number of voxels that built it (the histogram's total mass).

    Returns
    -------
    mi : float
        Mutual information (nats) of ``p = hist / count``.
    weights : array, shape (nbins, nbins)
        ``log(p(i, j) / (p_s(i) p_m(j)))``, the derivative of the mutual
        information with respect to ``p(i, j)`` (zero on empty bins).
    """
    p = np.asarray(hist, dtype=np.float64) / count
    ps = p.sum(axis=1)
    pm = p.sum(axis=0)
    weights = np.zeros_like(p)
    nz = p > 0
    weights[nz] = np.log(p[nz] / np.outer(ps, pm)[nz])
    return float(np.sum(p[nz] * weights[nz])), weights


def _check_mask(name, mask, dim):
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim != dim:
        raise ValueError(f"{name} must be a {dim}D array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be boolean or numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    arr = np.ascontiguousarray(arr != 0, dtype=np.uint8)
    if not arr.any():
        raise ValueError(f"{name} is empty (no nonzero voxel)")
    return arr


def _mask_to_level(name, mask, shape):
    """Nearest-neighbour copy of a full-resolution mask on a pyramid level.

    DIPY's scale space keeps the origin and scales the index grid, so level
    index ``i`` sits at full-resolution index ``i * n_full / n_level`` (exact
    when the size is divisible by the level factor, within one level voxel
    otherwise).  A level is at least twice coarser along the axis of finest
    spacing, so a grid that is nowhere twice coarser is a mismatch.
    """
    if mask.shape == tuple(shape):
        return mask
    if (any(m < s for m, s in zip(mask.shape, shape))
            or max(m / s for m, s in zip(mask.shape, shape)) < 2):
        raise ValueError(
            f"{name} has shape {mask.shape}, which does not match the image shape "
            f"{tuple(shape)} (nor a finer grid of it)"
        )
    index = [np.minimum(m - 1, np.floor(np.arange(s) * (m / s) + 0.5).astype(np.intp))
             for m, s in zip(mask.shape, shape)]
    return np.ascontiguousarray(mask[np.ix_(*index)])


#: A zero background is "no data" (a skull-stripped image) when it fills at
#: least this fraction of the image ...
ZERO_BACKGROUND_MIN = 0.1
#: ... and at least this fraction of it faces signal in the other image (on
#: the real sets: 0.29 to 0.56 where a stripped image meets a head, at most
#: 0.04 between two stripped images and 0.14 between two heads).
ZERO_FACING_SIGNAL_MIN = 0.2
#: A given mask leaves out only background when at most this fraction of its
#: image's signal lies outside it, grown by one voxel (on the real sets: at
#: most 0.0016 for a skull-stripped image and its brain mask, resampled or
#: not; 0.47 to 0.55 for a whole head and its brain mask).
BACKGROUND_MASK_SIGNAL_MAX = 0.01
#: ... and at most this fraction of the signal it leaves out lies two voxels
#: or more inside the image's nonzero region, so that a mask with a lesion
#: cut out of it is kept (0.00002 at most on the real sets' stripped images).
BACKGROUND_MASK_INTERIOR_MAX = 0.0005
#: A given mask whose outline (the mask with its holes filled) leaves out
#: more than this fraction of its image's signal, grown by one voxel, and
#: holds more than this fraction too, is a brain mask on a whole head (on the
#: real sets: 0.49 to 0.59 left out for a head and its brain mask, at most
#: 0.0025 for a skull-stripped image and its own): the image is registered
#: stripped by that outline.  A mask that leaves out less (a lesion at the
#: brain's edge) or holds less (a small region of interest) only restricts MI.
STRIP_MASK_SIGNAL_MIN = 0.1

#: What ``auto_masks=True`` does (the benchmark harness records it, so that
#: results made under other rules get other keys).
AUTO_MASK_RULES = ("stripped-image-facing-signal-masked",
                   "background-only-mask-set-aside-unless-facing-signal-or-interior-cut",
                   "image-stripped-by-mask-outline-leaving-out-and-holding-over-0.1-of-signal")

logger = logging.getLogger("fastsyn")


def zero_background_sides(static, moving_on_static, covered=None):
    """Which images are zero where the other one has signal.

    Parameters
    ----------
    static : array
        The static image.
    moving_on_static : array
        The moving image resampled on the static grid (nearest neighbour, so
        that its zeros stay exact).
    covered : bool array or None, optional
        Where the moving image's field of view covers the static grid; only
        there are the two compared.

    Returns
    -------
    tuple of str
        ``"static"`` and/or ``"moving"``: the sides whose exact zeros fill at
        least :data:`ZERO_BACKGROUND_MIN` of the compared voxels and of which
        at least :data:`ZERO_FACING_SIGNAL_MIN` face signal (above a tenth of
        the other image's 1st-99th percentile range) in the other image.
    """
    static = np.asarray(static)
    moving = np.asarray(moving_on_static)
    if covered is not None:
        static, moving = static[covered], moving[covered]
    sides = []
    for side, image, other in (("static", static, moving), ("moving", moving, static)):
        if image.size == 0:
            continue
        zero = image == 0
        if zero.mean() < ZERO_BACKGROUND_MIN:
            continue
        facing = np.count_nonzero(zero & _signal(other))
        if facing >= ZERO_FACING_SIGNAL_MIN * np.count_nonzero(zero):
            sides.append(side)
    return tuple(sides)


def _signal(image):
    """Voxels above a tenth of the image's 1st-99th percentile range."""
    lo, hi = np.percentile(image, (1, 99))
    return image > lo + 0.1 * (hi - lo)


def _mask_and_signal(image, mask):
    """(image, mask, signal, signal count) for a mask on its image's grid,
    or None where there is nothing to judge (another grid, no signal)."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape != mask.shape or image.size == 0:
        return None
    signal = _signal(image)
    n_signal = np.count_nonzero(signal)
    return None if n_signal == 0 else (image, mask, signal, n_signal)


def background_only_mask(image, mask):
    """Whether a mask leaves out nothing of its image but background.

    Parameters
    ----------
    image : array
        The image.
    mask : array
        Its mask, on the same grid (nonzero inside).

    Returns
    -------
    bool
        True when at most :data:`BACKGROUND_MASK_SIGNAL_MAX` of the image's
        signal (above a tenth of its 1st-99th percentile range) lies outside
        the mask grown by one face-connected voxel, and at most
        :data:`BACKGROUND_MASK_INTERIOR_MAX` of it also two voxels or more
        inside the image's nonzero region, as for a skull-stripped image
        and its brain mask; False for a mask with a lesion cut out of it,
        for a brain mask on a whole head and for a mask on another grid.
    """
    judged = _mask_and_signal(image, mask)
    if judged is None:
        return False
    image, mask, signal, n_signal = judged
    left_out = signal & (_grow_mask(mask, 1) == 0)
    n_left_out = np.count_nonzero(left_out)
    if n_left_out > BACKGROUND_MASK_SIGNAL_MAX * n_signal:
        return False
    if n_left_out <= BACKGROUND_MASK_INTERIOR_MAX * n_signal:
        return True
    # A stripped image's brain mask leaves out its edge; a cost-function
    # mask leaves out a lesion inside the brain.
    deep = ndimage.binary_erosion(image != 0, ndimage.generate_binary_structure(image.ndim, 1),
                                  iterations=2)
    return np.count_nonzero(left_out & deep) <= BACKGROUND_MASK_INTERIOR_MAX * n_signal


def mask_outline(mask):
    """The mask with its holes filled (bool): what a cost-function mask with a
    lesion cut out of it encloses."""
    inside = np.asarray(mask) != 0
    outline = inside.copy()
    boxes = ndimage.find_objects(inside.view(np.uint8))
    if boxes:
        # Holes lie inside the mask's bounding box: filling there is filling
        # the grid, in a fraction of the time.
        outline[boxes[0]] = ndimage.binary_fill_holes(inside[boxes[0]])
    return outline


def brain_mask_on_head(image, mask):
    """Whether a mask is a brain mask on a whole head: its outline leaves out
    much of its image's signal, and holds much of it.

    Parameters
    ----------
    image : array
        The image.
    mask : array
        Its mask, on the same grid (nonzero inside).

    Returns
    -------
    bool
        True when more than :data:`STRIP_MASK_SIGNAL_MIN` of the image's
        signal (above a tenth of its 1st-99th percentile range) lies outside
        :func:`mask_outline`, grown by one face-connected voxel, and more
        than that inside it: about half either way for a whole head and its
        brain mask; about nothing left out for a skull-stripped image and
        its own, with a lesion cut out of it or not; little held by a small
        region of interest.  False for a mask on another grid or an image
        without signal.
    """
    return _stripping_outline(image, mask) is not None


def _stripping_outline(image, mask):
    """:func:`mask_outline` where :func:`brain_mask_on_head`, else None."""
    judged = _mask_and_signal(image, mask)
    if judged is None:
        return None
    _, mask, signal, n_signal = judged
    limit = STRIP_MASK_SIGNAL_MIN * n_signal
    if np.count_nonzero(signal & (_grow_mask(mask, 1) == 0)) <= limit:
        return None  # the outline holds the mask: it leaves out no more
    outline = mask_outline(mask)
    if np.count_nonzero(signal & (_grow_mask(outline, 1) == 0)) <= limit:
        return None
    if np.count_nonzero(signal & outline) <= limit:
        # A small region of interest, not a brain: stripped, MI would have
        # next to nothing left.
        return None
    return outline


def sample_points(transformation, shape, grid2world, dtype, num_threads):
    """For every voxel of a grid of ``shape`` and ``grid2world``, the point
    of the image's grid at which ``transformation.transform(image,
    image_world2grid=None, out_shape=shape, out_grid2world=grid2world)``
    samples it, shape ``shape + (dim,)``.  The matrices are those of DIPY's
    ``_warp_forward`` (or ``_warp_backward`` for a map from ``inverse()``),
    rebuilt here from the map's."""
    field, inner, outer, disp = _sample_matrices(transformation, grid2world)
    return sample_points_unchecked(field, inner, outer, disp, shape, dtype,
                                   resolve_num_threads(num_threads))


def _sample_matrices(transformation, grid2world):
    """The field and the matrices A, B, C of ``C d[A i] + B i`` (DIPY's
    ``_warp_forward``, or ``_warp_backward`` for a map from ``inverse()``)."""
    mult = dipy_mult_aff
    S = grid2world
    if getattr(transformation, "is_inverse", False):
        W = transformation.domain_world2grid
        field, pre = transformation.backward, transformation.prealign_inv
        inner, disp = mult(transformation.disp_world2grid, S), mult(W, pre)
    else:
        W = transformation.codomain_world2grid
        field, pre = transformation.forward, transformation.prealign
        inner, disp = mult(transformation.disp_world2grid, mult(pre, S)), W
    return field, inner, mult(W, mult(pre, S)), disp


def sample_jacobian(transformation, grid2world, dim):
    """The points' Jacobian without the field: the linear part of ``B`` in
    :func:`sample_points` (the identity when the map has no matrices)."""
    outer = _sample_matrices(transformation, grid2world)[2]
    if outer is None:
        return np.eye(dim)
    return np.ascontiguousarray(np.asarray(outer, dtype=np.float64)[:dim, :dim])


def _grow_mask(mask, margin):
    """``mask`` grown by ``margin`` face-connected voxels (uint8)."""
    if margin == 0:
        return mask
    grown = ndimage.binary_dilation(
        mask != 0, ndimage.generate_binary_structure(mask.ndim, 1), iterations=margin)
    return grown.astype(np.uint8)


class MIMetric(MetricInputs, SimilarityMetric):
    r"""Mutual Information metric for SyN (Mattes-style Parzen histogram).

    A drop-in for DIPY's ``CCMetric``/``EMMetric`` in
    :class:`dipy.align.imwarp.SymmetricDiffeomorphicRegistration` and in
    :class:`fastsyn.SymmetricDiffeomorphicRegistration`, for images of any
    pair of modalities (T1/T2, inverted contrasts, ...).

    Parameters
    ----------
    dim : int
        Image dimension (2 or 3).
    nbins : int, optional
        Number of histogram bins per image (4 to :data:`MAX_NBINS` = 256: the
        threads fill one ``nbins x nbins`` partial histogram per slice).  Intensities are
        mapped to bin coordinates in ``[1, nbins - 2]`` so that every cubic
        B-spline window (4 bins wide) stays inside the table.
    sigma_diff : float, optional
        Standard deviation (voxels) of the Gaussian that smooths each update
        field, as in ``CCMetric``; 0 disables the smoothing.  Default 2, as
        DIPY's CC: on real anatomy (see Notes) it matched 3 in Dice without
        the folded voxels 3 left, and 1 lost.
    smooth : float, optional
        Alias of ``sigma_diff`` (give one or the other).
    sampling : float or None, optional
        Fraction in (0, 1] of the voxels that build the histogram (and the
        intensity percentiles).  The voxels are drawn once per pyramid level,
        seeded by ``seed``.  The dense derivative is still evaluated at every
        voxel inside the masks, with the per-bin weights of the sampled
        histogram, so the update field stays dense and needs no extra
        smoothing.  None uses every voxel.
    seed : int, optional
        Seed of the sampling.
    clip : tuple of float, optional
        Lower and upper percentiles (inside the mask) of each image mapped to
        the first and last bin; intensities beyond them are clamped and get no
        derivative.  ``(0, 100)`` uses the full range.
    static_mask, moving_mask : array or None, optional
        Masks on the full-resolution grids of the static and the moving image,
        warped along with their images; voxels of the common grid outside
        them (grown by ``mask_margin``) get a zero update and stay out of the
        histogram.  On coarser pyramid levels a mask is resampled by nearest
        neighbour.
    mask_rule : {"either", "both"}, optional
        Where two masks count: where either is nonzero (default), or where
        both are (ITK's and ANTs' rule).  On whole-head scans with brain
        masks "either" leaves out the scalp and skull that no mask covers but
        keeps the brain's outline where the two brains do not yet overlap,
        which "both" cuts away (see Notes).
    mask_margin : int, optional
        Voxels of background kept around each mask: before it is warped,
        each mask is grown by this many face-connected voxels on every
        pyramid level (so by more millimetres on coarser levels).  The
        intensity percentiles still come from the masks as given.  Default
        1: on skull-stripped images a one-voxel rim keeps most of the
        outline's match that brain masks otherwise cut away (see Notes);
        0 uses the masks as given.
    auto_masks : bool, optional
        When a registration starts (:class:`fastsyn.SymmetricDiffeomorphicRegistration`)
        and an image is exactly zero outside a region where the other image
        has signal, as a skull-stripped image against a whole head, that
        image's nonzero region becomes its mask for the run, unless a mask
        was given for it (see :func:`zero_background_sides` and the Notes).
        An image whose given mask's outline leaves out much of its signal
        (:func:`brain_mask_on_head`: a whole head and its brain mask)
        is first set to zero outside that outline, and registered as a
        skull-stripped image is, by the rules that follow.
        A given mask that leaves out nothing of its image but background
        (:func:`background_only_mask`: a skull-stripped image and its brain
        mask) is set aside for the run, as if not given, unless that image
        is zero where the other has signal (the mask then keeps its zeros
        out).  Between two skull-stripped images, with or without their
        masks, MI then uses no mask; between two heads nothing changes.
        Default True; the sides chosen are in ``auto_masked`` and
        ``masks_set_aside``; False takes the masks exactly as given.  A
        mask with a lesion cut out of it is kept, unless the lesion is
        smaller than 0.05 % of the image's signal (about 0.6 mL of a brain).
    partial_volume : bool or "coarse", optional
        Partial-volume histograms (Maes et al. 1997; greedy's): each side's
        step comes from its own histogram, in which every voxel of the
        common grid adds the bins of that side's own voxels around the point
        where the warp would sample it, with their trilinear weights,
        instead of one interpolated intensity; the other side's warped value
        is spread over its two nearest bins.  The step is the derivative
        with respect to those points, turned by the map's affine part (the
        field's own Jacobian left out, as in greedy).  Interpolation averages a noisy
        image's noise and so sharpens the histogram, which rewards half-voxel
        shifts; partial volume does not, but it favours grid-aligned points,
        which costs precision on smooth images.  ``"coarse"`` (the default)
        takes them on every pyramid level but the finest and the Parzen
        histogram at the finest (outside a pyramid, where the metric's one
        level is the finest, the Parzen histogram); True on every level,
        False on none.  Measured on the real set (see Notes), the coarse
        levels give most of the held-out gain at a few percent of the time;
        on every level, the two histograms and steps make a registration
        take about 1.3x as long.
    num_threads : int or None, optional
        Threads to use (None: OpenMP default, honouring ``OMP_NUM_THREADS``,
        or the value of a fastsyn optimizer that drives the metric; negative:
        counts back from the number of CPUs).  Results are the same for every
        value.

    Attributes
    ----------
    mi : float
        Mutual information (nats) of the current pair, set by
        ``initialize_iteration``; the energy is ``-mi``.
    joint_histogram : array, shape (nbins, nbins)
        Parzen histogram of the current pair (static bins first); where
        the level takes partial-volume histograms, the moving side's.
    histogram_count : float
        Number of voxels that built it.
    pv_histograms : dict
        Where the level takes partial-volume histograms, each side's
        histogram and voxel count (``"static"``, ``"moving"``); empty
        otherwise.
    static_range, moving_range : tuple of float
        Intensities mapped to the first and last bin.
    auto_masked : tuple of str
        The sides (``"static"``, ``"moving"``) that ``auto_masks`` masked in
        the last registration.
    masks_set_aside : tuple of str
        The sides whose given mask ``auto_masks`` set aside in the last
        registration.
    images_stripped : tuple of str
        The sides whose image ``auto_masks`` set to zero outside its mask's
        outline in the last registration.

    Notes
    -----
    With ``p = h / N`` the Parzen histogram and ``B`` the cubic B-spline,

    .. math::

        \frac{\partial MI}{\partial c_s(x)} = \frac{1}{N} \sum_{i, j}
        \log\frac{p(i, j)}{p_s(i) p_m(j)} B'(c_s(x) - i) B(c_m(x) - j)

    where ``c_s`` is the static bin coordinate; only the 16 bins reached by
    voxel ``x`` contribute.  As in DIPY's ``CCMetric``, the forward step is
    ``-dMI/dI(x) grad I(x)`` (static image ``I``) and the backward step
    ``-dMI/dJ(x) grad J(x)`` (moving image ``J``), each then smoothed.

    The defaults come from ``fastsyn bench study`` on the real-anatomy set
    (``--dataset real``, :mod:`fastsyn.bench.realset`: SPM12's avg152
    T1/T2/PD, avg305, Colin 27 and the MNI152 2009 T1, plus real T1 against
    synthetic T2/FLAIR; tissue Dice), choosing on the ``tune`` half of 24
    pairs (one per direction and half) and reporting on the held-out
    ``report`` half, levels 20/20/10, one shared rigid prealignment, against
    ANTs SyN Mattes (32 bins) and greedy NMI.  On the tune half (paired mean
    Dice gain over the previous default, ``sigma_diff=3``, 0.669):

    * ``sigma_diff=2`` (was 3): +0.001 and no folded voxel (0.046 % with 3);
      ``sigma_diff=1`` lost 0.011.
    * ``inversion_sweeps=1``, ``fused_inversion=True`` (:attr:`syn_defaults`):
      one warm-started fused sweep per inversion inside the iterations
      (-0.000 against DIPY's rule on both halves), about 0.86x the time of
      the unfused sweep.  On two threads of a 2-core VM the default takes
      0.73x, 0.91x and 0.83x greedy NMI's time at 128^3 (three runs) and
      0.80x to 1.05x in five runs at 1 mm, 0.94x in the last
      (``docs/speed-log.md``; 0.93x to 1.10x before the smoothing took
      fewer passes).
      DIPY's re-inversion stays: without it (``reinvert=False``) the 30 tune
      pairs gained 0.003 at 20/20/10 but folded voxels on 3 of them and
      SD log|J| rose from 0.19 to 0.33; at DIPY's 100/100/25 it lost 0.021
      (with ``step_length=0.15``) and folded 0.16 % of voxels.  With a
      sigma 0.3 total-field smoothing and the final map's folds repaired
      (``reinvert=False, total_sigma=0.3, repair_folds=True``, measured a
      session later) it gained 0.004 on both halves of the real set and
      0.006-0.007 on the single-scan pairs without folding, but on the small
      multimodal fixture (40 x 50 x 42, levels 20/10/5) it ended below the
      rigid start (Dice 0.63 against 0.69; 0.77 with the re-inversion): not
      a default.
    * ``reinvert="coarse"``, ``total_sigma=0.3``, ``repair_folds=True``
      (:attr:`syn_defaults`): DIPY's re-inversion at every level
      but the finest, where the large deformation is already made; a
      variance-0.3 smoothing of both total fields every iteration; and the
      final map's folds (Jacobian determinant <= 0.05) averaged away.  On
      the held-out half of the real set 0.678 against 0.674 for the
      previous defaults, on the single-scan pairs +0.002, no folded voxel,
      SD log|J| as before (0.21 against 0.20); the small multimodal fixture
      keeps Dice 0.77 (0.63 with no re-inversion).
    * ``step_length=0.4`` (DIPY's 0.25), chosen on the tune halves on top of
      those: 0.25 / 0.3 / 0.35 / 0.4 / 0.5 gave 0.677 / 0.679 / 0.680 /
      0.682 / 0.683 on the 30 real tune pairs and 0.557 / 0.559 / 0.561 /
      0.562 / 0.564 on the 18 single-scan ones; at DIPY's 100/100/25, 0.4
      and 0.5 both gained 0.003.  Before the repair, 0.4 folds 7 of the 30
      pairs by at most 0.004 % of the mask (0.5: 8 pairs, up to 0.03 %).
      Held out: 0.680 on the real set (greedy NMI 0.673, ANTs Mattes 0.667)
      and 0.570 on the single scan (greedy 0.568, ANTs 0.550), no folded
      voxel, SD log|J| 0.24 (ANTs 0.17, greedy 0.33).  On two threads of a
      2-core VM the defaults take 0.85x greedy NMI's time at 128^3 and 0.81x
      at 1 mm, 0.11x ANTs Mattes'.
    * Not taken: ANTs' pyramid -0.005, greedy-like total-field smoothing
      (``total_sigma=0.5``) -0.003, ``step_length=0.5`` +0.001 but 0.24 %
      folded voxels (with DIPY's re-inversion and no repair, then),
      image-nonzero masks -0.022.
    * Kept from the embedded-cohort study (which alone cannot choose a
      default: warps of one template reward heavier smoothing):
      ``clip=(0.5, 99.5)``, ``sampling=None`` (0.3 is a speed option), and 32
      bins, which the real set confirms (24 bins -0.0006, 48 bins -0.0017).
    * Measured later on the 30 tune pairs of ``--sample 56``, not taken: the
      box (Mattes/ITK) window on the side not being differentiated, one
      histogram per side, +0.0005 (not significant); greedy-like longer steps
      with total-field smoothing (``step_length`` 0.35-0.5, ``total_sigma``
      0.5-0.7) -0.002 to -0.007; ``step_length=0.3`` +0.0014, but one pair
      folds; greedy's objective, normalised MI, whose per-bin weights scale
      MI's joint term by NMI, -0.0001; the image gradient from a smoothed
      copy of each image (sigma 1 / 0.5 voxels) -0.024 / -0.003;
      re-inverting every second iteration +0.003, but it folds voxels, as
      ``reinvert=False`` does.
    * On a real single scan (the subject ``chris`` of ``fastsyn prepare
      niivue``; 18 tune and 12 report pairs) greedy NMI leads the defaults
      by 0.005 and 0.006 (ANTs trails them by 0.006 and 0.012).
      No smoothing, bin or pyramid setting closes that; dropping the
      re-inversion does (+0.007, +0.009; with ``total_sigma=0.3`` +0.006,
      +0.007), with the limits above.

    * ``step_percentile=99.5`` (DIPY's 100, the maximum): the step length
      is the 99.5th percentile of the step's voxel norms, so that a few
      outlying voxels (noise, vessels) do not throttle the whole update.
      Tune halves: +0.0012 on the 30 real pairs (17 won), +0.0066
      [+0.003, +0.010] on the 18 single-scan ones (15 won); 99 gave +0.0003
      and +0.0077.  Held out: -0.0009 on the real set (11 of 26 won) and
      +0.0056 [+0.003, +0.008] on the single scan (11 of 12 won).  It
      deforms more (SD log|J| 0.24 to 0.30 on the real set) and moves
      Dice from CSF to white matter and grey matter, where greedy NMI led;
      the synthetic fixtures lose a little (inverted contrast 0.848 to
      0.836, multimodal 0.785 to 0.782).
    * ``moving_share=0.65`` (DIPY's 0.5): 65 % of each iteration's motion
      on the moving image, 35 % on the static one.  Per direction, the
      held-out gap to greedy NMI (which moves the moving image alone) was
      a matter of which image moves: moving either image alone loses on
      average, but the static image alone loses far more (tune halves of
      the real set, per direction in ``docs/mi-study.md``).  Tune halves: 0.65 /
      0.75 gave +0.0025 / +0.0025 on the 30 real pairs (19 / 18 won) and
      +0.0011 / +0.0012 on the 18 single-scan ones (12 / 13 won), white
      matter gaining most.  Held out: +0.0033 [+0.0005, +0.0061] on the real
      set (16 of 26 won; ``t2<-t1`` from -0.013 to +0.001 against greedy)
      and +0.0010 on the single scan (8 of 12), no folded voxel; at DIPY's
      100/100/25, +0.0072 on the 30 real tune pairs.  The embedded cohort
      is level (Dice 0.680 both, TRE 1.51 against 1.48 mm).  The inverse
      map (fixed labels onto the moving image) loses 0.0008 on the real
      tune pairs.

    * ``partial_volume="coarse"`` (was False): partial-volume histograms on
      every level but the finest.  Against the Parzen histogram on every
      level, both run on one machine: +0.0043 [+0.0015, +0.0070] on the 30
      real tune pairs (23 won) and +0.0041 [+0.0022, +0.0060] held out
      (20 of 26; 0.687 against greedy NMI's 0.673 and ANTs Mattes' 0.667);
      on the single scan +0.0043 tune (14 of 18) and +0.0046 held out
      (10 of 12; 0.580 against 0.568 and 0.550); at 1 mm +0.0102
      [+0.0060, +0.0144] held out (24 of 26; 0.722 against greedy's
      0.708); no folded voxel.  On the
      tune half, the coarse levels alone gained more than every level
      (0.6893 against 0.6879) and the finest alone less (0.6876, with
      half the voxels per histogram).  The coarse levels hold about a fifth
      of the voxel-iterations: +3 % time at 128^3.  Partial volume on
      every level (True) gains a little more held out (+0.0053 real,
      +0.0067 single scan) for 1.3x to 1.4x the time (1.16x greedy NMI's at
      128^3, 1.19x at 1 mm; the limit is 1.0x).  One pass a side (the step
      with the previous histogram's weights) reached 1.06x and lost the
      held-out gain (+0.0003 over the Parzen histogram).

    * ``coarse_moving_share=1`` (:attr:`syn_defaults`; was
      ``moving_share`` on every level): the moving image alone moves on
      every level but the finest, as greedy's does, and the static side's
      step is not computed there.  Paired against the previous default on
      one machine: tune halves +0.0018 on the real set (16 of 30 won),
      -0.0009 on the single scan (7 of 18), +0.0015 at 1 mm, +0.0038 in
      3 mm slices; held out +0.0008 (real; 0.687 against greedy NMI's
      0.673 and ANTs Mattes' 0.667), +0.0020 (single scan), +0.0009 at
      1 mm, +0.0032 in 3 mm slices and +0.0017 on the single scan at
      1 mm, no folded voxel.  It closes the held-out directions that
      trailed greedy by more than 0.01 at 2 mm (``flair<-t2`` -0.019 to
      -0.003) and in 3 mm slices (``t1<-pd`` -0.022 to -0.002).  Over
      every set and both halves it gains where a real image moves and
      loses where a synthetic subject does.  A skull-stripped moving image
      that the automatic masks mask against a whole head keeps
      ``moving_share`` on the coarse levels
      (:data:`fastsyn.imwarp.COARSE_SHARE_RULE`): moved alone it is drawn
      to the scalp (-0.008 to -0.019 a pair on the whole heads' 10 such
      pairs per half).  With that rule the whole heads without masks gain
      +0.0047 (tune) and +0.0048 (held out) at 2 mm and +0.0022 at 1 mm
      (held out); with brain masks they are level at 2 mm and lose 0.0046
      held out at 1 mm (0.720 against 0.724; greedy NMI 0.647).  Time at
      128^3 0.89x the previous default's, 0.85x greedy NMI's (0.81x at
      1 mm).

    * ``mask_rule="either"`` (ITK's and ANTs' rule is "both"): on the set
      with the SPM subjects' whole heads (``--dataset real-heads``) and brain
      masks, 0.631 against 0.618 on the 30 tune pairs and 0.645 against 0.620
      held out (ANTs Mattes 0.640, greedy NMI 0.627, both without masks);
      on the skull-stripped set brain masks cost 0.029 with "either" and
      0.064 with "both", so stripped images need none.  (Both figures with
      ``mask_margin=0``.)
    * ``mask_margin=1``: on the skull-stripped set's tune half brain masks
      then cost 0.011 instead of 0.029 (0.674 against 0.656; none 0.685),
      and on the whole heads 0.632 against 0.631 (tune) and 0.646 against
      0.645 (held out).  In a scratch run that grew the masks after
      warping, one voxel / two voxels / four millimetres gave 0.676 / 0.677
      / 0.676 on the stripped tune half and 0.632 / 0.625 / 0.630 on the
      heads': two voxels gain 0.001 on the first and lose 0.007 on the
      second.
    * ``auto_masks=True``: where a skull-stripped image meets a whole head
      and no masks are given, MI would match the stripped image's zeros to
      the head's scalp and skull.  On the heads' tune half without masks it
      lifted 0.545 to 0.613 (head against brain-only image 0.457 to 0.626,
      the reverse 0.590 to 0.623), and held out 0.576 to 0.648 (ANTs Mattes
      0.640, greedy NMI 0.627); between two stripped images or two heads it
      never chose a mask, so they are unchanged (``real``: the same Dice on
      all 56 pairs).
      Taking each image's percentiles over its nonzero voxels alone (no
      mask) gave 0.607 on the heads but cost 0.021 on the stripped set.
      Setting aside a given mask that leaves out only background, unless
      the image's zeros face the other's signal: with brain masks on every
      image, the stripped set gives what it gives without them (0.685 tune,
      0.682 held out; 0.674 and 0.670 with the masks as given), and the
      heads 0.632 tune and 0.649 held out (0.632 and 0.646 as given).
      Stripping a whole head by its brain mask, where MI would otherwise
      only leave out the voxels outside it: on the heads with brain masks
      on every image, 0.685 against 0.632 tune and 0.683 against 0.649
      held out (ANTs Mattes with the same masks 0.630 and 0.642); two heads
      end above the rigid start (0.708 against 0.615, tune), no longer at
      it (0.613).  With one image's mask only, 0.649 / 0.655 against 0.631
      (fixed / moving mask, tune).  Stripping and still restricting MI to
      the masks gave 0.669 on the tune half.

    The README's "MI on real anatomy" section sums up every set, and
    ``docs/mi-study.md`` has both halves' tables per direction and label.
    """

    #: Settings of :class:`fastsyn.SymmetricDiffeomorphicRegistration` that a
    #: registration with this metric takes unless given (see the Notes): one
    #: warm-started, fused sweep per inversion inside the iterations, no
    #: re-inversion at the finest level, a light smoothing of the total
    #: fields, steps of 0.4 voxels at the 99.5th percentile of the step's
    #: norms, the moving image alone moving on the coarse pyramid levels and
    #: 65 % of each iteration's motion on the moving side on the finest, and
    #: the final map's folds repaired.
    syn_defaults = {"inversion_sweeps": 1, "fused_inversion": True, "reinvert": "coarse",
                    "total_sigma": 0.3, "repair_folds": True, "step_length": 0.4,
                    "step_percentile": 99.5, "moving_share": 0.65,
                    "coarse_moving_share": 1.0}
    #: The energy is the histogram's MI, set by :meth:`initialize_iteration`;
    #: neither step changes it, so an optimizer may skip the step of a side
    #: that does not move (see ``coarse_moving_share``).
    energy_at_initialization = True

    def __init__(self, dim, *, nbins=32, sigma_diff=2.0, smooth=None,
                 sampling=None, seed=0, clip=(0.5, 99.5), static_mask=None,
                 moving_mask=None, mask_rule="either", mask_margin=1, auto_masks=True,
                 partial_volume="coarse", num_threads=None):
        dim = check_metric_dim(dim)
        # Each slice (3D) or row block (2D) fills its own nbins x nbins float64
        # histogram so that the merge is deterministic: MAX_NBINS keeps that
        # at 512 KiB a slice (128 MiB for 256 slices).
        nbins = check_integer("nbins", nbins, low=4)
        if nbins > MAX_NBINS:
            raise ValueError(
                f"nbins={nbins} is more than {MAX_NBINS}: every slice keeps its own "
                f"nbins x nbins float64 histogram ({nbins * nbins * 8 / 2**20:.0f} MiB "
                "per slice), which would not fit in memory")
        if smooth is not None:
            if sigma_diff != 2.0:
                raise ValueError("give either smooth or sigma_diff, not both")
            sigma_diff = smooth
        sigma_diff = check_real("sigma_diff", sigma_diff, low=0)
        sampling = check_real("sampling", sampling, low=0, low_inclusive=False, high=1,
                              allow_none=True)
        # numpy's generators take any non-negative integer seed.
        seed = check_integer("seed", seed, low=0)
        if np.ndim(clip) != 1 or len(clip) != 2:
            raise ValueError(f"clip must be two percentiles, got {clip!r}")
        clip = (check_real("clip[0]", clip[0]), check_real("clip[1]", clip[1]))
        if not 0 <= clip[0] < clip[1] <= 100:
            raise ValueError(f"clip must be two percentiles 0 <= lo < hi <= 100, got {clip}")
        if mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {mask_rule!r}")
        mask_margin = check_integer("mask_margin", mask_margin, low=0)
        resolve_num_threads(num_threads)
        super().__init__(dim)
        self.mask_rule = mask_rule
        self.mask_margin = int(mask_margin)
        self.auto_masks = check_bool("auto_masks", auto_masks)
        self.partial_volume = check_bool_or_coarse("partial_volume", partial_volume)
        self.auto_masked = ()
        self.masks_set_aside = ()
        self.images_stripped = ()
        self.nbins = int(nbins)
        self.sigma_diff = float(sigma_diff)
        self.sampling = None if sampling is None or sampling == 1 else float(sampling)
        self.seed = int(seed)
        self.clip = clip
        self.static_mask = _check_mask("static_mask", static_mask, dim)
        self.moving_mask = _check_mask("moving_mask", moving_mask, dim)
        self.num_threads = num_threads
        self.smoothing_seconds = 0.0
        self.energy = None
        self.mi = None
        self.joint_histogram = None
        self.histogram_count = None
        self.pv_histograms = {}
        self._pv = {}
        self._pv_active = False
        self.static_range = None
        self.moving_range = None
        self.free_run()
        # Per side: ((level shape, margin), mask on that level, grown mask as
        # int32, the full-resolution mask it came from).
        self._level_masks = {"static": None, "moving": None}
        self._sample_cache = (None, None)

    def strip_by_masks(self, static, moving):
        """The images to register: with ``auto_masks``, an image whose given
        mask's outline leaves out much of its signal
        (:func:`brain_mask_on_head`: a whole head and its brain mask)
        is set to zero outside that outline, as a skull-stripped image is.

        Parameters
        ----------
        static, moving : array
            The images on their own grids.

        Returns
        -------
        static, moving : array
            The images, stripped or as given; ``images_stripped`` names the
            sides stripped.
        """
        self.images_stripped = ()
        if not self.auto_masks:
            return static, moving
        images = {"static": static, "moving": moving}
        for side in images:
            mask = getattr(self, f"{side}_mask")
            outline = None if mask is None else _stripping_outline(images[side], mask)
            if outline is None:
                continue
            image = np.asarray(images[side])
            images[side] = np.where(outline, image, image.dtype.type(0))
            self.images_stripped += (side,)
            logger.info("MI: the %s mask leaves out much of its image's signal (a brain "
                        "mask on a whole head?); the image is registered stripped by it "
                        "(auto_masks=False restricts MI to the mask instead)", side)
        return images["static"], images["moving"]

    @contextmanager
    def masks_for_zero_background(self, static, moving, moving_on_static, covered=None):
        """Within the context, an image that is zero where the other has
        signal (:func:`zero_background_sides`) and has no mask of its own is
        masked by its nonzero region, and a given mask that leaves out only
        its image's background (:func:`background_only_mask`) is set aside
        where that image is not; afterwards the masks are as before.

        Parameters
        ----------
        static, moving : array
            The images on their own grids.
        moving_on_static, covered : array
            See :func:`zero_background_sides`.
        """
        saved = (self.static_mask, self.moving_mask)
        self.auto_masked = ()
        self.masks_set_aside = ()
        if self.auto_masks:
            facing = zero_background_sides(static, moving_on_static, covered)
            images = {"static": static, "moving": moving}
            # A mask that leaves out only a skull-stripped image's zeros
            # hides the brain's outline from MI and costs Dice; where those
            # zeros face no signal of the other image, they say what the
            # mask says, and the mask is set aside.  Where they face a
            # head's signal, the mask is what keeps them out: it stays.
            self.masks_set_aside = tuple(
                side for side, mask in zip(("static", "moving"), saved)
                if mask is not None and side not in facing
                and background_only_mask(images[side], mask))
            for side in self.masks_set_aside:
                setattr(self, f"{side}_mask", None)
                if side in self.images_stripped:
                    continue  # stripped by its mask, which has done its work
                logger.info("MI: the %s mask leaves out nothing of its image but zero "
                            "background (skull-stripped?); it is set aside for this run "
                            "(auto_masks=False keeps it)", side)
            chosen = tuple(side for side, mask in zip(("static", "moving"), saved)
                           if mask is None and side in facing)
            for side in chosen:
                mask = np.ascontiguousarray(np.asarray(images[side]) != 0, dtype=np.uint8)
                setattr(self, f"{side}_mask", mask)
                logger.info("MI: the %s image is zero where the other image has signal "
                            "(skull-stripped?); its nonzero region is its mask for this "
                            "run (auto_masks=False turns this off)", side)
            self.auto_masked = chosen
        try:
            yield self.auto_masked
        finally:
            self.static_mask, self.moving_mask = saved
            # The level cache knows its mask object; emptying it frees the
            # run's own masks and their levels.
            self._level_masks = {"static": None, "moving": None}

    # ------------------------------------------------------------- images
    def set_static_image(self, static_image, static_affine, static_spacing,
                         static_direction):
        """Set the static image (see :class:`SimilarityMetric`)."""
        super().set_static_image(static_image, static_affine, static_spacing,
                                 static_direction)
        self._dyn_source["static"] = None
        self._dyn_map["static"] = None
        self._warped_mask["static"] = None

    def set_moving_image(self, moving_image, moving_affine, moving_spacing,
                         moving_direction):
        """Set the moving image (see :class:`SimilarityMetric`)."""
        super().set_moving_image(moving_image, moving_affine, moving_spacing,
                                 moving_direction)
        self._dyn_source["moving"] = None
        self._dyn_map["moving"] = None
        self._warped_mask["moving"] = None

    def use_static_image_dynamics(self, original_static_image, transformation):
        """Take the intensity range from the unwarped static image and warp
        the static mask like the image.

        Parameters
        ----------
        original_static_image : array
            The static image of the current pyramid level before warping.
        transformation : DiffeomorphicMap or None
            The map that produced the current static image from it.
        """
        self._use_dynamics("static", original_static_image, transformation)

    def use_moving_image_dynamics(self, original_moving_image, transformation):
        """Take the intensity range from the unwarped moving image and warp
        the moving mask like the image.

        Parameters
        ----------
        original_moving_image : array
            The moving image of the current pyramid level before warping.
        transformation : DiffeomorphicMap or None
            The map that produced the current moving image from it.
        """
        self._use_dynamics("moving", original_moving_image, transformation)

    def _use_dynamics(self, side, original, transformation):
        self._dyn_source[side] = original
        self._dyn_map[side] = transformation
        mask = self.static_mask if side == "static" else self.moving_mask
        if mask is None:
            return
        current = self.static_image if side == "static" else self.moving_image
        grid2world = self.static_affine if side == "static" else self.moving_affine
        grown = self._level_mask(side, np.shape(original), grown=True)
        if transformation is None:
            warped = grown
        else:
            # ``transformation`` produced the current image from the original
            # one on the common grid; the mask follows the same path.
            warped = transformation.transform(
                grown, interpolation="nearest",
                image_world2grid=None, out_shape=np.shape(current),
                out_grid2world=grid2world)
        self._warped_mask[side] = np.asarray(warped)

    # ---------------------------------------------------------- iteration
    def _range(self, side, source):
        """Clip range of one image inside its mask as given, cached per
        source array."""
        cached = self._range_source[side]
        if cached is not None and cached[0] is source:
            return cached[1]
        name = f"{side}_image"
        values = np.asarray(source)
        level_mask = self._level_mask(side, values.shape, grown=False)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if level_mask is not None:
            values = values[level_mask != 0]
        else:
            values = values.ravel()
        if self.sampling is not None and values.size > 4096:
            rng = np.random.default_rng(self.seed)
            values = values[rng.random(values.size) < max(self.sampling, 4096 / values.size)]
        lo, hi = np.percentile(values, self.clip)
        if not hi > lo:
            lo, hi = values.min(), values.max()
        if not hi > lo:
            raise ValueError(f"{name} is constant (inside the mask): mutual "
                             "information is undefined")
        rng_ = (float(lo), float(hi))
        self._range_source[side] = (source, rng_)
        return rng_

    def _use_flags(self, shape):
        """Per-voxel flags (masks, sample) or None when every voxel counts."""
        masks = [m for m in (self._current_mask("static", shape),
                             self._current_mask("moving", shape)) if m is not None]
        sample = self._sample(shape)
        if not masks and sample is None:
            return None
        inside = masks[0] != 0 if masks else None
        for m in masks[1:]:
            if self.mask_rule == "either":
                inside |= m != 0
            else:
                inside &= m != 0
        if inside is None:
            return sample
        flags = inside.astype(np.uint8)
        if sample is None:
            flags *= _DERIV | _HIST
        else:
            flags |= sample & _HIST
            flags &= np.where(inside, np.uint8(3), np.uint8(0))
        if not (flags & _HIST).any():
            raise ValueError("static_mask and moving_mask do not overlap on the "
                             "current grid (no voxel left for the histogram)")
        return np.ascontiguousarray(flags)

    def _level_mask(self, side, shape, *, grown):
        """One side's mask on a pyramid level of ``shape``: as given (uint8)
        or grown by the margin (int32, ready to warp); cached per level and
        per mask object."""
        mask = self.static_mask if side == "static" else self.moving_mask
        if mask is None:
            return None
        key = (tuple(shape), self.mask_margin)
        cached = self._level_masks[side]
        if cached is None or cached[0] != key or cached[3] is not mask:
            level = _mask_to_level(f"{side}_mask", mask, shape)
            cached = (key, level,
                      _grow_mask(level, self.mask_margin).astype(np.int32), mask)
            self._level_masks[side] = cached
        return cached[2] if grown else cached[1]

    def _current_mask(self, side, shape):
        """One side's grown mask on the common grid of ``shape``."""
        mask = self.static_mask if side == "static" else self.moving_mask
        if mask is None:
            return None
        warped = self._warped_mask[side]
        if warped is None:
            # No dynamics: the image is taken as it is on its own grid.
            warped = self._level_mask(side, shape, grown=True)
        if warped.shape != tuple(shape):
            raise ValueError(f"{side}_mask does not match the image shape {tuple(shape)}")
        return warped

    def _sample(self, shape):
        """Histogram flags of the seeded voxel sample of one grid (cached)."""
        if self.sampling is None:
            return None
        key, flags = self._sample_cache
        if key != tuple(shape):
            rng = np.random.default_rng(self.seed)
            chosen = rng.random(shape, dtype=np.float32) < np.float32(self.sampling)
            if not chosen.any():
                chosen.flat[0] = True
            flags = np.where(chosen, _DERIV | _HIST, _DERIV).astype(np.uint8)
            self._sample_cache = (tuple(shape), flags)
        return flags

    def initialize_iteration(self):
        """Build the joint histogram, the MI and its per-bin weights.

        Raises
        ------
        ValueError
            If the images do not share a grid, contain NaN or infinite values,
            are constant, or the masks do not match or do not overlap.
        """
        static = np.asarray(self.static_image)
        moving = np.asarray(self.moving_image)
        if static.ndim != self.dim or moving.ndim != self.dim:
            raise ValueError(f"static_image and moving_image must be {self.dim}D, got "
                             f"shapes {static.shape} and {moving.shape}")
        if static.shape != moving.shape:
            raise ValueError("static_image and moving_image must share a grid, got "
                             f"{static.shape} and {moving.shape}")
        if static.dtype == np.float32 and moving.dtype == np.float32:
            dtype = np.float32
        else:
            dtype = np.float64
        static = np.ascontiguousarray(static, dtype=dtype)
        moving = np.ascontiguousarray(moving, dtype=dtype)
        shape = static.shape

        # Intensity ranges: from the unwarped images when the optimizer
        # reported them (once per pyramid level), else from the images.
        ranges = {}
        for side, current in (("static", static), ("moving", moving)):
            source = self._dyn_source[side]
            if source is None:
                source = self.static_image if side == "static" else self.moving_image
            ranges[side] = self._range(side, source)
        self.static_range = ranges["static"]
        self.moving_range = ranges["moving"]
        span = self.nbins - 3
        self._s_lo, self._m_lo = self.static_range[0], self.moving_range[0]
        self._s_scale = span / (self.static_range[1] - self.static_range[0])
        self._m_scale = span / (self.moving_range[1] - self.moving_range[0])

        flags = self._use_flags(shape)
        self._flags = flags
        nthreads = self._threads(static.size)
        chunk = (shape[1] * shape[2] if self.dim == 3
                 else _ROWS_PER_CHUNK * shape[1])
        self._static = static
        self._moving = moving
        self.pv_histograms = {}
        self._pv = {}
        self._pv_active = self._partial_volume_at_level()
        if self._pv_active:
            # Each side's own histogram; the MI is their mean.
            self.mi = float(np.mean([self._pv_histogram(side, chunk, nthreads)
                                     for side in ("static", "moving")]))
            self.energy = -self.mi
            self.joint_histogram, self.histogram_count = self.pv_histograms["moving"]
            return
        # A coarse level's cached bins cover its full-size source image
        # (DIPY's scale space keeps every level on the input grid): two
        # image-sized arrays that the Parzen levels do not read.
        self._bins_source = {"static": None, "moving": None}
        hist = np.empty((self.nbins, self.nbins), dtype=np.float64)
        count = k_mi.mi_histogram(
            static.reshape(-1), moving.reshape(-1),
            _DUMMY_USE if flags is None else flags.reshape(-1), flags is None,
            self._s_lo, self._s_scale, self._m_lo, self._m_scale, chunk, hist,
            nthreads)
        if count == 0:
            raise ValueError("no voxel left for the histogram (check the masks)")
        self.mi, weights = mi_from_histogram(hist, count)
        self.energy = -self.mi
        self.joint_histogram = hist
        self.histogram_count = count
        self._weights = np.ascontiguousarray(weights, dtype=dtype)

    # ------------------------------------------------------ partial volume
    def _partial_volume_at_level(self):
        """Whether this iteration takes partial-volume histograms: always with
        ``partial_volume=True``; with ``"coarse"`` on every pyramid level but
        the finest (``levels_above`` is 0 there, and None outside a pyramid,
        whose one level is the finest)."""
        if self.partial_volume == "coarse":
            return bool(self.levels_above)
        return self.partial_volume

    def _source_bins(self, side, source, dtype):
        """Bin coordinates of one side's unwarped image, cached per source
        array: ``(v - lo) * (nbins - 1) / (hi - lo)`` clamped to the table,
        ``(lo, hi)`` the side's clip range."""
        cached = self._bins_source[side]
        if cached is not None and cached[0] is source and cached[1].dtype == dtype:
            return cached[1]
        lo, hi = self._range(side, source)
        # (in place: one float64 temporary of the image's size, not three)
        coord = np.subtract(source, lo, dtype=np.float64)
        coord *= (self.nbins - 1) / (hi - lo)
        np.clip(coord, 0, self.nbins - 1, out=coord)
        bins = np.ascontiguousarray(coord, dtype=dtype)
        self._bins_source[side] = (source, bins)
        return bins

    def _source_points(self, side, shape, dtype, nthreads):
        """One side's unwarped image, for every voxel of the common grid the
        point of that image's grid at which the warp samples it, and the
        map's affine part (the identity when the optimizer reported no map:
        the image on the grid is then its own source)."""
        source = self._dyn_source[side]
        transformation = self._dyn_map[side]
        if source is None or transformation is None:
            points = np.stack(np.indices(shape, dtype=dtype), axis=-1)
            image = self.static_image if side == "static" else self.moving_image
            return image, np.ascontiguousarray(points), np.eye(self.dim)
        grid2world = self.static_affine if side == "static" else self.moving_affine
        points = sample_points(transformation, shape, grid2world, dtype, nthreads)
        return source, points, sample_jacobian(transformation, grid2world, self.dim)

    def _pv_histogram(self, side, chunk, nthreads):
        """One side's partial-volume histogram and weights; returns its MI."""
        flags = self._flags
        use = _DUMMY_USE if flags is None else flags.reshape(-1)
        shape, dtype = self._static.shape, self._static.dtype
        if side == "static":
            other, (lo, hi) = self._moving, self.moving_range
        else:
            other, (lo, hi) = self._static, self.static_range
        source, points, jacobian = self._source_points(side, shape, dtype, nthreads)
        bins = self._source_bins(side, source, dtype)
        scale = (self.nbins - 1) / (hi - lo)
        hist = np.empty((self.nbins, self.nbins), dtype=np.float64)
        count = k_pv.pv_histogram(bins.reshape(-1), bins.shape, points.reshape(-1),
                                  other.reshape(-1), use, flags is None, lo, scale,
                                  side == "static", chunk, hist, nthreads)
        if count == 0:
            raise ValueError("no voxel left for the histogram (check the masks, "
                             "or the images' overlap)")
        mi, weights = mi_from_histogram(hist, count)
        self._pv[side] = (bins, points, np.ascontiguousarray(weights), count, lo, scale,
                          np.ascontiguousarray(jacobian.ravel()))
        self.pv_histograms[side] = (hist, count)
        return mi

    def _pv_step(self, forward):
        side = "static" if forward else "moving"
        bins, points, weights, count, lo, scale, jacobian = self._pv[side]
        other = self._moving if forward else self._static
        if forward:
            spacing, direction = self.static_spacing, self.static_direction
        else:
            spacing, direction = self.moving_spacing, self.moving_direction
        spacing, dflat, dnone = step_geometry(self.dim, spacing, direction)
        out = np.empty(other.shape + (self.dim,), dtype=other.dtype)
        flags = self._flags
        kernel = k_pv.pv_step_3d if self.dim == 3 else k_pv.pv_step_2d
        # The points' Jacobian without the field (as greedy's gradient): on
        # the 30 real tune pairs +0.0014 over the points' own, and cheaper.
        kernel(bins, points, other, _DUMMY_USE if flags is None else flags.reshape(-1),
               flags is None, lo, scale, weights, -1.0 / count, forward, spacing, dflat,
               dnone, out, self._threads(other.size), jacobian)
        return out

    def free_iteration(self):
        """Release the buffers of the iteration."""
        for name in ("_weights", "_static", "_moving", "_flags", "_pv"):
            if hasattr(self, name):
                delattr(self, name)

    def free_run(self):
        """Release what the last iteration left for the next one.

        That is each side's unwarped image, the map given with it by
        ``use_*_image_dynamics``, the mask warped by that map and the cached
        range and bin coordinates.  The map is an inverse that shares its
        fields with the optimizer's: kept, it would hold the four fields
        alive after DIPY's optimizer replaces them with copies at the end of
        the run.  :class:`SymmetricDiffeomorphicRegistration` calls this
        when its last level ends; the next iteration sets everything again.
        The constructor starts from the same empty state.
        """
        # Per side: the image the range was computed from (kept alive so that
        # the identity test is sound) and its range; the unwarped image and
        # its map from ``use_*_image_dynamics``; the mask warped onto the
        # common grid; (source array, its bin coordinates) of partial volume.
        for name in ("_range_source", "_dyn_source", "_dyn_map", "_warped_mask",
                     "_bins_source"):
            setattr(self, name, {"static": None, "moving": None})

    def _step(self, forward):
        if self._pv_active:
            out = self._pv_step(forward)
            start = time.perf_counter()
            smooth_unchecked(out, self.sigma_diff, self.dim, self._threads(out.size))
            self.smoothing_seconds += time.perf_counter() - start
            return out
        static, moving = self._static, self._moving
        if forward:
            spacing, direction = self.static_spacing, self.static_direction
            factor = -self._s_scale / self.histogram_count
        else:
            spacing, direction = self.moving_spacing, self.moving_direction
            factor = -self._m_scale / self.histogram_count
        spacing, dflat, dnone = step_geometry(self.dim, spacing, direction)
        out = np.empty(static.shape + (self.dim,), dtype=static.dtype)
        flags = self._flags
        kernel = k_mi.mi_step_3d if self.dim == 3 else k_mi.mi_step_2d
        nthreads = self._threads(static.size)
        kernel(static, moving, _DUMMY_USE if flags is None else flags.reshape(-1),
               flags is None, self._s_lo, self._s_scale, self._m_lo, self._m_scale,
               self._weights, factor, forward, spacing, dflat, dnone, out, nthreads)
        start = time.perf_counter()
        smooth_unchecked(out, self.sigma_diff, self.dim, nthreads)
        self.smoothing_seconds += time.perf_counter() - start
        return out

    def compute_forward(self):
        """Update field for the static side (DIPY's forward step).

        Returns
        -------
        step : array, shape (R, C, 2) or (S, R, C, 3)
            ``-dMI/dI(x) grad I(x)`` (``I`` the static image), smoothed.
        """
        return self._step(True)

    def compute_backward(self):
        """Update field for the moving side (DIPY's backward step).

        Returns
        -------
        step : array, shape (R, C, 2) or (S, R, C, 3)
            ``-dMI/dJ(x) grad J(x)`` (``J`` the moving image), smoothed.
        """
        return self._step(False)

    def get_energy(self):
        """Negative mutual information of the current pair (lower is better)."""
        return self.energy
