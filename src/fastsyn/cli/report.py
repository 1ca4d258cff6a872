"""``fastsyn report``: the self-contained HTML report."""

from pathlib import Path

from ._common import CommandError


def add_parser(sub):
    """Register ``fastsyn report`` on an argparse subparsers object."""
    p = sub.add_parser("report", help="HTML report of results, speed and profile")
    p.add_argument("--results", required=True, metavar="DIR",
                   help="results folder of 'fastsyn bench run'")
    p.add_argument("--speed", default=None, metavar="FILE",
                   help="JSON of 'fastsyn bench speed' (default: speed.json in DIR or OUT)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="JSON of 'fastsyn profile' (default: profile.json in DIR or OUT)")
    p.add_argument("--agreement", default=None, metavar="FILE",
                   help="JSON of 'fastsyn bench agreement' (default: agreement.json in DIR "
                        "or OUT)")
    p.add_argument("--roofline", default=None, metavar="FILE",
                   help="JSON of 'fastsyn bench roofline' (default: roofline.json in DIR or OUT)")
    p.add_argument("--scaling", default=None, metavar="FILE[,FILE...]",
                   help="JSON of 'fastsyn bench scaling', one table each (default: "
                        "scaling.json and scaling-*.json in DIR or OUT)")
    p.add_argument("--benchmarks", default=".benchmarks", metavar="DIR",
                   help="pytest-benchmark storage compared in the report "
                        "(default .benchmarks)")
    p.add_argument("--out", required=True, metavar="reports/")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn report``; returns the exit status."""
    from fastsyn.bench.report import write_report

    if not Path(args.results).is_dir():
        raise CommandError(f"results folder not found: {args.results}")
    scaling = None if args.scaling is None else [p for p in args.scaling.split(",") if p]
    for flag, path in (("--speed", args.speed), ("--profile", args.profile),
                       ("--agreement", args.agreement), ("--roofline", args.roofline),
                       *(("--scaling", p) for p in scaling or ())):
        if path is not None and not Path(path).is_file():
            raise CommandError(f"{flag} file not found: {path}")
    page = write_report(args.results, args.out, speed_json=args.speed,
                        profile_json=args.profile, agreement_json=args.agreement,
                        roofline_json=args.roofline, scaling_json=scaling,
                        benchmark_json_dir=args.benchmarks)
    print(f"report written to {page}")
    print(f"open it with: xdg-open {page.resolve()}  (or file://{page.resolve()})")
    return 0
