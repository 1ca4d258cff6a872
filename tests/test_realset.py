"""The real-anatomy study set (`fastsyn.bench.realset`, dataset ``real``):
shipped images and their notice, tissue classes, sparse modalities, the
pairs it allows, the tune/report halves, `fastsyn prepare spm12` and
`fastsyn prepare niivue`."""

import collections
import gzip
import json
import os
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


def _prepare_env(cache):
    """A `fastsyn prepare` subprocess's environment: the module's cache, and
    two threads (the conversions are mostly affine registrations, whose
    result is the same bit for bit on any thread count: test_imaffine)."""
    return cli_env(FASTSYN_CACHE=str(cache), OMP_NUM_THREADS="2")


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


def test_grid_at_resolution_keeps_the_field_of_view():
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    shape, same = realset.grid_at_resolution((91, 109, 91), affine, 2.0)
    assert shape == (91, 109, 91) and np.array_equal(same, affine)
    fine_shape, fine = realset.grid_at_resolution((91, 109, 91), affine, 1.0)
    assert fine_shape == (182, 218, 182)
    assert np.allclose(np.abs(np.diag(fine)[:3]), 1.0)
    for corner in (np.full(3, -0.5), np.array([91, 109, 91]) - 0.5):
        fine_corner = (corner + 0.5) * 2 - 0.5    # the same corner in 1 mm voxels
        assert np.allclose(affine @ [*corner, 1], fine @ [*fine_corner, 1])


def test_real_set_at_another_resolution(real):
    """``load_dataset("real", resolution=...)``: every subject on a grid of
    that voxel size, in a folder and under a name of its own, so that its
    records and prealignments are never taken for the 2 mm set's."""
    ds, cache = real
    coarse = load_dataset("real", cache_dir=cache, resolution=4.0, progress=False)
    assert coarse.name == "real-4mm" and coarse.root.name == "real-4mm"
    assert sorted(s.name for s in coarse.subjects) == sorted(s.name for s in ds.subjects)
    for s in coarse.subjects:
        labels = nib.load(str(s.labels))
        assert np.allclose(labels.header.get_zooms(), 4.0)
        mask = np.asarray(nib.load(str(s.mask)).dataobj) > 0
        assert np.array_equal(np.asarray(labels.dataobj) > 0, mask)
        assert set(np.unique(np.asarray(labels.dataobj))) == {0, 1, 2, 3}
    assert json.loads((coarse.root / "dataset.json").read_text())["resolution"] == 4.0
    assert load_dataset("real", cache_dir=cache, progress=False).name == "real"
    for bad in (0.1, 9.0):
        with pytest.raises(ValueError, match="resolution"):
            load_dataset("real", cache_dir=cache, resolution=bad, progress=False)


def test_real_heads_keeps_the_spm_heads_and_nothing_else(real):
    """``load_dataset("real-heads")``: the same subjects, labels, masks and
    pairs, in a folder and under a name of their own; the SPM subjects' images
    are SPM's whole heads (the stripped set's inside the mask), mni2009 and
    the synthetic subjects the stripped set's."""
    ds, cache = real
    heads = load_dataset("real-heads", cache_dir=cache, progress=False)
    assert "real-heads" in NAMED
    assert heads.name == "real-heads" and heads.root.name == "real-heads"
    assert json.loads((heads.root / "dataset.json").read_text())["heads"] is True
    assert "heads" not in json.loads((ds.root / "dataset.json").read_text())
    stripped = {s.name: s for s in ds.subjects}
    for s in heads.subjects:
        t = stripped[s.name]
        for a, b in ((s.labels, t.labels), (s.mask, t.mask)):
            assert np.array_equal(np.asarray(nib.load(str(a)).dataobj),
                                  np.asarray(nib.load(str(b)).dataobj))
        mask = np.asarray(nib.load(str(s.mask)).dataobj) > 0
        for modality, path in s.images.items():
            img = np.asarray(nib.load(str(path)).dataobj)
            brain = np.asarray(nib.load(str(t.images[modality])).dataobj)
            assert np.array_equal(img[mask], brain[mask])
            outside = np.count_nonzero(img[~mask]) / np.count_nonzero(~mask)
            if s.name in ("avg152", "avg305", "colin27"):
                assert outside > 0.3, (s.name, modality, outside)   # a head
            else:
                assert outside == 0, (s.name, modality)
    assert ([p.id for p in make_pairs(heads)]
            == [p.id for p in make_pairs(ds)])


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
    env = _prepare_env(cache)
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


