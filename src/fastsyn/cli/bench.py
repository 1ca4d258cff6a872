"""``fastsyn bench run|table|speed|agreement|study|costs|tracks|noise|gate``: accuracy and speed
benchmarks (the last four in :mod:`fastsyn.cli._gate`)."""

import json
import sys
from pathlib import Path

from ._common import (
    CommandError,
    int_list,
    level_list,
    positive_float,
    positive_int,
    thread_list,
)


def thread_counts(text):
    """argparse type: positive thread counts (more than the CPUs is allowed)."""
    return int_list(text, minimum=1)


def add_parser(sub):
    """Register ``fastsyn bench`` and its subcommands."""
    p = sub.add_parser("bench", help="accuracy and speed benchmarks")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    _add_run(bsub)
    _add_table(bsub)
    _add_speed(bsub)
    _add_roofline(bsub)
    _add_scaling(bsub)
    _add_agreement(bsub)
    _add_study(bsub)
    from ._gate import add_costs, add_gate, add_noise, add_tracks

    add_costs(bsub)
    add_tracks(bsub)
    add_noise(bsub)
    add_gate(bsub)
    return p


def _names(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def _metric_list(text, allowed=("cc", "mi")):
    """``--metric``: a comma-separated list of the ``allowed`` metrics."""
    metrics = tuple(_names(text))
    if not metrics or any(m not in allowed for m in metrics):
        raise CommandError(f"--metric must list {' and/or '.join(allowed)}, got {text!r}")
    return metrics


# ------------------------------------------------------------------- bench run
def _add_run(bsub):
    p = bsub.add_parser("run", help="register and evaluate a cohort (resumable)")
    p.add_argument("--dataset", required=True, metavar="NAME_OR_DIR",
                   help="embedded-mono, embedded-multi, real, real-heads or a dataset folder")
    p.add_argument("--methods", required=True, metavar="LIST",
                   help="comma-separated: fastsyn,dipy,ants,greedy")
    p.add_argument("--metric", required=True, choices=("cc", "mi"))
    p.add_argument("--modalities", default=None, metavar="LIST",
                   help="comma-separated modalities to pair, e.g. t1,t2")
    p.add_argument("--sample", type=positive_int, default=None, metavar="N",
                   help="run N pairs drawn with --seed (default: all pairs)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--threads", type=positive_int, default=1, metavar="T",
                   help="threads per registration (default 1)")
    p.add_argument("--levels", type=level_list, default=(20, 20, 10), metavar="L1,L2,...",
                   help="iterations per level, coarsest first (default 20,20,10)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="W",
                   help="concurrent pairs (default cores // threads)")
    p.add_argument("--dask", default=None, metavar="local|ADDRESS",
                   help="run on Dask: a LocalCluster or a scheduler address")
    p.add_argument("--resolution", type=positive_float, default=2.0, metavar="MM",
                   help="voxel size of the embedded cohorts and of the real set "
                        "(default 2)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache for built cohorts and prealigned pairs")
    p.add_argument("--prealign", default="fastsyn", choices=("fastsyn", "dipy", "ants", "greedy"),
                   help="rigid prealignment of every pair (default fastsyn); recorded in "
                        "each record and cache key")
    p.add_argument("--results", required=True, metavar="RESULTS_DIR")
    p.add_argument("--masks", default="none", choices=("none", "nonzero", "brain"),
                   help="masks handed to every method that accepts them: none (default), "
                        "the nonzero voxels of each image, or the brain mask (the "
                        "dataset's mask.nii.gz, else nonzero voxels); recorded in each "
                        "result's configuration")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_run)


