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
  Jaccard | Time (s)`` (mean ± std), a box plot of label Dice per method and a
  bar plot of time per method;
* the stage profile of ``fastsyn profile`` (table, stacked bars, busiest lines);
* the newest pytest-benchmark run under ``.benchmarks/`` compared with the one
  before it;
* a link to the asv pages (``asv publish`` writes them to ``reports/asv/``).

The page needs no network: the style sheet is inline and the plots are inline
SVG drawn with matplotlib (a page without plots is written when matplotlib is
missing).
"""

import datetime as _dt
import html
import io
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

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
PACKAGES = ("fastsyn", "dipy", "numpy", "scipy", "nibabel", "nilearn", "matplotlib",
            "antspyx", "picsl-greedy", "line-profiler", "pytest-benchmark", "asv", "dask")
ACCURACY_COLUMNS = ("NCC", "NMI", "Label Dice", "Label Jaccard", "Time (s)")


# -------------------------------------------------------------- environment
def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(start=None):
    """Commit (and dirty flag) of the git work tree holding ``start``."""
    start = Path(start or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True,
                             text=True, timeout=10, check=False)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=start, capture_output=True, text=True, timeout=10,
                               check=False)
        return {"commit": commit, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def collect_environment():
    """Describe the machine and software the measurements ran on.

    Returns
    -------
    dict
        ``cpu``, ``cores`` (logical CPUs), ``cores_usable`` (CPU affinity),
        ``threads_all`` (what ``num_threads=-1`` resolves to),
        ``omp_num_threads``, ``python``, ``platform``, ``packages``
        (installed versions), ``git`` (commit and dirty flag, or None) and
        ``timestamp``.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        import fastsyn

        threads_all = fastsyn.resolve_num_threads(-1)
    except Exception:  # noqa: BLE001 - a broken build must not stop the report
        threads_all = usable
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "threads_all": threads_all,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git": _git_commit(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
    }


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
    from dipy.align import metrics as dipy_metrics
    from dipy.align import vector_fields as vf
    from scipy import ndimage

    import fastsyn
    from fastsyn import fields

    n = threads or max(2, fastsyn.resolve_num_threads(-1))
    shape = (size, size + 3, size + 1)
    rng = np.random.default_rng(0)

    def smooth(channels, amplitude):
        out = []
        for _ in range(channels):
            c = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
            out.append(c * amplitude / np.abs(c).max())
        return np.stack(out, axis=-1) if channels > 1 else out[0]

    base = {"d1": smooth(3, 2.0), "d2": smooth(3, 2.0), "img": smooth(1, 50.0) + 50.0,
            "img2": smooth(1, 50.0) + 50.0}
    eye, ones = np.eye(4), np.ones(3)

    def cc(metric, a, b):
        metric.set_static_image(a, eye, ones, eye)
        metric.set_moving_image(b, eye, ones, eye)
        metric.initialize_iteration()
        return np.concatenate([metric.compute_forward().ravel(),
                               metric.compute_backward().ravel()])

    def cases(dt):
        d1, d2 = base["d1"].astype(dt), base["d2"].astype(dt)
        img, img2 = base["img"].astype(dt), base["img2"].astype(dt)
        stock_cc = None
        if dt == np.float32:
            def stock_cc():
                return cc(dipy_metrics.CCMetric(3), img, img2)
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
            ("CC steps", lambda t: cc(fastsyn.CCMetric(3, num_threads=t), img, img2),
             stock_cc),
        ]

    rows = []
    for dt in (np.float32, np.float64):
        for name, ours, stock in cases(dt):
            row = {"kernel": name, "dtype": np.dtype(dt).name, "threads": n,
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
            rows.append(row)
    return rows


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


def _plot_dice_box(groups, plt):
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
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel("label Dice (mean over labels, per pair)")
    ax.set_title("Label Dice per method", loc="left", fontweight="bold")
    return _svg(fig, plt)


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


# --------------------------------------------------------------------- HTML
CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#2f6fb3;
        --bg:#ffffff; --soft:#f5f7fa; --good:#1e7b46; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--ink);
       font:15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       "DejaVu Sans", sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 32px 64px; background:var(--bg);
       min-height:100vh; box-shadow:0 0 0 1px var(--line); }
