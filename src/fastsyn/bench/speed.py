"""``fastsyn bench speed``: stock DIPY against fastsyn, side by side.

Every case is timed for stock DIPY, fastsyn on one thread and fastsyn on all
threads, interleaved round by round (A, B, C, A, B, C, ...) so that drift of
a shared machine hits all of them alike; medians and the ratios of medians
are reported.  Kernels run in this process (peak memory from tracemalloc,
which sees NumPy's allocations); end-to-end registrations run one per fresh
subprocess, and their peak resident memory is counted from the start of the
registration (the process's high-water mark is reset once the input pair is
built), so that it can be compared honestly.

fastsyn's ANTs mode (:func:`fastsyn.ants_like`: ANTs' pyramid, ITK's update
smoothing, ANTs' convergence test) is timed end to end on every thread count
in the same rounds, with its speed relative to the default configuration on
the same threads (below 1: the ANTs mode is slower).
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from fastsyn.bench.machine import cpu_model, git_commit, timestamp
from fastsyn.bench.store import write_json

__all__ = ["MEMORY_TARGETS", "TIME_TARGETS", "grid_label", "grid_pair", "grid_shape",
           "main_speed", "make_field", "make_pair", "parse_grid", "run_speed",
           "speed_command", "target_checks", "thread_counts"]

#: Implementation name of fastsyn's ANTs mode in rows and ratios.
ANTS_MODE = "fastsyn-ants"

#: Sizes and SyN levels of ``quick`` runs.
QUICK_SIZE = 64
QUICK_LEVELS = (4, 4, 2)


# ------------------------------------------------------------------- inputs
def make_field(shape, *, amplitude=3.0, seed=0, dtype=np.float32):
    """A smooth random displacement field (deterministic)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    dim = len(shape)
    coarse = [max(2, s // 8) for s in shape]
    field = np.empty(tuple(shape) + (dim,), dtype=np.float64)
    for c in range(dim):
        comp = ndimage.zoom(rng.standard_normal(coarse), [s / k for s, k in zip(shape, coarse)],
                            order=3)[tuple(slice(0, s) for s in shape)]
        field[..., c] = comp * (amplitude / (np.abs(comp).max() + 1e-12))
    return np.ascontiguousarray(field.astype(dtype))


def make_pair(size=128, *, seed=0, resolution=None):
    """A T1 pair from nilearn's MNI152 template and a smooth warp.

    Parameters
    ----------
    size : int, optional
        Longest edge, in voxels, of the brain's bounding box (the template is
        cropped to it and zoomed); ignored when ``resolution`` is given.
    seed : int, optional
        Seed of the warp.
    resolution : float, optional
        Voxel size in mm of the whole, uncropped template grid (1 gives the
        1 mm MNI152 grid, 197 x 233 x 189 voxels): a real brain size.

    Returns
    -------
    static, moving : ndarray (float32)
    affine : ndarray, shape (4, 4)
        The grid-to-world affine (isotropic voxels).
    """
    from nilearn.datasets import load_mni152_template
    from scipy import ndimage

    template = load_mni152_template(resolution=1)
    data = np.asarray(template.get_fdata(), dtype=np.float32)
    if resolution is None:
        nz = np.argwhere(data > 0)
        lo, hi = nz.min(0), nz.max(0) + 1
        data = data[tuple(slice(a, b) for a, b in zip(lo, hi))]
        zoom = size / max(data.shape)
    else:
        zoom = 1.0 / float(resolution)
    static = data if zoom == 1.0 else ndimage.zoom(data, zoom, order=1).astype(np.float32)
    disp = make_field(static.shape, amplitude=3.0, seed=seed, dtype=np.float64)
    grid = np.indices(static.shape, dtype=np.float64)
    coords = grid + np.moveaxis(disp, -1, 0)
    del grid, disp
    moving = ndimage.map_coordinates(static, coords, order=1).astype(np.float32)
    affine = np.diag([1.0 / zoom] * 3 + [1.0])
    return np.ascontiguousarray(static), moving, affine


def parse_grid(text):
    """A speed grid from text: ``"128"`` (cropped brain, longest edge 128
    voxels) or ``"1mm"`` (the whole MNI152 grid at 1 mm); returns an int or
    a string ending in ``mm``."""
    text = str(text).strip()
    try:
        if text.endswith("mm"):
            if float(text[:-2]) > 0:
                return text
        elif int(text) >= 8:
            return int(text)
    except ValueError:
        pass
    raise ValueError(f"a speed grid is an edge of at least 8 voxels (128) or a resolution "
                     f"in mm (1mm), got {text!r}")


def grid_pair(grid, *, seed=0):
    """:func:`make_pair` for a grid of :func:`parse_grid`."""
    grid = parse_grid(grid)
    if isinstance(grid, str):
        return make_pair(seed=seed, resolution=float(grid[:-2]))
    return make_pair(grid, seed=seed)


def grid_shape(grid):
    """The voxel shape of the kernels' case on ``grid``: ``(N, N, N)`` for
    an edge, the template grid's shape for a resolution."""
    grid = parse_grid(grid)
    if isinstance(grid, int):
        return (grid,) * 3
    from nilearn.datasets import load_mni152_template

    zoom = 1.0 / float(grid[:-2])
    return tuple(int(round(s * zoom)) for s in load_mni152_template(resolution=1).shape)


def grid_label(grid):
    """``"128^3"`` or ``"1mm 197x233x189"``."""
    grid = parse_grid(grid)
    if isinstance(grid, int):
        return f"{grid}^3"
    return f"{grid} {'x'.join(map(str, grid_shape(grid)))}"


# ------------------------------------------------------------------ kernels
def _kernel_cases(grid):
    import dipy.align.vector_fields as vfu

    from fastsyn import fields

    shape = grid_shape(grid)
    field = make_field(shape, amplitude=4.0, seed=1)
    other = make_field(shape, amplitude=4.0, seed=2)
    image = np.ascontiguousarray(field[..., 0] * 10)
    w2g, spacing = np.eye(4), np.ones(3)
    eye = np.eye(4)
    out_shape = np.array(shape, dtype=np.int32)
    label = f"{grid_label(grid)} float32"
    return {
        f"compose {label}": (
            lambda: vfu.compose_vector_fields_3d(field, other, None, w2g, 1.0, None),
            lambda t: fields.compose_vector_fields_3d(field, other, None, w2g, 1.0,
                                                      num_threads=t)),
        f"invert {label}": (
            lambda: vfu.invert_vector_field_fixed_point_3d(field, w2g, spacing, 20, 1e-3,
                                                            None),
            lambda t: fields.invert_vector_field_fixed_point_3d(field, w2g, spacing, 20,
                                                                1e-3, num_threads=t)),
        f"warp linear {label}": (
            lambda: vfu.warp_3d(image, field, eye, eye, eye, out_shape),
            lambda t: fields.warp_3d(image, field, eye, eye, eye, out_shape, num_threads=t)),
    }


def _time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peak_mb(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------- end to end
def _reset_peak_rss():
    """Start the peak-RSS count afresh (Linux), so that building the input
    pair does not set the peak; elsewhere the process peak is kept."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _syn_metric(metric, ants_mode=False):
    """fastsyn's metric of a speed case: ``cc``, ``mi`` (the defaults; in
    ANTs' mode the Parzen histogram on every level, as ANTs' Mattes) or
    ``mi-pv`` (MI with partial-volume histograms on every level)."""
    import fastsyn

    if metric == "cc":
        return fastsyn.CCMetric(3, radius=4)
    if metric == "mi-pv":
        return fastsyn.MIMetric(3, partial_volume=True)
    return fastsyn.MIMetric(3, partial_volume=False) if ants_mode else fastsyn.MIMetric(3)


def _save_pair(pair, folder):
    """Write a speed pair for the SyN workers; returns the file's path."""
    path = Path(folder) / "pair.npz"
    static, moving, affine = pair
    np.savez(path, static=static, moving=moving, affine=affine)
    return path


def _load_pair(path):
    with np.load(path) as data:
        return data["static"], data["moving"], data["affine"]


def _syn_worker(impl, threads, pair_file, levels, metric):
    """Run one registration of the pair in ``pair_file``; print a JSON line
    with time and peak RSS."""
    static, moving, affine = _load_pair(pair_file)
    import dipy.align.imwarp as dipy_imwarp
    from dipy.align.metrics import CCMetric as DipyCC

    import fastsyn

    if impl == "dipy":
        if metric != "cc":
            raise SystemExit("stock DIPY has no MI metric for SyN")
        sdr = dipy_imwarp.SymmetricDiffeomorphicRegistration(DipyCC(3, radius=4),
                                                             level_iters=list(levels))
    elif impl == ANTS_MODE:
        sdr = fastsyn.ants_like(_syn_metric(metric, ants_mode=True),
                                level_iters=list(levels), num_threads=threads)
    else:
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(_syn_metric(metric),
                                                         level_iters=list(levels),
                                                         num_threads=threads)
    sdr.verbosity = 0
    _reset_peak_rss()
    start = time.perf_counter()
    mapping = sdr.optimize(static, moving, static_grid2world=affine,
                           moving_grid2world=affine)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    warped = mapping.transform(moving)
    a = static - static.mean()
    b = warped - warped.mean()
    ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    print(json.dumps({"seconds": seconds, "peak_mem_mb": peak, "ncc": ncc,
                      "stage_times": getattr(sdr, "stage_times", None)}))


def _run_worker(impl, threads, pair_file, levels, metric):
    cmd = [sys.executable, "-m", "fastsyn.bench.speed", "--worker", impl, str(threads),
           str(pair_file), ",".join(map(str, levels)), metric]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------ prealignment
#: Affine pyramid of ``quick`` prealignment rows (the harness's otherwise).
QUICK_PREALIGN_ITERS = (20, 10, 5)


def make_moved_pair(size=128, *, degrees=6.0, shift=(3.0, -2.0, 4.0), pair=None):
    """:func:`make_pair` with the moving image also rotated about z and shifted (mm),
    so that a rigid prealignment has something to find.  ``pair``: the
    ``grid_pair(size)`` already built, if any (at 1 mm it takes seconds)."""
    from scipy import ndimage

    static, moving, affine = grid_pair(size) if pair is None else pair
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    centre = (np.array(static.shape) - 1) / 2
    offset = centre - rot @ centre - np.asarray(shift) / np.diag(affine)[:3]
    moved = ndimage.affine_transform(moving, rot, offset, order=1).astype(np.float32)
    return static, moved, affine


def _prealign_cases(size, quick, pair=None):
    """``{case: {impl-kind: fn(threads)}}`` of the harness's rigid and affine
    prealignment, for each prealigner of :mod:`fastsyn.bench.prealign`
    (``pair``: ``grid_pair(size)`` if already built)."""
    from fastsyn.bench.prealign import DEFAULT_FACTORS, DEFAULT_LEVEL_ITERS, DEFAULT_SIGMAS, RIGID

    static, moving, affine = make_moved_pair(size, pair=pair)
    static, moving = static.astype(np.float64), moving.astype(np.float64)
    iters = QUICK_PREALIGN_ITERS if quick else DEFAULT_LEVEL_ITERS
    cases = {}
    for kind, pipeline in (("rigid", ["center_of_mass", "translation", "rigid"]),
                           ("affine", ["center_of_mass", "translation", "rigid", "affine"])):
        params = {"level_iters": list(iters), "sigmas": list(DEFAULT_SIGMAS),
                  "factors": list(DEFAULT_FACTORS), "nbins": 32, "pipeline": pipeline}
        case = f"{kind} prealign {grid_label(size)} MI {'/'.join(map(str, iters))}"
        cases[case] = {name: (lambda t, fn=fn, p=params: fn(static, moving, affine, affine,
                                                            p, t))
                       for name, fn in RIGID.items()}
    return cases


def _time_prealign(size, quick, repeat, counts, external, record, log, pair=None):
    """Rigid and affine prealignment rows: stock DIPY, fastsyn on each thread
    count, and the installed external tools, interleaved round by round."""
    import logging

    logging.getLogger("dipy").setLevel(logging.WARNING)
    # ITK (antspyx) reads its thread count once, when first used
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(counts[-1]))
    # first calls pay one-off costs (imports, ITK's start-up): warm every
    # tool up on a small copy before the timed rounds
    for fns in _prealign_cases(32, True).values():
        for name in ("dipy", "fastsyn", *external):
            if name in fns:
                fns[name](counts[-1])
        break
    for case, fns in _prealign_cases(size, quick, pair).items():
        runs = {"dipy": lambda fn=fns["dipy"]: fn(1)}
        runs.update({f"fastsyn-{t}": (lambda t=t, fn=fns["fastsyn"]: fn(t)) for t in counts})
        runs.update({name: (lambda fn=fns[name]: fn(counts[-1]))
                     for name in external if name in fns})
        samples = {impl: [] for impl in runs}
        for r in range(repeat):
            for impl, fn in runs.items():
                log(f"  {case}: {impl} (round {r + 1}/{repeat}) ...")
                samples[impl].append(_time_once(fn))
        record(case, samples, {})


# --------------------------------------------------------------------- main
def _environment(all_threads):
    import dipy

    import fastsyn

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads_all": all_threads,
            "python": platform.python_version(), "numpy": np.__version__,
            "dipy": dipy.__version__, "fastsyn": fastsyn.__version__,
            "git": git_commit(), "timestamp": timestamp()}


