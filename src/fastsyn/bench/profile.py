"""Stage profile of one SyN registration: fastsyn and stock DIPY side by side.

``fastsyn profile`` registers one pair twice, once with
:class:`fastsyn.SymmetricDiffeomorphicRegistration` (its built-in stage
timers) and once with stock DIPY's ``SymmetricDiffeomorphicRegistration``
instrumented from the outside, and prints the seconds and the share of the
run spent in each stage:

``warping``
    Warping the images towards the reference (``transform_inverse``).
``metric``
    The metric: setting the images, ``initialize_iteration`` and the forward
    and backward steps, smoothing excluded.
``smoothing``
    Gaussian smoothing of the update fields.
``update``
    Composition of the normalised steps into the current fields (fastsyn also
    counts the step normalisation here; DIPY's sits in ``other``).
``inversion``
    The four fixed-point inversions per iteration.
``other``
    Everything else: scale spaces, pyramid changes, final maps.

When line_profiler is installed, the iteration and the kernel wrappers of both
implementations are line-profiled during the same runs (the tracing costs
little: the heavy work is in compiled kernels) and the busiest lines are kept.
The result is saved as JSON for ``fastsyn report``.

Stock DIPY's Gaussian smoothing is timed by routing the ``ndimage`` name that
``dipy.align.metrics`` uses through a timing proxy for the duration of the
run; it is restored afterwards.
"""

import argparse
import io
import linecache
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import fastsyn
from fastsyn.bench.store import write_json

__all__ = [
    "STAGES",
    "build_parser",
    "find_fixture",
    "format_stage_table",
    "load_pair",
    "main_profile",
    "profile_command",
    "profile_registration",
]

#: Stages of a SyN iteration, in display order.
STAGES = ("warping", "metric", "smoothing", "update", "inversion", "other")
#: Default pyramid iterations (coarsest first).
DEFAULT_LEVELS = (20, 10, 5)
#: Lines kept per implementation in the line profile.
TOP_LINES = 15


# ------------------------------------------------------------------ inputs
def find_fixture(name):
    """The pair ``<name>.npz`` shipped with fastsyn, else ``fixtures/<name>.npz``
    under the working directory.

    The shipped pairs (:data:`fastsyn.data.PAIRS`) are found from any working
    directory; other fixtures of a source checkout are found when the command
    runs from its root.

    Parameters
    ----------
    name : str
        Fixture name, e.g. ``"pair3d"``.

    Returns
    -------
    pathlib.Path or importlib.resources.abc.Traversable or None
    """
    from fastsyn.data import pair_file

    shipped = pair_file(name)
    if shipped is not None:
        return shipped
    local = Path.cwd() / "fixtures" / f"{name}.npz"
    return local if local.is_file() else None


