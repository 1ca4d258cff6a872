"""``fastsyn prepare``: convert a public dataset to the harness's folder layout."""

from pathlib import Path

from ._common import positive_float

#: Datasets with a converter in :mod:`fastsyn.bench.convert`, ``spm12`` (the
#: real-anatomy study set of :mod:`fastsyn.bench.realset` from a copy of
#: SPM12), ``niivue`` (that set, from the shipped SPM12 images, plus the
#: single-scan T1 and PD of a copy of niivue-demo-images), ``ixi`` (that set
#: plus the T1, T2 and PD scans of a copy of IXI), ``bids`` (that set plus
#: the people of a BIDS dataset), ``thick-slices`` (a
#: set of fastsyn's layout with some subjects in thick slices), ``noisy``
#: (such a set with Rician noise added to some subjects) and ``biased`` (such
#: a set with a smooth intensity inhomogeneity on some subjects).
DATASETS = ("lpba40", "mrbrains18", "oasis", "spm12", "niivue", "ixi", "bids",
            "thick-slices", "noisy", "biased")
#: The sets built from people's scans (the real set plus them).
SCANS = ("ixi", "bids")
#: The derived sets: their SRC is a set, or a dataset name such as ``real``.
DERIVED = ("thick-slices", "noisy", "biased")
#: The subcommands that take --resolution (its default, 2, is SPM's grid).
RESOLUTION = ("spm12", "niivue") + SCANS + DERIVED
#: Options that only some subcommands take: option -> those subcommands.
ONLY_FOR = {"slices": ("thick-slices",), "axis": ("thick-slices",),
            "subjects": DERIVED + SCANS, "noise": ("noisy",), "bias": ("biased",),
            "seed": ("noisy", "biased")}


