"""``fastsyn demo``: the main job on the embedded data, end to end.

1. accuracy: a few sampled pairs of ``embedded-mono`` (CC) and
   ``embedded-multi`` (MI), every installed method (fastsyn in DIPY's and in
   ANTs' configuration, stock DIPY, ANTs, greedy) from the same rigid
   prealignment, and fastsyn CC on the same multimodal pairs (CC across
   contrasts: the failing reference); tables printed;
2. speed: stock DIPY, fastsyn serial and threaded, ANTs and greedy, timed
   side by side (a small size, so the whole job stays near ten minutes on
   two cores);
3. profile: the stage breakdown of one registration, fastsyn next to DIPY;
4. report: ``<out>/index.html``, one self-contained page.

Finished pairs are stored in the results folder: running it again only
redoes what is missing.
"""

import time
from pathlib import Path

__all__ = ["DEFAULTS", "QUICK", "run_demo"]

# fastsyn in both configurations (DIPY's and ANTs'), so that the accuracy
# tables show what the ANTs mode changes next to ANTs itself
MONO_METHODS = ("fastsyn", "fastsyn-ants", "dipy", "ants", "greedy")
MULTI_METHODS = ("fastsyn", "fastsyn-ants", "ants", "greedy")
#: CC across contrasts on embedded-multi: the reference that must fail (its
#: Dice falls below the rigid baseline while MI gains), to show the cohort
#: tells a working multimodal registration from a broken one.
MULTI_CC_METHODS = ("fastsyn",)

#: Settings of the standard demo (about ten minutes on two cores).
DEFAULTS = {"sample": 2, "levels": (10, 10, 5), "resolution": 3.0, "speed_size": 64,
            "speed_levels": (20, 20, 10), "repeat": 3, "profile_levels": (10, 10, 5)}
#: Settings of ``--quick``: every step on tiny inputs (about a minute), to
#: check an installation rather than to measure anything.
QUICK = {"sample": 1, "levels": (4, 2), "resolution": 6.0, "speed_size": 32,
         "speed_levels": (4, 2), "repeat": 1, "profile_levels": (4, 2)}


def _banner(text):
    print(f"\n=== {text} ===", flush=True)


def run_demo(out="reports", *, results=None, quick=False, sample=None, seed=0,
             threads=None, levels=None, resolution=None, speed_size=None, speed_levels=None,
             repeat=None, profile_levels=None):
    """Run the demo and write its report.

    Parameters
    ----------
    out : str or Path, optional
        Report folder (created); also holds ``speed.json`` and ``profile.json``.
    results : str or Path, optional
        Results store (default ``out/results``); finished pairs are kept.
    quick : bool, optional
        Take the settings left at None from :data:`QUICK` instead of
        :data:`DEFAULTS`, and time the prealignment with the speed run's
        quick pyramid.
    sample : int, optional
        Pairs per embedded cohort.
    seed : int, optional
        Seed of the pair sample.
    threads : int, optional
        Threads per registration (default: the OpenMP default, all CPUs).
    levels : sequence of int, optional
        SyN iterations per level of the accuracy runs.
    resolution : float, optional
        Voxel size (mm) of the embedded cohorts.
    speed_size : int, optional
        Edge of the speed cases (voxels).
    speed_levels : sequence of int, optional
        SyN iterations per level of the speed runs.
    repeat : int, optional
        Interleaved speed rounds.
    profile_levels : sequence of int, optional
        SyN iterations per level of the profiled registration.

    Returns
    -------
    Path
        The written ``index.html``.
    """
    from fastsyn._threads import resolve_num_threads
    from fastsyn.bench import profile as bench_profile
    from fastsyn.bench import report as bench_report
    from fastsyn.bench import speed as bench_speed
    from fastsyn.bench.methods import get_method
    from fastsyn.bench.run import run_benchmark
    from fastsyn.bench.store import ResultStore
    from fastsyn.bench.tables import format_table, summary_table

    given = {"sample": sample, "levels": levels, "resolution": resolution,
             "speed_size": speed_size, "speed_levels": speed_levels, "repeat": repeat,
             "profile_levels": profile_levels}
    cfg = {k: (v if v is not None else (QUICK if quick else DEFAULTS)[k])
           for k, v in given.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(results) if results else out / "results"
    threads = resolve_num_threads(threads, name="threads")
    start = time.perf_counter()

    jobs = [("embedded-mono", "cc", MONO_METHODS), ("embedded-multi", "mi", MULTI_METHODS),
            ("embedded-multi", "cc", MULTI_CC_METHODS)]
    for dataset, metric, methods in jobs:
        usable = [m for m in methods if get_method(m).available(metric)[0]]
        missing = sorted(set(methods) - set(usable))
        _banner(f"{dataset}: {cfg['sample']} sampled pair(s), metric {metric.upper()}, "
                f"methods {', '.join(usable)}"
                + (f" (not installed: {', '.join(missing)})" if missing else ""))
        run_benchmark(dataset, usable, metric, sample=cfg["sample"], seed=seed,
                      threads=threads, levels=cfg["levels"], results_dir=results, workers=1,
                      progress=True, resolution=cfg["resolution"])

    records = ResultStore(results).records()
    for dataset in dict.fromkeys(d for d, _, _ in jobs):
        _banner(f"accuracy: {dataset}")
        print(format_table(summary_table(records, dataset), "markdown"), end="", flush=True)

    _banner("speed: stock DIPY vs fastsyn (1 and all threads) vs ANTs / greedy")
    bench_speed.speed_command(size=cfg["speed_size"], levels=cfg["speed_levels"],
                              repeat=cfg["repeat"], threads=threads, metrics=("cc", "mi"),
                              out=out / "speed.json", quick=quick)

    _banner("profile: stage breakdown of one registration")
    bench_profile.profile_command(pair="pair3d", metric="cc", threads=threads,
                                  levels=cfg["profile_levels"], line_profile=False,
                                  out=out / "profile.json")

    _banner("report")
    page = bench_report.write_report(results, out, speed_json=out / "speed.json",
                                     profile_json=out / "profile.json")
    minutes = (time.perf_counter() - start) / 60
    print(f"\nDone in {minutes:.1f} min. Open the report: {Path(page).resolve()}")
    return page