def _synthetic_pair(size=48, seed=0):
    """A small smooth pair related by a smooth warp (used when no fixture
    is available)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (size, size, size)
    static = ndimage.gaussian_filter(rng.random(shape), 3.0)
    static = ((static - static.min()) / np.ptp(static) * 100).astype(np.float32)
    grid = np.indices(shape, dtype=np.float64)
    disp = [ndimage.gaussian_filter(rng.standard_normal(shape), size / 8) for _ in range(3)]
    disp = [2.0 * d / np.abs(d).max() for d in disp]
    moving = ndimage.map_coordinates(static, [g + d for g, d in zip(grid, disp)], order=1,
                                     mode="nearest").astype(np.float32)
    eye = np.eye(4)
    return {"static": static, "moving": moving, "static_affine": eye, "moving_affine": eye,
            "name": f"synthetic{size}"}


def load_pair(pair=None, fixed=None, moving=None):
    """Load the images to register.

    Parameters
    ----------
    pair : str, optional
        A pair shipped with fastsyn (``pair3d``, ``pair3d_multimodal``), a
        fixture name (``fixtures/<pair>.npz`` under the working directory) or
        a path to such an ``.npz``.
    fixed, moving : str, optional
        NIfTI (or ``.npy``) files; used instead of ``pair`` when both given.

    Returns
    -------
    dict
        ``static``, ``moving``, ``static_affine``, ``moving_affine``, ``name``.
    """
    if fixed is not None or moving is not None:
        if fixed is None or moving is None:
            raise ValueError("give both --fixed and --moving, or neither")
        out = {}
        for key, path in (("static", fixed), ("moving", moving)):
            path = Path(path)
            if not path.is_file():
                raise ValueError(f"{key} image {path} does not exist")
            if path.suffix == ".npy":
                out[key] = np.load(path).astype(np.float32)
                out[f"{key}_affine"] = np.eye(out[key].ndim + 1)
            else:
                import nibabel as nib

                img = nib.load(str(path))
                out[key] = np.asarray(img.dataobj, dtype=np.float32)
                out[f"{key}_affine"] = img.affine
        out["name"] = f"{Path(fixed).name} <- {Path(moving).name}"
        return out
    from fastsyn.data import PAIRS

    name = pair or "pair3d"
    path = Path(name) if name.endswith(".npz") else find_fixture(name)
    if path is None or not path.is_file():
        if name.endswith(".npz"):
            raise ValueError(f"pair file {name} not found")
        if pair is not None:
            raise ValueError(f"fixture {name!r} not found: not one of the pairs shipped "
                             f"with fastsyn ({', '.join(PAIRS)}) and no "
                             f"fixtures/{name}.npz under {Path.cwd()}")
        logging.getLogger("fastsyn").warning(
            "fixture pair3d not found; profiling a synthetic 48^3 pair")
        return _synthetic_pair()
    with path.open("rb") as fh, np.load(fh) as data:
        out = {k: data[k] for k in ("static", "moving", "static_affine", "moving_affine")
               if k in data.files}
    out.setdefault("static_affine", np.eye(out["static"].ndim + 1))
    out.setdefault("moving_affine", np.eye(out["moving"].ndim + 1))
    out["name"] = Path(path.name).stem
    return out


# ----------------------------------------------------------- stock timings
class _ExclusiveClock:
    """Stage timer where a nested stage's time is not counted in its parent."""

    def __init__(self):
        self.times = dict.fromkeys(STAGES, 0.0)
        self._stack = []

    @contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        self._stack.append([stage, 0.0])
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            _, inner = self._stack.pop()
            self.times[stage] += elapsed - inner
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, stage, func):
        def timed(*args, **kwargs):
            with self(stage):
                return func(*args, **kwargs)

        timed.__wrapped__ = func
        return timed


class _TimedNdimage:
    """Stand-in for ``scipy.ndimage`` whose ``gaussian_filter`` is timed."""

    def __init__(self, module, clock):
        self._module = module
        self.gaussian_filter = clock.wrap("smoothing", module.gaussian_filter)

    def __getattr__(self, name):
        return getattr(self._module, name)


_METRIC_METHODS = ("set_static_image", "set_moving_image", "use_static_image_dynamics",
                   "use_moving_image_dynamics", "initialize_iteration", "compute_forward",
                   "compute_backward")


def _dipy_timed_class():
    from dipy.align import imwarp as dipy_imwarp

    base = dipy_imwarp.SymmetricDiffeomorphicRegistration

    class TimedDipySyN(base):
        """Stock DIPY SyN with stage timers around its own methods."""

        def __init__(self, metric, clock, **kwargs):
            self._clock = clock
            base.__init__(self, metric, **kwargs)

        def _connect_functions(self):
            base._connect_functions(self)
            self.invert_vector_field = self._clock.wrap("inversion",
                                                        self.invert_vector_field)

        def _init_optimizer(self, *args, **kwargs):
            base._init_optimizer(self, *args, **kwargs)
            for dmap in (self.static_to_ref, self.moving_to_ref):
                dmap.transform_inverse = self._clock.wrap("warping", dmap.transform_inverse)

        def update(self, *args, **kwargs):
            with self._clock("update"):
                return base.update(self, *args, **kwargs)

    return TimedDipySyN


