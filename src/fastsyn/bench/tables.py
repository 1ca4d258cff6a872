"""Summary tables of benchmark records.

The report's table is ``Method | NCC | NMI | Label Dice | Label Jaccard |
Folding (%) | SD log|J| | TRE mean (mm) | Time (s)`` with one row per method
configuration, each cell the mean ± standard deviation (population,
``ddof=0``) over the finished pairs; the ``Baseline`` row (prealignment only)
comes first and has no time.  The Jacobian columns (percentage of fixed-mask
voxels whose transform folds, ``det J <= 0``, and the spread of ``log det J``)
and the target registration error stand next to the overlaps so that no
method wins Dice by tearing the brain; TRE is blank ("–") where the true
displacement is unknown (every dataset but the embedded cohorts).
"""

import csv
import io
import json
import math

import numpy as np

__all__ = ["COLUMNS", "EXTRA", "DIGITS", "summary_table", "format_table", "table_json"]

COLUMNS = ("NCC", "NMI", "Label Dice", "Label Jaccard", "Folding (%)", "SD log|J|",
           "TRE mean (mm)", "Time (s)")
_SOURCES = {"NCC": "ncc", "NMI": "nmi", "Label Dice": "dice_mean",
            "Label Jaccard": "jaccard_mean", "Folding (%)": "folding_pct",
            "SD log|J|": "logjac_sd", "TRE mean (mm)": "tre_mean"}
#: Further per-pair values summarised in the JSON form.
EXTRA = {"TRE median (mm)": "tre_median", "Peak memory (MB)": "peak_mem_mb",
         "Threads": "threads"}
#: Decimals of a column in the markdown and HTML tables (default 3).
DIGITS = {"Time (s)": 2, "TRE mean (mm)": 2}


