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


def _describe(configs):
    """Short labels telling apart configurations that share a method label."""
    # metric_impl follows metric, and method is shared by construction
    keys = sorted({k for c in configs for k in c} - {"metric_impl", "method"})
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True)
                                      for c in configs}) > 1]
    out = []
    for c in configs:
        parts = []
        for k in differ:
            v = c.get(k)
            if k == "metric" and isinstance(v, str):
                parts.append(v.upper())
            elif k == "threads":
                parts.append(f"{v} thr")
            elif k == "prealign" and isinstance(v, dict):
                # records written before the choice existed were DIPY's
                parts.append(f"prealign {v.get('prealigner', 'dipy')}")
            elif k == "levels" and isinstance(v, list):
                parts.append("x".join(str(i) for i in v))
            else:
                parts.append(f"{k}={v}")
        out.append(", ".join(parts))
    return out


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
