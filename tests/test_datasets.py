"""Embedded cohorts, folder datasets, synthetic generator and fixtures."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURES, fixture_manifest, load_pair
from scipy import ndimage

from fastsyn.bench import synth
from fastsyn.bench.datasets import (
    EMBEDDED,
    STAMP,
    Dataset,
    Subject,
    check_subject,
    load_dataset,
    load_displacement,
    true_displacement,
)

RES = 6.0  # coarse grid keeps the embedded-cohort tests fast


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fastsyn-cache")


@pytest.fixture(scope="module")
def mono(cache):
    return load_dataset("embedded-mono", cache_dir=cache, resolution=RES, n_subjects=2,
                        progress=False)


@pytest.fixture(scope="module")
def tpl():
    return synth.load_template(RES)


def _data(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


# ---------------------------------------------------------------- embedded


def test_embedded_specs():
    assert EMBEDDED["embedded-mono"]["n_subjects"] >= 8
    assert EMBEDDED["embedded-mono"]["modalities"] == ("t1",)
    assert EMBEDDED["embedded-multi"]["n_subjects"] == 7
    assert EMBEDDED["embedded-multi"]["modalities"] == ("t1", "t2", "flair")


def test_embedded_mono_layout(mono, cache):
    assert isinstance(mono, Dataset)
    assert mono.name == "embedded-mono" and mono.modalities == ["t1"] and not mono.multimodal
    assert mono.names == ["S01", "S02"]
    assert mono.root == cache / "embedded-mono-6mm"
    assert (mono.root / STAMP).exists()
    for s in mono.subjects:
        assert s.images["t1"] == mono.root / s.name / "t1.nii.gz"
        shape = check_subject(s)
        lab = _data(s.labels)
        assert np.issubdtype(lab.dtype, np.integer)
        values = np.unique(lab[lab > 0])
        assert 16 <= len(values) <= 3 * synth.N_REGIONS
        mask = _data(s.mask) > 0
        assert np.array_equal(mask, lab > 0)
        img = _data(s.images["t1"])
        assert img.dtype == np.float32 and np.all(img[~mask] >= 0) and img[mask].mean() > 0.2
        u, aff = load_displacement(s.truth_to_template)
        assert u.shape == shape + (3,)
        assert nib.load(str(s.truth_to_template)).shape == shape + (1, 3)


def test_embedded_multi(cache):
    ds = load_dataset("embedded-multi", cache_dir=cache, resolution=RES, n_subjects=1,
                      progress=False)
    assert ds.modalities == ["t1", "t2", "flair"] and ds.multimodal
    s = ds.subjects[0]
    lab = _data(s.labels)
    img = {m: _data(p) for m, p in s.images.items()}
    wm, csf = lab % 3 == 0, lab % 3 == 1
    wm &= lab > 0
    csf &= lab > 0
    # Contrast ordering by tissue: T1 WM > CSF; T2 CSF > WM; FLAIR GM > WM > CSF.
    assert img["t1"][wm].mean() > img["t1"][csf].mean()
    assert img["t2"][csf].mean() > img["t2"][wm].mean()
    assert img["flair"][wm].mean() > img["flair"][csf].mean()
    gm = (lab % 3 == 2) & (lab > 0)
    # CSF suppressed (CSF-labelled voxels are mostly partial volume at 6 mm)
    assert img["flair"][csf].mean() < 0.8 * img["flair"][gm].mean()


def test_cache_reused_and_extended(mono, cache):
    stamp_before = (mono.root / STAMP).stat().st_mtime_ns
    t1_before = (mono.root / "S01" / "t1.nii.gz").stat().st_mtime_ns
    again = load_dataset("embedded-mono", cache_dir=cache, resolution=RES, n_subjects=2,
                         progress=False)
    assert again.names == mono.names
    assert (mono.root / "S01" / "t1.nii.gz").stat().st_mtime_ns == t1_before
    one = load_dataset("embedded-mono", cache_dir=cache, resolution=RES, n_subjects=1,
                       progress=False)
    assert one.names == ["S01"]
    assert (mono.root / STAMP).stat().st_mtime_ns >= stamp_before


def test_incomplete_cache_rebuilt(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTSYN_CACHE", str(tmp_path))
    ds = load_dataset("embedded-mono", resolution=RES, n_subjects=1, progress=False)
    assert ds.root == tmp_path / "embedded-mono-6mm"
    reference = _data(ds.subjects[0].images["t1"])
    # A half-written subject (no completion marker) is rebuilt, identically.
    (ds.root / "S01" / ".complete.json").unlink()
    (ds.root / "S01" / "t1.nii.gz").write_bytes(b"garbage")
    ds = load_dataset("embedded-mono", resolution=RES, n_subjects=1, progress=False)
    assert np.array_equal(_data(ds.subjects[0].images["t1"]), reference)
    # A stamp from another generator version invalidates the cache.
    stamp = json.loads((ds.root / STAMP).read_text())
    stamp["version"] = -1
    (ds.root / STAMP).write_text(json.dumps(stamp))
    (ds.root / "S01" / "t1.nii.gz").write_bytes(b"garbage")
    ds = load_dataset("embedded-mono", resolution=RES, n_subjects=1, progress=False)
    assert np.array_equal(_data(ds.subjects[0].images["t1"]), reference)


def test_cohort_deterministic(mono, tmp_path):
    # Three subjects: the first is built alone, the other two side by side
    # (two threads where there are two CPUs); `mono`'s two one at a time.
    other = load_dataset("embedded-mono", cache_dir=tmp_path, resolution=RES, n_subjects=3,
                         progress=False)
    assert other.names == ["S01", "S02", "S03"]
    for a, b in zip(mono.subjects, other.subjects):
        for key in ("labels", "mask", "truth_to_template", "truth_from_template"):
            assert np.array_equal(_data(getattr(a, key)), _data(getattr(b, key)))
        assert np.array_equal(_data(a.images["t1"]), _data(b.images["t1"]))
    # Different subjects differ.
    assert not np.array_equal(_data(mono.subjects[0].labels), _data(mono.subjects[1].labels))


def test_ground_truth_consistent(mono, tpl):
    s = mono.subjects[0]
    u, aff = load_displacement(s.truth_to_template)
    w, aff_t = load_displacement(s.truth_from_template)
    pts = synth.grid_points(u.shape[:3], aff)
    y = pts + u
    back = y + synth.sample_field(w, aff_t, y)
    err = np.linalg.norm(back - pts, axis=-1)[_data(s.mask) > 0]
    # mm; linear interpolation of the fields on the 6 mm grid (the grey/white
    # flow varies over a few mm)
    assert err.mean() < 0.25 and err.max() < 1.5
    norm = np.linalg.norm(u, axis=-1)
    assert 2.0 < norm.max() < 25.0
    # The truth explains the labels: template labels pulled back equal the subject's.
    # (up to nearest-neighbour ties: the stored field is rounded to 2**-10 mm).
    pulled = synth.sample_image(tpl.labels, tpl.affine, y, order=0)
    assert np.mean(pulled == _data(s.labels)) > 0.999
    # Pair truth: identity for a subject with itself, and it maps labels across subjects.
    d_self, _ = true_displacement(s, s)
    self_err = np.linalg.norm(d_self, axis=-1)[_data(s.mask) > 0]
    assert self_err.mean() < 0.25 and self_err.max() < 1.5
    # Pair truth: phi_m(x + d(x)) == phi_f(x), i.e. both land on the same template point.
    f, m = mono.subjects
    d, aff_f = true_displacement(f, m)
    u_f, _ = load_displacement(f.truth_to_template)
    u_m, aff_m = load_displacement(m.truth_to_template)
    z = pts + d
    gap = np.linalg.norm(z + synth.sample_field(u_m, aff_m, z) - (pts + u_f), axis=-1)
    assert np.mean(gap[_data(f.mask) > 0]) < 0.25 and gap[_data(f.mask) > 0].max() < 1.5
    assert np.linalg.norm(d, axis=-1).max() > 1.0
    with pytest.raises(ValueError, match="ground-truth"):
        true_displacement(Subject("x", {"t1": Path("a")}, Path("b")), s)


def test_make_subject_deterministic(tpl):
    a = synth.make_subject(tpl, [9, 0], modalities=("t1", "flair"))
    synth._subject_deformation.cache_clear()  # b draws its deformation again
    b = synth.make_subject(tpl, [9, 0], modalities=("t1", "flair"))
    c = synth.make_subject(tpl, [9, 1], modalities=("t1", "flair"))
    for key in ("t1", "flair"):
        assert np.array_equal(a.images[key], b.images[key])
    assert np.array_equal(a.to_template, b.to_template)
    assert np.array_equal(a.from_template, b.from_template)
    assert not np.array_equal(a.to_template, c.to_template)
    # The deformation does not depend on the modalities requested.
    d = synth.make_subject(tpl, [9, 0], modalities=("t2",))
    assert np.array_equal(a.to_template, d.to_template)
    with pytest.raises(ValueError, match="modality"):
        synth.make_subject(tpl, 0, modalities=("pd",))


def _brain_points(tpl):
    return synth.grid_points(tpl.shape, tpl.affine)[tpl.mask]


def test_subjects_differ_by_several_mm(tpl):
    # the non-linear parts of two subjects' deformations, over the brain
    pts = _brain_points(tpl)
    a, b = (synth._subject_deformation((2, i), 0.0, 0.0, tuple(synth.VARIABILITY.items()))
            for i in (0, 1))
    ua = synth.sample_field(a.forward, a.affine, pts)
    ub = synth.sample_field(b.forward, b.affine, pts)
    diff = np.linalg.norm(ua - ub, axis=-1)
    assert diff.mean() > 3.5 and np.percentile(diff, 95) > 6.0 and diff.max() < 25.0
    assert np.linalg.norm(ua, axis=-1).mean() > 2.0
    # a smaller variability gives a proportionally smaller field
    small = synth.anatomical_deformation(np.random.default_rng(0), max_disp=2.0, fine_disp=0.0,
                                         ventricle_mm=0.0, cortex_mm=0.0)
    us = synth.sample_field(small.forward, small.affine, pts)
    assert np.linalg.norm(us, axis=-1).max() <= 2.0 + 1e-6


def test_tissue_driven_flows(tpl):
    """Ventricle and cortex terms move tissue boundaries, not the whole brain."""
    zero = dict(max_disp=0.0, fine_disp=0.0)
    pts = synth.grid_points(tpl.shape, tpl.affine)
    depth = ndimage.distance_transform_edt(tpl.mask, sampling=tpl.spacing)
    for key, rng in (("ventricle_mm", 3), ("cortex_mm", 4)):
        kw = {**zero, "ventricle_mm": 0.0, "cortex_mm": 0.0, key: 2.0}
        v, caff = synth.anatomical_velocity(np.random.default_rng(rng), **kw)
        norm = np.linalg.norm(synth.sample_field(v, caff, pts), axis=-1)
        assert 0.5 < norm[tpl.mask].max() <= 2.0 + 1e-6
        outside = ndimage.distance_transform_edt(~tpl.mask, sampling=tpl.spacing) > 8.0
        assert outside.any() and norm[outside].max() < 0.2
        if key == "ventricle_mm":  # deep: around the ventricles only
            surface = tpl.mask & (depth <= 8.0)  # the outer 8 mm
            assert norm[surface].max() < 0.2 * norm.max()
        else:  # at the grey/white boundary, across the whole cortex
            edge = tpl.mask & (np.abs(tpl.wm - 0.5) < 0.3)
            assert np.mean(norm[edge]) > 2 * np.mean(norm[tpl.mask & (tpl.wm > 0.95)])


def test_intensity_transfer_nonlinear():
    x = np.linspace(0.0, 1.0, 201)
    for seed in range(10):
        y = synth.intensity_transfer(np.random.default_rng(seed))
        assert y[0] == 0.0 and y[-1] == 1.0 and np.all(np.diff(y) > 0)
        f = synth.apply_transfer(x, y)
        assert np.all(np.diff(f) >= -1e-7)  # monotone
        # far from every straight line: the residual of the best linear fit
        fit = np.polyval(np.polyfit(x, f, 1), x)
        assert np.abs(f - fit).max() > 0.02
    # linear beyond [0, 1], identity for equally spaced values
    np.testing.assert_allclose(synth.apply_transfer(x * 1.5, np.linspace(0, 1, 5)), x * 1.5,
                               atol=1e-6)
    with pytest.raises(ValueError):
        synth.apply_transfer(x, [0.0, 0.6, 0.4, 1.0])
    with pytest.raises(ValueError):
        synth.intensity_transfer(np.random.default_rng(0), knots=2)


def test_subject_intensities_nonlinear_in_tissue(tpl):
    """Two subjects' T2 differ by more than a linear map of the same tissue contrast."""
    zero = np.zeros(tpl.shape + (3,), np.float64)
    a = synth.warp_anatomy(tpl, synth.Deformation(zero, zero.copy(), tpl.affine))
    kw = dict(gamma_range=(1, 1), bias_range=(0, 0), noise_range=(0, 0))
    imgs = [synth.subject_contrast(tpl, a, "t2", np.random.default_rng(s), **kw)[0]
            for s in (0, 1)]
    p, q = imgs[0][tpl.mask], imgs[1][tpl.mask]
    resid = q - np.polyval(np.polyfit(p, q, 1), p)
    assert np.sqrt(np.mean(resid**2)) > 0.02 * q.std()
    flat = [synth.subject_contrast(tpl, a, "t2", np.random.default_rng(s), transfer_knots=0,
                                   contrast_jitter=0.0, **kw)[0][tpl.mask] for s in (0, 1)]
    np.testing.assert_allclose(flat[0], flat[1], atol=1e-6)


