"""The report's QC gallery: the pairs worth looking at, worst first.

For each dataset and each registered method, the ``worst`` pairs by label
Dice, the median pair and the outliers (pairs more than ``OUTLIER_SD``
standard deviations below the method's mean) get a card
(:mod:`fastsyn.bench.qc`): the pair seen through every method side by side,
the prealigned Baseline first.  Cards are ordered by the lowest Dice any
method reached on the pair, so the worst registration comes first.  The
cards are drawn from the tiles the harness kept beside each record; the
registrations are not run again.
"""

import re

import numpy as np

__all__ = ["WORST", "OUTLIER_SD", "card_id", "pair_dice", "select_pairs", "outliers",
           "gallery_context"]

#: Worst pairs per dataset and method shown as cards.
WORST = 3
#: A pair is an outlier of a method when its Dice is this many standard
#: deviations below the method's mean over the dataset.
OUTLIER_SD = 2.0

_ID_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def card_id(dataset, pair):
    """The HTML id of a pair's card (the Dice plot and tables link to it)."""
    return "qc-" + _ID_SAFE.sub("_", f"{dataset}--{pair}")


def pair_dice(records, label_of):
    """Dice per method label and pair: ``{label: {pair: dice}}``.

    Parameters
    ----------
    records : list of dict
        Records of one dataset.
    label_of : callable
        Record -> the method's label in the accuracy table, or None to skip.
    """
    out = {}
    for rec in records:
        label = label_of(rec)
        dice = (rec.get("metrics") or {}).get("dice_mean")
        if rec.get("status") != "ok" or label is None or dice is None:
            continue
        if np.isfinite(dice):
            out.setdefault(label, {})[rec["pair"]] = float(dice)
    return out


def select_pairs(dice, methods, worst=WORST):
    """The pairs that get a card and why.

    Parameters
    ----------
    dice : dict
        See :func:`pair_dice`.
    methods : list of str
        The registered methods' labels (the Baseline is not ranked).
    worst : int
        Worst pairs per method.

    Returns
    -------
    dict
        Pair -> list of reasons (``"worst #1 of fastsyn"``, ``"median of ANTs"``,
        ``"outlier of DIPY"``).
    """
    reasons = {}
    for label in methods:
        values = dice.get(label) or {}
        if not values:
            continue
        ranked = sorted(values, key=lambda p: (values[p], p))
        for rank, pair in enumerate(ranked[:worst], 1):
            reasons.setdefault(pair, []).append(f"worst #{rank} of {label}")
        median = ranked[(len(ranked) - 1) // 2]
        reasons.setdefault(median, []).append(f"median of {label}")
    for row in outliers(dice, methods):
        reasons.setdefault(row["pair"], []).append(f"outlier of {row['method']}")
    return reasons


def outliers(dice, methods, sd=OUTLIER_SD):
    """Pairs more than ``sd`` standard deviations below their method's mean.

    Returns
    -------
    list of dict
        ``method``, ``pair``, ``dice``, ``mean``, ``std``, ``z`` and the best
        method on that pair (``best``, ``best_dice``, ``gap``), worst first.
    """
    rows = []
    for label in methods:
        values = dice.get(label) or {}
        if len(values) < 3:
            continue
        arr = np.array(list(values.values()))
        mean, std = float(arr.mean()), float(arr.std(ddof=1))
        if not std > 0:
            continue
        for pair, value in values.items():
            z = (value - mean) / std
            if z < -sd:
                best = max(methods, key=lambda m: dice.get(m, {}).get(pair, -np.inf))
                best_dice = dice.get(best, {}).get(pair)
                rows.append({"method": label, "pair": pair, "dice": value, "mean": mean,
                             "std": std, "z": z, "best": best, "best_dice": best_dice,
                             "gap": None if best_dice is None else best_dice - value})
    return sorted(rows, key=lambda r: r["z"])


def _column(rec, store, label):
    from .qc import card_numbers, load_tiles

    tiles = load_tiles(store.qc_path(rec["key"])) if rec.get("key") else None
    return {"label": label, "numbers": card_numbers(rec.get("metrics"), rec.get("seconds")),
            "tiles": tiles}


def _reasons_text(why):
    """``["worst #1 of A", "worst #1 of B", "median of A"]`` ->
    ``"worst #1 of A, B; median of A"``."""
    grouped = {}
    for reason in why:
        kind, _, method = reason.partition(" of ")
        grouped.setdefault(kind, []).append(method)
    return "; ".join(f"{kind} of {', '.join(methods)}" for kind, methods in grouped.items())


def _card(dataset, pair, why, recs, store, order):
    """The context of one pair's card; columns without tiles are listed apart."""
    from .qc import card_context

    columns, missing = [], []
    for label in order:
        rec = recs.get(label)
        if rec is None:
            continue
        col = _column(rec, store, label)
        (columns if col["tiles"] is not None else missing).append(col)
    if not columns:
        return None
    first = recs[order[0]] if order[0] in recs else next(iter(recs.values()))
    note = (f"{first.get('moving')} ({first.get('moving_modality')}) registered to "
            f"{first.get('fixed')} ({first.get('fixed_modality')}); shown as "
            f"{_reasons_text(why)}.")
    if missing:
        note += (" No QC tiles for " + ", ".join(c["label"] for c in missing)
                 + " (recorded before tiles were kept: rerun into a fresh results folder).")
    card = card_context(card_id(dataset, pair), f"{dataset} · {pair}", note, columns)
    card["pair"] = pair
    return card


def gallery_context(dataset, records, store, label_of, order, worst=WORST):
    """Cards and outliers of one dataset.

    Parameters
    ----------
    dataset : str
        Its name.
    records : list of dict
        Its records.
    store : ResultStore
        Where the tiles are.
    label_of : callable
        Record -> method label (as in the accuracy table) or None.
    order : list of str
        Method labels in table order (Baseline first); every label but
        ``"Baseline"`` is ranked.
    worst : int
        Worst pairs per method.

    Returns
    -------
    dict
        ``cards`` (worst first), ``outliers`` (rows of :func:`outliers` with
        ``card``, the id of the pair's card or None), ``linked`` (pair ->
        card id, for the Dice plot).
    """
    dice = pair_dice(records, label_of)
    methods = [m for m in order if m != "Baseline" and m in dice]
    why = select_pairs(dice, methods, worst)
    by_pair = {}
    for rec in records:
        label = label_of(rec)
        if rec.get("status") == "ok" and label is not None:
            by_pair.setdefault(rec["pair"], {})[label] = rec
    lowest = {p: min((dice[m][p] for m in methods if p in dice[m]), default=np.inf)
              for p in why}
    cards = []
    for pair in sorted(why, key=lambda p: (lowest[p], p)):
        card = _card(dataset, pair, why[pair], by_pair.get(pair, {}), store, order)
        if card is not None:
            cards.append(card)
    linked = {c["pair"]: c["id"] for c in cards}
    rows = [dict(r, card=linked.get(r["pair"])) for r in outliers(dice, methods)]
    return {"cards": cards, "outliers": rows, "linked": linked}
