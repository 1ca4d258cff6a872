"""ANTs' image pyramid for SyN, in the form DIPY's optimizer reads.

DIPY's :class:`~dipy.align.scalespace.ScaleSpace` shrinks every axis by a
fractional factor chosen for isotropic voxels, smooths with a standard
deviation of ``ss_sigma_factor * (factor - 1)`` and rescales every smoothed
level to [0, 1].  ANTs (``antsRegistration --shrink-factors 4x2x1
--smoothing-sigmas 2x1x0vox``, the pyramid of ``ants.registration``) instead:

* normalises the intensities once, before the pyramid;
* smooths level ``l`` (0 the finest) with ITK's discrete Gaussian of
  variance ``l**2`` voxels;
* shrinks by the nominal factor ``2**l`` along the axis of finest spacing and,
  along every other axis, by the *integer* factor whose spacing is closest to
  that target (never fractional, never below 1).

:class:`AntsScaleSpace` builds that schedule and answers the same questions
as DIPY's scale space (``get_image``, ``get_domain_shape``, ``get_affine``,
...), so DIPY's optimizer loop runs on it unchanged.  Level grids keep DIPY's
convention that index 0 of every level sits on index 0 of the input grid (ITK
centres the shrunk voxels instead; the difference is a sub-voxel shift of the
coarse grids, which DIPY's field expansion between levels relies on).
"""

import numpy as np
import numpy.linalg as npl
from dipy.align.scalespace import ScaleSpace

from fastsyn._threads import resolve_num_threads
from fastsyn.fields import discrete_smooth_image_unchecked

__all__ = ["AntsScaleSpace", "ants_shrink_factors"]


def ants_shrink_factors(spacing, nominal):
    """Per-axis integer shrink factors of one ANTs pyramid level.

    Parameters
    ----------
    spacing : array, shape (dim,)
        Voxel size of the full-resolution grid.
    nominal : int
        The level's nominal factor (``2**level``), given to the axis of
        finest spacing.

    Returns
    -------
    factors : array of int, shape (dim,)
        For every axis the integer ``f >= 1`` whose spacing ``f * s`` is
        closest to ``nominal * min(spacing)``.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    target = nominal * spacing.min()
    factors = np.maximum(1, np.floor(target / spacing + 0.5)).astype(np.int64)
    factors[np.argmin(spacing)] = nominal
    return factors


class AntsScaleSpace(ScaleSpace):
    """ANTs' pyramid (see the module docstring) behind DIPY's scale-space
    interface.

    Parameters
    ----------
    image : array, shape (R, C) or (S, R, C)
        The full-resolution image.
    num_levels : int
        Number of levels (level 0 the finest).
    image_grid2world : array, shape (dim + 1, dim + 1), optional
        Grid-to-world transform of the image.
    input_spacing : array, shape (dim,), optional
        Voxel size (1 if None).
    num_threads : int or None, optional
        Threads for the smoothing (results do not depend on it).
    """

    def __init__(self, image, num_levels, *, image_grid2world=None, input_spacing=None,
                 num_threads=None):
        nthreads = resolve_num_threads(num_threads)
        self.dim = image.ndim
        self.num_levels = int(num_levels)
        spacing = (np.ones(self.dim) if input_spacing is None
                   else np.asarray(input_spacing, dtype=np.float64))
        size = np.asarray(image.shape)
        lo, hi = float(np.min(image)), float(np.max(image))
        # Normalised once: every level keeps the same intensity scale.
        normalised = (np.asarray(image, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)
        normalised = np.ascontiguousarray(normalised, dtype=np.float32)
        self.images, self.domain_shapes, self.spacings = [], [], []
        self.scalings, self.affines, self.affine_invs, self.sigmas = [], [], [], []
        for level in range(self.num_levels):
            factors = ants_shrink_factors(spacing, 2**level)
            sigma = float(level)
            self.images.append(discrete_smooth_image_unchecked(
                normalised.copy(), sigma * sigma, nthreads))
            # A level keeps at least 2 voxels per axis (fields need them).
            self.domain_shapes.append(np.maximum(2, size // factors).astype(np.int32))
            self.spacings.append(spacing * factors)
            self.scalings.append(factors.astype(np.float64))
            scale = np.diag(np.append(factors.astype(np.float64), 1.0))
            affine = scale if image_grid2world is None else image_grid2world.dot(scale)
            self.affines.append(affine)
            self.affine_invs.append(npl.inv(affine))
            self.sigmas.append(np.full(self.dim, sigma))