def test_warp_anatomy_identity(tpl):
    zero = np.zeros(tpl.shape + (3,), np.float64)
    ident = synth.Deformation(forward=zero, inverse=zero.copy(), affine=tpl.affine)
    a = synth.warp_anatomy(tpl, ident)
    assert not np.any(a["to_template"]) and np.abs(a["from_template"]).max() < 1e-6
    np.testing.assert_array_equal(a["labels"], tpl.labels)
    np.testing.assert_array_equal(a["mask"], tpl.labels > 0)
    assert a["support"].sum() >= tpl.mask.sum() * 0.99


def test_subject_contrast_steps(tpl):
    zero = np.zeros(tpl.shape + (3,), np.float64)
    a = synth.warp_anatomy(tpl, synth.Deformation(zero, zero.copy(), tpl.affine))
    rng = np.random.default_rng(5)
    img, params = synth.subject_contrast(tpl, a, "t1", rng, gamma_range=(1, 1),
                                         bias_range=(0, 0), noise_range=(0, 0))
    base = tpl.image("t1")
    base = base / np.percentile(base[tpl.mask], 99)
    expected = np.where(a["support"], synth.apply_transfer(base, params["transfer"]), 0)
    np.testing.assert_allclose(img, expected, atol=1e-5)
    assert params["gamma"] == 1 and params["bias"] == 0 and len(params["jitter"]) == 3
    # the stream is drawn in a fixed order: gamma, bias, noise, three jitters, transfer
    ref = np.random.default_rng(5)
    ref.uniform(1, 1), ref.uniform(0, 0), ref.uniform(0, 0)
    np.testing.assert_allclose(params["jitter"], (1 + 0.12 * ref.uniform(-1, 1, 3)).round(6))
    np.testing.assert_allclose(params["transfer"], synth.intensity_transfer(ref).round(6))
    # without a transfer the image is the normalised contrast itself
    linear, p0 = synth.subject_contrast(tpl, a, "t1", np.random.default_rng(5),
                                        gamma_range=(1, 1), bias_range=(0, 0),
                                        noise_range=(0, 0), transfer_knots=0)
    np.testing.assert_allclose(linear, np.where(a["support"], base, 0), atol=1e-5)
    assert p0["transfer"] is None
    # make_subject is these steps on split streams
    s = synth.make_subject(tpl, [4, 2], modalities=("t2",))
    deform_ss, t2_ss = np.random.SeedSequence([4, 2]).spawn(2)
    deform = synth._native_deformation(np.random.default_rng(deform_ss), max_rotation=3.0,
                                       max_translation=3.0, **synth.VARIABILITY)
    again, _ = synth.subject_contrast(tpl, synth.warp_anatomy(tpl, deform), "t2",
                                      np.random.default_rng(t2_ss))
    np.testing.assert_array_equal(again, s.images["t2"])


