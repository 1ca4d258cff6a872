"""End-to-end harness: `fastsyn bench run` on a tiny folder dataset, resume,
tables, error records, Dask, prealignment cache, ANTs and greedy adapters."""

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fastsyn.bench.methods import Method, MethodResult
from fastsyn.bench.store import ResultStore
from fastsyn.cli import main

LEVELS = "2,2"


def _write_tiny_dataset(root, n=3, size=24, seed=0):
    """Spheres with four quadrant labels and a core, jittered per subject."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices((size,) * 3).astype(float)
    c = (size - 1) / 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -2 * c
    for i in range(n):
        d = rng.normal(0, 0.8, 3)
        r = np.sqrt((x - c - d[0]) ** 2 + (y - c - d[1]) ** 2 + ((z - c - d[2]) / 1.1) ** 2)
        brain = r < size * 0.38
        lab = np.zeros(x.shape, np.int16)
        lab[brain] = 1 + (x[brain] > c + d[0]) + 2 * (y[brain] > c + rng.normal(0, 1))
        lab[r < size * 0.15] = 5
        img = (lab * 20.0 + ndimage.gaussian_filter(rng.normal(0, 5, x.shape), 1)) * brain
        s = Path(root) / f"sub{i:02d}"
        s.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(s / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(s / "labels.nii.gz"))
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), str(s / "mask.nii.gz"))
    return Path(root)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _write_tiny_dataset(tmp_path_factory.mktemp("tinyds") / "tiny")


def _fastsyn_ready():
    from fastsyn.bench.methods import FastsynMethod
    return FastsynMethod().available("cc")[0]


def _run_args(data, res, methods, *extra):
    return ["bench", "run", "--dataset", str(data), "--methods", methods,
            "--metric", "cc", "--levels", LEVELS, "--workers", "1",
            "--results", str(res), "--quiet", *extra]


def test_cli_run_resume_and_tables(tiny, tmp_path, capsys):
    res = tmp_path / "res"
    methods = "dipy,fastsyn" if _fastsyn_ready() else "dipy"
    n_methods = 1 + methods.count(",") + 1  # + Baseline
    assert main(_run_args(tiny, res, methods)) == 0
    out = capsys.readouterr().out
    assert "3 pairs, 0 already finished" in out
    records = ResultStore(res).records()
    assert len(records) == 3 * n_methods
    assert all(r["status"] == "ok" for r in records)
    rec = next(r for r in records if r["method"] == "dipy")
    assert rec["config"]["levels"] == [2, 2] and rec["threads"] == 1
    assert rec["seconds"] > 0 and rec["peak_mem_mb"] > 0
    assert 0 < rec["metrics"]["dice_mean"] <= 1 and rec["metrics"]["folding_pct"] >= 0
    stamps = {r["key"]: ResultStore(res).path(r["key"]).stat().st_mtime_ns for r in records}

    # resume: everything is skipped, nothing rewritten
    assert main(_run_args(tiny, res, methods)) == 0
    assert "3 already finished, 0 records written" in capsys.readouterr().out
    assert {k: ResultStore(res).path(k).stat().st_mtime_ns for k in stamps} == stamps

    assert main(["bench", "table", "--results", str(res)]) == 0
    md = capsys.readouterr().out
    assert ("| Method | NCC | NMI | Label Dice | Label Jaccard | Folding (%) | SD log|J| "
            "| TRE mean (mm) | Time (s) |") in md
    baseline = next(line for line in md.splitlines() if line.startswith("| Baseline"))
    assert baseline.rstrip().endswith("| – |") and " ± " in baseline
    assert "| DIPY |" in md
    # Jacobian columns measured for every method; TRE blank without a true field
    dipy = next(line for line in md.splitlines() if line.startswith("| DIPY |"))
    cells = [c.strip() for c in dipy.strip("|").split("|")]
    assert " ± " in cells[5] and " ± " in cells[6] and cells[7] == "–"

    assert main(["bench", "table", "--results", str(res), "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert csv_lines[0].startswith("Dataset,Method,n,NCC mean,NCC std")
    assert "Folding (%) mean" in csv_lines[0] and "TRE mean (mm) std" in csv_lines[0]
    assert len(csv_lines) == 1 + n_methods

    assert main(["bench", "table", "--results", str(res), "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = table["tiny"]
    assert rows["Baseline"]["n"] == 3 and rows["Baseline"]["Time (s)"] is None
    assert set(rows["DIPY"]["NCC"]) == {"mean", "std"} and rows["DIPY"]["n"] == 3
    if "fastsyn" in methods:  # same algorithm as stock DIPY
        assert rows["fastsyn"]["Label Dice"]["mean"] == pytest.approx(
            rows["DIPY"]["Label Dice"]["mean"], abs=0.02)


def test_failed_pair_is_recorded_and_retried(tiny, tmp_path, monkeypatch, capsys):
    from fastsyn.bench import methods as m

    res = tmp_path / "res"
    original = m.DipyMethod._run
    calls = []

    def flaky(self, fixed, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated registration failure")
        return original(self, fixed, *args, **kwargs)

    monkeypatch.setattr(m.DipyMethod, "_run", flaky)
    assert main(_run_args(tiny, res, "dipy")) == 1  # some pairs failed
    assert "1 errors" in capsys.readouterr().out
    store = ResultStore(res)
    errors = store.records(status="error")
    assert len(errors) == 1 and "simulated registration failure" in errors[0]["error"]
    assert len(store.records(status="ok")) == 5  # 3 Baseline + 2 dipy: the run went on
    monkeypatch.setattr(m.DipyMethod, "_run", original)
    assert main(_run_args(tiny, res, "dipy")) == 0  # only the failed record reruns
    assert "2 already finished, 1 records written" in capsys.readouterr().out
    assert store.records(status="error") == []


def test_unavailable_method_is_reported(tiny, tmp_path):
    from fastsyn.bench.methods import DipyMethod
    from fastsyn.bench.run import run_benchmark

    class Missing(DipyMethod):
        name = "missing"
        package = "no_such_package_for_fastsyn_tests"

    ok, reason = Missing().available("cc")
    assert not ok and "not installed" in reason
    with pytest.warns(RuntimeWarning, match="missing"):
        summary = run_benchmark(tiny, [Missing()], "cc", sample=1, levels=(2, 2),
                                results_dir=tmp_path / "res", workers=1, progress=False)
    assert "missing" in summary["unavailable"]
    assert summary["ok"] == 1  # the Baseline still ran


def test_dask_local_cluster(tiny, tmp_path):
    distributed = pytest.importorskip("distributed")
    from fastsyn.bench.run import run_benchmark

    res = tmp_path / "res"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        summary = run_benchmark(tiny, "dipy", "cc", levels=(2, 2), results_dir=res,
                                dask=client, progress=False)
        assert summary["ok"] == 6 and summary["errors"] == 0
        again = run_benchmark(tiny, "dipy", "cc", levels=(2, 2), results_dir=res,
                              dask=client, progress=False)
    assert again["skipped"] == 3 and again["ran"] == 0
    assert len(ResultStore(res).records(status="ok")) == 6


def test_prealignment_is_cached_and_consistent(tiny, tmp_path):
    from fastsyn.bench.prealign import prealign_pair

    kw = dict(fixed_labels=tiny / "sub00/labels.nii.gz", pair_id="sub00__sub01",
              moving_mask=tiny / "sub01/mask.nii.gz", level_iters=(10, 5),
              sigmas=(1.0, 0.0), factors=(2, 1))
    args = (tiny / "sub00/t1.nii.gz", tiny / "sub01/t1.nii.gz",
            tiny / "sub01/labels.nii.gz", tmp_path)
    first = prealign_pair(*args, **kw)
    stamp = first.moving_image.stat().st_mtime_ns
    again = prealign_pair(*args, **kw)
    assert again.cache_dir == first.cache_dir
    assert again.moving_image.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.rigid, first.rigid)
    data = first.load()
    assert data["moving"].shape == data["fixed"].shape
    src_labels = set(np.unique(nib.load(str(tiny / "sub01/labels.nii.gz")).get_fdata()))
    assert set(np.unique(data["moving_labels"])) <= {int(v) for v in src_labels}
    assert first.moving_mask is not None and first.truth is None
    rot = first.rigid[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)  # rigid
    with pytest.raises(FileNotFoundError, match="moving_image"):
        prealign_pair(tiny / "sub00/t1.nii.gz", tmp_path / "nope.nii.gz",
                      tiny / "sub01/labels.nii.gz", tmp_path, **kw)


def test_true_displacement_composes_both_subjects():
    import tempfile

    from fastsyn.bench.prealign import _true_displacement
    shape = (5, 6, 7)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    with tempfile.TemporaryDirectory() as tmp:
        u = np.zeros(shape + (3,), np.float32)
        u[..., 0] = 1.0
        v = np.zeros(shape + (1, 3), np.float32)  # the 5D layout is accepted
        v[..., 1] = 2.0
        nib.save(nib.Nifti1Image(u, aff), f"{tmp}/u.nii.gz")
        nib.save(nib.Nifti1Image(v, aff), f"{tmp}/v.nii.gz")
        rigid = np.eye(4)
        rigid[2, 3] = 3.0  # moving world = fixed world + 3 mm in z
        t = _true_displacement(shape, aff, f"{tmp}/u.nii.gz", f"{tmp}/v.nii.gz", rigid)
    np.testing.assert_allclose(t[..., 0], 1.0)
    np.testing.assert_allclose(t[..., 1], 2.0)
    np.testing.assert_allclose(t[..., 2], -3.0)


def test_cli_errors(tmp_path, capsys):
    assert main(["bench", "table", "--results", str(tmp_path / "none")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    assert main(["bench", "run", "--dataset", str(tmp_path), "--methods", "nope",
                 "--metric", "cc", "--results", str(tmp_path / "r")]) == 2
    assert "unknown method" in capsys.readouterr().err
    # Usage errors: argparse exits with status 2 and one "fastsyn: error:" line.
    for bad in (["--levels", "2,x"], ["--metric", "ssd"]):
        args = ["bench", "run", "--dataset", str(tmp_path), "--methods", "dipy",
                "--metric", "cc", "--results", str(tmp_path / "r")] + bad
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("fastsyn: error: argument " + bad[0]) and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _pair_arrays(tiny):
    # the tiny subjects already share one grid: no prealignment needed here
    fixed = nib.load(str(tiny / "sub00/t1.nii.gz"))
    moving = nib.load(str(tiny / "sub01/t1.nii.gz"))
    labels = np.asarray(nib.load(str(tiny / "sub01/labels.nii.gz")).dataobj)
    return (fixed.get_fdata(), moving.get_fdata(), fixed.affine, moving.affine,
            labels.astype(np.int32))


@pytest.mark.parametrize("name, marker", [("ants", "ants"), ("greedy", "picsl_greedy")])
@pytest.mark.parametrize("metric", ["cc", "mi"])
def test_external_methods(tiny, name, marker, metric):
    if importlib.util.find_spec(marker) is None:
        pytest.skip(f"{marker} not installed")
    from scipy.ndimage import map_coordinates

    from fastsyn.bench.methods import get_method

    fixed, moving, fa, ma, labels = _pair_arrays(tiny)
    res = get_method(name).run(fixed, moving, fa, ma, labels, metric=metric,
                               levels=(2, 2), threads=1)
    assert res.warped.shape == fixed.shape and res.seconds > 0 and res.threads == 1
    assert set(np.unique(res.warped_labels)) <= set(np.unique(labels))
    # the displacement is in RAS world mm: resampling the moving image at
    # x + u(x) reproduces the method's own warped image
    inv = np.linalg.inv(ma)
    idx = np.indices(fixed.shape).reshape(3, -1).T.astype(float)
    world = idx @ fa[:3, :3].T + fa[:3, 3] + res.displacement.reshape(-1, 3)
    mine = map_coordinates(moving, (world @ inv[:3, :3].T + inv[:3, 3]).T, order=1)
    core = (slice(4, -4),) * 3
    diff = np.abs(mine.reshape(fixed.shape) - res.warped)[core]
    assert diff.mean() < 0.01 * np.abs(moving).max()


def test_cli_with_external_methods_and_process_pool(tiny, tmp_path, capsys):
    have = [m for m, mod in (("ants", "ants"), ("greedy", "picsl_greedy"))
            if importlib.util.find_spec(mod) is not None]
    methods = ",".join(["dipy"] + have)
    res = tmp_path / "res"
    args = _run_args(tiny, res, methods, "--sample", "2")
    args[args.index("--workers") + 1] = "2"  # spawn-based local pool, 2 x 1 thread
    assert main(args) == 0
    recs = ResultStore(res).records(status="ok")
    assert len(recs) == 2 * (2 + len(have))
    assert main(["bench", "table", "--results", str(res)]) == 0
    md = capsys.readouterr().out
    for label in ["Baseline", "DIPY"] + [{"ants": "ANTs", "greedy": "greedy"}[m] for m in have]:
        assert f"| {label} |" in md


# ------------------------------------------------------------------ masks

_SEEN = []


class _Spy(Method):
    """Records the masks it is given and returns the moving image unchanged."""

    name = "spy"
    label = "Spy"
    mask_metrics = ("mi",)

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *, metric, levels,
             threads, fixed_mask=None, moving_mask=None):
        _SEEN.append((metric, fixed_mask, moving_mask))
        return MethodResult(moving, labels, np.zeros(fixed.shape + (3,)), 0.01, threads, None)


class _SpyNoMask(_Spy):
    name = "spy-nomask"
    label = "Spy without masks"
    mask_metrics = ()

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *, metric, levels,
             threads):
        _SEEN.append((metric, "called without mask keywords", None))
        return MethodResult(moving, labels, None, 0.01, threads, None)


def test_masks_switch_recorded_and_passed(tiny, tmp_path, monkeypatch):
    from fastsyn.bench import methods
    from fastsyn.bench.run import run_benchmark

    # tasks name their methods; the worker looks them up in METHODS
    monkeypatch.setitem(methods.METHODS, "spy", _Spy)
    monkeypatch.setitem(methods.METHODS, "spy-nomask", _SpyNoMask)

    res = tmp_path / "res"
    kw = dict(sample=1, levels=(2, 2), results_dir=res, workers=1, progress=False)
    keys = {}
    for mode in ("none", "brain", "nonzero"):
        _SEEN.clear()
        run_benchmark(tiny, [_Spy(), _SpyNoMask()], "mi", masks=mode, **kw)
        recs = [r for r in ResultStore(res).records() if r["config"].get("masks") == mode
                and r["method"] == "spy"]
        assert len(recs) == 1 and recs[0]["status"] == "ok"
        keys[mode] = recs[0]["key"]
        fixed = tiny / recs[0]["fixed"]
        brain_ref = np.asarray(nib.load(str(fixed / "mask.nii.gz")).dataobj) > 0
        image = np.asarray(nib.load(str(fixed / "t1.nii.gz")).dataobj)
        nomask = [r for r in ResultStore(res).records() if r["method"] == "spy-nomask"]
        # a method without masks records "none" under every switch: one shared record
        assert len(nomask) == 1 and nomask[0]["config"]["masks"] == "none"
        spy = [s for s in _SEEN if s[1] is not None and not isinstance(s[1], str)]
        if mode == "none":
            assert [s[1:] for s in _SEEN if not isinstance(s[1], str)] == [(None, None)]
            assert any(isinstance(s[1], str) for s in _SEEN)  # the first run only
            continue
        (_, fixed_mask, moving_mask), = spy
        assert fixed_mask.dtype == bool and moving_mask.shape == fixed_mask.shape
        if mode == "brain":  # the dataset's mask.nii.gz of the fixed subject
            np.testing.assert_array_equal(fixed_mask, brain_ref)
        else:
            np.testing.assert_array_equal(fixed_mask, image != 0)
    assert len(set(keys.values())) == 3  # the switch is part of the record key
    # CC: the spy has no CC masks, so it records (and receives) none
    _SEEN.clear()
    run_benchmark(tiny, [_Spy()], "cc", masks="brain", **kw)
    cc = [r for r in ResultStore(res).records() if r["config"].get("metric") == "cc"
          and r["method"] == "spy"]
    assert cc[0]["config"]["masks"] == "none" and _SEEN == [("cc", None, None)]
    with pytest.raises(ValueError, match="masks"):
        run_benchmark(tiny, [_Spy()], "mi", masks="skull", **kw)


def test_cli_masks_flag(tiny, tmp_path, capsys):
    res = tmp_path / "res"
    args = _run_args(tiny, res, "dipy", "--sample", "1", "--masks", "brain")
    args[args.index("--metric") + 1] = "mi"
    assert main(args) == 0
    rec = next(r for r in ResultStore(res).records() if r["method"] == "dipy")
    assert rec["config"]["masks"] == "brain" and rec["status"] == "ok"
    with pytest.raises(SystemExit):
        main(_run_args(tiny, res, "dipy", "--masks", "skull"))
    capsys.readouterr()


def test_fastsyn_mi_gets_the_masks(tiny, monkeypatch):
    import fastsyn
    from fastsyn.bench.methods import get_method

    given = {}
    original = fastsyn.MIMetric

    def spy(*args, **kwargs):
        given.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fastsyn, "MIMetric", spy)
    fixed, moving, fa, ma, labels = _pair_arrays(tiny)
    fm, mm = fixed != 0, moving != 0
    get_method("fastsyn").run(fixed, moving, fa, ma, labels, metric="mi", levels=(1,),
                              threads=1, fixed_mask=fm, moving_mask=mm)
    np.testing.assert_array_equal(given["static_mask"], fm)
    np.testing.assert_array_equal(given["moving_mask"], mm)
    assert get_method("fastsyn").accepts_masks("mi")
    assert not get_method("fastsyn").accepts_masks("cc")  # fastsyn's CC has no mask
    with pytest.raises(ValueError, match="fixed_mask"):
        get_method("fastsyn").run(fixed, moving, fa, ma, labels, metric="mi", levels=(1,),
                                  threads=1, fixed_mask=fm[1:])


@pytest.mark.parametrize("name, marker", [("ants", "ants"), ("greedy", "picsl_greedy")])
def test_external_methods_with_masks(tiny, name, marker):
    if importlib.util.find_spec(marker) is None:
        pytest.skip(f"{marker} not installed")
    from fastsyn.bench.methods import get_method

    fixed, moving, fa, ma, labels = _pair_arrays(tiny)
    method = get_method(name)
    assert method.accepts_masks("mi") and method.accepts_masks("cc")
    # the tool takes the mask files (ANTs: -x [fixed,moving]; greedy: -gm, -mm)
    res = method.run(fixed, moving, fa, ma, labels, metric="mi", levels=(2, 2), threads=1,
                     fixed_mask=fixed != 0, moving_mask=moving != 0)
    assert res.warped.shape == fixed.shape and res.displacement is not None
    assert np.isfinite(res.displacement).all() and np.abs(res.displacement).max() > 0