def _summary(samples):
    arr = np.asarray(samples)
    return float(np.median(arr)), float(arr.min()), float(arr.max())


def _external_run(name, metric, levels, threads, pair):
    """One ANTs / greedy registration through the harness's adapters."""
    from fastsyn.bench.methods import get_method

    static, moving, affine = pair
    labels = np.zeros(moving.shape, dtype=np.int32)
    result = get_method(name).run(static, moving, affine, affine, labels, metric=metric,
                                  levels=levels, threads=threads)
    a = static - static.mean()
    b = result.warped - result.warped.mean()
    ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    return {"seconds": result.seconds, "peak_mem_mb": result.peak_mem_mb, "ncc": ncc}


def available_external(names=("ants", "greedy")):
    """The external tools (ANTs, greedy) that are installed."""
    try:
        from fastsyn.bench.methods import get_method
    except ImportError:  # pragma: no cover - partial install
        return ()
    return tuple(n for n in names if get_method(n).available()[0])


def thread_counts(threads=None):
    """The fastsyn thread counts that a speed run times.

    Parameters
    ----------
    threads : int, None or sequence of (int or None)
        Counts to time; None stands for every CPU (the OpenMP default).

    Returns
    -------
    tuple of int
        Sorted distinct counts, always starting with 1 (the serial
        reference of the speed-up ratios).
    """
    from fastsyn._threads import resolve_num_threads

    if threads is None or isinstance(threads, (int, np.integer)):
        threads = (threads,)
    counts = {resolve_num_threads(t, name="threads") for t in threads}
    return tuple(sorted(counts | {1}))


