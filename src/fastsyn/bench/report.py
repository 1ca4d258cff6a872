"""One self-contained HTML page with everything the harness measured.

``fastsyn report --results DIR --out reports/`` writes ``reports/index.html``:

* the environment (CPU, cores, thread counts, package versions, git commit);
* the speed table of ``fastsyn bench speed`` with its ratios (stock DIPY,
  fastsyn serial and threaded, ANTs, greedy) and a speed-up-versus-threads plot;
* an equivalence table: every kernel run with one thread and with all CPUs on
  small random smooth inputs while the report is written (must be bitwise
  equal), with the largest difference from the stock twin, and the
  registrations of the results store whose measures agree across thread counts;
* per dataset, the accuracy table ``Method | NCC | NMI | Label Dice | Label
  Jaccard | Folding (%) | SD log|J| | TRE mean (mm) | Time (s)`` (mean ± std;
  TRE where the true displacement is known), the masks the methods were
  given, a box plot of label Dice per method and a bar plot of time per
  method;
* the agreement with ANTs of ``fastsyn bench agreement``: the RMS distance
  (mm) of fastsyn's displacement fields, in DIPY's and in ANTs' configuration,
  to ANTs' inside the brain, with label Dice and time;
* the MI study of ``fastsyn bench study`` (``study-*.json`` plans in the
  results folder): a table of the fastsyn MI settings against ANTs Mattes and
  greedy NMI and a plot of Dice per setting with the anchors as lines;
* the stage profile of ``fastsyn profile`` (table, stacked bars, busiest lines);
* the newest pytest-benchmark run under ``.benchmarks/`` compared with the one
  before it;
* a link to the asv pages (``asv publish`` writes them to ``reports/asv/``).

The page needs no network: the style sheet is inline and the plots are inline
SVG drawn with matplotlib (a page without plots is written when matplotlib is
missing).  This module gathers the data and draws the plots; the page is
rendered by Jinja2 from the templates in ``fastsyn/bench/templates/``
(``report.html``, one partial per section, ``report.css``).
"""

import functools
import io
import json
import os
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np

from fastsyn.bench.machine import collect_environment

__all__ = [
    "collect_environment",
    "equivalence_check",
    "latest_pytest_benchmarks",
    "main_report",
    "write_report",
]

STAGES = ("warping", "metric", "smoothing", "update", "inversion", "other")
STAGE_COLOURS = {"warping": "#4e79a7", "metric": "#f28e2b", "smoothing": "#59a14f",
                 "update": "#b07aa1", "inversion": "#e15759", "other": "#bab0ac"}
ACCURACY_COLUMNS = ("NCC", "NMI", "Label Dice", "Label Jaccard", "Folding (%)", "SD log|J|",
                    "TRE mean (mm)", "Time (s)")


# -------------------------------------------------------------- equivalence
def equivalence_check(size=40, threads=None):
    """Run every kernel with one thread and with many on random smooth inputs.

    Parameters
    ----------
    size : int, optional
        Edge of the 3D test volume (odd sizes and sizes not divisible by the
        thread count are fine).
    threads : int, optional
        Thread count compared with 1 (default: all CPUs, at least 2).

    Returns
    -------
    list of dict
        One row per kernel and dtype: ``kernel``, ``dtype``, ``threads``,
        ``max_abs_diff_threads`` (must be 0), ``bitwise_equal``,
        ``max_abs_diff_dipy`` (None where there is no stock twin) and
        ``error`` (text, when the kernel failed).
    """
    import fastsyn

    n = threads or max(2, fastsyn.resolve_num_threads(-1))
    base = _smooth_inputs(size)
    return [_compare_kernel(name, np.dtype(dt).name, ours, stock, n)
            for dt in (np.float32, np.float64)
            for name, ours, stock in _equivalence_cases(base, dt)]


def _smooth_inputs(size):
    """Two smooth displacement fields and two smooth positive images, drawn
    from a fixed seed (in this order, so the inputs never change)."""
    from scipy import ndimage

    shape = (size, size + 3, size + 1)
    rng = np.random.default_rng(0)

    def smooth(channels, amplitude):
        out = []
        for _ in range(channels):
            c = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
            out.append(c * amplitude / np.abs(c).max())
        return np.stack(out, axis=-1) if channels > 1 else out[0]

    return {"d1": smooth(3, 2.0), "d2": smooth(3, 2.0), "img": smooth(1, 50.0) + 50.0,
            "img2": smooth(1, 50.0) + 50.0}


def _cc_steps(metric, a, b):
    """Forward and backward steps of a CC metric on identity geometry."""
    eye, ones = np.eye(4), np.ones(3)
    metric.set_static_image(a, eye, ones, eye)
    metric.set_moving_image(b, eye, ones, eye)
    metric.initialize_iteration()
    return np.concatenate([metric.compute_forward().ravel(),
                           metric.compute_backward().ravel()])