def test_template_labels(tpl):
    values = np.unique(tpl.labels)
    assert values[0] == 0 and values[-1] <= 3 * synth.N_REGIONS
    assert np.array_equal(tpl.labels > 0, tpl.mask)
    assert synth.label_name(1) == "L01-csf" and synth.label_name(36) == "R06-wm"
    seeds = synth.region_seeds()
    assert seeds.shape == (synth.N_REGIONS, 3)
    np.testing.assert_allclose(seeds[6:, 0], -seeds[:6, 0])  # mirrored hemispheres
    with pytest.raises(ValueError):
        synth.label_name(0)


def test_exp_and_inverse_2d():
    rng = np.random.default_rng(0)
    aff = np.diag([2.0, 2.0, 1.0])
    v = synth.random_velocity((40, 36), aff, rng, max_norm=6.0, sigma_mm=10.0)
    u = synth.exp_velocity(v, aff)
    w = synth.invert_displacement(u, aff, init=synth.exp_velocity(-v, aff), tol=1e-8)
    pts = synth.grid_points((40, 36), aff)
    back = pts + u + synth.sample_field(w, aff, pts + u)
    inner = (slice(4, -4), slice(4, -4))
    # Bounded by linear interpolation of w between grid points (steep field: 6 mm over 10 mm).
    assert np.abs(back - pts)[inner].max() < 0.1


