"""``fastsyn prepare``: convert a public dataset to the harness's folder layout."""

from pathlib import Path

from ._common import positive_float

#: Datasets with a converter in :mod:`fastsyn.bench.convert`, ``spm12`` (the
#: real-anatomy study set of :mod:`fastsyn.bench.realset` from a copy of
#: SPM12), ``niivue`` (that set, from the shipped SPM12 images, plus the
#: single-scan T1 and PD of a copy of niivue-demo-images) and ``thick-slices``
#: (a set of fastsyn's layout with some subjects in thick slices).
DATASETS = ("lpba40", "mrbrains18", "oasis", "spm12", "niivue", "thick-slices")


def add_parser(sub):
    """Register ``fastsyn prepare`` on an argparse subparsers object."""
    p = sub.add_parser("prepare", help="convert a public dataset to the folder layout",
                       description="spm12: the real-anatomy study set (the 'real' "
                                   "dataset) from SRC = a copy of SPM12 (its canonical/ "
                                   "folder); niivue: that set plus the subject 'chris' "
                                   "(real single-scan T1 and PD, CC BY-NC 4.0) from SRC = "
                                   "a copy of github.com/niivue/niivue-demo-images; "
                                   "thick-slices: SRC = a set (a folder of fastsyn's "
                                   "layout, or a dataset name such as real) with the "
                                   "subjects of --subjects in slices of --slices planes")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("src", metavar="SRC", help="dataset as distributed (thick-slices: a set)")
    p.add_argument("dst", metavar="DST", help="output folder")
    p.add_argument("--resolution", type=positive_float, default=2.0, metavar="MM",
                   help="spm12 and niivue: voxel size of the set (default 2, SPM's grid; "
                        "1 samples chris and the template-based subjects at 1 mm); "
                        "thick-slices: of SRC when it is the name 'real'")
    p.add_argument("--slices", type=int, metavar="K",
                   help="thick-slices: planes averaged into one slice (2 or more)")
    p.add_argument("--axis", type=int, default=2, choices=(0, 1, 2),
                   help="thick-slices: voxel axis across the slices (default 2)")
    p.add_argument("--subjects", metavar="S1,S2,...",
                   help="thick-slices: the subjects to thicken (default all)")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn prepare``; returns the exit status."""
    from fastsyn.bench.convert import CONVERTERS

    # The converter checks SRC and DST itself (FileNotFoundError, ValueError).
    src, dst = Path(args.src), Path(args.dst)
    if args.dataset != "thick-slices":
        stray = [f"--{k}" for k in ("slices", "subjects") if getattr(args, k) is not None]
        stray += ["--axis"] if args.axis != 2 else []
        if stray:
            raise ValueError(f"{', '.join(stray)} applies to thick-slices, not {args.dataset}")
    if args.dataset in ("spm12", "niivue"):
        from fastsyn.bench.datasets import load_dataset
        from fastsyn.bench.realset import SYNTHETIC_COHORT, build_real_set

        if not src.expanduser().is_dir():
            what = "SPM12" if args.dataset == "spm12" else "niivue-demo-images"
            raise FileNotFoundError(f"{what} folder not found: {src}")
        folder = {"spm_dir" if args.dataset == "spm12" else "niivue_dir": src}
        # build_real_set checks the resolution before it loads the cohort
        cohort = {**SYNTHETIC_COHORT, "resolution": args.resolution}
        dataset = build_real_set(dst, **folder, resolution=args.resolution,
                                 synthetic_cohort=lambda: load_dataset(**cohort))
    elif args.dataset == "thick-slices":
        from fastsyn.bench.datasets import load_dataset, thick_slices

        if args.slices is None:
            raise ValueError("thick-slices needs --slices K (planes per slice, 2 or more)")
        subjects = None if args.subjects is None else \
            [s.strip() for s in args.subjects.split(",") if s.strip()]
        dataset = thick_slices(load_dataset(str(src), resolution=args.resolution), dst,
                               slices=args.slices, axis=args.axis, subjects=subjects)
    else:
        if args.resolution != 2.0:
            raise ValueError(f"--resolution applies to spm12, niivue and thick-slices, not "
                             f"{args.dataset}")
        dataset = CONVERTERS[args.dataset](src, dst)
    print(f"prepared {args.dataset} from {src} into {dst}: {len(dataset)} subjects, "
          f"modalities {', '.join(dataset.modalities)}")
    return 0
