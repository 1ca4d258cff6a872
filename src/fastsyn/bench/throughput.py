"""Cohort throughput: pairs per hour, from the records of a results folder.

Every record of a run carries what its pair cost: the prealignment
(``prealign_seconds``, measured when the pair was prealigned and kept in the
cache), each method's registration (``run_seconds``: the method's whole call,
files and label warping included; older records only have ``seconds``, the
deformable stage) and each evaluation (``eval_seconds``).  Per pair, the
whole run costs prealignment + every method + every evaluation; its mean over
the pairs gives the pairs per hour of one worker, and
:func:`project_wall_time` scales it to the seed benchmarks (LPBA40: 40
subjects, 780 ordered pairs; MRBrainS18: 7 subjects x 3 modality pairings x
6 partners, 126 pairs) on a small machine and on a Dask cluster.
"""

import json
import math

import numpy as np

__all__ = ["COHORTS", "throughput", "project_wall_time", "format_throughput"]

#: Pairs of the full seed benchmarks.
COHORTS = {"LPBA40": 780, "MRBrainS18": 126}


def _num(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _labels(records, dataset):
    """(method, config hash) -> the summary table's label of that row."""
    from .store import config_hash
    from .tables import summary_table

    return {(row["method"], config_hash(row["config"])): row["Method"]
            for row in summary_table(records, dataset)}


def _pair_costs(records, dataset):
    """Per pair: prealignment seconds and, per label, method and evaluation seconds."""
    from .store import config_hash

    labels = _labels(records, dataset)
    pairs = {}
    for rec in records:
        if rec.get("dataset") != dataset or rec.get("status") != "ok":
            continue
        label = labels.get((rec.get("method"), rec.get("config_hash")
                            or config_hash(rec.get("config") or {})))
        prealigner = ((rec.get("config") or {}).get("prealign") or {}).get("prealigner",
                                                                           "dipy")
        pair = pairs.setdefault((rec.get("pair"), prealigner),
                                {"prealign": None, "prealigner": prealigner, "methods": {}})
        pre = _num(rec.get("prealign_seconds"))
        if pre is not None:
            pair["prealign"] = pre
        run = _num(rec.get("run_seconds"))
        run = _num(rec.get("seconds")) if run is None else run
        ev = _num(rec.get("eval_seconds"))
        if label is not None and (run is not None or ev is not None):
            pair["methods"][label] = (run or 0.0, ev or 0.0, rec.get("method"))
    return list(pairs.values())


def _per_hour(seconds):
    return 3600.0 / seconds if seconds and seconds > 0 else None


def throughput(records, dataset):
    """Per-pair costs and pairs per hour of one dataset's records.

    Parameters
    ----------
    records : iterable of dict
        Records of a results store.
    dataset : str
        The dataset to summarise.

    Returns
    -------
    dict or None
        ``pairs`` (pairs with a measured cost), ``rows`` (one per method
        label, the prealignment and the whole run: ``name``, ``n``,
        ``seconds`` (mean per pair, registration + evaluation for methods),
        ``pairs_per_hour`` and ``share`` of the whole run), ``prealigners``
        and ``threads``; None when no record has a cost.
    """
    records = list(records)
    costs = [p for p in _pair_costs(records, dataset) if p["methods"] or p["prealign"]]
    if not costs:
        return None
    per_method = {}
    for p in costs:
        for label, (run, ev, _) in p["methods"].items():
            per_method.setdefault(label, []).append(run + ev)
    pre = [p["prealign"] for p in costs if p["prealign"] is not None]
    whole = [(p["prealign"] or 0.0) + sum(r + e for r, e, _ in p["methods"].values())
             for p in costs]
    total = float(np.mean(whole))
    rows = [{"name": f"Prealignment ({', '.join(sorted({p['prealigner'] for p in costs}))})",
             "n": len(pre), "seconds": float(np.mean(pre)) if pre else None}]
    rows += [{"name": label, "n": len(v), "seconds": float(np.mean(v))}
             for label, v in sorted(per_method.items(), key=lambda kv: kv[0].lower())]
    for row in rows:
        row["pairs_per_hour"] = _per_hour(row["seconds"])
        row["share"] = row["seconds"] / total if row["seconds"] and total > 0 else None
    rows.append({"name": "Whole run (prealign + every method + evaluation)",
                 "n": len(whole), "seconds": total, "pairs_per_hour": _per_hour(total),
                 "share": 1.0})
    threads = sorted({int(r["threads"]) for r in records
                      if r.get("dataset") == dataset and _num(r.get("threads"))})
    return {"dataset": dataset, "pairs": len(costs), "rows": rows,
            "prealigners": sorted({p["prealigner"] for p in costs}), "threads": threads}


def project_wall_time(seconds_per_pair, *, threads=1, cores=2, dask_workers=(8, 32),
                      cohorts=None):
    """Projected wall time of whole cohorts from a measured cost per pair.

    The pairs are independent, so a run of ``n`` pairs on ``w`` concurrent
    workers takes ``n * seconds_per_pair / w`` (whole pairs: ``ceil(n / w)``
    rounds).  On a machine of ``cores`` cores, ``w = max(1, cores // threads)``;
    on a Dask cluster each worker runs one pair with ``threads`` threads.
    The cost must have been measured with the same ``threads`` and image size.

    Parameters
    ----------
    seconds_per_pair : float
        Whole-run cost of one pair (prealign + methods + evaluation).
    threads : int
        Threads per registration when the cost was measured.
    cores : int
        Cores of the small machine.
    dask_workers : sequence of int
        Cluster sizes to project.
    cohorts : dict, optional
        Name -> number of pairs (default :data:`COHORTS`).

    Returns
    -------
    list of dict
        ``cohort``, ``pairs``, ``where`` (e.g. ``"2 cores"``, ``"Dask 32
        workers"``), ``workers`` and ``hours``.
    """
    if not seconds_per_pair or seconds_per_pair <= 0:
        raise ValueError(f"seconds_per_pair must be > 0, got {seconds_per_pair!r}")
    out = []
    places = [(f"{cores} cores", max(1, cores // max(1, int(threads))))]
    places += [(f"Dask {w} workers", int(w)) for w in dask_workers]
    for name, n in (cohorts or COHORTS).items():
        for where, workers in places:
            rounds = math.ceil(n / workers)
            out.append({"cohort": name, "pairs": n, "where": where, "workers": workers,
                        "hours": rounds * seconds_per_pair / 3600.0})
    return out


def _fmt(value, fmt):
    return "–" if value is None else format(value, fmt)


def format_throughput(records, datasets, fmt="markdown", cores=2, dask_workers=(8, 32)):
    """Throughput tables (and projections) of ``datasets`` as markdown or JSON."""
    out = {}
    for d in datasets:
        t = throughput(records, d)
        if t is None:
            continue
        whole = t["rows"][-1]["seconds"]
        t["projection"] = project_wall_time(whole, threads=max(t["threads"] or [1]),
                                            cores=cores, dask_workers=dask_workers)
        out[d] = t
    if fmt == "json":
        return json.dumps(out, indent=2) + "\n"
    parts = []
    for d, t in out.items():
        parts.append(f"### {d}: throughput ({t['pairs']} pair(s), "
                     f"threads {','.join(map(str, t['threads'])) or '?'})\n\n")
        parts.append("| Step | Pairs | Seconds per pair | Pairs per hour | Share |\n"
                     "|---|---|---|---|---|\n")
        for r in t["rows"]:
            share = None if r["share"] is None else 100 * r["share"]
            parts.append(f"| {r['name']} | {r['n']} | {_fmt(r['seconds'], '.2f')} | "
                         f"{_fmt(r['pairs_per_hour'], '.1f')} | {_fmt(share, '.0f')} % |\n")
        parts.append("\nProjected wall time of the full cohorts at this cost per pair:\n\n"
                     "| Cohort | Pairs | Where | Hours |\n|---|---|---|---|\n")
        for p in t["projection"]:
            parts.append(f"| {p['cohort']} | {p['pairs']} | {p['where']} | "
                         f"{p['hours']:.2f} |\n")
        parts.append("\n")
    if not parts:
        return "no records with measured costs (run_seconds, prealign_seconds)\n"
    return "".join(parts)
