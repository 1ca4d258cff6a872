"""``fastsyn profile``: per-stage time breakdown of one registration."""

from ._common import CommandError, level_list, positive_int


def add_parser(sub):
    """Register ``fastsyn profile`` on an argparse subparsers object."""
    p = sub.add_parser("profile", help="per-stage time breakdown of one registration, "
                                       "fastsyn next to stock DIPY")
    p.add_argument("--pair", default=None, metavar="NAME",
                   help="pair shipped with fastsyn (pair3d, pair3d_multimodal), "
                        "fixtures/NAME.npz or an .npz path (default pair3d)")
    p.add_argument("--fixed", default=None, metavar="F", help="fixed image (NIfTI or .npy)")
    p.add_argument("--moving", default=None, metavar="M", help="moving image (NIfTI or .npy)")
    p.add_argument("--metric", default="cc", choices=("cc", "mi"))
    p.add_argument("--threads", type=positive_int, default=None, metavar="T",
                   help="fastsyn threads (default: the OpenMP default)")
    p.add_argument("--levels", type=level_list, default=None, metavar="L1,L2,...",
                   help="iterations per level, coarsest first (default 20,10,5)")
    p.add_argument("--no-dipy", action="store_true", help="skip the stock DIPY run")
    p.add_argument("--no-lines", action="store_true", help="skip the line profile")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn profile``; returns the exit status."""
    from fastsyn.bench.profile import profile_command

    if (args.fixed is None) != (args.moving is None):
        raise CommandError("profile: give --pair NAME, or both --fixed and --moving")
    if args.pair is not None and args.fixed is not None:
        raise CommandError("profile: give --pair NAME or --fixed/--moving, not both")
    profile_command(pair=args.pair, fixed=args.fixed, moving=args.moving, metric=args.metric,
                    threads=args.threads, levels=args.levels,
                    line_profile=not args.no_lines, include_dipy=not args.no_dipy,
                    out=args.out)
    return 0