def run_run(args):
    """Handler of ``fastsyn bench run``; returns the exit status."""
    from fastsyn.bench.datasets import NAMED
    from fastsyn.bench.methods import METHODS
    from fastsyn.bench.run import run_benchmark

    methods = _names(args.methods)
    if not methods:
        raise CommandError("--methods must name at least one method")
    unknown = [m for m in methods if m.lower() not in METHODS]
    if unknown:
        raise CommandError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if args.dataset not in NAMED and not Path(args.dataset).expanduser().is_dir():
        raise CommandError(f"unknown dataset {args.dataset!r}: neither "
                           f"{' nor '.join(NAMED)} nor an existing folder")
    try:
        summary = run_benchmark(
            args.dataset, methods, args.metric,
            modalities=_names(args.modalities) if args.modalities else None,
            sample=args.sample, seed=args.seed, threads=args.threads, levels=args.levels,
            results_dir=args.results, workers=args.workers, dask=args.dask,
            progress=not args.quiet, resolution=args.resolution, cache_dir=args.cache_dir,
            prealign=args.prealign, masks=args.masks)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished record is kept; rerun the same "
              "command to continue", file=sys.stderr)
        return 130
    for name, reason in summary["unavailable"].items():
        print(f"method {name}: unavailable ({reason})", file=sys.stderr)
    print(f"{summary['dataset']}: {summary['pairs']} pairs, {summary['skipped']} "
          f"already finished, {summary['ok']} records written, "
          f"{summary['errors']} errors -> {summary['results_dir']}")
    return 1 if summary["errors"] else 0


# ----------------------------------------------------------------- bench table
def _add_table(bsub):
    p = bsub.add_parser("table", help="summary table of a results folder")
    p.add_argument("--results", required=True, metavar="RESULTS_DIR")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"))
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--throughput", action="store_true",
                   help="pairs per hour per method and for the whole run (prealign + "
                        "methods + evaluation), with projected wall times of LPBA40 and "
                        "MRBrainS18 (markdown or json)")
    p.add_argument("--cores", type=positive_int, default=2,
                   help="cores of the machine projected with --throughput (default 2)")
    p.set_defaults(func=run_table)


def run_table(args):
    """Handler of ``fastsyn bench table``; returns the exit status."""
    from fastsyn.bench.store import ResultStore

    if not Path(args.results).is_dir():
        raise CommandError(f"results folder not found: {args.results}")
    records = ResultStore(args.results).records()
    datasets = sorted({r.get("dataset") for r in records if r.get("dataset")})
    if args.dataset:
        if args.dataset not in datasets:
            raise CommandError(f"no records of dataset {args.dataset!r} in {args.results}")
        datasets = [args.dataset]
    if not datasets:
        raise CommandError(f"no records in {args.results}")
    if args.throughput:
        from fastsyn.bench.throughput import format_throughput

        if args.format == "csv":
            raise CommandError("--throughput prints markdown or json, not csv")
        print(format_throughput(records, datasets, args.format, cores=args.cores), end="")
        return 0
    print(_tables_text(records, datasets, args.format), end="")
    return 0


def _tables_text(records, datasets, fmt):
    """The summary tables of ``datasets`` in one output format."""
    from fastsyn.bench.tables import format_table, summary_table, table_json

    if fmt == "json":
        out = {d: table_json(summary_table(records, d)) for d in datasets}
        return json.dumps(out, indent=2) + "\n"
    parts = []
    for i, d in enumerate(datasets):
        rows = summary_table(records, d)
        if fmt == "markdown":
            parts.append(f"{'' if i == 0 else chr(10)}### {d}\n\n")
            parts.append(format_table(rows, "markdown"))
            errs = [f"{r['Method']}: {r['errors']}" for r in rows if r["errors"]]
            if errs:
                parts.append(f"\nfailed pairs — {', '.join(errs)}\n")
        else:  # csv: one table, the dataset as first column
            lines = format_table(rows, "csv").splitlines()
            if i == 0:
                parts.append(f"Dataset,{lines[0]}\n")
            parts.extend(f"{d},{line}\n" for line in lines[1:])
    return "".join(parts)


# ----------------------------------------------------------------- bench speed
def _add_grid(p):
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--size", type=positive_int, default=None, metavar="N",
                      help="the brain's bounding box zoomed to a longest edge of N voxels; "
                           "kernels on N^3 (default 128; 64 with --quick)")
    grid.add_argument("--resolution", type=positive_float, default=None, metavar="MM",
                      help="the whole MNI152 grid at MM mm instead (1: 197x233x189, a real "
                           "brain size); kernels on the same grid")