def _impl_name(impl):
    """The implementation of a timed entry (``fastsyn-4`` -> ``fastsyn``)."""
    if impl.startswith(ANTS_MODE + "-"):
        return ANTS_MODE
    return impl.split("-")[0]


def _ants_mode_ratios(case, samples, counts):
    """Speed of the ANTs mode relative to the default, thread count by count."""
    out = []
    for t in counts:
        mode, default = f"{ANTS_MODE}-{t}", f"fastsyn-{t}"
        if mode in samples and default in samples:
            out.append({"case": case, "impl": ANTS_MODE, "threads": t, "baseline": "fastsyn",
                        "speedup": float(np.median(samples[default])
                                         / np.median(samples[mode]))})
    return out


def run_speed(*, size=128, syn_size=None, levels=(20, 20, 10), repeat=3, threads=None,
              metrics=("cc",), include_syn=True, external=(), ants_cc=False, ants_mode=True,
              log=print, include_prealign=False, quick=False):
    """Measure kernels and end-to-end SyN; returns the speed JSON dict.

    fastsyn is timed on each count of ``threads`` (see :func:`thread_counts`;
    default one thread and all CPUs), stock DIPY on one thread.  ``external``
    names tools (``"ants"``, ``"greedy"``) timed in the same interleaved
    rounds as the end-to-end runs, on the largest thread count.  ANTs with CC
    is skipped unless ``ants_cc`` (it takes many minutes at 128^3).  With
    ``ants_mode``, fastsyn's ANTs mode is timed on every thread count too and
    its ratios to the default (``baseline="fastsyn"``, same threads) are added.
    ``include_prealign`` adds the harness's rigid and affine prealignment
    (:mod:`fastsyn.bench.prealign`) for every prealigner, at ``syn_size``
    (fewer iterations when ``quick``).
    """
    counts = thread_counts(threads)
    all_threads = counts[-1]
    syn_size = syn_size or size
    fast_impls = [f"fastsyn-{t}" for t in counts]
    impl_threads = {"dipy": 1, "ants": all_threads, "greedy": all_threads}
    impl_threads.update({f"fastsyn-{t}": t for t in counts})
    mode_impls = [f"{ANTS_MODE}-{t}" for t in counts] if ants_mode else []
    impl_threads.update({f"{ANTS_MODE}-{t}": t for t in counts})
    rows, ratios = [], []

    def record(case, samples, peaks, extra=None):
        for impl, times in samples.items():
            med, lo, hi = _summary(times)
            row = {"case": case, "impl": _impl_name(impl),
                   "threads": impl_threads[impl], "median_s": med, "min_s": lo, "max_s": hi,
                   "peak_mem_mb": peaks.get(impl)}
            if extra and impl in extra:
                row.update(extra[impl])
            rows.append(row)
        for baseline in ("dipy", "ants", "greedy", "fastsyn-1"):
            if baseline not in samples:
                continue
            base = np.median(samples[baseline])
            for impl in fast_impls:
                if impl != baseline:
                    ratios.append({"case": case, "impl": "fastsyn",
                                   "threads": impl_threads[impl], "baseline": baseline,
                                   "speedup": float(base / np.median(samples[impl]))})
        ratios.extend(_ants_mode_ratios(case, samples, counts))

    for case, (stock, ours) in _kernel_cases(size).items():
        log(f"  {case} ...")
        fns = {"dipy": stock}
        fns.update({f"fastsyn-{t}": (lambda t=t: ours(t)) for t in counts})
        for fn in fns.values():  # warm-up (first touch, imports)
            fn()
        samples = {impl: [] for impl in fns}
        for _ in range(repeat):
            for impl, fn in fns.items():
                samples[impl].append(_time_once(fn))
        peaks = {impl: _peak_mb(fn) for impl, fn in fns.items()}
        record(case, samples, peaks)

    # the pair is built once (at 1 mm that takes seconds), handed to every
    # SyN worker as a file, so that a worker's start is its imports only,
    # and moved for the prealignment rows
    pair = grid_pair(syn_size) if include_syn or include_prealign else None
    if include_syn:
        with tempfile.TemporaryDirectory(prefix="fastsyn-speed-") as scratch:
            pair_file = _save_pair(pair, scratch)
            for metric in metrics:
                case = (f"SyN {metric.upper()} {grid_label(syn_size)} levels "
                        f"{'/'.join(map(str, levels))}")
                impls = (["dipy"] if metric == "cc" else []) + fast_impls + mode_impls
                impls += [name for name in external
                          if name != "ants" or metric != "cc" or ants_cc]
                samples = {impl: [] for impl in impls}
                peaks, extra = {}, {}
                for r in range(repeat):
                    for impl in impls:
                        log(f"  {case}: {impl} (round {r + 1}/{repeat}) ...")
                        if impl in ("ants", "greedy"):
                            # (the tools' MI for mi-pv: greedy's NMI is itself partial volume)
                            out = _external_run(impl, "cc" if metric == "cc" else "mi",
                                                levels, all_threads, pair)
                            out["stage_times"] = None
                        else:
                            out = _run_worker(_impl_name(impl) if impl != "dipy" else "dipy",
                                              impl_threads[impl], pair_file, levels, metric)
                        samples[impl].append(out["seconds"])
                        peaks[impl] = max(peaks.get(impl, 0.0), out["peak_mem_mb"])
                        extra[impl] = {"ncc": out["ncc"], "stage_times": out["stage_times"]}
                record(case, samples, peaks, extra)
    if include_prealign:
        _time_prealign(syn_size, quick, repeat, counts, external, record, log, pair)
    env = dict(_environment(all_threads), threads_timed=list(counts))
    result = {"environment": env, "rows": rows, "ratios": ratios}
    result["targets"] = target_checks(result)
    return result


