"""``fastsyn register FIXED MOVING --out PREFIX``: affine then SyN on two files."""

from pathlib import Path

from ._common import CommandError, level_list, positive_int

#: ``--partial-volume``'s words and MIMetric's ``partial_volume`` values.
PARTIAL_VOLUME = {"coarse": "coarse", "all": True, "none": False}


def add_parser(sub):
    """Register ``fastsyn register`` on an argparse subparsers object."""
    p = sub.add_parser(
        "register", help="register two NIfTI/Analyze images (affine, then SyN)",
        description="Register MOVING to FIXED (center of mass, translation, rigid, "
                    "affine, then SyN) and write PREFIXwarped.nii.gz, PREFIXaffine_ras.tsv "
                    "(DIPY's RAS matrix, not an ITK file), PREFIXaffine.mat (ITK), "
                    "PREFIXWarp.nii.gz and PREFIXInverseWarp.nii.gz (ANTs/ITK displacement "
                    "fields), PREFIXwarped_labels.nii.gz with --labels, and with --qc "
                    "PREFIXqc.html and PREFIXqc.png (a card to check the result by eye). "
                    "antsApplyTransforms -r FIXED -i MOVING -t PREFIXWarp.nii.gz "
                    "-t PREFIXaffine.mat reproduces the warped image.")
    p.add_argument("fixed", metavar="FIXED", help="fixed (reference) image")
    p.add_argument("moving", metavar="MOVING", help="moving image")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="output prefix, e.g. out/subj01_ (folders are created)")
    p.add_argument("--metric", default="cc", choices=("cc", "mi"),
                   help="SyN metric: cc (radius 4, same modality) or mi (default cc)")
    p.add_argument("--transform", default="syn", choices=("rigid", "affine", "syn"),
                   help="last stage (default syn: affine then SyN)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="threads (default: all CPUs)")
    p.add_argument("--levels", type=level_list, default=(20, 20, 10), metavar="L1,L2,...",
                   help="SyN iterations per level, coarsest first (default 20,20,10)")
    p.add_argument("--fixed-mask", default=None, metavar="M",
                   help="brain mask on the fixed grid (nonzero inside): restricts the affine "
                        "stage to it and, with --metric mi, registers a whole head stripped "
                        "by it (any other mask restricts SyN to the voxels either mask "
                        "holds); give masks for whole-head scans; a skull-stripped image "
                        "needs none (against a head it is masked by its nonzero region, and "
                        "between two stripped images MI sets their masks aside)")
    p.add_argument("--moving-mask", default=None, metavar="M",
                   help="brain mask on the moving grid, as --fixed-mask")
    p.add_argument("--no-auto-masks", action="store_true",
                   help="with --metric mi, take the masks exactly as given, as restrictions "
                        "of MI: do not strip a whole head by its brain mask, nor mask an "
                        "image that is zero where the other has signal (a skull-stripped "
                        "image against a whole head) by its nonzero region, nor set aside a "
                        "mask that leaves out only its image's zero background")
    p.add_argument("--partial-volume", nargs="?", const="all", default=None,
                   choices=PARTIAL_VOLUME, metavar="LEVELS",
                   help="with --metric mi, where histograms read each image's own voxels "
                        "(partial volume, as greedy) instead of interpolated values: "
                        "'coarse' (MI's default: every level but the finest), 'all' (the "
                        "flag alone; about 1.3x the SyN time) or 'none'")
    p.add_argument("--labels", default=None, metavar="L",
                   help="moving label map, warped nearest-neighbour")
    p.add_argument("--qc", action="store_true",
                   help="also write PREFIXqc.html and PREFIXqc.png: fixed and warped "
                        "images (flicker), checkerboard and log-Jacobian map")
    p.add_argument("--fixed-labels", default=None, metavar="L",
                   help="fixed label map: outlined on the QC card, and its Dice with the "
                        "warped --labels printed there")
    p.add_argument("--quiet", action="store_true", help="no per-level progress on stderr")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn register``; returns the exit status."""
    import sys

    from fastsyn.register import register_files

    if args.out.strip() == "":
        raise CommandError("--out must be a non-empty prefix")
    if args.partial_volume is not None and args.metric != "mi":
        raise CommandError("--partial-volume is an option of --metric mi")
    if args.fixed_labels is not None:
        if not args.qc:
            raise CommandError("--fixed-labels is drawn on the QC card: give --qc too")
        if not Path(args.fixed_labels).is_file():
            raise CommandError(f"fixed labels not found: {args.fixed_labels}")

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    res = register_files(args.fixed, args.moving, args.out, metric=args.metric,
                         transform=args.transform, threads=args.threads, levels=args.levels,
                         fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
                         labels=args.labels, auto_masks=not args.no_auto_masks,
                         partial_volume=PARTIAL_VOLUME.get(args.partial_volume), log=log)
    print(f"fastsyn register: {args.transform} {args.metric.upper()} in "
          f"{res['seconds']:.1f} s (affine {res['affine_seconds']:.1f} s, SyN "
          f"{res['syn_seconds']:.1f} s), final NCC {res['ncc']:.4f} -> "
          f"{res['files']['warped']}")
    if args.qc:
        from fastsyn.bench.register_card import write_registration_card

        html, _ = write_registration_card(args.out, args.fixed, args.moving, res,
                                          transform=args.transform, metric=args.metric,
                                          fixed_mask=args.fixed_mask,
                                          fixed_labels=args.fixed_labels)
        print(f"fastsyn register: QC card -> {html}")
    return 0