@pytest.mark.parametrize("bad", [0, -2.0, [1.0, 2.0], "x", float("nan")])
def test_bad_resolution(bad, tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        load_dataset("embedded-mono", cache_dir=tmp_path, resolution=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_n_subjects(bad, tmp_path):
    with pytest.raises(ValueError, match="n_subjects"):
        load_dataset("embedded-mono", cache_dir=tmp_path, resolution=RES, n_subjects=bad)


# ---------------------------------------------------------------- folders


def _write_subject(root, name, *, labels=None, shape=(6, 7, 5), modalities=("t1",),
                   label_dtype=np.int16):
    d = root / name
    d.mkdir(parents=True)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(len(name))
    for m in modalities:
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), aff), str(d / f"{m}.nii.gz"))
    if labels is None:
        labels = np.zeros(shape, label_dtype)
        labels[2:4, 2:4, 1:3] = 5
    nib.save(nib.Nifti1Image(labels, aff), str(d / "labels.nii.gz"))
    return d


def test_folder_dataset(tmp_path):
    for n in ("A", "B", "C"):
        _write_subject(tmp_path, n, modalities=("flair", "t1"))
    (tmp_path / ".hidden").mkdir()
    ds = load_dataset(tmp_path)
    assert ds.name == tmp_path.name and ds.names == ["A", "B", "C"]
    assert ds.modalities == ["t1", "flair"] and ds.multimodal
    assert ds.subject("B").mask is None and ds.subject("B").truth_to_template is None
    assert load_dataset(str(tmp_path), n_subjects=2).names == ["A", "B"]
    with pytest.raises(KeyError):
        ds.subject("Z")
    assert ds.label_names == {}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"5": "wm"}}))
    assert load_dataset(tmp_path).label_names == {5: "wm"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": ["wm"]}))
    with pytest.raises(ValueError, match="labels"):
        load_dataset(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_dataset(empty)
    nolab = tmp_path / "nolab"
    (nolab / "S1").mkdir(parents=True)
    with pytest.raises(ValueError, match="labels"):
        load_dataset(nolab)
    floaty = tmp_path / "floaty"
    _write_subject(floaty, "S1", labels=np.full((6, 7, 5), 1.5, np.float32))
    with pytest.raises(ValueError, match="integer"):
        load_dataset(floaty)
    zero = tmp_path / "zero"
    _write_subject(zero, "S1", labels=np.zeros((6, 7, 5), np.int16))
    with pytest.raises(ValueError, match="all zero"):
        load_dataset(zero)
    mismatch = tmp_path / "mismatch"
    _write_subject(mismatch, "S1", labels=np.ones((6, 7, 4), np.int16))
    with pytest.raises(ValueError, match="shape"):
        load_dataset(mismatch)
    partial = tmp_path / "partial"
    _write_subject(partial, "S1", modalities=("t1", "t2"))
    _write_subject(partial, "S2", modalities=("t1",))
    with pytest.raises(ValueError, match="lacks modalities"):
        load_dataset(partial)
    with pytest.raises(ValueError, match="name_or_dir"):
        load_dataset(42)


def test_float_integral_labels_accepted(tmp_path):
    lab = np.zeros((6, 7, 5), np.float32)
    lab[1:3, 1:3, 1:3] = 4.0
    _write_subject(tmp_path, "S1", labels=lab)
    check_subject(load_dataset(tmp_path).subjects[0])


def test_check_subject_missing_file(tmp_path):
    d = _write_subject(tmp_path, "S1")
    s = Subject("S1", {"t1": d / "t1.nii.gz", "t2": d / "t2.nii.gz"}, d / "labels.nii.gz")
    with pytest.raises(FileNotFoundError, match="t2"):
        check_subject(s)
    with pytest.raises(TypeError):
        check_subject("S1")


# ---------------------------------------------------------------- fixtures

FIXTURE_NAMES = ["pair3d", "pair2d", "pair3d_multimodal", "pair3d_inverted"]


def test_fixture_manifest_hashes():
    manifest = fixture_manifest()
    assert set(manifest) == {f"{n}.npz" for n in FIXTURE_NAMES}
    total = 0
    for fname, info in manifest.items():
        data = (FIXTURES / fname).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == info["sha256"], fname
    assert total < 3_000_000


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_contents(name):
    p = load_pair(name)
    ndim = 2 if name == "pair2d" else 3
    shape = p["static"].shape
    assert len(shape) == ndim and p["moving"].shape == shape
    assert p["static"].dtype == p["moving"].dtype == np.float32
    assert p["static_labels"].dtype == p["moving_labels"].dtype == np.int32
    assert np.array_equal(np.unique(p["static_labels"]), np.unique(p["moving_labels"]))
    assert p["static_mask"].dtype == bool and p["static_mask"].shape == shape
    assert p["static_affine"].shape == p["moving_affine"].shape == (ndim + 1, ndim + 1)
    assert p["true_disp"].shape == shape + (ndim,) and p["true_disp"].dtype == np.float32
    info = fixture_manifest()[f"{name}.npz"]
    assert list(shape) == info["shape"]
    # The ground truth maps static points onto their moving counterparts.
    pts = synth.grid_points(shape, p["static_affine"])
    back = synth.sample_image(p["moving_labels"], p["moving_affine"], pts + p["true_disp"], order=0)
    lab = p["static_labels"]
    fg = lab > 0
    assert np.mean(back[fg] == lab[fg]) > np.mean(p["moving_labels"][fg] == lab[fg]) + 0.1
    assert np.mean(back[fg] == lab[fg]) > 0.9
