"""``fastsyn prepare``: convert a public dataset to the harness's folder layout."""

from pathlib import Path

#: Datasets with a converter in :mod:`fastsyn.bench.convert`, and ``spm12``
#: (the real-anatomy study set of :mod:`fastsyn.bench.realset` from a copy of
#: SPM12).
DATASETS = ("lpba40", "mrbrains18", "oasis", "spm12")


def add_parser(sub):
    """Register ``fastsyn prepare`` on an argparse subparsers object."""
    p = sub.add_parser("prepare", help="convert a public dataset to the folder layout",
                       description="spm12: the real-anatomy study set (the 'real' "
                                   "dataset) from SRC = a copy of SPM12 (its canonical/ "
                                   "folder)")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("src", metavar="SRC", help="dataset as distributed")
    p.add_argument("dst", metavar="DST", help="output folder")
    p.set_defaults(func=run)
    return p


def run(args):
    """Handler of ``fastsyn prepare``; returns the exit status."""
    from fastsyn.bench.convert import CONVERTERS

    # The converter checks SRC and DST itself (FileNotFoundError, ValueError).
    src, dst = Path(args.src), Path(args.dst)
    if args.dataset == "spm12":
        from fastsyn.bench.datasets import load_dataset
        from fastsyn.bench.realset import SYNTHETIC_COHORT, build_real_set

        if not src.expanduser().is_dir():
            raise FileNotFoundError(f"SPM12 folder not found: {src}")
        dataset = build_real_set(dst, spm_dir=src,
                                 synthetic_cohort=lambda: load_dataset(**SYNTHETIC_COHORT))
    else:
        dataset = CONVERTERS[args.dataset](src, dst)
    print(f"prepared {args.dataset} from {src} into {dst}: {len(dataset)} subjects, "
          f"modalities {', '.join(dataset.modalities)}")
    return 0