def _equivalence_cases(base, dt):
    """``(kernel, ours(num_threads), stock() or None)`` for one dtype."""
    from dipy.align import metrics as dipy_metrics
    from dipy.align import vector_fields as vf
    from scipy import ndimage

    import fastsyn
    from fastsyn import fields

    ones = np.ones(3)
    d1, d2 = base["d1"].astype(dt), base["d2"].astype(dt)
    img, img2 = base["img"].astype(dt), base["img2"].astype(dt)
    stock_cc = None
    if dt == np.float32:
        def stock_cc():
            return _cc_steps(dipy_metrics.CCMetric(3), img, img2)
    return [
        ("compose",
         lambda t: fields.compose_vector_fields_3d(d1, d2, None, None, 1.0,
                                                   num_threads=t)[0],
         lambda: vf.compose_vector_fields_3d(d1, d2, None, None, 1.0, None)[0]),
        ("invert",
         lambda t: fields.invert_vector_field_fixed_point_3d(d1, None, ones, 20, 1e-3,
                                                             num_threads=t),
         lambda: vf.invert_vector_field_fixed_point_3d(d1, None, ones, 20, 1e-3)),
        ("warp linear", lambda t: fields.warp_3d(img, d1, num_threads=t),
         lambda: vf.warp_3d(img, d1)),
        ("warp nearest", lambda t: fields.warp_3d_nn(img, d1, num_threads=t),
         lambda: vf.warp_3d_nn(img, d1)),
        ("gaussian smooth",
         lambda t: fields.gaussian_smooth(d1, 2.0, vector=True, num_threads=t),
         lambda: np.stack([ndimage.gaussian_filter(d1[..., i], 2.0)
                           for i in range(3)], axis=-1)),
        ("image gradient", lambda t: fields.image_gradient(img, num_threads=t),
         lambda: np.stack(np.gradient(img), axis=-1)),
        ("CC steps", lambda t: _cc_steps(fastsyn.CCMetric(3, num_threads=t), img, img2),
         stock_cc),
    ]


def _compare_kernel(name, dtype, ours, stock, n):
    """One row of :func:`equivalence_check`."""
    from fastsyn import fields

    row = {"kernel": name, "dtype": dtype, "threads": n,
           "max_abs_diff_threads": None, "bitwise_equal": None,
           "max_abs_diff_dipy": None, "error": None}
    try:
        serial = np.array(ours(1), copy=True)
        # Small inputs would otherwise run on one thread (the
        # kernels' voxels-per-thread grain): force the threads.
        with fields.parallel_grain(1):
            threaded = np.array(ours(n), copy=True)
        row["bitwise_equal"] = bool(np.array_equal(serial, threaded))
        row["max_abs_diff_threads"] = float(np.max(np.abs(
            serial.astype(np.float64) - threaded)))
        if stock is not None:
            ref = np.asarray(stock(), dtype=np.float64)
            row["max_abs_diff_dipy"] = float(np.max(np.abs(serial - ref)))
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _thread_agreement(records):
    """Pairs registered by one method/metric at several thread counts whose
    measures agree exactly."""
    groups = {}
    for rec in records:
        if rec.get("status") != "ok" or rec.get("method") in (None, "baseline"):
            continue
        cfg = dict(rec.get("config") or {})
        threads = cfg.pop("threads", rec.get("threads"))
        if threads is None:
            continue
        key = (rec.get("dataset"), rec.get("method"), json.dumps(cfg, sort_keys=True))
        groups.setdefault(key, {}).setdefault(rec.get("pair"), {})[threads] = \
            rec.get("metrics") or {}
    rows = []
    for (dataset, method, cfg), pairs in sorted(groups.items()):
        multi = {p: v for p, v in pairs.items() if len(v) > 1}
        if not multi:
            continue
        worst, identical = 0.0, 0
        counts = set()
        for by_threads in multi.values():
            counts.update(by_threads)
            values = list(by_threads.values())
            same = True
            for other in values[1:]:
                for k in ("ncc", "nmi", "dice_mean", "jaccard_mean"):
                    a, b = values[0].get(k), other.get(k)
                    if a is None or b is None:
                        continue
                    diff = abs(float(a) - float(b))
                    worst = max(worst, diff)
                    same &= diff == 0.0
            identical += same
        metric = json.loads(cfg).get("metric", "")
        rows.append({"dataset": dataset, "method": method, "metric": metric,
                     "threads": sorted(counts, key=lambda t: (str(type(t)), t)),
                     "pairs": len(multi), "identical": identical, "max_diff": worst})
    return rows