#: The speed targets (issue #11): fastsyn's SyN time on all threads over the
#: tool's, same run; and fastsyn's peak memory over stock DIPY's.
TIME_TARGETS = (("CC", "greedy", 0.8), ("MI", "greedy", 1.0), ("MI", "ants", 0.2))
MEMORY_TARGETS = (("CC", "dipy", 1.0),)


def target_checks(result):
    """The targets' ratios measured in ``result`` (a :func:`run_speed` dict).

    Returns
    -------
    list of dict
        ``case``, ``what`` (``time`` or ``peak memory``), ``baseline``,
        ``ratio`` (fastsyn on its largest thread count over the baseline;
        below 1: fastsyn faster or leaner), ``target`` and ``met``, for every
        end-to-end SyN case where both were measured.
    """
    checks = []
    cases = dict.fromkeys(r["case"] for r in result["rows"] if r["case"].startswith("SyN "))
    for case in cases:
        rows = {r["impl"]: r for r in result["rows"]
                if r["case"] == case and r["impl"] != "fastsyn"}
        ours = [r for r in result["rows"] if r["case"] == case and r["impl"] == "fastsyn"]
        if not ours:
            continue
        ours = max(ours, key=lambda r: r["threads"])
        metric = case.split()[1]
        for what, targets, key in (("time", TIME_TARGETS, "median_s"),
                                   ("peak memory", MEMORY_TARGETS, "peak_mem_mb")):
            for m, baseline, target in targets:
                base = rows.get(baseline, {}).get(key)
                if m != metric or not base or ours.get(key) is None:
                    continue
                ratio = ours[key] / base
                checks.append({"case": case, "what": what, "baseline": baseline,
                               "threads": ours["threads"], "ratio": float(ratio),
                               "target": target, "met": bool(ratio <= target)})
    return checks


