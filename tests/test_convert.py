"""Converters, each run on tiny files written in the source layout by the test."""

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from fastsyn.bench.datasets import (
    CONVERTERS,
    biased,
    convert_lpba40,
    convert_mrbrains18,
    convert_oasis,
    load_dataset,
    noisy,
    thick_slices,
)

SHAPE = (7, 8, 6)


def _volume(seed, lo=0, hi=200, dtype=np.int16):
    rng = np.random.default_rng(seed)
    vol = rng.integers(lo, hi, SHAPE).astype(dtype)
    vol[:1] = 0  # some background
    return vol


def _labels(seed, values, dtype):
    rng = np.random.default_rng(seed)
    lab = rng.choice(np.asarray(values), SHAPE).astype(dtype)
    lab[:1] = 0
    return lab


def _write_analyze(data, path_hdr, zooms, gzip_img=False):
    img = nib.AnalyzeImage(data, None)
    img.header.set_zooms(zooms)
    nib.save(img, str(path_hdr))
    if gzip_img:
        raw = path_hdr.with_suffix(".img")
        with open(raw, "rb") as fin, gzip.open(str(raw) + ".gz", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        raw.unlink()


@pytest.fixture
def lpba40_src(tmp_path):
    root = tmp_path / "LPBA40" / "delineation_space"
    for i, gz in ((1, False), (2, True)):
        name = f"S{i:02d}"
        d = root / name
        d.mkdir(parents=True)
        _write_analyze(_volume(i), d / f"{name}.delineation.skullstripped.hdr", (0.9, 1.1, 1.5), gz)
        _write_analyze(
            _labels(10 + i, [0, 21, 22, 181, 182], np.uint8),
            d / f"{name}.delineation.structure.label.hdr",
            (0.9, 1.1, 1.5),
            gz,
        )
    return tmp_path / "LPBA40"


def test_lpba40(lpba40_src, tmp_path):
    dst = tmp_path / "out"
    ds = convert_lpba40(lpba40_src, dst, progress=False)
    assert ds.names == ["S01", "S02"] and ds.modalities == ["t1"] and not ds.multimodal
    for s in ds.subjects:
        d = lpba40_src / "delineation_space" / s.name
        src_img = nib.load(str(d / f"{s.name}.delineation.skullstripped.hdr"))
        lab_src = _labels(10 + int(s.name[1:]), [0, 21, 22, 181, 182], np.uint8)
        t1 = nib.load(str(s.images["t1"]))
        lab = nib.load(str(s.labels))
        mask = nib.load(str(s.mask))
        # Grid, spacing, affine and label dtype kept.
        assert t1.shape == lab.shape == mask.shape == SHAPE
        np.testing.assert_allclose(t1.affine, src_img.affine)
        np.testing.assert_allclose(lab.header.get_zooms(), (0.9, 1.1, 1.5), rtol=1e-6)
        assert lab.get_data_dtype() == np.uint8
        labels = np.asanyarray(lab.dataobj)
        assert not np.isin(labels, [181, 182]).any()
        keep = np.isin(lab_src, [21, 22])
        assert np.array_equal(labels[keep], lab_src[keep])
        assert np.all(labels[~keep] == 0)
        vol = _volume(int(s.name[1:]))
        assert np.array_equal(np.asanyarray(t1.dataobj), vol)
        assert np.array_equal(np.asanyarray(mask.dataobj) > 0, vol != 0)
    # Reloading the output as a folder dataset works and validates.
    again = load_dataset(dst)
    assert again.name == "lpba40" and again.names == ["S01", "S02"]
    # Only some subjects; the delineation_space folder accepted directly.
    part = convert_lpba40(lpba40_src / "delineation_space", tmp_path / "part", subjects=["S02"],
                          progress=False)
    assert part.names == ["S02"]


def test_lpba40_errors(lpba40_src, tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_lpba40(tmp_path / "missing", tmp_path / "o1", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no LPBA40 subjects"):
        convert_lpba40(tmp_path / "empty", tmp_path / "o2", progress=False)
    with pytest.raises(ValueError, match="S09"):
        convert_lpba40(lpba40_src, tmp_path / "o3", subjects=["S09"], progress=False)
    (lpba40_src / "delineation_space" / "S01" / "S01.delineation.structure.label.img").unlink()
    with pytest.raises(FileNotFoundError, match="structure.label"):
        convert_lpba40(lpba40_src, tmp_path / "o4", progress=False)


def _nifti(data, path, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([0.96, 0.96, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, aff), str(path))


@pytest.fixture
def mrbrains_src(tmp_path):
    root = tmp_path / "MRBrainS18"
    for k, sid in enumerate(("1", "4")):
        d = root / "training" / sid
        for j, fname in enumerate(("FLAIR", "IR", "T1")):
            _nifti(_volume(100 * k + j, 1, 500, np.float32), d / "pre" / f"{fname}.nii.gz")
        _nifti(_labels(7 + k, [0, 1, 2, 3, 5, 10], np.uint8), d / "segm.nii.gz")
    return root


def test_mrbrains18(mrbrains_src, tmp_path):
    ds = convert_mrbrains18(mrbrains_src, tmp_path / "out", progress=False)
    assert ds.names == ["1", "4"]
    assert ds.modalities == ["flair", "ir", "t1"] and ds.multimodal
    for k, s in enumerate(ds.subjects):
        segm = _labels(7 + k, [0, 1, 2, 3, 5, 10], np.uint8)
        lab = nib.load(str(s.labels))
        assert lab.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(lab.dataobj), segm)
        assert np.array_equal(np.asanyarray(nib.load(str(s.mask)).dataobj) > 0, segm > 0)
        for j, m in enumerate(("flair", "ir", "t1")):
            img = np.asanyarray(nib.load(str(s.images[m])).dataobj)
            src = _volume(100 * k + j, 1, 500, np.float32)
            assert np.array_equal(img[segm > 0], src[segm > 0])
            assert np.all(img[segm == 0] == 0)  # skull-stripped with segm > 0


def test_mrbrains18_errors(mrbrains_src, tmp_path):
    (mrbrains_src / "training" / "4" / "pre" / "IR.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="IR.nii.gz"):
        convert_mrbrains18(mrbrains_src, tmp_path / "o1", progress=False)
    _nifti(np.zeros((5, 5, 5), np.float32), mrbrains_src / "training" / "4" / "pre" / "IR.nii.gz")
    with pytest.raises(ValueError, match="shape"):
        convert_mrbrains18(mrbrains_src, tmp_path / "o2", progress=False)
    _nifti(np.full(SHAPE, 1.5, np.float32), mrbrains_src / "training" / "1" / "segm.nii.gz")
    with pytest.raises(ValueError, match="integer"):
        convert_mrbrains18(mrbrains_src, tmp_path / "o3", subjects=["1"], progress=False)


def test_oasis(tmp_path):
    src = tmp_path / "neurite-oasis"
    aff = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -100], [0, -1, 0, 90], [0, 0, 0, 1]])
    for k, name in enumerate(("OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1")):
        _nifti(_volume(50 + k, 0, 255, np.float32), src / name / "aligned_norm.nii.gz", aff)
        _nifti(_labels(60 + k, [0, 2, 3, 4, 41], np.int16), src / name / "aligned_seg35.nii.gz", aff)
    (src / "README").write_text("not a subject")
    ds = convert_oasis(src, tmp_path / "out", progress=False)
    assert ds.names == ["OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1"] and ds.modalities == ["t1"]
    s = ds.subjects[0]
    lab = nib.load(str(s.labels))
    np.testing.assert_allclose(lab.affine, aff)
    assert lab.get_data_dtype() == np.int16
    assert np.array_equal(np.asanyarray(lab.dataobj), _labels(60, [0, 2, 3, 4, 41], np.int16))
    assert np.array_equal(np.asanyarray(nib.load(str(s.images["t1"])).dataobj),
                          _volume(50, 0, 255, np.float32))
    (src / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="aligned_seg35"):
        convert_oasis(src, tmp_path / "out2", progress=False)


def test_registry():
    assert set(CONVERTERS) == {"lpba40", "mrbrains18", "oasis"}


def test_thick_slices(mrbrains_src, tmp_path):
    src = convert_mrbrains18(mrbrains_src, tmp_path / "mr", progress=False)
    ds = thick_slices(src, tmp_path / "thick", slices=3, subjects=["4"], progress=False)
    assert ds.name == "mrbrains18-thick3" and ds.names == ["1", "4"]
    assert ds.modalities == src.modalities
    same, thick = ds.subjects
    kept = src.subject("1")
    for a, b in ((same.images["t1"], kept.images["t1"]), (same.labels, kept.labels),
                 (same.mask, kept.mask)):
        assert np.array_equal(np.asanyarray(nib.load(str(a)).dataobj),
                              np.asanyarray(nib.load(str(b)).dataobj))
    source = src.subject("4")
    img = nib.load(str(source.images["flair"]))
    data = np.asanyarray(img.dataobj).astype(np.float64)
    out = nib.load(str(thick.images["flair"]))
    assert out.shape == (7, 8, 2)                     # 6 planes, two slices of three
    np.testing.assert_allclose(np.asanyarray(out.dataobj),
                               data.reshape(7, 8, 2, 3).mean(-1), rtol=1e-6)
    # each slice's centre is where its middle plane was
    np.testing.assert_allclose(out.affine @ [2, 3, 1, 1], img.affine @ [2, 3, 4, 1])
    np.testing.assert_allclose(out.header.get_zooms(), (0.96, 0.96, 9.0), rtol=1e-6)
    labels = nib.load(str(thick.labels))
    assert labels.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(labels.dataobj),
                          np.asanyarray(nib.load(str(source.labels)).dataobj)[:, :, 1::3])
    across = thick_slices(src, tmp_path / "across", slices=2, axis=0, progress=False)
    assert nib.load(str(across.subject("1").labels)).shape == (3, 8, 6)
    with pytest.raises(ValueError, match="slices must be an integer of at least 2"):
        thick_slices(src, tmp_path / "o1", slices=1)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        thick_slices(src, tmp_path / "o2", slices=2, axis=3)
    with pytest.raises(ValueError, match=r"mrbrains18: subjects not found under .*: \['9'\]"):
        thick_slices(src, tmp_path / "o3", slices=2, subjects=["9"])
    with pytest.raises(TypeError, match="the string '4'"):
        thick_slices(src, tmp_path / "o4", slices=2, subjects="4")
    with pytest.raises(ValueError, match="names none of the set's subjects"):
        thick_slices(src, tmp_path / "o6", slices=2, subjects=[])
    with pytest.raises(ValueError, match="must differ from the source"):
        thick_slices(src, tmp_path / "mr", slices=2)
    with pytest.raises(ValueError, match="fewer than 8 planes"):
        thick_slices(src, tmp_path / "o5", slices=4)