def _run_dipy(pair, metric_name, levels):
    """Stock DIPY SyN with stage timers; returns (stage times, iterations)."""
    from dipy.align import metrics as dipy_metrics

    dim = pair["static"].ndim
    clock = _ExclusiveClock()
    if metric_name == "cc":
        metric = dipy_metrics.CCMetric(dim, sigma_diff=2.0, radius=4)
    else:
        # DIPY has no MI metric for SyN: the stock optimizer around fastsyn's
        # MIMetric on one thread, as the harness's ``dipy`` method does.
        metric = fastsyn.MIMetric(dim, num_threads=1)
    for name in _METRIC_METHODS:
        setattr(metric, name, clock.wrap("metric", getattr(metric, name)))
    smoothing_before = getattr(metric, "smoothing_seconds", 0.0)
    iterations = [0]

    def count(sdr, stage):
        from dipy.align.imwarp import RegistrationStages

        if stage == RegistrationStages.ITER_END:
            iterations[0] += 1

    sdr = _dipy_timed_class()(metric, clock, level_iters=list(levels), callback=count)
    saved = dipy_metrics.ndimage
    dipy_metrics.ndimage = _TimedNdimage(saved, clock)
    try:
        start = time.perf_counter()
        sdr.optimize(pair["static"], pair["moving"],
                     static_grid2world=pair["static_affine"],
                     moving_grid2world=pair["moving_affine"])
        total = time.perf_counter() - start
    finally:
        dipy_metrics.ndimage = saved
        for name in _METRIC_METHODS:
            metric.__dict__.pop(name, None)
    times = dict(clock.times)
    moved = getattr(metric, "smoothing_seconds", 0.0) - smoothing_before
    if moved > 0:  # a fastsyn metric reports its own smoothing time
        times["metric"] -= moved
        times["smoothing"] += moved
    times["other"] = max(0.0, total - sum(times[s] for s in STAGES if s != "other"))
    times["total"] = total
    return times, iterations[0]


def _run_fastsyn(pair, metric_name, levels, threads):
    dim = pair["static"].ndim
    if metric_name == "cc":
        metric = fastsyn.CCMetric(dim, sigma_diff=2.0, radius=4)
    else:
        metric = fastsyn.MIMetric(dim)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=list(levels),
                                                     num_threads=threads)
    sdr.optimize(pair["static"], pair["moving"], static_grid2world=pair["static_affine"],
                 moving_grid2world=pair["moving_affine"])
    return dict(sdr.stage_times), int(sdr.iterations_run)


# ------------------------------------------------------------ line profile
def _line_targets(metric_name):
    """Functions line-profiled for each implementation."""
    from dipy.align import imwarp as dipy_imwarp
    from dipy.align import metrics as dipy_metrics

    from fastsyn import fields as fs_fields
    from fastsyn import imwarp as fs_imwarp

    fast = [fs_imwarp._iterate, fs_imwarp._apply_step, fs_imwarp._invert_models,
            fs_imwarp._metric_step, fs_fields.compose_unchecked,
            fs_fields.invert_unchecked, fs_fields.warp_unchecked,
            fs_fields.smooth_unchecked]
    sdr = dipy_imwarp.SymmetricDiffeomorphicRegistration
    stock = [sdr._iterate, sdr.update,
             sdr._SymmetricDiffeomorphicRegistration__invert_models,
             dipy_imwarp.DiffeomorphicMap.transform_inverse,
             getattr(dipy_imwarp.DiffeomorphicMap, "_warp_backward", None)]
    if metric_name == "cc":
        fm = fastsyn.CCMetric
        fast += [fm.initialize_iteration, fm._step]
        dm = dipy_metrics.CCMetric
        stock += [dm.initialize_iteration, dm.compute_forward, dm.compute_backward]
    else:
        mi = fastsyn.MIMetric
        extra = [getattr(mi, n) for n in ("initialize_iteration", "compute_forward",
                                          "compute_backward") if hasattr(mi, n)]
        fast += extra
        stock += extra
    return {"fastsyn": [f for f in fast if callable(f)],
            "dipy": [f for f in stock if callable(f)]}


