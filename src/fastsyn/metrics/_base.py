"""What every fastsyn metric checks and shares with the others.

DIPY's metrics store whatever ``set_static_image``/``set_moving_image``
receive; fastsyn's kernels read those arrays through raw pointers, so the
images, spacings and directions are checked on the way in, with messages
that name the argument.
"""

import numpy as np

from fastsyn._threads import effective_threads, resolve_num_threads
from fastsyn._validation import (
    check_affine,
    check_direction,
    check_image,
    check_integer,
    check_spacing,
    direction_rows,
)

__all__ = ["MetricInputs", "check_metric_dim", "step_geometry"]


def check_metric_dim(dim):
    """The image dimension of a metric: the integer 2 or 3."""
    return check_integer("dim", dim, low=2, high=3)


def step_geometry(dim, spacing, direction):
    """Spacing and direction in the form the step kernels read.

    Accepts what DIPY hands a metric (``None``, a ``(dim, dim)`` or a
    ``(dim + 1, dim + 1)`` direction), so it is also safe on DIPY's own
    metric objects under :func:`fastsyn.patch_dipy`.
    """
    spacing = np.ones(dim) if spacing is None else check_spacing("spacing", spacing, dim)
    if direction is not None:
        direction = check_direction("direction", direction, dim)
    dflat, dnone = direction_rows(direction, dim)
    return spacing, dflat, dnone


class MetricInputs:
    """Validation of the images a SyN optimizer hands a metric (mixin)."""

    def _checked_inputs(self, side, image, grid2world, spacing, direction):
        if np.asarray(image).dtype.kind == "b":
            raise TypeError(f"{side}_image must hold intensities, got booleans")
        image = check_image(f"{side}_image", image, dim=self.dim, numeric=True)
        grid2world = check_affine(f"{side}_affine", grid2world, self.dim)
        if spacing is not None:
            spacing = check_spacing(f"{side}_spacing", spacing, self.dim)
        direction = check_direction(f"{side}_direction", direction, self.dim)
        return image, grid2world, spacing, direction

    def set_static_image(self, static_image, static_affine, static_spacing,
                         static_direction):
        """Set the static image, its grid-to-world affine, voxel size and
        direction cosines (``(dim, dim)`` or ``(dim + 1, dim + 1)``).

        Raises
        ------
        ValueError, TypeError
            On an image of the wrong dimension, a non-numeric or non-finite
            image, an affine that is not ``(dim + 1, dim + 1)``, or a spacing
            or direction of the wrong size.
        """
        super().set_static_image(*self._checked_inputs(
            "static", static_image, static_affine, static_spacing, static_direction))

    def set_moving_image(self, moving_image, moving_affine, moving_spacing,
                         moving_direction):
        """Set the moving image (see :meth:`set_static_image`)."""
        super().set_moving_image(*self._checked_inputs(
            "moving", moving_image, moving_affine, moving_spacing, moving_direction))

    def _threads(self, work):
        return effective_threads(resolve_num_threads(self.num_threads), work)