def _grid(args):
    """The grid of --size / --resolution (None: the command's default)."""
    if args.resolution is not None:
        return f"{args.resolution:g}mm"
    return args.size


def _add_speed(bsub):
    p = bsub.add_parser("speed", help="kernel and end-to-end timings")
    _add_grid(p)
    p.add_argument("--threads", type=thread_list, default=None, metavar="T1,T2,...",
                   help="fastsyn thread counts to time, e.g. 1,2,4 or 'all' (default "
                        "1,all); one thread is always timed, as the serial reference")
    p.add_argument("--repeat", type=positive_int, default=3)
    p.add_argument("--levels", type=level_list, default=None,
                   help="SyN iterations per level (default 20,20,10; 4,4,2 with --quick)")
    p.add_argument("--metric", default="cc,mi",
                   help="SyN metrics to time (default cc,mi; mi-pv: MI with partial-volume "
                        "histograms on every level, not only the coarse ones, timed "
                        "against the tools' MI)")
    p.add_argument("--external", default=None,
                   help="tools timed alongside (default: ants,greedy when installed; "
                        "'' for none)")
    p.add_argument("--ants-cc", action="store_true",
                   help="also time ANTs with CC (many minutes at 128^3)")
    p.add_argument("--no-syn", action="store_true", help="kernels only")
    p.add_argument("--no-prealign", action="store_true",
                   help="skip the rigid/affine prealignment rows")
    p.add_argument("--no-ants-mode", action="store_true",
                   help="do not time fastsyn's ANTs mode (fastsyn.ants_like) beside the "
                        "default")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.add_argument("--quick", action="store_true",
                   help="small defaults (64^3, levels 4,4,2) for a first look")
    p.set_defaults(func=run_speed)


def run_speed(args):
    """Handler of ``fastsyn bench speed``; returns the exit status."""
    from fastsyn.bench import speed

    metrics = _metric_list(args.metric, allowed=("cc", "mi", "mi-pv"))
    speed.speed_command(
        size=_grid(args), levels=args.levels, repeat=args.repeat, threads=args.threads,
        metrics=metrics, include_syn=not args.no_syn,
        external=None if args.external is None else tuple(_names(args.external)),
        ants_cc=args.ants_cc, out=args.out, quick=args.quick,
        include_prealign=not (args.no_prealign or args.no_syn),
        ants_mode=not args.no_ants_mode)
    return 0


# -------------------------------------------------------- roofline and scaling
def _add_roofline(bsub):
    p = bsub.add_parser("roofline", help="kernel time per voxel against the memory bandwidth")
    p.add_argument("--size", type=positive_int, default=128, metavar="N",
                   help="edge of the cubic float32 case (default 128)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="T",
                   help="threads (default: all CPUs)")
    p.add_argument("--repeat", type=positive_int, default=3, metavar="R")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.set_defaults(func=run_roofline)


def run_roofline(args):
    """Handler of ``fastsyn bench roofline``."""
    from fastsyn.bench.roofline import format_roofline, roofline

    result = roofline(args.size, threads=args.threads, repeat=args.repeat)
    print(format_roofline(result))
    _write_json(args.out, result)
    return 0


def _add_scaling(bsub):
    p = bsub.add_parser("scaling", help="speed-up and parallel efficiency over thread counts")
    _add_grid(p)
    p.add_argument("--threads", type=thread_counts, default=(1, 2, 4, 8, 16), metavar="LIST",
                   help="thread counts (default 1,2,4,8,16; counts above the CPUs are "
                        "reported as not measured)")
    p.add_argument("--levels", type=level_list, default=(20, 20, 10), metavar="L1,L2,...")
    p.add_argument("--no-syn", action="store_true", help="kernels only")
    p.add_argument("--repeat", type=positive_int, default=3, metavar="R")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.set_defaults(func=run_scaling)


def run_scaling(args):
    """Handler of ``fastsyn bench scaling``."""
    from fastsyn.bench.roofline import format_scaling, scaling

    result = scaling(_grid(args) or 128, threads=args.threads, repeat=args.repeat, syn=not args.no_syn,
                     levels=args.levels)
    print(format_scaling(result))
    _write_json(args.out, result)
    return 0