def format_speed(result):
    """The speed table as text."""
    lines = [f"{'case':<38} {'impl':<12} {'thr':>3} {'median s':>9} {'min':>8} {'max':>8} "
             f"{'peak GB':>8} {'vs dipy':>8}"]
    base = {r["case"]: r["median_s"] for r in result["rows"] if r["impl"] == "dipy"}
    for r in result["rows"]:
        ratio = base.get(r["case"])
        ratio = f"{ratio / r['median_s']:7.2f}x" if ratio else "       -"
        peak = (f"{r['peak_mem_mb'] / 1024:8.3f}" if r.get("peak_mem_mb") is not None
                else "       -")
        lines.append(f"{r['case']:<38} {r['impl']:<12} {r['threads']:>3} {r['median_s']:9.3f} "
                     f"{r['min_s']:8.3f} {r['max_s']:8.3f} {peak} {ratio}")
    lines.append("")
    lines.append("speed-ups of fastsyn (ratio of medians, same run):")
    for q in result["ratios"]:
        if q.get("impl") == ANTS_MODE:
            continue
        lines.append(f"  {q['case']:<38} {q['threads']:>2} threads vs {q['baseline']:<9} "
                     f"{q['speedup']:6.2f}x")
    checks = target_checks(result)
    if checks:
        lines.append("")
        lines.append("targets (fastsyn on its largest thread count over the baseline, same run; "
                     "lower is better):")
        for c in checks:
            lines.append(f"  {c['case']:<38} {c['what']:<11} vs {c['baseline']:<7} "
                         f"{c['ratio']:6.2f}  target <= {c['target']:.2f}  "
                         f"{'met' if c['met'] else 'NOT met'}")
    mode = [q for q in result["ratios"] if q.get("impl") == ANTS_MODE]
    if mode:
        lines.append("")
        lines.append("fastsyn ANTs mode vs default, same threads (below 1: ANTs mode slower):")
        for q in mode:
            lines.append(f"  {q['case']:<38} {q['threads']:>2} threads "
                         f"{q['speedup']:6.2f}x")
    return "\n".join(lines)