def _data(path):
    return np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)


def _only_subject_4_changed(src, ds):
    """Check that a set derived from ``src`` with subject "4" chosen keeps
    subject "1", and subject 4's labels and mask, as they were; return
    subject 1, and subject 4 before and after."""
    assert ds.names == ["1", "4"] and ds.modalities == src.modalities
    kept, source, changed = src.subject("1"), src.subject("4"), ds.subject("4")
    for a, b in [(ds.subject("1").images[m], kept.images[m]) for m in src.modalities] + [
            (ds.subject("1").labels, kept.labels), (changed.labels, source.labels),
            (changed.mask, source.mask)]:
        assert np.array_equal(_data(a), _data(b))
    return kept, source, changed


def test_biased(mrbrains_src, tmp_path):
    src = convert_mrbrains18(mrbrains_src, tmp_path / "mr", progress=False)
    ds = biased(src, tmp_path / "biased", percent=40, subjects=["4"], progress=False)
    assert ds.name == "mrbrains18-bias40"
    _, source, changed = _only_subject_4_changed(src, ds)
    gains = {}
    for m in src.modalities:
        before, after = _data(source.images[m]), _data(changed.images[m])
        inside = before != 0
        assert np.array_equal(after != 0, inside)
        gain = after[inside] / before[inside]
        # the field spans 1.4 times its smallest value, either side of 1 (float32 rounding)
        assert gain.max() / gain.min() == pytest.approx(1.4, rel=1e-5)
        assert gain.max() * gain.min() == pytest.approx(1.0, rel=1e-5)
        # the field is smooth: its log is a quadratic of the voxel coordinates,
        # so its third differences vanish wherever four voxels in a row have signal
        # (a field drawn voxel by voxel would give differences of the order of 0.3)
        field = np.where(inside, after / np.where(inside, before, 1), np.nan)
        third = [np.diff(np.log(field), n=3, axis=axis) for axis in range(3)]
        assert sum(np.isfinite(t).sum() for t in third) > 20
        # (the images are float32: 8 roundings of 6e-8 at most)
        assert max(np.nanmax(np.abs(t)) for t in third) < 1e-6
        gains[m] = field
    # each modality draws its own field
    assert not np.allclose(gains["t1"], gains["ir"], equal_nan=True)
    # a field depends on the seed, the subject and the modality only
    again = biased(src, tmp_path / "again", percent=40, progress=False)
    other = biased(src, tmp_path / "other", percent=40, seed=1, subjects=["4"], progress=False)
    for m in src.modalities:
        assert np.array_equal(_data(again.subject("4").images[m]), _data(changed.images[m]))
        assert not np.array_equal(_data(other.subject("4").images[m]), _data(changed.images[m]))
    assert biased(src, tmp_path / "b20", percent=20, progress=False).name == "mrbrains18-bias20"
    # an image without signal, or with one voxel of it, has no spread to scale
    from fastsyn.bench.convert import _inhomogeneous
    empty = np.zeros(SHAPE, np.float32)
    assert np.array_equal(_inhomogeneous(empty, np.eye(4), 40, 0, "s", "t1"), empty)
    empty[2, 3, 4] = 7.0
    assert np.array_equal(_inhomogeneous(empty, np.eye(4), 40, 0, "s", "t1"), empty)