def _write_json(path, result):
    if path:
        from fastsyn.bench.store import write_json

        print(f"wrote {write_json(path, result)}")



# ------------------------------------------------------------- bench agreement
def _add_agreement(bsub):
    p = bsub.add_parser("agreement",
                        help="distance of fastsyn's fields (DIPY and ANTs mode) to ANTs'")
    p.add_argument("--pairs", default="pair3d,pair3d_multimodal", metavar="LIST",
                   help="shipped pairs to register (default pair3d,pair3d_multimodal; "
                        "'' for none)")
    p.add_argument("--dataset", default=None, metavar="NAME_OR_DIR",
                   help="also register prealigned pairs of this cohort, e.g. embedded-multi")
    p.add_argument("--sample", type=positive_int, default=2, metavar="N",
                   help="pairs of --dataset drawn with --seed (default 2)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--resolution", type=positive_float, default=3.0, metavar="MM",
                   help="voxel size of the embedded cohorts (default 3)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache for built cohorts and prealigned pairs")
    p.add_argument("--metric", default="cc,mi", metavar="LIST",
                   help="metrics: cc and/or mi (default cc,mi)")
    p.add_argument("--levels", type=level_list, default=(20, 20, 10), metavar="L1,L2,...",
                   help="iterations per level, coarsest first, for every method "
                        "(default 20,20,10)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="T",
                   help="threads of every method (default 1)")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.set_defaults(func=run_agreement)


def run_agreement(args):
    """Handler of ``fastsyn bench agreement``; returns the exit status."""
    from fastsyn.bench import agreement
    from fastsyn.bench.datasets import NAMED
    from fastsyn.bench.methods import get_method
    from fastsyn.data import PAIRS

    metrics = _metric_list(args.metric)
    pairs = tuple(_names(args.pairs))
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        raise CommandError(f"unknown pair(s) {unknown}; choose from {', '.join(PAIRS)}")
    if args.dataset is not None and args.dataset not in NAMED \
            and not Path(args.dataset).expanduser().is_dir():
        raise CommandError(f"unknown dataset {args.dataset!r}: neither "
                           f"{' nor '.join(NAMED)} nor an existing folder")
    if not pairs and args.dataset is None:
        raise CommandError("nothing to register: give --pairs or --dataset")
    for name in (agreement.REFERENCE, *agreement.CONFIGS):
        for metric in metrics:
            ok, reason = get_method(name).available(metric)
            if not ok:
                raise CommandError(f"method {name!r} cannot run {metric}: {reason}")
    result = agreement.agreement_command(
        pairs=pairs, dataset=args.dataset, sample=args.sample, seed=args.seed,
        resolution=args.resolution, cache_dir=args.cache_dir, metrics=metrics,
        levels=args.levels, threads=args.threads, out=args.out)
    failed = [r for r in result["records"] if "error" in r]
    for r in failed:
        print(f"{r['pair']} {r['metric']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------- bench study
def _add_study(bsub):
    p = bsub.add_parser("study", help="MI accuracy study: fastsyn MI settings against "
                                      "ANTs Mattes and greedy NMI (resumable)")
    p.add_argument("--dataset", default="embedded-multi", metavar="NAME_OR_DIR",
                   help="a multimodal cohort: embedded-multi (default), real, real-heads "
                        "(real with the SPM subjects' whole heads) or a dataset folder")
    p.add_argument("--resolution", type=positive_float, default=2.0, metavar="MM",
                   help="voxel size of the embedded cohorts and of the real set "
                        "(default 2)")
    p.add_argument("--sample", type=positive_int, default=None, metavar="N",
                   help="pairs, balanced over the cross-modality directions (default 12 "
                        "of an embedded cohort, every pair of another dataset)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--half", default=None, choices=("tune", "report"),
                   help="one half of the pairs: choose settings on 'tune', report on "
                        "'report' (default: all the pairs)")
    p.add_argument("--pairs-with", default=None, metavar="SUBJECTS",
                   help="only the pairs with one of these subjects (comma-separated; "
                        "shell-style patterns such as 'sub-*' match several) on either "
                        "side, e.g. the subjects a prepared set adds")
    p.add_argument("--levels", type=level_list, default=(20, 20, 10), metavar="L1,L2,...",
                   help="iterations per level, coarsest first (default 20,20,10)")
    p.add_argument("--grid", default="default", choices=("default", "quick", "syn", "none"),
                   help="default: one factor at a time (bins, masks, clipping, sigma_diff, "
                        "step length, sampling, pyramid, scale-space smoothing, total-field "
                        "smoothing, inversion "
                        "iterations, re-inversion, inversion sweeps, fused inversion, fold "
                        "repair, step percentile, moving share) and the ANTs mode, then the "
                        "combination of the winners; syn: the optimizer's factors only "
                        "(sigma_diff, step length, pyramid, ss_sigma_factor, total_sigma, "
                        "reinvert, "
                        "inversion sweeps, fused inversion, fold repair, step percentile, "
                        "moving share); quick: 16 bins and brain masks; "
                        "none: the default only (with --setting; mask_rule=either|both, "
                        "mask_margin=VOXELS and auto_masks=true|false only there)")
    p.add_argument("--setting", action="append", default=[], metavar="SPEC",
                   help="one more setting, e.g. nbins=16+clip=1:99 or ants-mode "
                        "(repeatable)")
    p.add_argument("--no-combine", action="store_true",
                   help="do not run the combinations of the winners")
    p.add_argument("--anchors", default="ants,greedy", metavar="LIST",
                   help="anchor methods to run: ants (ANTs Mattes), greedy (greedy NMI) "
                        "(default ants,greedy)")
    p.add_argument("--no-anchors", action="store_true",
                   help="do not run ANTs Mattes and greedy NMI")
    p.add_argument("--anchor-masks", default="none", metavar="LIST",
                   help="masks values of the anchors, e.g. none,brain (default none)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="T",
                   help="threads per registration (default 1)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="W",
                   help="concurrent pairs (default 1)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache for built cohorts and prealigned pairs")
    p.add_argument("--results", required=True, metavar="RESULTS_DIR")
    p.add_argument("--format", default="markdown", choices=("markdown", "json"))
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_study)