def _new_line_profiler(funcs):
    try:
        from line_profiler import LineProfiler
    except ImportError:
        return None
    import inspect

    lp = LineProfiler()
    for f in funcs:
        # Profile the function itself, not a decorator's wrapper around it.
        lp.add_function(inspect.unwrap(getattr(f, "__func__", f)))
    return lp


def _line_rows(lp, top=TOP_LINES):
    """The busiest lines of a finished line profile, as JSON-ready rows."""
    stats = lp.get_stats()
    unit = stats.unit
    rows, func_totals = [], []
    for (filename, first, func), lines in stats.timings.items():
        total = sum(t for _, _, t in lines) * unit
        if not lines:
            continue
        func_totals.append({"function": func, "file": filename, "line": first,
                            "time_s": total})
        for lineno, hits, t in lines:
            rows.append({"function": func, "file": os.path.basename(filename),
                         "line": lineno, "hits": int(hits), "time_s": t * unit,
                         "source": linecache.getline(filename, lineno).strip()})
    rows.sort(key=lambda r: r["time_s"], reverse=True)
    func_totals.sort(key=lambda r: r["time_s"], reverse=True)
    text = io.StringIO()
    lp.print_stats(stream=text, stripzeros=True)
    return {"lines": rows[:top], "functions": func_totals, "text": text.getvalue()}


@contextmanager
def _maybe_profiling(lp):
    if lp is None:
        yield
        return
    lp.enable_by_count()
    try:
        yield
    finally:
        lp.disable_by_count()


# ----------------------------------------------------------------- driver
def profile_registration(fixed, moving, fixed_affine=None, moving_affine=None, *,
                         metric="cc", threads=None, levels=DEFAULT_LEVELS,
                         line_profile=True, include_dipy=True, name="pair"):
    """Profile one SyN registration with fastsyn and with stock DIPY.

    Parameters
    ----------
    fixed, moving : ndarray
        The static and moving images (2D or 3D).
    fixed_affine, moving_affine : ndarray, optional
        Grid-to-world matrices (identity when omitted).
    metric : {"cc", "mi"}, optional
        Similarity metric.  Stock DIPY has no MI metric; its ``mi`` run uses
        DIPY's optimizer with ``fastsyn.MIMetric`` on one thread.
    threads : int or None, optional
        fastsyn's ``num_threads`` (None: OpenMP default).  Stock DIPY is
        serial.
    levels : sequence of int, optional
        Iterations per pyramid level, coarsest first.
    line_profile : bool, optional
        Line-profile the iterations when line_profiler is installed.
    include_dipy : bool, optional
        Also run stock DIPY.
    name : str, optional
        Name of the pair, recorded in the result.

    Returns
    -------
    dict
        ``pair``, ``shape``, ``metric``, ``threads``, ``levels``, ``stages``,
        ``runs`` (``{"fastsyn": {...}, "dipy": {...}}``, each with
        ``stage_times``, ``total_s``, ``iterations``, ``share``),
        ``speedup`` (DIPY seconds ÷ fastsyn seconds per stage and total),
        ``line_profile`` (per implementation, or None) and ``environment``.
    """
    from fastsyn.bench.machine import collect_environment

    if metric not in ("cc", "mi"):
        raise ValueError(f"metric must be 'cc' or 'mi', got {metric!r}")
    fixed = np.asarray(fixed)
    moving = np.asarray(moving)
    dim = fixed.ndim
    if dim not in (2, 3) or moving.ndim != dim:
        raise ValueError(f"fixed and moving must both be 2D or 3D, got {fixed.ndim}D and "
                         f"{moving.ndim}D")
    levels = [int(n) for n in levels]
    if not levels or any(n < 0 for n in levels):
        raise ValueError(f"levels must be non-negative integers, got {levels}")
    nthreads = fastsyn.resolve_num_threads(threads)
    eye = np.eye(dim + 1)
    pair = {"static": fixed, "moving": moving,
            "static_affine": eye if fixed_affine is None else np.asarray(fixed_affine),
            "moving_affine": eye if moving_affine is None else np.asarray(moving_affine)}
    logging.getLogger("dipy").setLevel(logging.WARNING)

    targets = _line_targets(metric) if line_profile else {"fastsyn": [], "dipy": []}
    runs, lines = {}, {}

    lp = _new_line_profiler(targets["fastsyn"]) if line_profile else None
    with _maybe_profiling(lp):
        times, iters = _run_fastsyn(pair, metric, levels, threads)
    runs["fastsyn"] = _run_record(times, iters, nthreads)
    if lp is not None:
        lines["fastsyn"] = _line_rows(lp)

    if include_dipy:
        lp = _new_line_profiler(targets["dipy"]) if line_profile else None
        with _maybe_profiling(lp):
            times, iters = _run_dipy(pair, metric, levels)
        runs["dipy"] = _run_record(times, iters, 1)
        if lp is not None:
            lines["dipy"] = _line_rows(lp)

    speedup = {}
    if "dipy" in runs:
        for stage in STAGES + ("total",):
            # The per-run records keep the total apart from the stage times.
            ours, stock = (
                (runs["fastsyn"]["total_s"], runs["dipy"]["total_s"]) if stage == "total"
                else (runs["fastsyn"]["stage_times"][stage], runs["dipy"]["stage_times"][stage]))
            speedup[stage] = stock / ours if ours > 0 else None
    return {
        "kind": "fastsyn-profile",
        "pair": name,
        "shape": list(fixed.shape),
        "metric": metric,
        "threads": nthreads,
        "levels": levels,
        "stages": list(STAGES),
        "runs": runs,
        "speedup": speedup,
        "line_profile": lines or None,
        "environment": collect_environment(),
    }


