"""Kernel benchmarks: fastsyn's threaded kernels against stock DIPY.

Every kernel of a SyN iteration is run on a random smooth 3D field/image:

========== ============================================ ==========================
kernel     fastsyn                                      stock twin
========== ============================================ ==========================
compose    ``fields.compose_vector_fields_3d``          ``dipy.align.vector_fields``
invert     ``fields.invert_vector_field_fixed_point_3d`` ``dipy.align.vector_fields``
warp       ``fields.warp_3d`` (trilinear)               ``dipy.align.vector_fields``
warp_nn    ``fields.warp_3d_nn``                        ``dipy.align.vector_fields``
smooth     ``fields.gaussian_smooth(vector=True)``      ``scipy.ndimage.gaussian_filter``
                                                        per component (as DIPY's metrics)
gradient   ``fields.image_gradient``                    ``numpy.gradient`` (as DIPY)
cc_factors ``CCMetric.initialize_iteration``            ``dipy.align.metrics.CCMetric``
cc_steps   ``CCMetric.compute_forward`` + ``backward``  ``dipy.align.metrics.CCMetric``
========== ============================================ ==========================

:class:`RepairFolds` times ``fields.repair_folds`` (no stock twin: DIPY has no
fold repair) on a smooth field with one fold near a corner, as SyN MI ends
with on real pairs.

Parameters: shape, dtype, ``num_threads`` (1 or all CPUs) and implementation.
Stock DIPY has no thread count, so its ``"all"`` combinations are skipped (shown
as n/a).  DIPY's CC metric computes its gradients in float32, so its float64
combinations are skipped too.

The ``track_*`` benchmarks of :class:`KernelSpeedups` and
:class:`KernelThreads` time the implementations
against each other inside one process (calls interleaved, medians), which
makes the ratios robust to the machine's speed drifting between benchmarks,
and check that serial and threaded results are identical.
"""

import numpy as np
from dipy.align import metrics as dipy_metrics
from dipy.align import vector_fields as vf
from scipy import ndimage

import fastsyn
from fastsyn import fields

from . import (
    ALL,
    THREADS,
    kernel_shapes,
    median_time,
    nthreads_of,
    shape_of,
    smooth_field,
    smooth_image,
)

KERNELS = ["compose", "invert", "warp", "warp_nn", "smooth", "gradient", "cc_factors",
           "cc_steps"]
DTYPES = ["float32", "float64"]
IMPLS = ["fastsyn", "dipy"]

#: Inversion settings, as SyN uses them.
INV_ITER, INV_TOL = 20, 1e-3
#: Smoothing of the update fields (DIPY's CCMetric default sigma_diff).
SIGMA = 2.0


def _set_images(metric, static, moving):
    eye = np.eye(4)
    ones = np.ones(3)
    metric.set_static_image(static, eye, ones, eye)
    metric.set_moving_image(moving, eye, ones, eye)


class KernelCase:
    """Inputs of one kernel and closures running it with either implementation.

    Parameters
    ----------
    kernel : str
        One of :data:`KERNELS`.
    shape : tuple of int
        Spatial shape (3D).
    dtype : str
        ``"float32"`` or ``"float64"``.
    """

    def __init__(self, kernel, shape, dtype):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self.dtype = np.dtype(dtype)
        self.field = smooth_field(shape, self.dtype, seed=1)
        self.field2 = smooth_field(shape, self.dtype, seed=2)
        self.image = smooth_image(shape, self.dtype, seed=3)
        self.image2 = smooth_image(shape, self.dtype, seed=4)
        self.spacing = np.ones(3)
        self.out = np.empty_like(self.field)
        self._metrics = {}

    # ------------------------------------------------------------ fastsyn
    def _cc(self, key, factory):
        metric = self._metrics.get(key)
        if metric is None:
            metric = self._metrics[key] = factory()
            _set_images(metric, self.image, self.image2)
            if self.kernel == "cc_steps":
                metric.initialize_iteration()
        return metric

    def run_fastsyn(self, num_threads):
        """Run fastsyn's kernel once.

        Parameters
        ----------
        num_threads : int
            ``num_threads`` argument.

        Returns
        -------
        ndarray or tuple
            The kernel's result (for the equivalence checks).
        """
        k, n = self.kernel, num_threads
        if k == "compose":
            return fields.compose_vector_fields_3d(self.field, self.field2, None, None, 1.0,
                                                   self.out, num_threads=n)[0]
        if k == "invert":
            return fields.invert_vector_field_fixed_point_3d(
                self.field, None, self.spacing, INV_ITER, INV_TOL, num_threads=n)
        if k == "warp":
            return fields.warp_3d(self.image, self.field, num_threads=n)
        if k == "warp_nn":
            return fields.warp_3d_nn(self.image, self.field, num_threads=n)
        if k == "smooth":
            return fields.gaussian_smooth(self.field, SIGMA, vector=True, out=self.out,
                                          num_threads=n)
        if k == "gradient":
            return fields.image_gradient(self.image, num_threads=n)
        metric = self._cc(("fastsyn", n),
                          lambda: fastsyn.CCMetric(3, sigma_diff=SIGMA, radius=4,
                                                   num_threads=n))
        if k == "cc_factors":
            metric.initialize_iteration()
            return metric.factors
        return metric.compute_forward(), metric.compute_backward()

    # --------------------------------------------------------------- stock
    def run_dipy(self):
        """Run the stock twin once.

        Returns
        -------
        ndarray or tuple
        """
        k = self.kernel
        if k == "compose":
            return vf.compose_vector_fields_3d(self.field, self.field2, None, None, 1.0,
                                               self.out)[0]
        if k == "invert":
            return vf.invert_vector_field_fixed_point_3d(self.field, None, self.spacing,
                                                         INV_ITER, INV_TOL)
        if k == "warp":
            return vf.warp_3d(self.image, self.field)
        if k == "warp_nn":
            return vf.warp_3d_nn(self.image, self.field)
        if k == "smooth":
            out = self.out
            for c in range(out.shape[-1]):
                out[..., c] = ndimage.gaussian_filter(self.field[..., c], SIGMA)
            return out
        if k == "gradient":
            out = np.empty(self.image.shape + (3,), dtype=self.dtype)
            for i, g in enumerate(np.gradient(self.image)):
                out[..., i] = g
            return out
        metric = self._cc("dipy", lambda: dipy_metrics.CCMetric(3, sigma_diff=SIGMA,
                                                                  radius=4))
        if k == "cc_factors":
            metric.initialize_iteration()
            return metric.factors
        return metric.compute_forward(), metric.compute_backward()


