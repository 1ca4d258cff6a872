"""``fastsyn demo``: accuracy, speed, profile and report on the embedded data."""

from ._common import level_list, positive_float, positive_int


def add_parser(sub):
    """Register ``fastsyn demo`` on an argparse subparsers object."""
    p = sub.add_parser("demo", help="the main job: quick accuracy + speed benchmark "
                                    "on the embedded data, then the HTML report")
    p.add_argument("--out", default="reports", help="report folder (default: reports)")
    p.add_argument("--results", default=None,
                   help="results store (default: OUT/results; reruns skip finished pairs)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (one pair per cohort at 6 mm, 32^3 speed case, "
                        "few iterations): checks an installation in about a minute; "
                        "options given explicitly still apply")
    p.add_argument("--sample", type=positive_int, default=None,
                   help="pairs per dataset (default 2; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads per registration (default: all CPUs)")
    p.add_argument("--levels", type=level_list, default=None,
                   help="SyN iterations per level (default 10,10,5)")
    p.add_argument("--resolution", type=positive_float, default=None,
                   help="embedded cohort voxel size in mm (default 3; 2 or 1 for real runs)")
    p.add_argument("--speed-size", type=positive_int, default=None,
                   help="speed case size in voxels (default 64)")
    p.add_argument("--speed-levels", type=level_list, default=None,
                   help="SyN iterations per level of the speed case (default 20,20,10)")
    p.add_argument("--repeat", type=positive_int, default=None,
                   help="interleaved speed rounds (default 3)")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn demo``; returns the exit status."""
    from fastsyn.bench.demo import run_demo

    run_demo(args.out, results=args.results, quick=args.quick, sample=args.sample,
             seed=args.seed, threads=args.threads, levels=args.levels,
             resolution=args.resolution, speed_size=args.speed_size,
             speed_levels=args.speed_levels, repeat=args.repeat)
    return 0