def _run_record(times, iterations, threads):
    total = times.get("total") or sum(times[s] for s in STAGES)
    return {
        "stage_times": {s: float(times.get(s, 0.0)) for s in STAGES},
        "total_s": float(total),
        "share": {s: (float(times.get(s, 0.0)) / total if total > 0 else 0.0)
                  for s in STAGES},
        "iterations": int(iterations),
        "threads": int(threads),
    }


def format_stage_table(result):
    """The stage table of a profile as plain text.

    Parameters
    ----------
    result : dict
        From :func:`profile_registration`.

    Returns
    -------
    str
    """
    runs = result["runs"]
    fast = runs["fastsyn"]
    stock = runs.get("dipy")
    head = (f"SyN profile: {result['pair']} {'x'.join(map(str, result['shape']))}, "
            f"metric {result['metric']}, levels {'/'.join(map(str, result['levels']))}, "
            f"fastsyn {result['threads']} thread(s)")
    lines = [head, ""]
    cols = f"{'stage':<10} {'fastsyn s':>10} {'share':>7}"
    if stock:
        cols += f" {'DIPY s':>10} {'share':>7} {'speed-up':>9}"
    lines += [cols, "-" * len(cols)]
    for stage in STAGES + ("total",):
        if stage == "total":
            lines.append("-" * len(cols))
            t, share = fast["total_s"], 1.0
        else:
            t, share = fast["stage_times"][stage], fast["share"][stage]
        row = f"{stage:<10} {t:>10.3f} {share:>7.1%}"
        if stock:
            if stage == "total":
                ts, sshare = stock["total_s"], 1.0
            else:
                ts, sshare = stock["stage_times"][stage], stock["share"][stage]
            ratio = result["speedup"].get(stage)
            ratio_text = f"{ratio:.2f}x" if ratio else "-"
            row += f" {ts:>10.3f} {sshare:>7.1%} {ratio_text:>9}"
        lines.append(row)
    lines.append("")
    lines.append(f"iterations: fastsyn {fast['iterations']}"
                 + (f", DIPY {stock['iterations']}" if stock else ""))
    return "\n".join(lines)


def _format_lines(result, top=8):
    out = []
    for impl, prof in (result.get("line_profile") or {}).items():
        out.append(f"\nBusiest lines ({impl}):")
        for row in prof["lines"][:top]:
            out.append(f"  {row['time_s']:8.3f} s {row['hits']:>7} hits  "
                       f"{row['file']}:{row['line']} {row['function']}: {row['source'][:60]}")
    return "\n".join(out)