def speed_command(*, size=None, levels=None, repeat=3, threads=None, metrics=("cc", "mi"),
                  include_syn=True, external=None, ants_cc=False, out=None, quick=False,
                  log=None, include_prealign=True, ants_mode=True):
    """Time, print the speed table and optionally save it (``fastsyn bench speed``).

    Parameters
    ----------
    size : int or str, optional
        The grid (:func:`parse_grid`): an edge in voxels (default 128, or 64
        when ``quick``) or a resolution such as ``"1mm"`` (the whole MNI152
        grid: a real brain size); the kernels run on its shape.
    levels : sequence of int, optional
        SyN iterations per level; default (20, 20, 10), or (4, 4, 2) when
        ``quick``.
    repeat : int, optional
        Interleaved rounds.
    threads : int, None or sequence, optional
        fastsyn thread counts (see :func:`thread_counts`).
    metrics : sequence of {"cc", "mi", "mi-pv"}, optional
        SyN metrics timed end to end (``mi``: ``MIMetric``'s defaults;
        ``mi-pv``: ``MIMetric(partial_volume=True)``, partial volume on every
        level, against the tools' MI; it has no target of its own).
    include_syn : bool, optional
        Time end-to-end SyN, not only the kernels.
    external : sequence of str, optional
        External tools timed alongside; default those of ``ants``, ``greedy``
        that are installed.
    ants_cc : bool, optional
        Also time ANTs with CC.
    out : str or Path, optional
        JSON file to write.
    quick : bool, optional
        Small defaults for ``size`` and ``levels``.
    include_prealign : bool, optional
        Time the rigid and affine prealignment of each prealigner.
    log : callable, optional
        Progress messages (default: print and flush).
    ants_mode : bool, optional
        Also time fastsyn's ANTs mode end to end (every thread count).

    Returns
    -------
    dict
        The speed result (see :func:`run_speed`).
    """
    if log is None:
        def log(msg):
            print(msg, flush=True)
    if size is None:
        size = QUICK_SIZE if quick else 128
    if levels is None:
        levels = QUICK_LEVELS if quick else (20, 20, 10)
    levels = tuple(int(v) for v in levels)
    counts = thread_counts(threads)
    external = available_external() if external is None else tuple(external)
    size = parse_grid(size)
    log(f"fastsyn bench speed: kernels and SyN at {grid_label(size)}, levels {levels}, "
        f"fastsyn on {', '.join(map(str, counts))} thread(s), {repeat} interleaved rounds")
    result = run_speed(size=size, levels=levels, repeat=repeat, threads=counts,
                       metrics=tuple(metrics), include_syn=include_syn, external=external,
                       ants_cc=ants_cc, ants_mode=ants_mode, log=log,
                       include_prealign=include_prealign, quick=quick)
    print(format_speed(result))
    if out:
        print(f"wrote {write_json(out, result)}")
    return result


