"""Hostile inputs to the harness: bad arguments and damaged files.

Every bad argument of a public ``fastsyn.bench`` function must raise a
ValueError or TypeError naming the argument; every damaged or foreign file
must give an error naming the file and the problem, or a recorded per-pair
failure, and a rerun must keep every finished record.
"""

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fastsyn.bench import evaluate as ev
from fastsyn.bench.convert import convert_lpba40
from fastsyn.bench.datasets import Subject, check_subject, load_dataset, load_displacement
from fastsyn.bench.methods import get_method
from fastsyn.bench.pairs import check_sample_seed, make_pairs
from fastsyn.bench.prealign import prealign_pair
from fastsyn.bench.run import BASELINE, local_workers, run_benchmark
from fastsyn.bench.store import ResultStore, config_hash, make_key
from fastsyn.bench.tables import format_table

SHAPE = (12, 12, 10)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
NAMES = ["S1", "S2", "S3"]
LEVELS = [2]  # one level: CC radius 4 needs more than 9 voxels a side
FAST_PREALIGN = {"level_iters": [5, 3], "sigmas": [1.0, 0.0], "factors": [2, 1]}


# --------------------------------------------------------------------------
# Tiny data written by the tests
# --------------------------------------------------------------------------


def _save(data, path, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _subject(root, name, *, seed=0, modalities=("t1",), labels=None, mask=None):
    """A blob with two labels; every file on the same 2 mm grid."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(SHAPE).astype(float)
    r = np.sqrt((x - 5.5) ** 2 + (y - 5.5) ** 2 + (z - 4.5) ** 2)
    brain = r < 4.5 + rng.uniform(-0.3, 0.3)
    lab = np.where(brain, 1 + (x > 5.5 + rng.uniform(-1, 1)), 0).astype(np.int16)
    for m in modalities:
        img = (lab * 40.0 + rng.normal(0, 2, SHAPE)) * brain
        _save(img.astype(np.float32), d / f"{m}.nii.gz")
    _save(lab if labels is None else labels, d / "labels.nii.gz")
    _save(brain.astype(np.uint8) if mask is None else mask, d / "mask.nii.gz")
    return d


def _dataset(root, n=3, **kw):
    for i in range(n):
        _subject(root, NAMES[i], seed=i, **kw)
    return Path(root)


def _truncate(path, keep=0.5):
    raw = path.read_bytes()
    path.write_bytes(raw[: max(1, int(len(raw) * keep))])


@pytest.fixture
def ds(tmp_path):
    return load_dataset(_dataset(tmp_path / "ds"))


# --------------------------------------------------------------------------
# Bad arguments: function x input -> exception + message
# --------------------------------------------------------------------------


def _arrays():
    rng = np.random.default_rng(0)
    img = rng.random(SHAPE)
    lab = (img > 0.5).astype(np.int32)
    return img, lab


IMG, LAB = _arrays()

BAD_ARGS = [
    # dataset loading
    ("load_dataset n_subjects=0", lambda t: load_dataset(t, n_subjects=0),
     ValueError, r"n_subjects"),
    ("load_dataset n_subjects=-2", lambda t: load_dataset(t, n_subjects=-2),
     ValueError, r"n_subjects"),
    ("load_dataset n_subjects=1.5", lambda t: load_dataset(t, n_subjects=1.5),
     ValueError, r"n_subjects"),
    ("load_dataset n_subjects=True", lambda t: load_dataset(t, n_subjects=True),
     ValueError, r"n_subjects"),
    ("load_dataset name_or_dir=3", lambda t: load_dataset(3), ValueError, r"name_or_dir"),
    ("load_dataset unknown name", lambda t: load_dataset("embedded-mon"),
     FileNotFoundError, r"embedded-mon.*embedded datasets"),
    ("load_dataset resolution=-1",
     lambda t: load_dataset("embedded-mono", cache_dir=t, resolution=-1.0),
     ValueError, r"resolution"),
    ("check_subject not a Subject", lambda t: check_subject("S1"), TypeError, r"subject"),
    ("convert_lpba40 subjects='S01'",
     lambda t: convert_lpba40(_analyze_src(t)[0], t / "out", subjects="S01", progress=False),
     TypeError, r"subjects"),
    # pair sampling
    ("make_pairs sample=0", lambda t: make_pairs(NAMES, sample=0), ValueError, r"sample"),
    ("make_pairs sample=-3", lambda t: make_pairs(NAMES, sample=-3), ValueError, r"sample"),
    ("make_pairs sample='2'", lambda t: make_pairs(NAMES, sample="2"), ValueError, r"sample"),
    ("make_pairs seed=-1", lambda t: make_pairs(NAMES, sample=2, seed=-1), ValueError, r"seed"),
    ("make_pairs seed=1.5", lambda t: make_pairs(NAMES, sample=2, seed=1.5), ValueError, r"seed"),
    ("make_pairs one subject", lambda t: make_pairs(["S1"]), ValueError, r"at least 2"),
    ("make_pairs a string", lambda t: make_pairs("S1,S2"), TypeError, r"dataset_or_subject_names"),
    ("make_pairs unknown modality",
     lambda t: make_pairs(load_dataset(_dataset(t / "d")), ["t7"]), ValueError, r"t7"),
    ("check_sample_seed seed=-5", lambda t: check_sample_seed(2, -5), ValueError, r"seed"),
    # evaluate measures
    ("ncc shapes", lambda t: ev.ncc(IMG, IMG[:-1]), ValueError, r"fixed.*warped"),
    ("nmi bins=1", lambda t: ev.nmi(IMG, IMG, bins=1), ValueError, r"bins"),
    ("nmi strings", lambda t: ev.nmi(np.array(["a"]), np.array(["b"])), TypeError, r"fixed"),
    ("ncc NaN", lambda t: ev.ncc(np.full(SHAPE, np.nan), IMG), ValueError, r"fixed.*NaN"),
    ("ncc mask shape", lambda t: ev.ncc(IMG, IMG, np.ones((2, 2), bool)), ValueError, r"mask"),
    ("ncc empty mask", lambda t: ev.ncc(IMG, IMG, np.zeros(SHAPE, bool)), ValueError, r"mask"),
    ("label_overlap shapes", lambda t: ev.label_overlap(LAB, LAB[1:]),
     ValueError, r"fixed_labels.*warped_labels"),
    ("label_overlap float labels", lambda t: ev.label_overlap(LAB + 0.5, LAB),
     ValueError, r"fixed_labels.*non-integer"),
    ("jacobian bad field", lambda t: ev.jacobian_determinant(np.zeros(SHAPE + (2,))),
     ValueError, r"displacement"),
    ("jacobian singular affine",
     lambda t: ev.jacobian_determinant(np.zeros(SHAPE + (3,)), np.zeros((4, 4))),
     ValueError, r"affine"),
    ("target_error shapes",
     lambda t: ev.target_error(np.zeros(SHAPE + (3,)), np.zeros((2, 2, 2, 3))),
     ValueError, r"true_displacement"),
    ("evaluate_pair warped shape",
     lambda t: ev.evaluate_pair(IMG, IMG[:, :, :-1], LAB, LAB), ValueError, r"warped"),
    ("evaluate_pair labels shape",
     lambda t: ev.evaluate_pair(IMG, IMG, LAB[1:], LAB[1:]), ValueError, r"fixed_labels"),
    ("evaluate_pair displacement shape",
     lambda t: ev.evaluate_pair(IMG, IMG, LAB, LAB, displacement=np.zeros((3, 3, 3, 3))),
     ValueError, r"displacement"),
    ("evaluate_pair truth shape",
     lambda t: ev.evaluate_pair(IMG, IMG, LAB, LAB, true_displacement=np.zeros(SHAPE)),
     ValueError, r"true_displacement"),
    # store
    ("config_hash list", lambda t: config_hash([1]), TypeError, r"config"),
    ("make_key empty dataset", lambda t: make_key("", "p", "m", {}), ValueError, r"dataset"),
    ("make_key method '..'", lambda t: make_key("d", "p", "..", {}), ValueError, r"method"),
    ("ResultStore None", lambda t: ResultStore(None), ValueError, r"results_dir"),
    ("ResultStore a file", lambda t: ResultStore(_file(t)), ValueError, r"results_dir"),
    ("store.put not a dict", lambda t: ResultStore(t).put([1]), TypeError, r"record"),
    ("store.put no status",
     lambda t: ResultStore(t).put({"dataset": "d", "pair": "p", "method": "m", "config": {}}),
     ValueError, r"status"),
    ("store.put bad status",
     lambda t: ResultStore(t).put({"dataset": "d", "pair": "p", "method": "m", "config": {},
                                   "status": "done"}), ValueError, r"status"),
    ("store.records bad status", lambda t: ResultStore(t).records(status="okay"),
     ValueError, r"status"),
    ("store.path malformed key", lambda t: ResultStore(t).path("a/../b"), ValueError, r"key"),
    # methods and tables
    ("get_method unknown", lambda t: get_method("elastix"), ValueError, r"unknown method"),
    ("format_table fmt", lambda t: format_table([], fmt="xml"), ValueError, r"fmt"),
    # run_benchmark (all rejected before any dataset is loaded or built)
    ("run_benchmark metric", lambda t: _run(t, metric="ssd"), ValueError, r"metric"),
    ("run_benchmark masks", lambda t: _run(t, masks="skull"), ValueError, r"masks"),
    ("run_benchmark threads=0", lambda t: _run(t, threads=0), ValueError, r"threads"),
    ("run_benchmark threads=-2", lambda t: _run(t, threads=-2), ValueError, r"threads"),
    ("run_benchmark threads=2.0", lambda t: _run(t, threads=2.0), ValueError, r"threads"),
    ("run_benchmark threads=True", lambda t: _run(t, threads=True), ValueError, r"threads"),
    ("run_benchmark workers=0", lambda t: _run(t, workers=0), ValueError, r"workers"),
    ("run_benchmark workers=True", lambda t: _run(t, workers=True), ValueError, r"workers"),
    ("run_benchmark sample=0", lambda t: _run(t, sample=0), ValueError, r"sample"),
    ("run_benchmark seed=-1", lambda t: _run(t, sample=2, seed=-1), ValueError, r"seed"),
    ("run_benchmark levels=-1", lambda t: _run(t, levels=[2, -1]), ValueError, r"levels"),
    ("run_benchmark levels=''", lambda t: _run(t, levels=[]), ValueError, r"levels"),
    ("run_benchmark levels='a,b'", lambda t: _run(t, levels="a,b"), ValueError, r"levels"),
    ("run_benchmark results_dir", lambda t: _run(t, results_dir=None), ValueError, r"results_dir"),
    ("run_benchmark prealign_options key", lambda t: _run(t, prealign_options={"bins": 3}),
     ValueError, r"prealign_options"),
    ("run_benchmark prealign_options type", lambda t: _run(t, prealign_options=[1]),
     TypeError, r"prealign_options"),
    # ... and after loading
    ("run_benchmark unknown method", lambda t: _run(t, methods=["elastix"], dataset=True),
     ValueError, r"unknown method 'elastix'"),
    ("run_benchmark no method", lambda t: _run(t, methods=[], dataset=True),
     ValueError, r"methods"),
    ("run_benchmark unknown modality", lambda t: _run(t, modalities="t2", dataset=True),
     ValueError, r"t2"),
    ("run_benchmark dask=''", lambda t: _run(t, dask=""), ValueError, r"dask"),
    ("run_benchmark dask=4", lambda t: _run(t, dask=4), ValueError, r"dask"),
    ("prealign_pair cache_root None",
     lambda t: _prealign(t, cache_root=None), ValueError, r"cache_root"),
    ("prealign_pair pair_id ''", lambda t: _prealign(t, pair_id=""), ValueError, r"pair_id"),
    ("prealign_pair nbins=1", lambda t: _prealign(t, nbins=1), ValueError, r"nbins"),
    ("prealign_pair levels mismatch", lambda t: _prealign(t, sigmas=[1.0]),
     ValueError, r"level_iters, sigmas and factors"),
    ("prealign_pair missing labels", lambda t: _prealign(t, moving_labels=t / "nope.nii.gz"),
     FileNotFoundError, r"moving_labels.*nope"),
]


def _file(tmp):
    p = tmp / "a-file"
    p.write_text("x")
    return p


def _run(tmp, *, dataset=False, methods=("dipy",), metric="cc", **kw):
    kw.setdefault("results_dir", tmp / "res")
    kw.setdefault("levels", LEVELS)
    data = _dataset(tmp / "ds") if dataset else tmp / "not-read"
    return run_benchmark(data, list(methods), metric, progress=False, **kw)


def _prealign(tmp, **kw):
    d = _subject(tmp, "F")
    m = _subject(tmp, "M", seed=1)
    args = {"fixed_image": d / "t1.nii.gz", "moving_image": m / "t1.nii.gz",
            "moving_labels": m / "labels.nii.gz", "cache_root": tmp / "cache",
            "fixed_labels": d / "labels.nii.gz", "pair_id": "F__M", **FAST_PREALIGN}
    args.update(kw)
    return prealign_pair(args.pop("fixed_image"), args.pop("moving_image"),
                         args.pop("moving_labels"), args.pop("cache_root"), **args)


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD_ARGS],
                         ids=[c[0] for c in BAD_ARGS])
def test_bad_argument_is_named(tmp_path, call, exc, match):
    with pytest.raises(exc, match=match):
        call(tmp_path)


# --------------------------------------------------------------------------
# Damaged and foreign files
# --------------------------------------------------------------------------


def _damage(kind, root):
    """Damage the dataset at ``root``; returns the file the error must name."""
    s1 = root / "S1"
    if kind == "truncated labels (gz)":
        _truncate(s1 / "labels.nii.gz")
        return s1 / "labels.nii.gz"
    if kind == "garbage labels":
        (s1 / "labels.nii.gz").write_bytes(b"not a nifti file at all" * 20)
        return s1 / "labels.nii.gz"
    if kind == "truncated mask (.nii)":
        (s1 / "mask.nii.gz").unlink()
        _save(np.ones(SHAPE, np.uint8), s1 / "mask.nii")
        _truncate(s1 / "mask.nii", 0.6)
        return s1 / "mask.nii"
    if kind == "float labels":
        _save(np.full(SHAPE, 1.5, np.float32), s1 / "labels.nii.gz")
        return s1 / "labels.nii.gz"
    if kind == "mask of another shape":
        _save(np.ones((12, 12, 9), np.uint8), s1 / "mask.nii.gz")
        return s1 / "mask.nii.gz"
    if kind == "missing modality":
        (s1 / "t2.nii.gz").unlink()
        return s1 / "t2.nii.gz"
    if kind == "stamp not JSON":
        (root / "dataset.json").write_text('{"name": "x", "subj')
        return root / "dataset.json"
    if kind == "stamp lists a missing subject":
        (root / "dataset.json").write_text(json.dumps({"subjects": ["S1", "S9"]}))
        return "S9"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, exc, problem", [
    ("truncated labels (gz)", ValueError, r"cannot read"),
    ("garbage labels", ValueError, r"cannot read"),
    ("truncated mask (.nii)", ValueError, r"cannot read"),
    ("float labels", ValueError, r"not integer-valued"),
    ("mask of another shape", ValueError, r"shape \(12, 12, 9\) does not match"),
    ("missing modality", ValueError, r"lacks modalities \['t2'\]"),
    ("stamp not JSON", ValueError, r"not valid JSON"),
    ("stamp lists a missing subject", FileNotFoundError, r"missing"),
])
def test_damaged_dataset_names_file_and_problem(tmp_path, kind, exc, problem):
    root = _dataset(tmp_path / "ds", modalities=("t1", "t2"))
    named = _damage(kind, root)
    with pytest.raises(exc, match=problem) as info:
        load_dataset(root)
    assert str(named) in str(info.value)


def test_truncated_displacement_is_named(tmp_path):
    path = tmp_path / "truth.nii.gz"
    _save(np.zeros(SHAPE + (1, 3), np.float32), path)
    _truncate(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_displacement(path)


def test_check_subject_names_a_garbage_image(tmp_path):
    d = _subject(tmp_path, "S1")
    (d / "t1.nii.gz").write_bytes(b"\x00" * 100)
    s = Subject("S1", {"t1": d / "t1.nii.gz"}, d / "labels.nii.gz")
    with pytest.raises(ValueError, match=r"subject 'S1': cannot read image 't1' file .*t1"):
        check_subject(s)


def _analyze_src(tmp):
    d = tmp / "LPBA40" / "delineation_space" / "S01"
    d.mkdir(parents=True)
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:8, 3:8, 3:7] = 21
    for stem, data in (("skullstripped", (lab * 3).astype(np.int16)),
                       ("structure.label", lab)):
        nib.save(nib.AnalyzeImage(data, None), str(d / f"S01.delineation.{stem}.hdr"))
    return tmp / "LPBA40", d


@pytest.mark.parametrize("damage, named", [
    ("truncated img", "S01.delineation.skullstripped.img"),
    ("truncated hdr", "S01.delineation.skullstripped.hdr"),
    ("garbage hdr", "S01.delineation.structure.label.hdr"),
    ("truncated img.gz", "S01.delineation.structure.label.img.gz"),
])
def test_damaged_analyze_names_file(tmp_path, damage, named):
    src, d = _analyze_src(tmp_path)
    path = d / named
    if damage == "truncated img.gz":
        raw = (d / "S01.delineation.structure.label.img").read_bytes()
        (d / "S01.delineation.structure.label.img").unlink()
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    if damage == "garbage hdr":
        path.write_bytes(b"\x07" * 40)
    else:
        _truncate(path, 0.5)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        convert_lpba40(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "S01").exists()  # nothing half-written


def test_float_analyze_labels_are_refused(tmp_path):
    src, d = _analyze_src(tmp_path)
    nib.save(nib.AnalyzeImage(np.full(SHAPE, 2.5, np.float32), None),
             str(d / "S01.delineation.structure.label.hdr"))
    with pytest.raises(ValueError, match=r"structure\.label.*not integer-valued"):
        convert_lpba40(src, tmp_path / "out", progress=False)


# --------------------------------------------------------------------------
# Results folder: damaged files, per-pair failures, reruns
# --------------------------------------------------------------------------


def test_foreign_and_half_written_record_files_are_ignored(tmp_path):
    store = ResultStore(tmp_path)
    rec = {"dataset": "d", "pair": "p", "method": "m", "config": {"a": 1}, "status": "ok"}
    key = store.put(rec)
    other = make_key("d", "q", "m", {"a": 1})
    path = store.path(other)
    path.write_text('{"dataset": "d", "status": "o')  # half-written
    assert store.get(other) is None and not store.has(other)
    path.write_text("[1, 2, 3]")  # foreign JSON
    assert store.get(other) is None and not store.has(other)
    (path.parent / "notes.json").write_text('"just a string"')
    (path.parent / ".tmp-x.json").write_text("{")
    (path.parent / "dir.json").mkdir()
    assert [r["key"] for r in store.records()] == [key]
    assert store.has(key)


def _first_run(tmp_path, monkeypatch=None):
    data = _dataset(tmp_path / "ds")
    res = tmp_path / "res"
    summary = run_benchmark(data, ["dipy"], "cc", levels=LEVELS, results_dir=res,
                            workers=1, progress=False, prealign_options=FAST_PREALIGN)
    return data, res, summary


def _snapshot(res):
    return {r["key"]: r for r in ResultStore(res).records(status="ok")}


def test_damaged_image_is_a_recorded_pair_failure_and_rerun_keeps_records(tmp_path):
    data, res, summary = _first_run(tmp_path)
    assert summary["errors"] == 0 and summary["ok"] == 6  # 3 pairs x (baseline, dipy)
    finished = _snapshot(res)
    # a foreign file and a half-written record sit among the records
    some = next(iter(finished.values()))
    folder = ResultStore(res).path(some["key"]).parent
    (folder / "foreign.json").write_text('{"hello": "world"}')
    (folder / ".tmp-abc.json").write_text('{"status": "o')
    # a new subject whose image is truncated
    _subject(data, "S4", seed=7)
    _truncate(data / "S4" / "t1.nii.gz")
    summary = run_benchmark(data, ["dipy"], "cc", levels=LEVELS, results_dir=res,
                            workers=1, progress=False, prealign_options=FAST_PREALIGN)
    assert summary["skipped"] == 3 and summary["pairs"] == 6
    assert summary["errors"] == 6 and summary["ok"] == 0
    errors = ResultStore(res).records(status="error")
    assert len(errors) == 6
    for rec in errors:
        assert rec["moving"] == "S4" or rec["fixed"] == "S4"
        assert "prealignment failed" in rec["error"]
        assert str(data / "S4" / "t1.nii.gz") in rec["error"]
    # every finished record is still there, byte for byte the same content
    after = _snapshot(res)
    assert {k: after[k] for k in finished} == finished
    assert {r["method"] for r in after.values()} == {BASELINE, "dipy"}


def test_damaged_prealignment_cache_is_a_named_pair_failure(tmp_path):
    data, res, _ = _first_run(tmp_path)
    cache = next((res / "prealign").rglob("meta.json")).parent
    (cache / "meta.json").write_text("{")
    for rec in ResultStore(res).records():
        if rec["prealign_dir"] == str(cache):
            ResultStore(res).path(rec["key"]).unlink()
    before = _snapshot(res)
    summary = run_benchmark(data, ["dipy"], "cc", levels=LEVELS, results_dir=res,
                            workers=1, progress=False, prealign_options=FAST_PREALIGN)
    assert summary["errors"] == 2
    for rec in ResultStore(res).records(status="error"):
        assert f"prealignment cache {cache} is damaged" in rec["error"]
    after = _snapshot(res)
    assert after == before


def test_fixed_mask_of_another_shape_is_named(tmp_path):
    small = _save(np.ones((4, 4, 4), np.uint8), tmp_path / "small_mask.nii.gz")
    with pytest.raises(ValueError, match=r"fixed_mask .*small_mask\.nii\.gz has shape \(4, 4, 4\)"):
        _prealign(tmp_path, fixed_mask=small)
    with pytest.raises(ValueError, match=r"moving_mask .*small_mask\.nii\.gz has shape"):
        _prealign(tmp_path, moving_mask=small)


# --------------------------------------------------------------------------
# The steps of run_benchmark, alone
# --------------------------------------------------------------------------


def test_local_workers_fit_the_cores():
    warned = []
    assert local_workers(None, 2, 10, warned.append, cores=8) == 4
    assert local_workers(None, 16, 10, warned.append, cores=8) == 1
    assert local_workers(3, 1, 2, warned.append, cores=8) == 2  # no more than the tasks
    assert warned == []
    assert local_workers(4, 4, 10, warned.append, cores=8) == 2
    assert len(warned) == 1 and "exceeds the 8 available cores" in warned[0]


def test_plan_and_tasks(tmp_path):
    from fastsyn.bench.run import method_specs, plan_pairs, plan_tasks

    data = _dataset(tmp_path / "ds")
    ds, pairs = plan_pairs(data, None, sample=2, seed=1, cache_dir=None, resolution=2.0)
    assert [p.id for p in pairs] == [p.id for p in make_pairs(ds, sample=2, seed=1)]
    specs, unavailable = method_specs(["dipy", "DIPY"], "cc", LEVELS, 1, "ds", {}, print)
    assert [s["name"] for s in specs] == ["dipy"] and unavailable == {}
    assert specs[0]["config"]["data"] == "ds" and specs[0]["config"]["threads"] == 1
    tasks = plan_tasks(ds, pairs, specs, metric="cc", levels=LEVELS, results_dir=tmp_path,
                       cache=tmp_path / "c", pre_opts={}, data_tag="ds")
    assert len(tasks) == 2
    t = tasks[0]
    assert t["fixed_files"]["images"]["t1"] == str(data / pairs[0].fixed / "t1.nii.gz")
    assert t["moving_files"]["mask"] == str(data / pairs[0].moving / "mask.nii.gz")
    json.dumps(t)  # tasks are plain data (they travel to workers)
    assert t["masks"] == "none" and specs[0]["config"]["masks"] == "none"


def test_dataset_tag_carries_the_generator_version(tmp_path):
    from fastsyn.bench.layout import write_dataset_stamp
    from fastsyn.bench.run import dataset_tag, plan_pairs

    data = _dataset(tmp_path / "ds")
    ds, _ = plan_pairs(data, None, sample=1, seed=0, cache_dir=None, resolution=2.0)
    assert dataset_tag(ds) == "ds"
    # an embedded cohort's stamp names its generator version: a new generator
    # gives new record keys (and prealignment folders) for the same folder
    write_dataset_stamp(data, "ds", ["t1"], ds.names, version=2)
    assert dataset_tag(ds) == "ds-v2"
