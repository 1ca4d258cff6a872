"""Similarity metrics for SyN with DIPY's interface, threaded.

:class:`CCMetric` is a drop-in for :class:`dipy.align.metrics.CCMetric`;
:class:`MIMetric` (Mutual Information, Mattes-style Parzen histogram) is new
to SyN.  Both follow :class:`dipy.align.metrics.SimilarityMetric`, so they
work with fastsyn's and with DIPY's own optimizer.
"""

from fastsyn.metrics.cc import CCMetric
from fastsyn.metrics.mi import MIMetric, mi_from_histogram

__all__ = ["CCMetric", "MIMetric", "mi_from_histogram"]