def _resampled(image, affine, shape, grid2world, world_map):
    """``image`` seen through ``world_map`` (new grid's world -> image's world)."""
    from fastsyn.bench import synth

    points = synth.grid_points(shape, world_map @ grid2world)
    return synth.sample_image(image, affine, points, order=1).reshape(shape)


def _rotation_x(degrees, shift):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    m = np.eye(4)
    m[1:3, 1:3] = [[c, -s], [s, c]]
    m[:3, 3] = shift
    return m


def test_prepare_niivue_aligns_the_single_scan_subject(real, tmp_path):
    """`fastsyn prepare niivue NIIVUE_DIR DST`: the set plus ``chris``, whose T1
    and PD (here SPM's avg152 T1 and PD, moved by known matrices onto other
    grids, the PD onto a thick-sliced slab) come back onto the SPM grid."""
    from fastsyn.bench import synth

    ds, cache = real
    to_t1 = _rotation_x(4.0, [3.0, -5.0, 2.0]) @ np.diag([1.06, 0.95, 1.02, 1.0])
    to_pd = _rotation_x(-6.0, [-2.0, 4.0, 6.0]) @ to_t1      # SPM world -> each image's world
    t1_grid = np.diag([2.2, 2.2, 2.2, 1.0])
    t1_grid[:3, 3] = [-100.0, -130.0, -90.0]
    pd_grid = np.diag([1.9, 1.9, 4.0, 1.0])
    pd_grid[:3, 3] = [-100.0, -130.0, -40.0]
    pd_shape = (105, 127, 26)                                 # a slab 100 mm thick
    folder = tmp_path / "niivue-demo-images"
    folder.mkdir()
    spm = {}
    for modality, shape, grid2world, world_map in (
            ("t1", (91, 110, 85), t1_grid, to_t1), ("pd", pd_shape, pd_grid, to_pd)):
        spm[modality], spm_affine = realset._spm_image(None, f"avg152{modality.upper()}")
        # the image's world point y shows what SPM's image shows at world_map^-1 y
        data = _resampled(spm[modality], spm_affine, shape, grid2world,
                          np.linalg.inv(world_map))
        nib.save(nib.Nifti1Image(data, grid2world),
                 str(folder / realset.NIIVUE_IMAGES[("chris", modality)]))
    env = _prepare_env(cache)
    dst = tmp_path / "real-niivue"
    proc = run_cli(["prepare", "niivue", folder, dst], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "prepared niivue" in proc.stdout and "7 subjects" in proc.stdout
    assert "INFO" not in proc.stderr                          # DIPY's step log stays quiet
    assert "NonCommercial 4.0" in (dst / "NOTICE-niivue.txt").read_text()
    stamp = json.loads((dst / "dataset.json").read_text())
    assert stamp["name"] == "real-niivue" and "chris" in stamp["subjects"]
    chris = dst / "chris"
    mask = np.asarray(nib.load(str(chris / "mask.nii.gz")).dataobj) > 0
    labels = np.asarray(nib.load(str(chris / "labels.nii.gz")).dataobj)
    assert np.array_equal(labels > 0, mask) and set(np.unique(labels)) == {0, 1, 2, 3}
    # The mask is the brain inside the PD's slab, wherever the slab lies.
    brain = np.asarray(nib.load(str(ds.root / "avg152" / "mask.nii.gz")).dataobj) > 0
    pd_index = synth.grid_points(brain.shape, np.linalg.inv(pd_grid) @ to_pd @ spm_affine)
    in_slab = np.all((pd_index >= 0) & (pd_index <= np.subtract(pd_shape, 1)), axis=-1)
    assert 0.3 < (brain & in_slab).sum() / brain.sum() < 0.9
    assert (mask & ~in_slab).sum() < 0.01 * mask.sum()
    assert (mask & brain & in_slab).sum() > 0.9 * (brain & in_slab).sum()
    for modality in ("t1", "pd"):
        got = np.asarray(nib.load(str(chris / f"{modality}.nii.gz")).dataobj)
        assert (got[~mask] == 0).all()
        r = np.corrcoef(got[mask], spm[modality][mask])[0, 1]
        assert r > 0.98, (modality, r)                       # realigned, not just resampled
    missing = tmp_path / "only-t1"
    missing.mkdir()
    (missing / "chris_t1.nii.gz").write_bytes((folder / "chris_t1.nii.gz").read_bytes())
    bad = run_cli(["prepare", "niivue", missing, tmp_path / "x"], tmp_path, env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "chris_PD.nii.gz" in bad.stderr and not (tmp_path / "x").exists()


def _write_ixi_scans(folder, spm, subject, to_t1, to_t2, pd_grid=None):
    """avg152's images moved as one IXI subject's scans: the T1 by ``to_t1``
    on a sagittal grid, the T2 and PD by ``to_t2`` on one axial grid (the PD
    on ``pd_grid`` if given); ``spm``: (images by modality, SPM affine)."""
    images, spm_affine = spm
    t1_grid = np.array([[0, 0, 2.3, -95.0], [2.3, 0, 0, -125.0], [0, 2.3, 0, -80.0],
                        [0, 0, 0, 1.0]])                  # sagittal slices, as IXI's T1
    t2_grid = np.diag([2.1, 2.1, 2.4, 1.0])
    t2_grid[:3, 3] = [-100.0, -128.0, -75.0]
    written = {}
    for modality, shape, grid2world, world_map in (
            ("t1", (94, 80, 86), t1_grid, to_t1), ("t2", (96, 115, 70), t2_grid, to_t2),
            ("pd", (96, 115, 70), t2_grid if pd_grid is None else pd_grid, to_t2)):
        data = _resampled(images[modality], spm_affine, shape, grid2world,
                          np.linalg.inv(world_map))
        path = folder / f"{subject}-{modality.upper()}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), grid2world), str(path))
        written[modality] = path
    return written


def test_prepare_ixi_aligns_each_subject_and_resumes(real, tmp_path):
    """`fastsyn prepare ixi IXI_DIR DST`: the set plus IXI's subjects (here
    avg152's T1, T2 and PD moved by known matrices onto IXI-like grids, in
    the archives' subfolders), realigned onto the SPM grid; a rerun keeps the
    finished subjects, a changed scan is converted again."""
    ds, cache = real
    spm = {m: realset._spm_image(None, f"avg152{m.upper()}")[0] for m in ("t1", "t2", "pd")}
    spm = (spm, realset._spm_image(None, "avg152T1")[1])
    folder = tmp_path / "IXI"
    for sub in ("IXI-T1", "IXI-T2", "IXI-PD"):
        (folder / sub).mkdir(parents=True)
    to_t1 = _rotation_x(4.0, [3.0, -5.0, 2.0]) @ np.diag([1.05, 0.96, 1.02, 1.0])
    written = _write_ixi_scans(folder / "IXI-T1", spm, "IXI002-Guys-0828", to_t1,
                               _rotation_x(-5.0, [-2.0, 4.0, 3.0]) @ to_t1)
    for modality in ("t2", "pd"):                          # as the archives extract
        written[modality] = written[modality].rename(
            folder / f"IXI-{modality.upper()}" / written[modality].name)
    other = _rotation_x(-3.0, [1.0, 2.0, -4.0])
    _write_ixi_scans(folder, spm, "IXI012-HH-1211", other, other)
    (folder / "IXI012-HH-1211-PD.nii.gz").unlink()
    (folder / "IXI099-IOP-0001-T2.nii.gz").write_bytes(written["t1"].read_bytes())  # no T1
    (folder / "IXI-T1" / "README.txt").write_text("not a scan")
    found = realset.find_ixi_scans(folder)
    assert list(found) == ["ixi002", "ixi012"] and sorted(found["ixi012"]) == ["t1", "t2"]
    (folder / "IXI-T1" / "IXI002-Guys-0828-T1.nii").write_bytes(b"")
    with pytest.raises(ValueError, match="two IXI T1 scans of subject IXI002"):
        realset.find_ixi_scans(folder)
    (folder / "IXI-T1" / "IXI002-Guys-0828-T1.nii").unlink()

    env = _prepare_env(cache)
    dst = tmp_path / "real-ixi"
    proc = run_cli(["prepare", "ixi", folder, dst], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "prepared ixi" in proc.stdout and "8 subjects" in proc.stdout
    assert "INFO" not in proc.stderr
    assert "ShareAlike 3.0" in (dst / "NOTICE-ixi.txt").read_text()
    stamp = json.loads((dst / "dataset.json").read_text())
    assert stamp["name"] == "real-ixi"
    assert {"ixi002", "ixi012"} <= set(stamp["subjects"]) and "ixi099" not in stamp["subjects"]
    brain = np.asarray(nib.load(str(ds.root / "avg152" / "mask.nii.gz")).dataobj) > 0
    for subject, modalities in (("ixi002", ("t1", "t2", "pd")), ("ixi012", ("t1", "t2"))):
        mask = np.asarray(nib.load(str(dst / subject / "mask.nii.gz")).dataobj) > 0
        labels = np.asarray(nib.load(str(dst / subject / "labels.nii.gz")).dataobj)
        assert np.array_equal(labels > 0, mask) and set(np.unique(labels)) == {0, 1, 2, 3}
        assert (mask & brain).sum() > 0.97 * brain.sum()  # the scans cover the brain
        assert sorted(p.name.split(".")[0] for p in (dst / subject).glob("*.nii.gz")) == \
            sorted([*modalities, "labels", "mask"])
        for modality in modalities:
            got = np.asarray(nib.load(str(dst / subject / f"{modality}.nii.gz")).dataobj)
            r = np.corrcoef(got[mask], spm[0][modality][mask])[0, 1]
            assert r > 0.98, (subject, modality, r)      # realigned, not just resampled

    # A rerun keeps a finished subject and converts one whose scan changed
    # (ixi002's T2) again; a run for one subject keeps it and leaves the other out.
    def stamps(subject):
        return (dst / subject / "t1.nii.gz").stat().st_mtime_ns
    before = {s: stamps(s) for s in ("ixi002", "ixi012", "avg152")}
    os.utime(written["t2"], ns=(1, 1))
    again = run_cli(["prepare", "ixi", folder, dst, "--subjects", "IXI002,ixi012"],
                    tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert stamps("ixi012") == before["ixi012"] and stamps("ixi002") != before["ixi002"]
    assert stamps("avg152") != before["avg152"]
    converted = stamps("ixi002")
    one = run_cli(["prepare", "ixi", folder, dst, "--subjects", "IXI002"], tmp_path, env)
    assert one.returncode == 0, one.stderr
    assert stamps("ixi002") == converted and "8 subjects" not in one.stdout
    assert "ixi012" not in json.loads((dst / "dataset.json").read_text())["subjects"]

    bad = run_cli(["prepare", "ixi", folder, tmp_path / "x", "--subjects", "IXI099"],
                  tmp_path, env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "IXI099" in bad.stderr and "without a T1" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_find_bids_scans_takes_one_file_per_person_and_contrast(tmp_path):
    """A BIDS dataset's people: the first file of each contrast in path order
    (a later session or run is one more scan of the same anatomy), only
    people with a T1w, other suffixes and derivatives ignored."""
    files = ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz",
             "sub-01/anat/sub-01_T2starw.nii.gz", "sub-01/anat/sub-01_T1w.json",
             "sub-02/ses-1/anat/sub-02_ses-1_run-1_T1w.nii",
             "sub-02/ses-1/anat/sub-02_ses-1_run-2_T1w.nii",
             "sub-02/ses-1/anat/sub-02_ses-1_acq-fast_FLAIR.nii.gz",
             "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz", "sub-02/ses-2/anat/sub-02_ses-2_PDw.nii",
             "sub-03/anat/sub-03_T2w.nii.gz", "derivatives/sub-04/anat/sub-04_T1w.nii.gz",
             "sub-05/func/sub-05_T1w.nii.gz"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = realset.find_bids_scans(tmp_path)
    assert {k: {m: str(p.relative_to(tmp_path)) for m, p in v.items()}
            for k, v in found.items()} == {
        "sub-01": {"t1": files[0], "t2": files[1]},
        "sub-02": {"t1": files[4], "flair": files[6], "pd": files[8]}}
    chosen = realset._chosen_scans(tmp_path, "bids", ["02", "sub-01"])
    assert list(chosen) == ["sub-02", "sub-01"]
    with pytest.raises(ValueError, match=r"without a T1 in the BIDS folder .*\['03'\]"):
        realset._chosen_scans(tmp_path, "bids", ["03"])
    with pytest.raises(FileNotFoundError, match="no BIDS subject with a T1"):
        realset.find_bids_scans(tmp_path / "sub-03")


def test_a_failing_person_is_named(monkeypatch, tmp_path):
    """Among many people, an error says whose scans failed."""
    anat = tmp_path / "sub-07" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)),
             str(anat / "sub-07_T1w.nii.gz"))

    def no_brain(*args, **kwargs):
        raise ValueError("the T1 image has no contrast inside the mask")

    monkeypatch.setattr(realset, "_scan_subject", no_brain)
    found = realset.find_bids_scans(tmp_path)
    with pytest.raises(ValueError, match="^subject sub-07: the T1 image has no contrast"):
        next(realset._scan_subjects(found, tmp_path, "bids", None, None, None, 2.0))


def test_prepare_bids_adds_the_people_of_a_bids_dataset(real, tmp_path):
    """`fastsyn prepare bids BIDS_DIR DST --subjects 01`: the set plus
    ``sub-01`` (avg152's T1 moved onto another grid), realigned."""
    ds, cache = real
    t1, spm_affine = realset._spm_image(None, "avg152T1")
    grid = np.diag([2.2, 2.2, 2.2, 1.0])
    grid[:3, 3] = [-100.0, -130.0, -90.0]
    to_t1 = _rotation_x(-4.0, [2.0, 3.0, -2.0])
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    data = _resampled(t1, spm_affine, (91, 110, 85), grid, np.linalg.inv(to_t1))
    nib.save(nib.Nifti1Image(data.astype(np.float32), grid), str(anat / "sub-01_T1w.nii.gz"))
    (tmp_path / "bids" / "sub-02" / "anat").mkdir(parents=True)
    env = _prepare_env(cache)
    dst = tmp_path / "real-bids"
    proc = run_cli(["prepare", "bids", tmp_path / "bids", dst, "--subjects", "01"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "prepared bids" in proc.stdout and "7 subjects" in proc.stdout
    stamp = json.loads((dst / "dataset.json").read_text())
    assert stamp["name"] == "real-bids" and "sub-01" in stamp["subjects"]
    assert not list(dst.glob("NOTICE*"))                   # the user's own data
    mask = np.asarray(nib.load(str(dst / "sub-01" / "mask.nii.gz")).dataobj) > 0
    got = np.asarray(nib.load(str(dst / "sub-01" / "t1.nii.gz")).dataobj)
    assert np.corrcoef(got[mask], t1[mask])[0, 1] > 0.98
    pairs = study.study_pairs(load_dataset(str(dst), cache_dir=cache, progress=False),
                              pairs_with=["sub-01"])
    assert pairs and {p.fixed_modality for p in pairs if p.moving == "sub-01"} >= {"t2", "pd"}


def test_scan_subject_moves_a_second_echo_with_its_first(monkeypatch):
    """IXI's PD shares its T2's acquisition and grid: it takes the T2's
    matrix (one registration fewer); a PD on another grid is registered."""
    import fastsyn.imaffine

    calls = []
    real_registration = fastsyn.imaffine.affine_registration

    def counted(*args, **kwargs):
        calls.append(kwargs.get("pipeline"))
        return real_registration(*args, **kwargs)

    monkeypatch.setattr(fastsyn.imaffine, "affine_registration", counted)
    t1, affine = realset._spm_image(None, "avg152T1")
    shape, grid = realset.grid_at_resolution(t1.shape, affine, 4.0)
    mask = np.zeros(shape, bool)
    mask[10:35, 10:44, 10:35] = True
    scans = {m: realset._spm_image(None, f"avg152{m.upper()}") for m in ("t1", "t2", "pd")}
    moved = np.diag([1.0, 1.0, 1.0, 1.0])
    moved[:3, 3] = [0.0, 0.0, 8.0]
    shifted_pd = (scans["pd"][0], moved @ scans["pd"][1])
    pds = []
    for pd, registrations in ((scans["pd"], 2), (shifted_pd, 3)):
        calls.clear()
        # the PD listed first (as IXI-PD/ sorts before IXI-T2/): the T2 still leads
        name, images, labels, inside, _ = realset._scan_subject(
            "s", {"pd": pd, "t2": scans["t2"], "t1": scans["t1"]}, (t1, affine),
            (shape, grid), mask, num_threads=2, same_acquisition={"pd": "t2"})
        assert len(calls) == registrations and sorted(images) == ["pd", "t1", "t2"]
        assert calls[0] is None                            # the T1's affine pipeline first
        pds.append((images["pd"], inside))
    assert np.array_equal(labels > 0, inside)
    # The shifted PD, registered on its own, comes back where the first one lay.
    both = pds[0][1] & pds[1][1]
    assert both.sum() > 0.9 * pds[0][1].sum()
    assert np.corrcoef(pds[0][0][both], pds[1][0][both])[0, 1] > 0.98


def test_study_pairs_with_a_subject(real, tmp_path):
    ds, cache = real
    colin = study.study_pairs(ds, pairs_with=["colin27"])
    assert colin and all("colin27" in (p.fixed, p.moving) for p in colin)
    assert set(colin) == {p for p in make_pairs(ds) if "colin27" in (p.fixed, p.moving)}
    halves = [study.study_pairs(ds, pairs_with="colin27", half=h) for h in study.HALVES]
    assert sorted(map(str, halves[0] + halves[1])) == sorted(map(str, colin))
    with pytest.raises(ValueError, match="pairs_with must name subjects"):
        study.study_pairs(ds, pairs_with=["nobody"])
    # A pattern stands for the subjects it matches (a prepared cohort's people).
    averages = study.study_pairs(ds, pairs_with=["avg*"])
    assert set(averages) == {p for p in make_pairs(ds)
                             if {p.fixed, p.moving} & {"avg152", "avg305"}}
    with pytest.raises(ValueError, match="got colin27, nobody-"):
        study.study_pairs(ds, pairs_with=["colin27", "nobody-*"])
    # A cohort's list of names does not make the study file's name too long.
    cohort = {f"sub-{i:03d}" for i in range(80)}
    long_name = study._plan_path(tmp_path, "real-bids-v1", (20, 20, 10), "tune", cohort)
    assert len(long_name.name) < 100 and "-with-80-subjects-" in long_name.name
    assert long_name != study._plan_path(tmp_path, "real-bids-v1", (20, 20, 10), "tune",
                                         cohort - {"sub-000"})
    assert study._plan_path(tmp_path, "real-v1", (20, 20, 10), None, {"colin27"}).name == \
        "study-real-v1-20x20x10-with-colin27.json"
    proc = run_cli(["bench", "study", "--dataset", "real", "--pairs-with", "nobody",
                    "--results", tmp_path / "r", "--quiet"], tmp_path,
                   cli_env(FASTSYN_CACHE=str(cache)))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nobody" in proc.stderr