def max_abs_diff(a, b):
    """Largest absolute difference between two results (arrays or tuples).

    Parameters
    ----------
    a, b : ndarray or tuple of ndarray

    Returns
    -------
    float
    """
    if isinstance(a, tuple):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


class _KernelTiming:
    """Shared ``params`` and ``setup`` of the per-kernel time/peakmem classes."""

    kernel = None
    params = [kernel_shapes(), DTYPES, THREADS, IMPLS]
    param_names = ["shape", "dtype", "num_threads", "impl"]
    timeout = 300

    def setup(self, shape, dtype, num_threads, impl):
        if impl == "dipy" and num_threads == ALL:
            raise NotImplementedError("stock DIPY is serial")
        self.case = KernelCase(self.kernel, shape_of(shape), dtype)
        if impl == "dipy":
            try:
                self.case.run_dipy()  # warm up; also detects unsupported dtypes
            except (TypeError, ValueError) as exc:
                raise NotImplementedError(f"stock DIPY: {exc}") from exc
            self.call = self.case.run_dipy
        else:
            n = nthreads_of(num_threads)
            self.case.run_fastsyn(n)
            self.call = lambda: self.case.run_fastsyn(n)


class Compose(_KernelTiming):
    """Composition of two displacement fields."""

    kernel = "compose"

    def time_compose(self, *params):
        self.call()

    def peakmem_compose(self, *params):
        self.call()


class Invert(_KernelTiming):
    """Fixed-point inversion (20 iterations at most, tolerance 1e-3)."""

    kernel = "invert"

    def time_invert(self, *params):
        self.call()

    def peakmem_invert(self, *params):
        self.call()


class Warp(_KernelTiming):
    """Trilinear warping of an image by a displacement field."""

    kernel = "warp"

    def time_warp(self, *params):
        self.call()

    def peakmem_warp(self, *params):
        self.call()


class WarpNN(_KernelTiming):
    """Nearest-neighbour warping of an image by a displacement field."""

    kernel = "warp_nn"

    def time_warp_nn(self, *params):
        self.call()

    def peakmem_warp_nn(self, *params):
        self.call()


class Smooth(_KernelTiming):
    """Gaussian smoothing (sigma 2) of a vector field, per component."""

    kernel = "smooth"

    def time_smooth(self, *params):
        self.call()

    def peakmem_smooth(self, *params):
        self.call()


class Gradient(_KernelTiming):
    """Image gradient (central differences)."""

    kernel = "gradient"

    def time_gradient(self, *params):
        self.call()

    def peakmem_gradient(self, *params):
        self.call()


class CCFactors(_KernelTiming):
    """Local cross-correlation factors (radius 4)."""

    kernel = "cc_factors"

    def time_cc_factors(self, *params):
        self.call()

    def peakmem_cc_factors(self, *params):
        self.call()