def _value(rec, field):
    if field in ("peak_mem_mb", "threads", "seconds"):
        v = rec.get(field)
    else:
        v = (rec.get("metrics") or {}).get(field)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _stats(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


#: Keys that name a configuration first: a metric's own defaults (its SyN
#: settings) follow the metric, so "MI" and "CC" tell two runs apart.
_LABEL_FIRST = ("metric", "levels", "threads", "prealign")


def _part(k, v):
    if k == "metric" and isinstance(v, str):
        return v.upper()
    if k == "threads":
        return f"{v} thr"
    if k == "prealign" and isinstance(v, dict):
        # records written before the choice existed were DIPY's
        return f"prealign {v.get('prealigner', 'dipy')}"
    if k == "levels" and isinstance(v, list):
        return "x".join(str(i) for i in v)
    return f"{k}={v}"


def _describe(configs):
    """Short labels telling apart configurations that share a method label.

    The configurations are split by the first key, in order (metric, levels,
    threads, prealignment, then the others by name), on which they differ,
    and each group that still holds several is split again by the next, so
    that a label names only what tells its configuration from the others."""
    # metric_impl follows metric, and method is shared by construction
    keys = sorted({k for c in configs for k in c} - {"metric_impl", "method"})
    ordered = ([k for k in _LABEL_FIRST if k in keys]
               + [k for k in keys if k not in _LABEL_FIRST])
    parts = [[] for _ in configs]

    def split(members, keys):
        for i, k in enumerate(keys):
            groups = {}
            for m in members:
                groups.setdefault(json.dumps(configs[m].get(k), sort_keys=True), []).append(m)
            if len(groups) < 2:
                continue
            for group in groups.values():
                for m in group:
                    parts[m].append(_part(k, configs[m].get(k)))
                if len(group) > 1:
                    split(group, keys[i + 1:])
            return

    split(list(range(len(configs))), ordered)
    return [", ".join(p) for p in parts]


def summary_table(records, dataset=None):
    """Rows of the summary table.

    Parameters
    ----------
    records : iterable of dict
        Records from :meth:`fastsyn.bench.store.ResultStore.records`.
    dataset : str, optional
        Keep only this dataset's records.

    Returns
    -------
    list of dict
        One row per (method, configuration): ``Method`` (label), ``method``,
        ``config``, ``n`` (finished pairs), ``errors`` (failed pairs), and for
        each column of :data:`COLUMNS` and :data:`EXTRA` a dict
        ``{"mean", "std", "n"}`` or ``None`` (no value; the Baseline's time).
        The Baseline row comes first, then the others by label.
    """
    groups = {}
    for rec in records:
        if dataset is not None and rec.get("dataset") != dataset:
            continue
        if "method" not in rec or "config" not in rec:
            continue
        key = (rec["method"], rec.get("config_hash") or json.dumps(rec["config"],
                                                                     sort_keys=True))
        g = groups.setdefault(key, {"label": rec.get("label") or rec["method"],
                                    "method": rec["method"], "config": rec["config"],
                                    "ok": [], "errors": 0})
        if rec.get("status") == "ok":
            g["ok"].append(rec)
        else:
            g["errors"] += 1
    by_label = {}
    for g in groups.values():
        by_label.setdefault(g["label"], []).append(g)
    for label, gs in by_label.items():
        if len(gs) > 1:
            for g, d in zip(gs, _describe([g["config"] for g in gs])):
                g["label"] = f"{label} ({d})" if d else label
    rows = []
    for g in groups.values():
        row = {"Method": g["label"], "method": g["method"], "config": g["config"],
               "n": len(g["ok"]), "errors": g["errors"]}
        for col, field in _SOURCES.items():
            row[col] = _stats(_value(r, field) for r in g["ok"])
        row["Time (s)"] = _stats(_value(r, "seconds") for r in g["ok"])
        for col, field in EXTRA.items():
            row[col] = _stats(_value(r, field) for r in g["ok"])
        rows.append(row)
    rows.sort(key=lambda r: (r["method"] != "baseline", r["Method"].lower()))
    return rows


def _cell(stat, digits):
    if stat is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def table_json(rows):
    """Per method: the mean and std of each column and the number of pairs.

    Parameters
    ----------
    rows : list of dict
        Output of :func:`summary_table`.

    Returns
    -------
    dict
        ``{label: {"n": int, "errors": int, "method": str, "config": dict,
        column: {"mean": float, "std": float} or None, ...}}``.
    """
    out = {}
    for row in rows:
        entry = {"n": row["n"], "errors": row["errors"], "method": row["method"],
                 "config": row["config"]}
        for col in COLUMNS + tuple(EXTRA):
            s = row.get(col)
            entry[col] = None if s is None else {"mean": s["mean"], "std": s["std"]}
        out[row["Method"]] = entry
    return out


def format_table(rows, fmt="markdown", digits=3):
    """Render summary rows.

    Parameters
    ----------
    rows : list of dict
        Output of :func:`summary_table`.
    fmt : {"markdown", "csv", "json"}
        Markdown: the report's table with ``mean ± std`` cells. CSV: one line
        per method with numeric ``<column> mean`` / ``<column> std`` fields and
        ``n``. JSON: :func:`table_json`.
    digits : int
        Decimals of the metric columns (time and TRE use 2, see :data:`DIGITS`).

    Returns
    -------
    str
    """
    if fmt == "json":
        return json.dumps(table_json(rows), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["Method", "n"] + [f"{c} {s}" for c in COLUMNS for s in ("mean", "std")])
        for row in rows:
            cells = [row["Method"], row["n"]]
            for c in COLUMNS:
                s = row.get(c)
                cells += ["", ""] if s is None else [f"{s['mean']:.6g}", f"{s['std']:.6g}"]
            w.writerow(cells)
        return buf.getvalue()
    if fmt != "markdown":
        raise ValueError(f"fmt must be 'markdown', 'csv' or 'json', got {fmt!r}")
    header = ("Method",) + COLUMNS
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["Method"]] + [_cell(row.get(c), DIGITS.get(c, digits))
                                   for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
