"""``fastsyn prepare``: convert a public dataset to the harness's folder layout."""

from pathlib import Path

from ._common import positive_float

#: Datasets with a converter in :mod:`fastsyn.bench.convert`, ``spm12`` (the
#: real-anatomy study set of :mod:`fastsyn.bench.realset` from a copy of
#: SPM12) and ``niivue`` (that set, from the shipped SPM12 images, plus the
#: single-scan T1 and PD of a copy of niivue-demo-images).
DATASETS = ("lpba40", "mrbrains18", "oasis", "spm12", "niivue")


def add_parser(sub):
    """Register ``fastsyn prepare`` on an argparse subparsers object."""
    p = sub.add_parser("prepare", help="convert a public dataset to the folder layout",
                       description="spm12: the real-anatomy study set (the 'real' "
                                   "dataset) from SRC = a copy of SPM12 (its canonical/ "
                                   "folder); niivue: that set plus the subject 'chris' "
                                   "(real single-scan T1 and PD, CC BY-NC 4.0) from SRC = "
                                   "a copy of github.com/niivue/niivue-demo-images")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("src", metavar="SRC", help="dataset as distributed")
    p.add_argument("dst", metavar="DST", help="output folder")
    p.add_argument("--resolution", type=positive_float, default=2.0, metavar="MM",
                   help="spm12 and niivue: voxel size of the set (default 2, SPM's grid; "
                        "1 samples chris and the template-based subjects at 1 mm)")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn prepare``; returns the exit status."""
    from fastsyn.bench.convert import CONVERTERS

    # The converter checks SRC and DST itself (FileNotFoundError, ValueError).
    src, dst = Path(args.src), Path(args.dst)
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
    else:
        if args.resolution != 2.0:
            raise ValueError(f"--resolution applies to spm12 and niivue, not {args.dataset}")
        dataset = CONVERTERS[args.dataset](src, dst)
    print(f"prepared {args.dataset} from {src} into {dst}: {len(dataset)} subjects, "
          f"modalities {', '.join(dataset.modalities)}")
    return 0
