"""The real-anatomy study set (`fastsyn.bench.realset`, dataset ``real``):
shipped images and their notice, tissue classes, sparse modalities, the
pairs it allows, the tune/report halves and `fastsyn prepare spm12`."""

import collections
import gzip
import json
from importlib.resources import files

import nibabel as nib
import numpy as np
import pytest
from conftest import cli_env, run_cli

from fastsyn.bench import realset, study
from fastsyn.bench.datasets import NAMED, load_dataset
from fastsyn.bench.pairs import make_pairs


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    cache = tmp_path_factory.mktemp("real-cache")
    return load_dataset("real", cache_dir=cache, progress=False), cache


def test_shipped_images_and_notice():
    root = files("fastsyn.data").joinpath("real")
    assert realset.shipped_images_available()
    notice = root.joinpath("NOTICE.txt").read_text()
    assert "Copyright (C) 1993-2004 Louis Collins" in notice and "SPM12" in notice
    for stem in realset.SPM12_IMAGES.values():
        raw = gzip.decompress(root.joinpath(f"{stem}.nii.gz").read_bytes())
        assert len(raw) == 902981  # SPM12's file, byte for byte (91x109x91 uint8)


def test_tissue_classes_orders_classes_by_intensity():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, size=(12, 13, 14))
    t1 = np.choose(truth - 1, [0.2, 0.55, 0.9]) + rng.normal(0, 0.03, truth.shape)
    mask = np.ones(truth.shape, bool)
    mask[0] = False
    labels = realset.tissue_classes(t1, mask)
    assert labels.dtype == np.int16 and (labels[0] == 0).all()
    assert np.mean(labels[mask] == truth[mask]) > 0.99
    with pytest.raises(ValueError, match="no contrast"):
        realset.tissue_classes(np.ones(truth.shape), mask)
    with pytest.raises(ValueError, match="shapes differ"):
        realset.tissue_classes(t1, mask[1:])


def test_real_set_subjects_labels_and_masks(real):
    ds, _ = real
    assert "real" in NAMED and ds.name == "real"
    have = {s.name: sorted(s.images) for s in ds.subjects}
    assert have == {"avg152": ["pd", "t1", "t2"], "avg305": ["t1"], "colin27": ["t1"],
                    "mni2009": ["t1"], "synthetic01": ["flair", "t2"],
                    "synthetic02": ["flair", "t2"]}
    assert sorted(ds.synthetic) == ["synthetic01", "synthetic02"]
    for s in ds.subjects:
        labels = np.asarray(nib.load(str(s.labels)).dataobj)
        mask = np.asarray(nib.load(str(s.mask)).dataobj) > 0
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert np.array_equal(labels > 0, mask)
        for path in s.images.values():
            img = np.asarray(nib.load(str(path)).dataobj)
            assert (img[~mask] == 0).all() and np.ptp(img[mask]) > 0  # skull-stripped


def test_real_pairs_cross_anatomies_and_contrasts(real):
    ds, _ = real
    pairs = make_pairs(ds)
    assert len(pairs) == 56
    names = {s.name: s for s in ds.subjects}
    for p in pairs:
        assert p.fixed != p.moving and p.fixed_modality != p.moving_modality
        assert p.fixed_modality in names[p.fixed].images
        assert p.moving_modality in names[p.moving].images
        assert not {p.fixed, p.moving} <= set(ds.synthetic)
    directions = collections.Counter(f"{p.fixed_modality}<-{p.moving_modality}"
                                     for p in pairs)
    assert directions["t1<-t2"] == directions["t2<-t1"] == 11
    assert directions["t1<-pd"] == directions["pd<-t1"] == 3
    assert "t2<-pd" in directions  # a PD anatomy against a synthetic T2


def test_study_halves_are_disjoint_and_cover_every_direction(real):
    ds, _ = real
    all_pairs = study.study_pairs(ds, 24, 0)
    tune = study.study_pairs(ds, 24, 0, "tune")
    report = study.study_pairs(ds, 24, 0, "report")
    assert not set(tune) & set(report) and set(tune) | set(report) == set(all_pairs)
    dirs = {study._direction(p) for p in all_pairs}
    assert len(dirs) == 12
    assert {study._direction(p) for p in tune} == dirs == {study._direction(p)
                                                           for p in report}
    with pytest.raises(ValueError, match="half"):
        study.study_pairs(ds, 24, 0, "train")


def test_prepare_spm12_from_a_copy_of_spm(real, tmp_path):
    """`fastsyn prepare spm12 SPM12_DIR DST` as a user runs it: the same set."""
    ds, cache = real
    canonical = tmp_path / "spm12" / "canonical"
    canonical.mkdir(parents=True)
    root = files("fastsyn.data").joinpath("real")
    for stem in realset.SPM12_IMAGES.values():
        (canonical / f"{stem}.nii").write_bytes(
            gzip.decompress(root.joinpath(f"{stem}.nii.gz").read_bytes()))
    env = cli_env(FASTSYN_CACHE=str(cache))
    dst = tmp_path / "real-from-spm"
    proc = run_cli(["prepare", "spm12", tmp_path / "spm12", dst], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "prepared spm12" in proc.stdout and "6 subjects" in proc.stdout
    stamp = json.loads((dst / "dataset.json").read_text())
    assert stamp["sparse_modalities"] and stamp["source"].startswith("SPM12 copy")
    for s in ds.subjects:
        for name in [*s.images, "labels", "mask"]:
            a = np.asarray(nib.load(str(dst / s.name / f"{name}.nii.gz")).dataobj)
            b = np.asarray(nib.load(str(ds.root / s.name / f"{name}.nii.gz")).dataobj)
            assert np.array_equal(a, b), (s.name, name)
    missing = run_cli(["prepare", "spm12", tmp_path / "nowhere", tmp_path / "x"], tmp_path, env)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "nowhere" in missing.stderr