header h1 { font-size:28px; margin:0 0 4px; letter-spacing:-0.01em; }
header p { margin:0; color:var(--muted); }
h2 { font-size:20px; margin:40px 0 12px; padding-bottom:6px;
     border-bottom:2px solid var(--line); }
h3 { font-size:16px; margin:24px 0 8px; }
p.note, .note { color:var(--muted); font-size:13px; }
nav { margin:18px 0 8px; display:flex; flex-wrap:wrap; gap:6px 14px; font-size:14px; }
a { color:var(--accent); text-decoration:none; }
a:hover { text-decoration:underline; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(190px, 1fr));
         gap:12px; margin:20px 0 4px; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px;
        background:linear-gradient(180deg, #fff, #fafbfc); }
.card .value { font-size:24px; font-weight:650; font-variant-numeric:tabular-nums; }
.card .label { font-size:12.5px; color:var(--muted); }
.table-wrap { overflow-x:auto; margin:8px 0 12px; }
table { border-collapse:collapse; width:100%; font-size:13.5px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left;
         vertical-align:top; }
th { background:var(--soft); font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tbody tr:nth-child(even) td { background:#fbfcfd; }
tbody tr:hover td { background:#eef4fb; }
.ok { color:var(--good); font-weight:600; }
.fail { color:var(--bad); font-weight:600; }
.plots { display:grid; grid-template-columns:repeat(auto-fit, minmax(420px, 1fr));
         gap:16px; margin:8px 0; }
figure { margin:0; border:1px solid var(--line); border-radius:8px; padding:10px;
         background:#fff; }
figure svg { width:100%; height:auto; display:block; }
.plots figure:only-child { max-width:720px; }
dl.env { display:grid; grid-template-columns:max-content 1fr; gap:4px 18px;
         font-size:14px; margin:0; }
dl.env dt { color:var(--muted); }
dl.env dd { margin:0; font-variant-numeric:tabular-nums; }
code, pre { font-family:"SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
            font-size:12.5px; }
pre { background:var(--soft); padding:10px 12px; border-radius:6px; overflow-x:auto; }
details { margin:8px 0; }
summary { cursor:pointer; color:var(--accent); }
footer { margin-top:48px; color:var(--muted); font-size:12.5px; }
"""


def _e(value):
    return html.escape("" if value is None else str(value))


def _fmt(value, digits=3, unit=""):
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _e(value)
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


def _table(headers, rows, numeric=()):
    """HTML table; ``rows`` hold already-escaped cell HTML."""
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _figure(svg, caption=None):
    cap = f"<figcaption class='note'>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def _section_environment(env, speed_env):
    pk = env.get("packages") or {}
    git = env.get("git") or {}
    commit = git.get("commit")
    commit_text = (f"<code>{_e(commit[:12])}</code>" + (" (uncommitted changes)"
                                                        if git.get("dirty") else "")
                   if commit else "–")
    items = [
        ("CPU", _e(env.get("cpu"))),
        ("Cores", f"{_e(env.get('cores'))} logical, {_e(env.get('cores_usable'))} usable"),
        ("Threads (all CPUs)", _e(env.get("threads_all"))),
        ("OMP_NUM_THREADS", _e(env.get("omp_num_threads") or "unset")),
        ("Python", _e(env.get("python"))),
        ("Platform", _e(env.get("platform"))),
        ("Git commit", commit_text),
        ("Report written", _e(env.get("timestamp"))),
    ]
    if speed_env:
        items.append(("Speed run", _e(", ".join(
            f"{k}={v}" for k, v in speed_env.items() if not isinstance(v, (dict, list))))))
    env_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    pk_rows = [[_e(name), _e(ver) if ver else "<span class='note'>not installed</span>"]
               for name, ver in pk.items()]
    return ("<h2 id='environment'>Environment</h2>"
            f"<div class='plots'><div><dl class='env'>{env_html}</dl></div>"
            f"<div>{_table(['Package', 'Version'], pk_rows)}</div></div>")


def _section_speed(speed, plt):
    out = ["<h2 id='speed'>Speed</h2>"]
    if not speed or not speed.get("rows"):
        out.append("<p class='note'>No speed results. Run <code>fastsyn bench speed "
                   "--out speed.json</code> and pass <code>--speed speed.json</code>.</p>")
        return "".join(out)
    rows = speed["rows"]
    base = {r["case"]: r["median_s"] for r in rows if r.get("impl") == "dipy"}
    impl_name = {"dipy": "stock DIPY", "fastsyn": "fastsyn", "ants": "ANTs",
                 "greedy": "greedy"}
    table = []
    for r in rows:
        b = base.get(r["case"])
        ratio = (b / r["median_s"]) if b and r.get("median_s") else None
        impl = impl_name.get(r.get("impl"), r.get("impl"))
        if r.get("impl") == "fastsyn":
            impl += " serial" if int(r.get("threads") or 1) == 1 else " threaded"
        table.append([_e(r["case"]), _e(impl), _e(r.get("threads")),
                      _seconds(r.get("median_s")), _seconds(r.get("min_s")),
                      _seconds(r.get("max_s")), _fmt(r.get("peak_mem_mb"), 0),
                      "–" if ratio is None else f"{ratio:.2f}×"])
    out.append("<p class='note'>Medians over interleaved repeats, in one run; the ratio is "
               "stock DIPY's median ÷ this row's median.</p>")
    out.append(_table(["Case", "Implementation", "Threads", "Median", "Min", "Max",
                       "Peak MB", "vs DIPY"], table, numeric={2, 3, 4, 5, 6, 7}))
    ratios = speed.get("ratios") or []
    if ratios:
        rrows = [[_e(q["case"]), _e(q.get("impl")), _e(q.get("threads")),
                  _e({"dipy": "stock DIPY", "fastsyn-1": "fastsyn, 1 thread"}.get(
                      q.get("baseline"), q.get("baseline"))),
                  f"{float(q['speedup']):.2f}×"] for q in ratios if q.get("speedup")]
        out.append("<h3>Speed-up ratios</h3>")
        out.append(_table(["Case", "Implementation", "Threads", "Baseline", "Speed-up"],
                          rrows, numeric={2, 4}))
        if plt is not None and any(q.get("baseline") == "dipy" for q in ratios):
            out.append(f"<div class='plots'>{_figure(_plot_speedup_threads(ratios, plt))}"
                       "</div>")
    return "".join(out)


def _section_equivalence(kernel_rows, agreement):
    out = ["<h2 id='equivalence'>Equivalence</h2>"]
    if kernel_rows:
        n = kernel_rows[0]["threads"]
        out.append(f"<p class='note'>Each kernel run with 1 and with {n} threads on random "
                   "smooth 3D inputs when this report was written. Serial and threaded "
                   "results must be bitwise equal; the difference from the stock twin is "
                   "floating-point rounding (tolerances are stated in "
                   "<code>tests/test_kernels.py</code>).</p>")
        rows = []
        for r in kernel_rows:
            if r["error"]:
                verdict = f"<span class='fail'>error</span> {_e(r['error'])}"
            elif r["bitwise_equal"]:
                verdict = "<span class='ok'>bitwise equal</span>"
            else:
                verdict = "<span class='fail'>differs</span>"
            rows.append([_e(r["kernel"]), _e(r["dtype"]), verdict,
                         _diff(r["max_abs_diff_threads"]), _diff(r["max_abs_diff_dipy"])])
        out.append(_table(["Kernel", "dtype", f"1 vs {n} threads", "max |serial − threaded|",
                           "max |fastsyn − DIPY|"], rows, numeric={3, 4}))
    if agreement:
        rows = [[_e(a["dataset"]), _e(a["method"]), _e(a["metric"]),
                 _e(", ".join(map(str, a["threads"]))),
                 f"{a['identical']} / {a['pairs']}",
                 _diff(a["max_diff"])]
                for a in agreement]
        out.append("<h3>Registrations at several thread counts</h3>")
        out.append(_table(["Dataset", "Method", "Metric", "Threads", "Identical measures",
                           "Largest difference"], rows, numeric={4, 5}))
    if not kernel_rows and not agreement:
        out.append("<p class='note'>No equivalence data.</p>")
    return "".join(out)


def _cell(stat, digits):
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _section_accuracy(records, plt):
    from fastsyn.bench.store import config_hash
    from fastsyn.bench.tables import summary_table

    out = ["<h2 id='accuracy'>Accuracy</h2>"]
    datasets = sorted({r.get("dataset") for r in records if r.get("dataset")})
    if not datasets:
        out.append("<p class='note'>No records in the results folder. Run "
                   "<code>fastsyn bench run ... --results DIR</code> first.</p>")
        return "".join(out), {}
    headline = {}
    for ds in datasets:
        recs = [r for r in records if r.get("dataset") == ds]
        rows = summary_table(recs, dataset=ds)
        n_pairs = len({r.get("pair") for r in recs})
        errors = sum(r.get("errors", 0) for r in rows)
        out.append(f"<h3 id='acc-{_e(ds)}'>{_e(ds)}</h3>")
        out.append(f"<p class='note'>{n_pairs} pair(s)"
                   + (f", {errors} failed run(s) not counted" if errors else "")
                   + ". Cells are mean ± std over pairs; time is the deformable stage "
                   "only.</p>")
        trows = []
        for row in rows:
            cells = [_e(row["Method"])]
            for col in ACCURACY_COLUMNS:
                cells.append(_cell(row.get(col), 2 if col == "Time (s)" else 3))
            cells.append(_e(row.get("n")))
            trows.append(cells)
        out.append(_table(("Method",) + ACCURACY_COLUMNS + ("n",), trows,
                          numeric={1, 2, 3, 4, 5, 6}))
        # Per-pair values for the plots, keyed like the summary rows.
        label_of = {(row["method"], config_hash(row["config"])): row["Method"]
                    for row in rows}
        dice, times = {}, {}
        for rec in recs:
            if rec.get("status") != "ok":
                continue
            key = (rec.get("method"), rec.get("config_hash")
                   or config_hash(rec.get("config") or {}))
            label = label_of.get(key)
            if label is None:
                continue
            d = (rec.get("metrics") or {}).get("dice_mean")
            if d is not None:
                dice.setdefault(label, []).append(float(d))
        for row in rows:
            t = row.get("Time (s)")
            if t and row.get("method") != "baseline":
                times[row["Method"]] = (t["mean"], t["std"])
        order = [row["Method"] for row in rows]
        dice = {k: dice[k] for k in order if k in dice}
        for row in rows:
            if row.get("method") != "baseline" and row.get("Label Dice"):
                headline.setdefault(ds, []).append((row["Method"], row["Label Dice"]["mean"],
                                                    (row.get("Time (s)") or {}).get("mean")))
        if plt is not None and (dice or times):
            figs = []
            if dice:
                figs.append(_figure(_plot_dice_box(dice, plt)))
            if times:
                labels = list(times)
                figs.append(_figure(_plot_time_bars(labels, [times[k][0] for k in labels],
                                                    [times[k][1] for k in labels], plt)))
            out.append(f"<div class='plots'>{''.join(figs)}</div>")
    return "".join(out), headline


def _section_profile(profile, plt):
    out = ["<h2 id='profile'>Stage profile</h2>"]
    if not profile or not profile.get("runs"):
        out.append("<p class='note'>No profile. Run <code>fastsyn profile --out "
                   "profile.json</code> and pass <code>--profile profile.json</code>.</p>")
        return "".join(out)
    runs = profile["runs"]
    fast, stock = runs.get("fastsyn"), runs.get("dipy")
    shape = "×".join(str(s) for s in profile.get("shape") or [])
    out.append(f"<p class='note'>One SyN registration of <b>{_e(profile.get('pair'))}</b> "
               f"({_e(shape)}), metric {_e(str(profile.get('metric', '')).upper())}, levels "
               f"{_e('/'.join(map(str, profile.get('levels') or [])))}; fastsyn on "
               f"{_e(profile.get('threads'))} thread(s), stock DIPY serial.</p>")
    def cells(run, stage):
        if run is None:
            return ["–", "–"]
        if stage == "total":
            return [_fmt(run["total_s"], 3), "100%"]
        return [_fmt(run["stage_times"].get(stage), 3),
                _fmt(100 * run["share"].get(stage, 0.0), 1, "%")]

    rows = []
    for stage in [*STAGES, "total"]:
        sp = (profile.get("speedup") or {}).get(stage)
        row = [f"<b>{stage}</b>" if stage == "total" else _e(stage), *cells(fast, stage)]
        if stock is not None:
            row += [*cells(stock, stage), "–" if not sp else f"{sp:.2f}×"]
        rows.append(row)
    headers = ["Stage", "fastsyn (s)", "share"]
    if stock is not None:
        headers += ["DIPY (s)", "share", "speed-up"]
    out.append(_table(headers, rows, numeric=set(range(1, len(headers)))))
    if plt is not None:
        out.append(f"<div class='plots'>{_figure(_plot_stage_profile(profile, plt))}</div>")
    lines = profile.get("line_profile") or {}
    for impl, prof in lines.items():
        lrows = [[_e(r.get("function")), _e(f"{r.get('file')}:{r.get('line')}"),
                  _e(r.get("hits")), _fmt(r.get("time_s"), 4),
                  f"<code>{_e(r.get('source'))}</code>"] for r in prof.get("lines", [])[:12]]
        out.append(f"<details><summary>Busiest lines: {_e(impl)} (line_profiler)</summary>"
                   + _table(["Function", "Line", "Hits", "Time (s)", "Source"], lrows,
                            numeric={2, 3})
                   + "</details>")
    return "".join(out)


def _section_pytest(bench):
    out = ["<h2 id='pytest-benchmark'>pytest-benchmark</h2>"]
    if not bench:
        out.append("<p class='note'>No saved pytest-benchmark runs. Run <code>tox -e "
                   "bench</code> (or <code>pytest tests/test_benchmarks.py "
                   "--benchmark-enable --benchmark-only --benchmark-autosave</code>).</p>")
        return "".join(out)
    prev = bench.get("previous_file")
    out.append(f"<p class='note'>Newest save <code>{_e(Path(bench['file']).name)}</code>"
               + (f" ({_e(bench['datetime'])})" if bench.get("datetime") else "")
               + (f", commit <code>{_e(str(bench['commit'])[:12])}</code>"
                  if bench.get("commit") else "")
               + (f"; change of the median against <code>{_e(Path(prev).name)}</code>."
                  if prev else "; no earlier save to compare with.") + "</p>")
    rows = []
    for r in bench["rows"]:
        ch = r.get("change")
        if ch is None:
            change = "–"
        else:
            cls = "fail" if ch > 0.10 else ("ok" if ch < -0.10 else "")
            change = f"<span class='{cls}'>{ch:+.1%}</span>"
        rows.append([_e(r["group"]), _e(r["name"]), _seconds(r.get("median_s")),
                     _seconds(r.get("min_s")), _seconds(r.get("stddev_s")),
                     _e(r.get("rounds")), change])
    out.append(_table(["Group", "Benchmark", "Median", "Min", "Std dev", "Rounds",
                       "Median change"], rows, numeric={2, 3, 4, 5, 6}))
    return "".join(out)


def _section_asv(out_dir):
    out = ["<h2 id='asv'>History (asv)</h2>"]
    if (Path(out_dir) / "asv" / "index.html").is_file():
        out.append("<p>The benchmark history across commits: "
                   "<a href='asv/index.html'>open the asv pages</a>.</p>")
    else:
        out.append("<p class='note'>No asv pages yet. Run <code>asv run HEAD~5..HEAD</code> "
                   "then <code>asv publish</code> (writes <code>reports/asv/</code>) and "
                   "write this report again.</p>")
    return "".join(out)


def _headline_cards(speed, kernel_rows, headline, profile):
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
    if not cards:
        return ""
    inner = "".join(f"<div class='card'><div class='value'>{_e(v)}</div>"
                    f"<div class='label'>{_e(label)}</div></div>" for v, label in cards[:8])
    return f"<div class='cards'>{inner}</div>"


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


def write_report(results_dir, out_dir, speed_json=None, profile_json=None,
                 benchmark_json_dir=".benchmarks", *, check_equivalence=True,
                 title="fastsyn benchmark report"):
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

    Returns
    -------
    Path
        The written ``index.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search = [Path(results_dir)] if results_dir else []
    search.append(out_dir)
    if speed_json is None:
        speed_json = next((d / "speed.json" for d in search if (d / "speed.json").is_file()),
                          None)
    if profile_json is None:
        profile_json = next((d / "profile.json" for d in search
                             if (d / "profile.json").is_file()), None)
    speed = _read_json(speed_json, "speed")
    profile = _read_json(profile_json, "profile")

    records = []
    if results_dir and Path(results_dir).is_dir():
        from fastsyn.bench.store import ResultStore

        records = ResultStore(results_dir).records()

    plt = _plt()
    env = collect_environment()
    kernel_rows = equivalence_check() if check_equivalence else []
    agreement = _thread_agreement(records)
    bench = latest_pytest_benchmarks(benchmark_json_dir)
    acc_html, headline = _section_accuracy(records, plt)

    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (
        ("environment", "Environment"), ("speed", "Speed"), ("equivalence", "Equivalence"),
        ("accuracy", "Accuracy"), ("profile", "Stage profile"),
        ("pytest-benchmark", "pytest-benchmark"), ("asv", "History (asv)")))
    commit = ((env.get("git") or {}).get("commit") or "")[:12]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1><p>fastsyn {_e(env['packages'].get('fastsyn'))}"
        f" on DIPY {_e(env['packages'].get('dipy'))}"
        + (f" · commit <code>{_e(commit)}</code>" if commit else "")
        + f" · {_e(env['timestamp'])}</p></header>",
        _headline_cards(speed, kernel_rows, headline, profile),
        f"<nav>{nav}</nav>",
        _section_environment(env, (speed or {}).get("environment")),
        _section_speed(speed, plt),
        _section_equivalence(kernel_rows, agreement),
        acc_html,
        _section_profile(profile, plt),
        _section_pytest(bench),
        _section_asv(out_dir),
        "<footer>Written by <code>fastsyn report</code>. Self-contained: no network "
        "resources." + ("" if plt else " matplotlib is not installed: plots omitted.")
        + "</footer></main></body></html>",
    ]
    page = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text("".join(parts), encoding="utf-8")
    os.replace(tmp, page)
    return page


def main_report(args):
    """Entry point of ``fastsyn report``.

    Parameters
    ----------
    args : argparse.Namespace
        ``results``, ``out`` and optionally ``speed``, ``profile``,
        ``benchmarks`` (pytest-benchmark folder).

    Returns
    -------
    int
        Exit status.
    """
    page = write_report(getattr(args, "results", None), args.out,
                        speed_json=getattr(args, "speed", None),
                        profile_json=getattr(args, "profile", None),
                        benchmark_json_dir=getattr(args, "benchmarks", None) or ".benchmarks")
    print(f"report written to {page}")
    print(f"open it with: xdg-open {page.resolve()}  (or file://{page.resolve()})")
    return 0
