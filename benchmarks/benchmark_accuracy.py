"""Accuracy tracked across commits: label Dice on the fixture pairs.

The pairs are ``fixtures/<name>.npz`` (see ``fixtures/``); a missing fixture
skips its cases (n/a).  Methods:

``baseline``
    No deformable registration (the pair as given).
``fastsyn_cc`` / ``fastsyn_mi``
    ``fastsyn.SymmetricDiffeomorphicRegistration`` with ``CCMetric`` /
    ``MIMetric`` on one thread (results are identical for every thread count,
    which :class:`ThreadEquality` tracks, and one thread keeps the accuracy
    runs insensitive to other load on the machine).
``dipy_cc``
    Stock DIPY's ``SymmetricDiffeomorphicRegistration`` with DIPY's ``CCMetric``.

Label Dice is the mean over the labels present in the static label map
(0 excluded) of the Dice overlap with the warped moving labels (nearest
neighbour), as in the harness.  :class:`ThreadEquality` tracks the largest
difference between the final fields of a serial and a threaded run, which must
be exactly 0.
"""

import logging
from pathlib import Path

import numpy as np
from dipy.align import imwarp as dipy_imwarp
from dipy.align import metrics as dipy_metrics

import fastsyn

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PAIRS = ["pair3d", "pair2d", "pair3d_multimodal", "pair3d_inverted"]
METHODS = ["baseline", "fastsyn_cc", "fastsyn_mi", "dipy_cc"]
LEVEL_ITERS = {3: [20, 10, 5], 2: [40, 20, 10]}


def load_fixture(name):
    """Load a fixture pair, or skip the benchmark when it is missing.

    Parameters
    ----------
    name : str
        Fixture name (``fixtures/<name>.npz``).

    Returns
    -------
    dict
    """
    path = FIXTURES / f"{name}.npz"
    if not path.exists():
        raise NotImplementedError(f"fixture {path} not generated")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def mean_dice(fixed_labels, warped_labels):
    """Mean Dice over the labels of the fixed map (0 excluded).

    Parameters
    ----------
    fixed_labels, warped_labels : ndarray of int

    Returns
    -------
    float
    """
    scores = []
    for label in np.unique(fixed_labels):
        if label == 0:
            continue
        f = fixed_labels == label
        w = warped_labels == label
        denom = f.sum() + w.sum()
        scores.append(2.0 * np.logical_and(f, w).sum() / denom if denom else 1.0)
    return float(np.mean(scores)) if scores else float("nan")


def register(pair, method, num_threads=-1):
    """Register a fixture pair with one method.

    Parameters
    ----------
    pair : dict
        A fixture pair.
    method : str
        One of :data:`METHODS` except ``baseline``.
    num_threads : int, optional
        fastsyn thread count.

    Returns
    -------
    DiffeomorphicMap
    """
    logging.getLogger("dipy").setLevel(logging.WARNING)
    dim = pair["static"].ndim
    levels = LEVEL_ITERS[dim]
    if method == "dipy_cc":
        sdr = dipy_imwarp.SymmetricDiffeomorphicRegistration(
            dipy_metrics.CCMetric(dim), level_iters=levels)
    else:
        if method == "fastsyn_cc":
            metric = fastsyn.CCMetric(dim)
        else:
            try:
                metric = fastsyn.MIMetric(dim)
            except (AttributeError, ImportError) as exc:
                raise NotImplementedError(f"MIMetric unavailable: {exc}") from exc
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=levels,
                                                         num_threads=num_threads)
    return sdr.optimize(pair["static"], pair["moving"],
                        static_grid2world=pair["static_affine"],
                        moving_grid2world=pair["moving_affine"])


class LabelDice:
    """Mean label Dice after registration, per fixture pair and method."""

    params = [PAIRS, METHODS]
    param_names = ["pair", "method"]
    timeout = 600

    def setup(self, pair, method):
        self.pair = load_fixture(pair)
        if method == "fastsyn_mi":
            try:
                _ = fastsyn.MIMetric
            except (AttributeError, ImportError) as exc:
                raise NotImplementedError(f"MIMetric unavailable: {exc}") from exc

    def track_label_dice(self, pair, method):
        p = self.pair
        if method == "baseline":
            return mean_dice(p["static_labels"], p["moving_labels"])
        mapping = register(p, method, num_threads=1)
        warped = mapping.transform(p["moving_labels"], interpolation="nearest")
        return mean_dice(p["static_labels"], warped)

    track_label_dice.unit = "Dice"


class ThreadEquality:
    """max |serial − threaded| over the final forward and backward fields."""

    params = [["pair3d", "pair2d"], ["cc", "mi"]]
    param_names = ["pair", "metric"]
    timeout = 600

    def setup(self, pair, metric):
        self.pair = load_fixture(pair)

    def track_max_abs_diff_fields(self, pair, metric):
        method = "fastsyn_cc" if metric == "cc" else "fastsyn_mi"
        from fastsyn.fields import parallel_grain

        serial = register(self.pair, method, num_threads=1)
        with parallel_grain(1):  # fixtures are small: force the threads
            threaded = register(self.pair, method, num_threads=-1)
        return float(max(np.max(np.abs(serial.forward - threaded.forward)),
                         np.max(np.abs(serial.backward - threaded.backward))))

    track_max_abs_diff_fields.unit = "abs diff"