def _parse_threads(text):
    """``"1,2,all"`` -> (1, 2, None); None stays None."""
    if text is None or not isinstance(text, str):
        return text
    try:
        return tuple(None if v.strip() == "all" else int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--threads must be thread counts such as 1,2,4 or 'all', "
                         f"got {text!r}") from None


def main_speed(args):
    """Entry point of ``python -m fastsyn.bench.speed`` (argparse namespace)."""
    levels = getattr(args, "levels", None)
    if isinstance(levels, str):
        levels = tuple(int(v) for v in levels.split(","))
    external = getattr(args, "external", None)
    return speed_command(
        size=getattr(args, "size", None), levels=levels, repeat=args.repeat,
        threads=_parse_threads(getattr(args, "threads", None)),
        metrics=tuple(str(getattr(args, "metric", None) or "cc,mi").split(",")),
        include_syn=not getattr(args, "no_syn", False),
        external=None if external is None else tuple(n for n in external.split(",") if n),
        ants_cc=getattr(args, "ants_cc", False), out=getattr(args, "out", None),
        quick=getattr(args, "quick", False),
        include_prealign=not getattr(args, "no_prealign", False),
        ants_mode=not getattr(args, "no_ants_mode", False))


def _cli(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fastsyn.bench.speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "THREADS", "PAIR", "LEVELS",
                                                      "METRIC"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=parse_grid, default=None)
    parser.add_argument("--threads", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--levels", default=None)
    parser.add_argument("--metric", default="cc,mi")
    parser.add_argument("--external", default=None,
                        help="tools timed alongside (default: ants,greedy when installed)")
    parser.add_argument("--ants-cc", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-syn", action="store_true")
    parser.add_argument("--no-prealign", action="store_true")
    parser.add_argument("--no-ants-mode", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.worker:
        impl, threads, pair_file, levels, metric = args.worker
        _syn_worker(impl, int(threads), pair_file, tuple(map(int, levels.split(","))), metric)
        return
    main_speed(args)


if __name__ == "__main__":
    _cli()
