"""``fastsyn demo``: the main job on the embedded data, end to end.

1. accuracy: a few sampled pairs of ``embedded-mono`` (CC) and
   ``embedded-multi`` (MI), every installed method (fastsyn, stock DIPY,
   ANTs, greedy) from the same rigid prealignment; tables printed;
2. speed: stock DIPY, fastsyn serial and threaded, ANTs and greedy, timed
   side by side (a small size, so the whole job stays near ten minutes on
   two cores);
3. profile: the stage breakdown of one registration, fastsyn next to DIPY;
4. report: ``<out>/index.html``, one self-contained page.

Finished pairs are stored in the results folder: running it again only
redoes what is missing.
"""

import argparse
import time
from pathlib import Path

__all__ = ["main_demo"]

MONO_METHODS = ("fastsyn", "dipy", "ants", "greedy")
MULTI_METHODS = ("fastsyn", "ants", "greedy")


def _banner(text):
    print(f"\n=== {text} ===", flush=True)


def main_demo(args):
    """Run the demo; returns the path of the written report."""
    from fastsyn.bench import profile as bench_profile
    from fastsyn.bench import report as bench_report
    from fastsyn.bench import speed as bench_speed
    from fastsyn.bench.methods import get_method
    from fastsyn.bench.run import run_benchmark
    from fastsyn.bench.store import ResultStore
    from fastsyn.bench.tables import format_table, summary_table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else out / "results"
    levels = tuple(int(v) for v in args.levels.split(","))
    from fastsyn._threads import resolve_num_threads

    threads = resolve_num_threads(args.threads, name="--threads")
    start = time.perf_counter()

    jobs = [("embedded-mono", "cc", MONO_METHODS), ("embedded-multi", "mi", MULTI_METHODS)]
    for dataset, metric, methods in jobs:
        usable = [m for m in methods if get_method(m).available(metric)[0]]
        missing = sorted(set(methods) - set(usable))
        _banner(f"{dataset}: {args.sample} sampled pairs, metric {metric.upper()}, "
                f"methods {', '.join(usable)}"
                + (f" (not installed: {', '.join(missing)})" if missing else ""))
        run_benchmark(dataset, usable, metric, sample=args.sample, seed=args.seed,
                      threads=threads, levels=levels, results_dir=results, workers=1,
                      progress=True, resolution=args.resolution)

    records = ResultStore(results).records()
    for dataset, _, _ in jobs:
        _banner(f"accuracy: {dataset}")
        print(format_table(summary_table(records, dataset), "markdown"), end="", flush=True)

    _banner("speed: stock DIPY vs fastsyn (1 and all threads) vs ANTs / greedy")
    speed = bench_speed.main_speed(argparse.Namespace(
        quick=False, size=args.speed_size, levels=args.speed_levels, repeat=args.repeat,
        threads=threads, metric="cc,mi", no_syn=False, external=None, ants_cc=False,
        out=str(out / "speed.json")))
    del speed

    _banner("profile: stage breakdown of one registration")
    bench_profile.main_profile(argparse.Namespace(
        pair="pair3d", fixed=None, moving=None, metric="cc", threads=threads,
        out=str(out / "profile.json"), levels="10,10,5", no_dipy=False, no_lines=True))

    _banner("report")
    page = bench_report.write_report(results, out, speed_json=out / "speed.json",
                                     profile_json=out / "profile.json")
    minutes = (time.perf_counter() - start) / 60
    print(f"\nDone in {minutes:.1f} min. Open the report: {Path(page).resolve()}")
    return page


def add_parser(sub):
    """Register ``fastsyn demo`` on an argparse subparsers object."""
    p = sub.add_parser("demo", help="the main job: quick accuracy + speed benchmark "
                                    "on the embedded data, then the HTML report")
    p.add_argument("--out", default="reports", help="report folder (default: reports)")
    p.add_argument("--results", default=None,
                   help="results store (default: OUT/results; reruns skip finished pairs)")
    p.add_argument("--sample", type=int, default=2, help="pairs per dataset (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="threads per registration (default: all CPUs)")
    p.add_argument("--levels", default="10,10,5", help="SyN iterations per level")
    p.add_argument("--resolution", type=float, default=3.0,
                   help="embedded cohort voxel size in mm (default 3; 2 or 1 for real runs)")
    p.add_argument("--speed-size", type=int, default=64, help="speed case size (voxels)")
    p.add_argument("--speed-levels", default="20,20,10")
    p.add_argument("--repeat", type=int, default=3, help="interleaved speed rounds")
    p.set_defaults(func=lambda a: (main_demo(a), 0)[1])
    return p
