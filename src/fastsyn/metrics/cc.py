"""Cross-correlation metric for SyN, threaded, with DIPY's interface.

:class:`CCMetric` is a drop-in for :class:`dipy.align.metrics.CCMetric`: the
same constructor (plus ``num_threads``), the same methods and the same update
fields up to floating-point rounding.  The cross-correlation factors, the
forward and backward steps and the Gaussian smoothing of the steps run on
fastsyn's kernels; the image gradients are computed on the fly inside the
step kernel instead of being stored as two extra volumes.
"""

import time

import numpy as np
from dipy.align import metrics as dipy_metrics

from fastsyn._kernels import cc as k_cc
from fastsyn._threads import effective_threads, resolve_num_threads
from fastsyn._validation import check_integer, check_real
from fastsyn.fields import smooth_unchecked
from fastsyn.metrics._base import MetricInputs, check_metric_dim, step_geometry

__all__ = ["CCMetric"]


def _check_cc_range(static, moving, radius, dim):
    """Refuse intensities whose window sums of products overflow the dtype
    (float32 overflows near 1e17 for radius 4): the step would be inf/NaN."""
    window = (2 * radius + 1) ** dim
    limit = np.sqrt(np.finfo(static.dtype).max / window) / 16
    for name, image in (("static_image", static), ("moving_image", moving)):
        peak = max(float(image.max()), -float(image.min()))
        if not peak <= limit:
            raise ValueError(
                f"{name} has intensities up to {peak:.3g}: the {static.dtype} "
                f"cross-correlation sums over {window} voxels would overflow (limit "
                f"{limit:.3g}); rescale the images or pass float64 images")


class CCMetric(MetricInputs, dipy_metrics.CCMetric):
    """Normalised cross-correlation metric for SyN, threaded.

    Parameters
    ----------
    dim : int
        Image dimension (2 or 3).
    sigma_diff : float, optional
        Standard deviation (voxels) of the Gaussian that smooths each update
        field.
    radius : int, optional
        Radius of the square (cubic) neighbourhood of the local correlation.
    num_threads : int or None, optional
        Threads to use (None: OpenMP default, honouring ``OMP_NUM_THREADS``;
        negative: counts back from the number of CPUs).  Results are the
        same for every value.
    """

    def __init__(self, dim, *, sigma_diff=2.0, radius=4, num_threads=None):
        dim = check_metric_dim(dim)
        radius = check_integer("radius", radius, low=1)
        sigma_diff = check_real("sigma_diff", sigma_diff, low=0)
        resolve_num_threads(num_threads)
        super().__init__(dim, sigma_diff=sigma_diff, radius=radius)
        self.num_threads = num_threads
        self.smoothing_seconds = 0.0

    def _threads(self, work):
        # Defined here, not only in MetricInputs: patch_dipy copies it onto
        # DIPY's CCMetric from this class's own namespace.
        return effective_threads(resolve_num_threads(self.num_threads), work)

    def initialize_iteration(self):
        """Compute the local correlation factors for the current images."""
        min_size = self.radius * 2 + 1
        for name, image in (("Static", self.static_image), ("Moving", self.moving_image)):
            if any(size < min_size for size in image.shape):
                raise ValueError(
                    f"{name} image size is too small. Each image dimension should be "
                    f"larger than 2 * radius + 1 ({min_size}). Decrease CCMetric radius "
                    f"({self.radius}) or increase your image size (shape={image.shape})."
                )
        static = np.ascontiguousarray(self.static_image)
        if static.dtype.type not in (np.float32, np.float64):
            static = static.astype(np.float32)
        moving = np.ascontiguousarray(self.moving_image, dtype=static.dtype)
        if static.shape != moving.shape:
            raise ValueError(
                f"static and moving images must share a grid, got {static.shape} "
                f"and {moving.shape}"
            )
        _check_cc_range(static, moving, self.radius, self.dim)
        self._static = static
        self._moving = moving
        self.factors = np.empty(static.shape + (5,), dtype=static.dtype)
        kernel = k_cc.cc_factors_3d if self.dim == 3 else k_cc.cc_factors_2d
        kernel(static, moving, self.radius, self.factors, self._threads(static.size))

    def free_iteration(self):
        """Release the buffers of the iteration."""
        for name in ("factors", "_static", "_moving"):
            if hasattr(self, name):
                delattr(self, name)

    def _step(self, forward):
        image = self._static if forward else self._moving
        spacing = self.static_spacing if forward else self.moving_spacing
        direction = self.static_direction if forward else self.moving_direction
        spacing, dflat, dnone = step_geometry(self.dim, spacing, direction)
        out = np.empty(image.shape + (self.dim,), dtype=image.dtype)
        energy = np.zeros(image.shape[0], dtype=np.float64)
        kernel = k_cc.cc_step_3d if self.dim == 3 else k_cc.cc_step_2d
        nthreads = self._threads(image.size)
        kernel(image, self.factors, self.radius, spacing, dflat, dnone, forward, out,
               energy, nthreads)
        start = time.perf_counter()
        smooth_unchecked(out, float(self.sigma_diff), self.dim, nthreads)
        self.smoothing_seconds += time.perf_counter() - start
        # Per-slice partial energies summed in slice order: deterministic.
        return out, float(energy.sum())

    def compute_forward(self):
        """Update field moving the moving image towards the static one."""
        out, self.energy = self._step(True)
        return out

    def compute_backward(self):
        """Update field moving the static image towards the moving one."""
        out, _ = self._step(False)
        return out