def add_parser(sub):
    """Register ``fastsyn prepare`` on an argparse subparsers object."""
    p = sub.add_parser("prepare", help="convert a public dataset to the folder layout",
                       description="spm12: the real-anatomy study set (the 'real' "
                                   "dataset) from SRC = a copy of SPM12 (its canonical/ "
                                   "folder); niivue: that set plus the subject 'chris' "
                                   "(real single-scan T1 and PD, CC BY-NC 4.0) from SRC = "
                                   "a copy of github.com/niivue/niivue-demo-images; "
                                   "ixi: that set plus IXI subjects (real single-scan T1, "
                                   "T2 and PD, CC BY-SA 3.0) from SRC = a folder holding "
                                   "IXI's T1, T2 and PD files (IXI002-Guys-0828-T1.nii.gz, "
                                   "...); bids: that set plus the people of SRC = a BIDS "
                                   "dataset (their T1w, T2w, PDw, FLAIR; each needs a "
                                   "T1w); ixi and bids: a rerun keeps the subjects it "
                                   "finished; "
                                   "thick-slices: SRC = a set (a folder of fastsyn's "
                                   "layout, or a dataset name such as real) with the "
                                   "subjects of --subjects in slices of --slices planes; "
                                   "noisy: SRC = such a set with Rician noise of --noise "
                                   "percent on the images of --subjects; biased: SRC = "
                                   "such a set with a smooth intensity inhomogeneity of "
                                   "up to --bias percent on the images of --subjects")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("src", metavar="SRC",
                   help="dataset as distributed (thick-slices, noisy, biased: a set)")
    p.add_argument("dst", metavar="DST", help="output folder")
    p.add_argument("--resolution", type=positive_float, default=2.0, metavar="MM",
                   help="spm12, niivue, ixi and bids: voxel size of the set (default 2, "
                        "SPM's grid; 1 samples chris, the scanned people and the "
                        "template-based subjects at 1 mm); "
                        "thick-slices, noisy, biased: of SRC when it is the name 'real'")
    p.add_argument("--slices", type=int, metavar="K",
                   help="thick-slices: planes averaged into one slice (2 or more)")
    p.add_argument("--axis", type=int, choices=(0, 1, 2),
                   help="thick-slices: voxel axis across the slices (default 2)")
    p.add_argument("--subjects", metavar="S1,S2,...",
                   help="thick-slices, noisy, biased: the subjects to change (default all); "
                        "ixi, bids: the people to add (IXI002,IXI012,... or sub-01,sub-02,...; "
                        "default all)")
    p.add_argument("--noise", type=positive_float, metavar="PCT",
                   help="noisy: noise standard deviation in percent of each image's 99th "
                        "percentile (BrainWeb's scans: 3 to 9)")
    p.add_argument("--bias", type=positive_float, metavar="PCT",
                   help="biased: the field's spread in percent, by which its largest "
                        "value over each image's signal exceeds its smallest (at most 100; "
                        "BrainWeb's scans: 20 or 40)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="noisy, biased: seed of the noise or the field (default 0)")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn prepare``; returns the exit status."""
    from fastsyn.bench.convert import CONVERTERS

    # The converter checks SRC and DST itself (FileNotFoundError, ValueError).
    src, dst = Path(args.src), Path(args.dst)
    given = {option: getattr(args, option) is not None for option in ONLY_FOR}
    given["resolution"] = args.resolution != 2.0
    for option, takers in {**ONLY_FOR, "resolution": RESOLUTION}.items():
        if given[option] and args.dataset not in takers:
            named = " and ".join(takers) if len(takers) < 3 else \
                f"{', '.join(takers[:-1])} and {takers[-1]}"
            raise ValueError(f"--{option} applies to {named}, not {args.dataset}")
    subjects = None if args.subjects is None else \
        [s.strip() for s in args.subjects.split(",") if s.strip()]
    if args.dataset in ("spm12", "niivue") + SCANS:
        from fastsyn.bench.datasets import load_dataset
        from fastsyn.bench.realset import SYNTHETIC_COHORT, build_real_set

        if not src.expanduser().is_dir():
            what = {"spm12": "SPM12", "niivue": "niivue-demo-images", "ixi": "IXI",
                    "bids": "BIDS"}
            raise FileNotFoundError(f"{what[args.dataset]} folder not found: {src}")
        if args.dataset in SCANS:
            folder = {"scans_dir": src, "scans_layout": args.dataset, "scan_subjects": subjects}
        else:
            folder = {"spm_dir" if args.dataset == "spm12" else "niivue_dir": src}
        # build_real_set checks the resolution before it loads the cohort
        cohort = {**SYNTHETIC_COHORT, "resolution": args.resolution}
        dataset = build_real_set(dst, **folder, resolution=args.resolution,
                                 synthetic_cohort=lambda: load_dataset(**cohort))
    elif args.dataset == "thick-slices":
        from fastsyn.bench.datasets import load_dataset, thick_slices

        if args.slices is None:
            raise ValueError("thick-slices needs --slices K (planes per slice, 2 or more)")
        dataset = thick_slices(load_dataset(str(src), resolution=args.resolution), dst,
                               slices=args.slices, axis=2 if args.axis is None else args.axis,
                               subjects=subjects)
    elif args.dataset == "noisy":
        from fastsyn.bench.datasets import load_dataset, noisy

        if args.noise is None:
            raise ValueError("noisy needs --noise PCT (noise in percent of each image's "
                             "99th percentile)")
        dataset = noisy(load_dataset(str(src), resolution=args.resolution), dst,
                        percent=args.noise, seed=0 if args.seed is None else args.seed,
                        subjects=subjects)
    elif args.dataset == "biased":
        from fastsyn.bench.datasets import biased, load_dataset

        if args.bias is None:
            raise ValueError("biased needs --bias PCT (the field's spread in percent)")
        dataset = biased(load_dataset(str(src), resolution=args.resolution), dst,
                         percent=args.bias, seed=0 if args.seed is None else args.seed,
                         subjects=subjects)
    else:
        dataset = CONVERTERS[args.dataset](src, dst)
    print(f"prepared {args.dataset} from {src} into {dst}: {len(dataset)} subjects, "
          f"modalities {', '.join(dataset.modalities)}")
    return 0