# ------------------------------------------------------- pytest-benchmark
def latest_pytest_benchmarks(root=".benchmarks"):
    """The newest pytest-benchmark save and the one before it.

    Parameters
    ----------
    root : str or Path, optional
        The ``--benchmark-storage`` folder (pytest-benchmark's default is
        ``.benchmarks`` in the working directory).

    Returns
    -------
    dict or None
        ``{"file", "datetime", "commit", "rows", "previous_file"}`` where each
        row has ``group``, ``name``, ``median_s``, ``min_s``, ``mean_s``,
        ``stddev_s``, ``rounds`` and ``change`` (relative change of the median
        against the previous save, or None); None when nothing is saved.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    files = sorted((p for p in root.rglob("*.json") if p.is_file()),
                   key=lambda p: (p.stat().st_mtime, p.name))
    loaded = []
    for p in reversed(files):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
            loaded.append((p, data))
        if len(loaded) == 2:
            break
    if not loaded:
        return None
    path, data = loaded[0]
    previous = {}
    if len(loaded) > 1:
        for b in loaded[1][1]["benchmarks"]:
            stats = b.get("stats") or {}
            if stats.get("median") is not None:
                previous[b.get("fullname") or b.get("name")] = stats["median"]
    rows = []
    for b in data["benchmarks"]:
        stats = b.get("stats") or {}
        med = stats.get("median")
        before = previous.get(b.get("fullname") or b.get("name"))
        rows.append({
            "group": b.get("group") or "",
            "name": b.get("name") or b.get("fullname") or "?",
            "median_s": med, "min_s": stats.get("min"), "mean_s": stats.get("mean"),
            "stddev_s": stats.get("stddev"), "rounds": stats.get("rounds"),
            "change": (med / before - 1.0) if med is not None and before else None,
        })
    rows.sort(key=lambda r: (r["group"], r["median_s"] if r["median_s"] is not None
                             else float("inf")))
    commit = data.get("commit_info") or {}
    return {"file": str(path), "datetime": data.get("datetime"),
            "commit": commit.get("id"), "rows": rows,
            "previous_file": str(loaded[1][0]) if len(loaded) > 1 else None}


# -------------------------------------------------------------------- plots
def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    plt.rcParams.update({
        "svg.fonttype": "none", "font.size": 10, "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "axes.axisbelow": True, "font.family": "sans-serif",
    })
    return plt


def _svg(fig, plt):
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def _plot_dice_box(groups, plt, pairs=None, links=None):
    """Box plot of Dice per method; with ``pairs`` (label -> pair names
    aligned with ``groups``) every pair is a dot too, and the dots of pairs in
    ``links`` (pair -> card id) link to their QC card."""
    labels = list(groups)
    fig, ax = plt.subplots(figsize=(6.2, 0.5 * len(labels) + 1.2))
    style = {"widths": 0.55, "patch_artist": True,
             "boxprops": {"facecolor": "#dbe6f3", "edgecolor": "#4e79a7"},
             "medianprops": {"color": "#e15759", "linewidth": 2},
             "flierprops": {"markersize": 3}}
    data = [groups[k] for k in labels]
    try:  # matplotlib >= 3.10
        ax.boxplot(data, orientation="horizontal", **style)
    except TypeError:
        ax.boxplot(data, vert=False, **style)
    if pairs:
        _dice_dots(ax, groups, pairs, links or {})
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel("label Dice (mean over labels, per pair)"
                  + ("; ringed dots link to the pair's QC card" if links else ""))
    ax.set_title("Label Dice per method", loc="left", fontweight="bold")
    return _svg(fig, plt)


def _dice_dots(ax, groups, pairs, links):
    """One dot per pair over each box (a fixed jitter); dots of pairs with a
    card are ringed and link to it (SVG ``<a>``)."""
    rng = np.random.default_rng(0)
    for row, label in enumerate(groups, 1):
        names = pairs.get(label) or []
        y = row + rng.uniform(-0.18, 0.18, len(names))
        linked = np.array([n in links for n in names], dtype=bool)
        for sel, style in ((~linked, {"s": 9, "color": "#4e79a7", "alpha": 0.5}),
                           (linked, {"s": 26, "facecolor": "#f28e2b",
                                     "edgecolor": "#1f2933", "linewidths": 0.8})):
            if not sel.any():
                continue
            dots = ax.scatter(np.asarray(groups[label])[sel], y[sel], zorder=3, **style)
            if style.get("facecolor"):
                dots.set_urls([f"#{links[n]}" for n, s in zip(names, sel) if s])


def _plot_time_bars(labels, means, stds, plt):
    fig, ax = plt.subplots(figsize=(6.2, 0.5 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, means, xerr=stds, color="#4e79a7", alpha=0.85, capsize=3)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    right = max((m + (s or 0.0) for m, s in zip(means, stds)), default=1.0)
    for yi, m, s in zip(y, means, stds):
        ax.text(m + (s or 0.0) + 0.02 * right, yi, f"{m:.2f} s", va="center", fontsize=9)
    ax.set_xlabel("deformable-stage wall time (s)")
    ax.set_title("Time per method", loc="left", fontweight="bold")
    ax.set_xlim(0, right * 1.25)
    return _svg(fig, plt)


def _plot_speedup_threads(ratios, plt):
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    by_case = {}
    for q in ratios:
        if q.get("baseline") == "dipy" and q.get("speedup"):
            by_case.setdefault(q["case"], {})[int(q["threads"])] = float(q["speedup"])
    markers = "osD^vP*X"
    for i, (case, pts) in enumerate(sorted(by_case.items())):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker=markers[i % len(markers)], label=case)
    ax.axhline(1.0, color="#888", linewidth=1, linestyle="--")
    threads = sorted({t for pts in by_case.values() for t in pts})
    if threads:
        ax.set_xticks(threads)
    ax.set_xlabel("fastsyn threads")
    ax.set_ylabel("speed-up over stock DIPY (x)")
    ax.set_title("Speed-up against threads", loc="left", fontweight="bold")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _svg(fig, plt)


def _plot_stage_profile(profile, plt):
    runs = profile.get("runs") or {}
    impls = [i for i in ("fastsyn", "dipy") if i in runs]
    names = {"fastsyn": f"fastsyn ({runs.get('fastsyn', {}).get('threads', '?')} thr)",
             "dipy": "stock DIPY"}
    fig, ax = plt.subplots(figsize=(7.2, 0.7 * len(impls) + 1.4))
    for row, impl in enumerate(impls):
        left = 0.0
        for stage in STAGES:
            t = float(runs[impl]["stage_times"].get(stage, 0.0))
            ax.barh(row, t, left=left, color=STAGE_COLOURS[stage],
                    label=stage if row == 0 else None, height=0.6)
            left += t
        ax.text(left, row, f"  {left:.2f} s", va="center", fontsize=9)
    ax.set_yticks(range(len(impls)), [names[i] for i in impls])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Where the time goes (stage profile)", loc="left", fontweight="bold")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _svg(fig, plt)


_ANCHOR_STYLE = {"ANTs Mattes": ("#e15759", "--"), "greedy NMI": ("#59a14f", "-."),
                 "Baseline": ("#7f7f7f", ":")}


def _plot_study(rows, plt):
    """Mean Dice (± std) of every fastsyn setting, its direction means as dots,
    and the unmasked anchors and the baseline as horizontal lines."""
    runs = [r for r in rows if r["factor"] not in ("anchor", "baseline") and r["dice"]]
    fig, ax = plt.subplots(figsize=(max(6.2, 0.42 * len(runs) + 2.6), 4.2))
    x = np.arange(len(runs))
    for i, r in enumerate(runs):
        vals = [v for v in r["directions"].values() if v is not None]
        ax.scatter([i] * len(vals), vals, s=9, color="#9fb7d4", zorder=2,
                   label="direction mean" if i == 0 else None)
    ax.errorbar(x, [r["dice"]["mean"] for r in runs], yerr=[r["dice"]["std"] for r in runs],
                fmt="o", color="#4e79a7", capsize=3, zorder=3, label="fastsyn (mean ± std)")
    for r in rows:
        style = _ANCHOR_STYLE.get(r["name"])
        if style and r["dice"] and r["masks"] == "none":
            ax.axhline(r["dice"]["mean"], color=style[0], linestyle=style[1], linewidth=1.4,
                       label=f"{r['name']} {r['dice']['mean']:.3f}")
    ax.set_xticks(x, [r["name"] for r in runs], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("label Dice (mean over labels)")
    ax.set_title("MI study: Dice per setting", loc="left", fontweight="bold")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _svg(fig, plt)


# ---------------------------------------------------------- text formatting
# Jinja2 filters: each turns a number (or None) into the text of one cell.
def _fmt(value, digits=3, unit=""):
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(v):
        return "–"
    return f"{v:.{digits}f}{unit}"


def _diff(value):
    if value is None:
        return "–"
    return "0" if value == 0 else f"{float(value):.2g}"


def _seconds(value):
    if value is None:
        return "–"
    v = float(value)
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1e3:.1f} ms"
    return f"{v:.2f} s"


def _times(value):
    return "–" if not value else f"{float(value):.2f}×"


def _mean_std(stat, digits):
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _signed_percent(value):
    return f"{value:+.1%}"


def _signed(value, digits=3):
    return "–" if value is None else f"{float(value):+.{digits}f}"


def _blank_none(value):
    # Missing values print as empty cells, not as the text "None".
    return "" if value is None else value


# -------------------------------------------------------------------- pages
@functools.lru_cache(maxsize=1)
def _templates():
    """The Jinja2 environment of the report's templates, built once.

    The templates are package data of ``fastsyn.bench`` read through
    :mod:`importlib.resources` (a ``PackageLoader`` cannot see them in
    meson-python's editable installs).  Autoescaping is on for every template,
    so file names, labels and method names are always escaped; the only
    trusted markup (inline SVG plots) is marked ``|safe`` in the templates.
    """
    root = resources.files("fastsyn.bench") / "templates"

    def load(name):
        path = root
        for part in name.split("/"):
            path = path / part
        if not path.is_file():
            return None
        # (source, name shown in tracebacks, "still up to date?": package
        # data does not change while the process runs)
        return (path.read_text(encoding="utf-8"), f"fastsyn/bench/templates/{name}",
                lambda: True)

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), autoescape=True,
                             undefined=jinja2.StrictUndefined, finalize=_blank_none,
                             trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(number=_fmt, diff=_diff, seconds=_seconds, times=_times,
                       mean_std=_mean_std, signed_percent=_signed_percent,
                       signed=_signed)
    return env


def _speed_context(speed, plt):
    """Rows of the speed tables (plain values) and the speed-up plot."""
    if not speed or not speed.get("rows"):
        return None
    base = {r["case"]: r["median_s"] for r in speed["rows"] if r.get("impl") == "dipy"}
    impl_name = {"dipy": "stock DIPY", "fastsyn": "fastsyn", "ants": "ANTs",
                 "greedy": "greedy", "fastsyn-ants": "fastsyn ANTs mode"}
    rows = []
    for r in speed["rows"]:
        b = base.get(r["case"])
        impl = impl_name.get(r.get("impl"), r.get("impl"))
        if r.get("impl") in ("fastsyn", "fastsyn-ants"):
            impl += " serial" if int(r.get("threads") or 1) == 1 else " threaded"
        rows.append({"case": r["case"], "impl": impl, "threads": r.get("threads"),
                     "median_s": r.get("median_s"), "min_s": r.get("min_s"),
                     "max_s": r.get("max_s"), "peak_mem_mb": r.get("peak_mem_mb"),
                     "ratio": (b / r["median_s"]) if b and r.get("median_s") else None})
    baselines = {"dipy": "stock DIPY", "fastsyn-1": "fastsyn, 1 thread",
                 "fastsyn": "fastsyn default, same threads"}
    ratios = speed.get("ratios") or []
    plot = None
    if plt is not None and any(q.get("baseline") == "dipy" for q in ratios):
        plot = _plot_speedup_threads(ratios, plt)
    return {"rows": rows, "plot": plot,
            "ratios": [{"case": q["case"], "impl": q.get("impl"), "threads": q.get("threads"),
                        "baseline": baselines.get(q.get("baseline"), q.get("baseline")),
                        "speedup": float(q["speedup"])}
                       for q in ratios if q.get("speedup")]}


def _accuracy_dataset(ds, recs, plt, store=None):
    """Summary rows, plots and QC gallery of one dataset, and its headline
    entries."""
    from fastsyn.bench.gallery import gallery_context
    from fastsyn.bench.store import config_hash
    from fastsyn.bench.tables import summary_table

    rows = summary_table(recs, dataset=ds)
    # Per-pair values for the plots, keyed like the summary rows.
    labels = {(row["method"], config_hash(row["config"])): row["Method"] for row in rows}

    def label_of(rec):
        return labels.get((rec.get("method"), rec.get("config_hash")
                           or config_hash(rec.get("config") or {})))

    dice, names = {}, {}
    for rec in recs:
        label = label_of(rec)
        d = (rec.get("metrics") or {}).get("dice_mean")
        if rec.get("status") == "ok" and label is not None and d is not None:
            dice.setdefault(label, []).append(float(d))
            names.setdefault(label, []).append(rec.get("pair"))
    dice = {row["Method"]: dice[row["Method"]] for row in rows if row["Method"] in dice}
    gallery = (gallery_context(ds, recs, store, label_of, [row["Method"] for row in rows])
               if store is not None else {"cards": [], "outliers": [], "linked": {}})
    times = {row["Method"]: row["Time (s)"] for row in rows
             if row.get("Time (s)") and row.get("method") != "baseline"}
    headline = [(row["Method"], row["Label Dice"]["mean"],
                 (row.get("Time (s)") or {}).get("mean"))
                for row in rows if row.get("method") != "baseline" and row.get("Label Dice")]
    plots = []
    if plt is not None and dice:
        plots.append(_plot_dice_box(dice, plt, names, gallery["linked"]))
    if plt is not None and times:
        plots.append(_plot_time_bars(list(times), [t["mean"] for t in times.values()],
                                     [t["std"] for t in times.values()], plt))
    # which masks the methods were given (the Baseline is not registered)
    masks = sorted({str((row.get("config") or {}).get("masks", "none")) for row in rows
                    if row.get("method") != "baseline"})
    return {"name": ds, "rows": rows, "plots": plots, "masks": masks, "gallery": gallery,
            "n_pairs": len({r.get("pair") for r in recs}),
            "errors": sum(r.get("errors", 0) for r in rows)}, headline


def _accuracy_digits():
    """Decimals per accuracy column (3 unless the tables module says otherwise)."""
    from fastsyn.bench.tables import DIGITS

    return {col: DIGITS.get(col, 3) for col in ACCURACY_COLUMNS}


def _accuracy_context(records, plt, store=None):
    """One entry per dataset for the accuracy section (with its QC gallery,
    drawn from the tiles in ``store``), and the headline
    ``{dataset: [(label, mean Dice, mean time), ...]}``."""
    datasets, headline = [], {}
    for ds in sorted({r.get("dataset") for r in records if r.get("dataset")}):
        recs = [r for r in records if r.get("dataset") == ds]
        entry, best = _accuracy_dataset(ds, recs, plt, store)
        datasets.append(entry)
        if best:
            headline[ds] = best
    return datasets, headline


def _throughput_context(records):
    """Pairs per hour and cohort projections of each dataset (see
    :mod:`fastsyn.bench.throughput`)."""
    from fastsyn.bench.throughput import project_wall_time, throughput

    out = []
    for ds in sorted({r.get("dataset") for r in records if r.get("dataset")}):
        t = throughput(records, ds)
        if t is None:
            continue
        for row in t["rows"]:
            row["share_pct"] = None if row["share"] is None else 100 * row["share"]
        t["projection"] = project_wall_time(t["rows"][-1]["seconds"],
                                            threads=max(t["threads"] or [1]))
        out.append(t)
    return out


def _agreement_context(agreement):
    """The agreement with ANTs as plain rows: the means, then one row per
    pair, metric and method."""
    if not agreement or not agreement.get("records"):
        return None
    from fastsyn.bench.methods import METHODS

    def label(name):
        cls = METHODS.get(name)
        return cls.label if cls is not None else name

    summary = [dict(s, label=label(s.get("method"))) for s in agreement.get("summary") or []]
    rows = []
    for r in agreement["records"]:
        key = {"pair": r.get("pair"), "direction": r.get("direction"),
               "metric": str(r.get("metric", ""))}
        if "error" in r:
            rows.append(dict(key, label="–", error=r["error"]))
            continue
        entries = [(r["reference"].get("method"), r["reference"]),
                   *r.get("configs", {}).items()]
        for name, e in entries:
            dist = e.get("distance") or {}
            rows.append(dict(key, label=label(name), error=None, rms_mm=dist.get("rms_mm"),
                             p95_mm=dist.get("p95_mm"), dice=e.get("dice"),
                             tre_mean=e.get("tre_mean"), seconds=e.get("seconds")))
    return {"summary": summary, "rows": rows, "levels": agreement.get("levels") or [],
            "threads": agreement.get("threads"),
            "reference": label(agreement.get("reference", "ants"))}


def _scaling_contexts(results):
    """One scaling table per result (see :func:`_scaling_context`)."""
    return [c for c in map(_scaling_context, results) if c]


def _scaling_context(scaling):
    """Thread scaling rows keyed by thread count (JSON turns the keys into
    strings)."""
    if not scaling or not scaling.get("rows"):
        return None
    counts = [int(t) for t in scaling.get("threads", [])]

    def at(mapping, t):
        return (mapping or {}).get(str(t), (mapping or {}).get(t))

    rows = [{"case": r["case"],
             "cells": [(at(r["seconds"], t), at(r["speedup"], t), at(r["efficiency"], t))
                       for t in counts]} for r in scaling["rows"]]
    size = scaling.get("size")
    grid = (scaling.get("grid") or f"{size}^3").replace("^3", "³")
    return {"grid": grid, "note": scaling.get("note"), "cpus": scaling.get("cpus"),
            "headers": [f"{t} thread{'s' if t > 1 else ''}" for t in counts],
            "skipped": scaling.get("skipped") or [], "rows": rows}


#: What each table of :func:`_study_comparisons` shows.
_COMPARISON_NOTES = {
    "direction": "Paired Dice difference of the default against each anchor: mean over "
                 "the pairs of a direction, [Student-t 95 % interval] where a direction "
                 "has two pairs or more, and the pairs where fastsyn's Dice is higher. An "
                 "interval that holds 0 is a difference these pairs cannot tell from the "
                 "spread between pairs.",
    "label": "The same, label by label over every pair: which labels a difference "
             "comes from.",
}


def _study_comparisons(default):
    """The default row's paired comparisons with the anchors, by direction
    and by label (those that exist), each with its note."""
    from fastsyn.bench.study import anchor_comparison

    if default is None:
        return []
    out = []
    for by, note in _COMPARISON_NOTES.items():
        table = anchor_comparison(default, by)
        if table is not None:
            out.append({"note": note, "table": table})
    return out


def _study_context(results_dir, plt):
    """Each MI study of the results folder: its plan, rows and plot."""
    if not results_dir:
        return []
    from fastsyn.bench.study import default_row, not_run, read_plans, summarize

    out = []
    for plan in read_plans(results_dir):
        rows = summarize(plan, results_dir)
        planned = not_run(rows)
        rows = [r for r in rows if r["name"] not in planned]
        directions = list(rows[0]["directions"]) if rows else []
        out.append({"data": plan["data"], "levels": plan["levels"],
                    "threads": plan["threads"], "n_pairs": len(plan["pairs"]),
                    "seed": plan["seed"], "directions": directions, "rows": rows,
                    "half": plan.get("half"), "pairs_with": plan.get("pairs_with") or [],
                    "defaults": plan.get("defaults") or {},
                    "not_run": planned, "comparisons": _study_comparisons(default_row(rows)),
                    "not_studied": plan.get("not_studied") or [],
                    "unavailable": plan.get("unavailable") or {},
                    "plot": _plot_study(rows, plt) if plt is not None and any(
                        r["dice"] for r in rows) else None})
    return out


def _profile_context(profile, plt):
    """The stage profile as plain values, with its plot."""
    if not profile or not profile.get("runs"):
        return None
    runs = profile["runs"]
    lines = [(impl, [{"function": r.get("function"),
                      "location": f"{r.get('file')}:{r.get('line')}",
                      "hits": r.get("hits"), "time_s": r.get("time_s"),
                      "source": r.get("source")} for r in prof.get("lines", [])[:12]])
             for impl, prof in (profile.get("line_profile") or {}).items()]
    return {"pair": profile.get("pair"), "shape": profile.get("shape") or [],
            "metric": str(profile.get("metric", "")).upper(),
            "levels": profile.get("levels") or [], "threads": profile.get("threads"),
            "fast": runs.get("fastsyn"), "stock": runs.get("dipy"),
            "stages": [*STAGES, "total"], "speedup": profile.get("speedup") or {},
            "plot": _plot_stage_profile(profile, plt) if plt is not None else None,
            "line_profile": lines}


def _pytest_context(bench):
    """The newest pytest-benchmark save with the file names shown."""
    if not bench:
        return None
    prev = bench.get("previous_file")
    return dict(bench, file_name=Path(bench["file"]).name,
                commit=str(bench["commit"]) if bench.get("commit") else None,
                previous_name=Path(prev).name if prev else None)


def _headline_cards(speed, kernel_rows, headline, profile):
    """``(value, label)`` texts of the cards at the top of the page."""
    cards = []
    for q in (speed or {}).get("ratios") or []:
        if q.get("baseline") == "dipy" and str(q.get("case", "")).startswith("SyN"):
            cards.append((f"{q['speedup']:.2f}×",
                          f"{q['case']}: fastsyn {q['threads']} thr vs stock DIPY"))
    if not cards and profile and (profile.get("speedup") or {}).get("total"):
        label = (f"SyN {str(profile.get('metric', '')).upper()} on "
                 f"{profile.get('pair')}: fastsyn vs stock DIPY (profile)")
        cards.append((f"{profile['speedup']['total']:.2f}×", label))
    if kernel_rows:
        ok = sum(1 for r in kernel_rows if r["bitwise_equal"])
        cards.append((f"{ok}/{len(kernel_rows)}", "kernels bitwise equal, serial vs threaded"))
    for ds, items in headline.items():
        best = max(items, key=lambda x: x[1])
        cards.append((f"{best[1]:.3f}", f"best label Dice on {ds} ({best[0]})"))
    return cards[:8]


def _read_json(path, what):
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file {p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {p} is not valid JSON: {exc}") from exc


def _find_input(given, name, folders):
    """``given``, else the first ``folder/name`` that exists (or None)."""
    if given is not None:
        return given
    return next((d / name for d in folders if (d / name).is_file()), None)


def _scaling_inputs(given, folders):
    """Scaling JSON files: those given (a path or a sequence of paths), else
    ``scaling.json`` and ``scaling-*.json`` of the first folder holding any."""
    if isinstance(given, str):
        given = [p for p in given.split(",") if p]
    if given is not None:
        return [given] if isinstance(given, Path) else list(given)
    for d in folders:
        found = sorted(d.glob("scaling-*.json"))
        if (d / "scaling.json").is_file():
            found.insert(0, d / "scaling.json")
        if found:
            return found
    return []


def _render_page(results_dir, out_dir, speed_json=None, profile_json=None,
                  benchmark_json_dir=".benchmarks", *, check_equivalence=True,
                  title="fastsyn benchmark report", agreement_json=None, roofline_json=None,
                  scaling_json=None):
    """The report page as text (see :func:`write_report` for the parameters)."""
    out_dir = Path(out_dir)
    search = [Path(results_dir)] if results_dir else []
    search.append(out_dir)
    speed = _read_json(_find_input(speed_json, "speed.json", search), "speed")
    profile = _read_json(_find_input(profile_json, "profile.json", search), "profile")
    agreement = _read_json(_find_input(agreement_json, "agreement.json", search), "agreement")
    roofline = _read_json(_find_input(roofline_json, "roofline.json", search), "roofline")
    scaling = [_read_json(p, "scaling") for p in _scaling_inputs(scaling_json, search)]
    gate = _read_json(_find_input(None, "gate.json", search), "gate")
    selftest = _read_json(_find_input(None, "selftest.json", search), "selftest")
    records, store = [], None
    if results_dir and Path(results_dir).is_dir():
        from fastsyn.bench.store import ResultStore

        store = ResultStore(results_dir)
        records = store.records()

    from fastsyn.bench.gallery import OUTLIER_SD

    plt = _plt()
    env = collect_environment()
    kernel_rows = equivalence_check() if check_equivalence else []
    datasets, headline = _accuracy_context(records, plt, store)
    speed_env = (speed or {}).get("environment")
    # None outside a git work tree (an installed package)
    git = {"commit": None, "dirty": False, **(env.get("git") or {})}
    return _templates().get_template("report.html").render(
        title=title, env=env, git=git, commit=(git["commit"] or "")[:12],
        speed_run=None if not speed_env else ", ".join(
            f"{k}={v}" for k, v in speed_env.items() if not isinstance(v, (dict, list))),
        cards=_headline_cards(speed, kernel_rows, headline, profile),
        speed=_speed_context(speed, plt),
        kernel_rows=kernel_rows, agreement=_thread_agreement(records),
        accuracy_columns=list(ACCURACY_COLUMNS), accuracy_digits=_accuracy_digits(),
        datasets=datasets, outlier_sd=f"{OUTLIER_SD:g}",
        throughput=_throughput_context(records),
        profile=_profile_context(profile, plt),
        agreement_ants=_agreement_context(agreement),
        roofline=roofline, scaling=_scaling_contexts(scaling),
        studies=_study_context(results_dir, plt),
        bench=_pytest_context(latest_pytest_benchmarks(benchmark_json_dir)),
        asv=(out_dir / "asv" / "index.html").is_file(), gate=gate, selftest=selftest,
        have_plots=plt is not None)


def write_report(results_dir, out_dir, speed_json=None, profile_json=None,
                 benchmark_json_dir=".benchmarks", *, check_equivalence=True,
                 title="fastsyn benchmark report", agreement_json=None, roofline_json=None,
                 scaling_json=None):
    """Write ``out_dir/index.html``.

    Parameters
    ----------
    results_dir : str or Path or None
        The results store of ``fastsyn bench run`` (may be empty or missing).
    out_dir : str or Path
        Folder of the report (created).  A ``asv/`` folder inside it (from
        ``asv publish``) is linked.
    speed_json : str or Path, optional
        Output of ``fastsyn bench speed``.  When omitted, ``speed.json`` in
        ``results_dir`` or ``out_dir`` is used if present.
    profile_json : str or Path, optional
        Output of ``fastsyn profile``.  When omitted, ``profile.json`` in
        ``results_dir`` or ``out_dir`` is used if present.
    benchmark_json_dir : str or Path, optional
        pytest-benchmark's storage folder.
    check_equivalence : bool, optional
        Run the serial/threaded kernel check (about a second) for the
        equivalence table.
    title : str, optional
        Page title.
    agreement_json : str or Path, optional
        Output of ``fastsyn bench agreement``.  When omitted,
        ``agreement.json`` in ``results_dir`` or ``out_dir`` is used if
        present.
    roofline_json : str or Path, optional
        Output of ``fastsyn bench roofline`` (default: ``roofline.json``
        beside the results).
    scaling_json : str, Path or sequence of them, optional
        Outputs of ``fastsyn bench scaling``, a table each (default:
        ``scaling.json`` and ``scaling-*.json`` beside the results).

    Returns
    -------
    Path
        The written ``index.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = _render_page(results_dir, out_dir, speed_json, profile_json, benchmark_json_dir,
                        check_equivalence=check_equivalence, title=title,
                        agreement_json=agreement_json, roofline_json=roofline_json,
                        scaling_json=scaling_json)
    page = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, page)
    return page


def main_report(args):
    """Entry point of ``fastsyn report``.

    Parameters
    ----------
    args : argparse.Namespace
        ``results``, ``out`` and optionally ``speed``, ``profile``,
        ``agreement``, ``benchmarks`` (pytest-benchmark folder).

    Returns
    -------
    int
        Exit status.
    """
    page = write_report(getattr(args, "results", None), args.out,
                        speed_json=getattr(args, "speed", None),
                        profile_json=getattr(args, "profile", None),
                        agreement_json=getattr(args, "agreement", None),
                        roofline_json=getattr(args, "roofline", None),
                        scaling_json=getattr(args, "scaling", None),
                        benchmark_json_dir=getattr(args, "benchmarks", None) or ".benchmarks")
    print(f"report written to {page}")
    print(f"open it with: xdg-open {page.resolve()}  (or file://{page.resolve()})")
    return 0