class CCSteps(_KernelTiming):
    """Forward and backward CC steps, smoothing included."""

    kernel = "cc_steps"

    def time_cc_steps(self, *params):
        self.call()

    def peakmem_cc_steps(self, *params):
        self.call()


class KernelSpeedups:
    """Speed-up over the stock twin, measured in one process.

    ``track_speedup_vs_dipy_serial``: stock median ÷ fastsyn 1-thread median.
    ``track_speedup_vs_dipy_threaded``: stock ÷ fastsyn with all CPUs.
    Calls are interleaved (stock, fastsyn, stock, ...) and medians compared.
    """

    params = [KERNELS, kernel_shapes(), DTYPES]
    param_names = ["kernel", "shape", "dtype"]
    repeat_calls = 5
    timeout = 300

    def setup(self, kernel, shape, dtype):
        self.case = KernelCase(kernel, shape_of(shape), dtype)
        try:
            self.case.run_dipy()
        except (TypeError, ValueError) as exc:
            raise NotImplementedError(f"stock DIPY: {exc}") from exc
        self.case.run_fastsyn(1)
        self.case.run_fastsyn(-1)

    def track_speedup_vs_dipy_serial(self, kernel, shape, dtype):
        t_dipy, t_fast = median_time(self.case.run_dipy, lambda: self.case.run_fastsyn(1),
                                     repeat=self.repeat_calls)
        return t_dipy / t_fast

    track_speedup_vs_dipy_serial.unit = "x"

    def track_speedup_vs_dipy_threaded(self, kernel, shape, dtype):
        t_dipy, t_fast = median_time(self.case.run_dipy, lambda: self.case.run_fastsyn(-1),
                                     repeat=self.repeat_calls)
        return t_dipy / t_fast

    track_speedup_vs_dipy_threaded.unit = "x"


class KernelThreads:
    """Threading: speed-up and serial/threaded equality, in one process.

    ``track_speedup_threads``: fastsyn 1-thread median ÷ all-CPU median.
    ``track_max_abs_diff_threads``: max |serial − threaded|; must be 0.
    """

    params = [KERNELS, kernel_shapes(), DTYPES]
    param_names = ["kernel", "shape", "dtype"]
    repeat_calls = 5
    timeout = 300

    def setup(self, kernel, shape, dtype):
        self.case = KernelCase(kernel, shape_of(shape), dtype)
        self.case.run_fastsyn(1)
        self.case.run_fastsyn(-1)

    def track_speedup_threads(self, kernel, shape, dtype):
        t1, tn = median_time(lambda: self.case.run_fastsyn(1),
                             lambda: self.case.run_fastsyn(-1), repeat=self.repeat_calls)
        return t1 / tn

    track_speedup_threads.unit = "x"

    def track_max_abs_diff_threads(self, kernel, shape, dtype):
        from fastsyn.fields import parallel_grain

        serial = _copy(self.case.run_fastsyn(1))
        with parallel_grain(1):  # small shapes would otherwise run on one thread
            threaded = _copy(self.case.run_fastsyn(-1))
        return max_abs_diff(serial, threaded)

    track_max_abs_diff_threads.unit = "abs diff"


def _copy(result):
    # Results may live in reused buffers: copy before the next call.
    if isinstance(result, tuple):
        return tuple(np.array(r, copy=True) for r in result)
    return np.array(result, copy=True)


def folded_field(shape, seed=0):
    """A smooth random displacement with one fold near a corner of the grid:
    a field SyN ends with on real pairs, where the repair touches a small
    part of a large field."""
    field = np.ascontiguousarray(smooth_field(shape, np.float32, seed=seed))
    corner = tuple(slice(0, max(n // 4, 3)) for n in shape)
    z = np.indices(field[corner].shape[:3], dtype=np.float64)
    centre = [(n - 1) / 2 for n in field[corner].shape[:3]]
    bump = np.exp(-sum((z[i] - centre[i]) ** 2 for i in range(3)) / 8)
    field[corner + (0,)] -= (8 * bump * np.sign(z[0] - centre[0] + 0.25)).astype(np.float32)
    return field


class RepairFolds:
    """``fields.repair_folds`` on a smooth field with one fold near a corner
    (the final fields of SyN MI with ``repair_folds``, its default)."""

    params = [kernel_shapes(), THREADS]
    param_names = ["shape", "num_threads"]
    timeout = 300

    def setup(self, shape, num_threads):
        self.field = folded_field(shape_of(shape))
        self.work = np.empty_like(self.field)
        self.n = nthreads_of(num_threads)
        np.copyto(self.work, self.field)
        if fields.repair_folds(self.work, num_threads=self.n)[0] == 0:
            raise NotImplementedError("the field does not fold")

    def time_repair_folds(self, shape, num_threads):
        np.copyto(self.work, self.field)
        fields.repair_folds(self.work, num_threads=self.n)