def build_parser(parser=None):
    """Add the ``profile`` options to an argument parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser, optional
        Parser to extend (a new one when omitted).

    Returns
    -------
    argparse.ArgumentParser
    """
    if parser is None:
        parser = argparse.ArgumentParser(prog="fastsyn profile",
                                         description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default=None,
                        help="shipped pair (pair3d, pair3d_multimodal), fixtures/NAME.npz "
                             "or an .npz path; default pair3d")
    parser.add_argument("--fixed", default=None, help="fixed image (NIfTI)")
    parser.add_argument("--moving", default=None, help="moving image (NIfTI)")
    parser.add_argument("--metric", choices=("cc", "mi"), default="cc")
    parser.add_argument("--threads", type=int, default=None,
                        help="fastsyn threads (default: all, OpenMP default)")
    parser.add_argument("--levels", default=None,
                        help="iterations per level, coarsest first, e.g. 20,10,5")
    parser.add_argument("--no-dipy", action="store_true", help="skip the stock DIPY run")
    parser.add_argument("--no-lines", action="store_true", help="skip line_profiler")
    parser.add_argument("--out", default=None, help="JSON file to write")
    return parser


def profile_command(*, pair=None, fixed=None, moving=None, metric="cc", threads=None,
                    levels=None, line_profile=True, include_dipy=True, out=None):
    """Profile one registration, print the tables and optionally save the JSON
    (``fastsyn profile``).

    Parameters
    ----------
    pair, fixed, moving : str, optional
        The images, as for :func:`load_pair`.
    metric : {"cc", "mi"}, optional
    threads : int, optional
        fastsyn's ``num_threads``.
    levels : sequence of int or str, optional
        Iterations per level, coarsest first (``"20,10,5"`` accepted);
        default :data:`DEFAULT_LEVELS`.
    line_profile, include_dipy : bool, optional
        As for :func:`profile_registration`.
    out : str or Path, optional
        JSON file to write.

    Returns
    -------
    dict
        The result of :func:`profile_registration`.
    """
    images = load_pair(pair, fixed, moving)
    levels = levels or DEFAULT_LEVELS
    if isinstance(levels, str):
        try:
            levels = [int(v) for v in levels.replace("/", ",").split(",") if v.strip()]
        except ValueError as exc:
            raise ValueError(f"--levels must be integers like 20,10,5, got {levels!r}") from exc
    result = profile_registration(
        images["static"], images["moving"], images["static_affine"], images["moving_affine"],
        metric=metric or "cc", threads=threads, levels=levels, line_profile=line_profile,
        include_dipy=include_dipy, name=images["name"])
    print(format_stage_table(result))
    if result["line_profile"] is None and line_profile:
        print("\n(line_profiler not installed: line profile skipped)")
    else:
        print(_format_lines(result))
    if out:
        print(f"\nprofile saved to {write_json(out, result, default=_json_default)}")
    return result


def main_profile(args):
    """Entry point of ``python -m fastsyn.bench.profile``.

    Parameters
    ----------
    args : argparse.Namespace
        ``pair``, ``fixed``, ``moving``, ``metric``, ``threads``, ``out`` and
        optionally ``levels`` (``"20,10,5"`` or a list), ``no_dipy``,
        ``no_lines``.

    Returns
    -------
    int
        Exit status.
    """
    profile_command(pair=getattr(args, "pair", None), fixed=getattr(args, "fixed", None),
                    moving=getattr(args, "moving", None),
                    metric=getattr(args, "metric", None) or "cc",
                    threads=getattr(args, "threads", None),
                    levels=getattr(args, "levels", None),
                    line_profile=not getattr(args, "no_lines", False),
                    include_dipy=not getattr(args, "no_dipy", False),
                    out=getattr(args, "out", None))
    return 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":  # python -m fastsyn.bench.profile
    raise SystemExit(main_profile(build_parser().parse_args()))