def run_study(args):
    """Handler of ``fastsyn bench study``; returns the exit status."""
    from fastsyn.bench import study
    from fastsyn.bench.datasets import EMBEDDED, NAMED
    from fastsyn.bench.run import MASK_MODES

    if args.dataset not in NAMED and not Path(args.dataset).expanduser().is_dir():
        raise CommandError(f"unknown dataset {args.dataset!r}: neither "
                           f"{' nor '.join(NAMED)} nor an existing folder")
    try:
        settings = [study.parse_setting(s) for s in args.setting]
    except ValueError as exc:
        raise CommandError(f"--setting: {exc}") from None
    anchor_masks = _names(args.anchor_masks)
    bad = [m for m in anchor_masks if m not in MASK_MODES]
    if not anchor_masks or bad:
        raise CommandError(f"--anchor-masks must list values of {MASK_MODES}, "
                           f"got {args.anchor_masks!r}")
    anchors = _names(args.anchors)
    try:
        study.anchor_settings(methods=anchors)    # the library's check, before any work
    except ValueError:
        raise CommandError(f"--anchors must list some of {', '.join(study.ANCHORS)}, "
                           f"got {args.anchors!r}") from None
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        rows = study.run_study(
            args.dataset, results_dir=args.results, resolution=args.resolution,
            sample=(args.sample if args.sample is not None
                    else 12 if args.dataset in EMBEDDED else None),
            seed=args.seed, half=args.half,
            pairs_with=None if args.pairs_with is None else _names(args.pairs_with),
            levels=args.levels, grid=args.grid,
            settings=settings, anchors=False if args.no_anchors else anchors,
            anchor_masks=anchor_masks,
            combine=False if args.no_combine else None, threads=args.threads,
            workers=args.workers, cache_dir=args.cache_dir, progress=not args.quiet,
            log=log)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished record is kept; rerun the same "
              "command to continue", file=sys.stderr)
        return 130
    print(study.format_study(rows, args.format), end="")
    return 1 if any(r["errors"] for r in rows) else 0
