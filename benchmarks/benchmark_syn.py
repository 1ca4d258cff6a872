"""End-to-end SyN benchmarks: fastsyn (1 thread, all CPUs) against stock DIPY.

The pair is synthetic (:func:`benchmarks.synthetic_pair`, 64^3 by default,
96^3 with ``FASTSYN_ASV_LARGE=1``), built in ``setup``; the pyramid runs
10/10/5 iterations so that a quick run stays short.

Metrics: ``cc`` (radius 4, sigma_diff 2) and ``mi`` (32 bins).  DIPY has no
mutual information metric for SyN, so the stock ``mi`` case runs DIPY's own
optimizer with ``fastsyn.MIMetric`` restricted to one thread: it measures the
stock optimizer's kernels (warping, composition, inversion) around a common
metric.
"""

import logging

from dipy.align import imwarp as dipy_imwarp
from dipy.align import metrics as dipy_metrics

import fastsyn

from . import ALL, LARGE, THREADS, median_time, nthreads_of, shape_of, synthetic_pair

METRICS = ["cc", "mi"]
IMPLS = ["fastsyn", "dipy"]
LEVEL_ITERS = [10, 10, 5]
SHAPES = ["64x64x64"] + (["96x96x96"] if LARGE else [])


def _quiet():
    logging.getLogger("dipy").setLevel(logging.WARNING)


def make_metric(metric, impl, num_threads):
    """The similarity metric object for one case.

    Parameters
    ----------
    metric : {"cc", "mi"}
    impl : {"fastsyn", "dipy"}
    num_threads : int
        Threads of a fastsyn metric (the stock ``mi`` case uses 1).

    Returns
    -------
    SimilarityMetric
    """
    if metric == "cc":
        if impl == "dipy":
            return dipy_metrics.CCMetric(3, sigma_diff=2.0, radius=4)
        return fastsyn.CCMetric(3, sigma_diff=2.0, radius=4, num_threads=num_threads)
    try:
        cls = fastsyn.MIMetric
    except (AttributeError, ImportError) as exc:
        raise NotImplementedError(f"MIMetric unavailable: {exc}") from exc
    return cls(3, nbins=32, num_threads=1 if impl == "dipy" else num_threads)


def run_syn(pair, metric, impl, num_threads, level_iters=LEVEL_ITERS):
    """One SyN registration of ``pair``.

    Parameters
    ----------
    pair : dict
        From :func:`benchmarks.synthetic_pair`.
    metric : {"cc", "mi"}
    impl : {"fastsyn", "dipy"}
    num_threads : int
        fastsyn thread count (ignored by stock DIPY).
    level_iters : list of int, optional

    Returns
    -------
    DiffeomorphicMap
    """
    m = make_metric(metric, impl, num_threads)
    if impl == "dipy":
        sdr = dipy_imwarp.SymmetricDiffeomorphicRegistration(m, level_iters=list(level_iters))
    else:
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(m, level_iters=list(level_iters),
                                                         num_threads=num_threads)
    return sdr.optimize(pair["static"], pair["moving"], static_grid2world=pair["affine"],
                        moving_grid2world=pair["affine"])


class SyN:
    """Wall time and peak memory of one SyN registration."""

    params = [METRICS, SHAPES, THREADS, IMPLS]
    param_names = ["metric", "shape", "num_threads", "impl"]
    timeout = 600
    number = 1
    repeat = (1, 3, 60.0)

    def setup(self, metric, shape, num_threads, impl):
        if impl == "dipy" and num_threads == ALL:
            raise NotImplementedError("stock DIPY is serial")
        _quiet()
        make_metric(metric, impl, 1)  # raises NotImplementedError when MI is missing
        self.pair = synthetic_pair(shape_of(shape))
        self.n = nthreads_of(num_threads)

    def time_syn(self, metric, shape, num_threads, impl):
        run_syn(self.pair, metric, impl, self.n)

    def peakmem_syn(self, metric, shape, num_threads, impl):
        run_syn(self.pair, metric, impl, self.n)


class SyNRatios:
    """SyN speed-up ratios, timed in one process (calls interleaved, medians).

    ``track_speedup_vs_dipy_serial``: stock ÷ fastsyn 1 thread.
    ``track_speedup_vs_dipy_threaded``: stock ÷ fastsyn with all CPUs.
    ``track_speedup_threads``: fastsyn 1 thread ÷ all CPUs.
    """

    params = [METRICS, SHAPES]
    param_names = ["metric", "shape"]
    timeout = 900
    repeat_calls = 3

    def setup(self, metric, shape):
        _quiet()
        make_metric(metric, "fastsyn", 1)
        self.pair = synthetic_pair(shape_of(shape))

    def _ratio(self, a, b):
        ta, tb = median_time(a, b, repeat=self.repeat_calls)
        return ta / tb

    def track_speedup_vs_dipy_serial(self, metric, shape):
        return self._ratio(lambda: run_syn(self.pair, metric, "dipy", 1),
                           lambda: run_syn(self.pair, metric, "fastsyn", 1))

    track_speedup_vs_dipy_serial.unit = "x"

    def track_speedup_vs_dipy_threaded(self, metric, shape):
        return self._ratio(lambda: run_syn(self.pair, metric, "dipy", 1),
                           lambda: run_syn(self.pair, metric, "fastsyn", -1))

    track_speedup_vs_dipy_threaded.unit = "x"

    def track_speedup_threads(self, metric, shape):
        return self._ratio(lambda: run_syn(self.pair, metric, "fastsyn", 1),
                           lambda: run_syn(self.pair, metric, "fastsyn", -1))

    track_speedup_threads.unit = "x"