@pytest.mark.parametrize("derive", [noisy, biased])
def test_noise_and_bias_name_bad_arguments(derive, mrbrains_src, tmp_path):
    src = convert_mrbrains18(mrbrains_src, tmp_path / "mr", progress=False)
    for bad in (0, -1, 101, True, "5"):
        with pytest.raises(ValueError, match="percent must be a number above 0 and at most 100"):
            derive(src, tmp_path / "o1", percent=bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            derive(src, tmp_path / "o2", percent=5, seed=bad)
    with pytest.raises(ValueError, match=r"mrbrains18: subjects not found under .*: \['9'\]"):
        derive(src, tmp_path / "o3", percent=5, subjects=["9"])
    with pytest.raises(ValueError, match="must differ from the source"):
        derive(src, tmp_path / "mr", percent=5)


def test_noisy(mrbrains_src, tmp_path):
    src = convert_mrbrains18(mrbrains_src, tmp_path / "mr", progress=False)
    ds = noisy(src, tmp_path / "noisy", percent=5, subjects=["4"], progress=False)
    assert ds.name == "mrbrains18-noise5"
    kept, source, changed = _only_subject_4_changed(src, ds)
    for m in src.modalities:
        before, after = _data(source.images[m]), _data(changed.images[m])
        inside = before != 0
        assert np.all(after[~inside] == 0) and np.all(after >= 0)
        sigma = 0.05 * np.percentile(before[inside], 99)
        # far above the noise, a magnitude's error is close to its real part's
        bright = before > 5 * sigma
        assert bright.sum() > 150
        assert 0.8 * sigma < np.std(after[bright] - before[bright]) < 1.2 * sigma
    # an image's noise depends on the seed, the subject and the modality only
    again = noisy(src, tmp_path / "again", percent=5, progress=False)
    other = noisy(src, tmp_path / "other", percent=5, seed=1, subjects=["4"], progress=False)
    for m in src.modalities:
        assert np.array_equal(_data(again.subject("4").images[m]), _data(changed.images[m]))
        assert not np.array_equal(_data(other.subject("4").images[m]), _data(changed.images[m]))
    # each modality draws its own noise: the errors of two modalities are unrelated
    errors = [_data(changed.images[m]) - _data(source.images[m]) for m in ("t1", "ir")]
    both = (_data(source.images["t1"]) > 100) & (_data(source.images["ir"]) > 100)
    assert abs(np.corrcoef(errors[0][both], errors[1][both])[0, 1]) < 0.3
    assert noisy(src, tmp_path / "half", percent=2.5, progress=False).name == "mrbrains18-noise2.5"
    flair = nib.load(str(kept.images["flair"]))
    negative = _data(kept.images["flair"])
    negative[3, 3, 3] = -2.0
    nib.save(nib.Nifti1Image(negative.astype(np.float32), flair.affine), str(kept.images["flair"]))
    with pytest.raises(ValueError, match="subject '1': flair has negative intensities"):
        noisy(src, tmp_path / "o4", percent=5, subjects=["1"], progress=False)
