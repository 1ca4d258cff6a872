"""The ``fastsyn`` command run as a real subprocess, as a user runs it.

Every subcommand runs from a temporary working directory (never the
repository, so nothing is found through ``./fixtures``), with an environment
built from a clean copy: no ``FASTSYN_*`` or ``OMP_*`` variables of the
caller, one OpenMP thread, and a private cohort cache shared by this module.
Settings are the smallest the commands allow; the whole file takes a couple
of minutes on two busy cores.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per command: a hang fails the test instead of the run


# ------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def clean_env(tmp_path_factory):
    """The environment of every command: the caller's minus fastsyn's and
    OpenMP's variables, one thread, a private cache, no GUI backend."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FASTSYN_", "OMP_", "MPLBACKEND"))}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               FASTSYN_CACHE=str(tmp_path_factory.mktemp("fastsyn-cache")))
    return env


def fastsyn(env, cwd, *args):
    """Run ``python -m fastsyn.cli ARGS`` in ``cwd``; the completed process."""
    assert Path(cwd).resolve() != REPO
    return subprocess.run([sys.executable, "-m", "fastsyn.cli", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def ok(proc):
    """Assert success with a readable failure message; return stdout."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


# -------------------------------------------------------------- entry points
def test_help_lists_every_command(clean_env, tmp_path):
    out = ok(fastsyn(clean_env, tmp_path, "--help"))
    for command in ("prepare", "bench", "profile", "report", "demo"):
        assert f"    {command} " in out
    out = ok(fastsyn(clean_env, tmp_path, "bench", "--help"))
    assert all(sub in out for sub in ("run", "table", "speed"))


def test_console_script_points_at_fastsyn_cli(clean_env, tmp_path):
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "fastsyn"]
    assert [ep.value for ep in scripts] == ["fastsyn.cli:main"]
    script = Path(sys.executable).with_name("fastsyn")
    if not script.is_file():
        pytest.skip(f"no fastsyn script next to {sys.executable}")
    proc = subprocess.run([str(script), "demo", "--help"], cwd=tmp_path, env=clean_env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert "--quick" in ok(proc)


def test_shipped_pairs_are_the_fixtures():
    """The pairs installed as package data are byte copies of fixtures/."""
    from fastsyn.data import PAIRS, pair_file

    manifest = json.loads((REPO / "fixtures" / "manifest.json").read_text())
    for name in PAIRS:
        data = pair_file(name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest[f"{name}.npz"]["sha256"]
    assert pair_file("pair2d") is None and pair_file("../fixtures/pair2d") is None


# ------------------------------------------------------------------- prepare
SHAPE = (6, 7, 5)


def _volume(seed, dtype=np.float32):
    vol = np.random.default_rng(seed).integers(1, 200, SHAPE).astype(dtype)
    vol[0] = 0  # background
    return vol


def _labels(seed, values, dtype):
    lab = np.random.default_rng(seed).choice(np.asarray(values), SHAPE).astype(dtype)
    lab[0] = 0
    return lab


def _nifti(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 1.5, 1.0])), str(path))


def _lpba40_source(root):
    """LPBA40 as distributed: Analyze pairs under delineation_space/."""
    for i in (1, 2):
        d = root / "LPBA40" / "delineation_space" / f"S{i:02d}"
        d.mkdir(parents=True)
        for stem, data in ((f"S{i:02d}.delineation.skullstripped", _volume(i, np.int16)),
                           (f"S{i:02d}.delineation.structure.label",
                            _labels(i, [0, 21, 22, 181], np.uint8))):
            img = nib.AnalyzeImage(data, None)
            img.header.set_zooms((1.0, 1.2, 1.5))
            nib.save(img, str(d / f"{stem}.hdr"))
    return root / "LPBA40", ["t1"]


def _mrbrains18_source(root):
    """MRBrainS18 training data: pre/{FLAIR,IR,T1}.nii.gz and segm.nii.gz."""
    for k, sid in enumerate(("1", "4")):
        d = root / "MRBrainS18" / "training" / sid
        for j, name in enumerate(("FLAIR", "IR", "T1")):
            _nifti(_volume(10 * k + j), d / "pre" / f"{name}.nii.gz")
        _nifti(_labels(k, [0, 1, 2, 3], np.uint8), d / "segm.nii.gz")
    return root / "MRBrainS18", ["flair", "ir", "t1"]


def _oasis_source(root):
    """OASIS in the neurite layout: aligned_norm and aligned_seg35 per subject."""
    for k in (1, 2):
        d = root / "neurite-oasis" / f"OASIS_OAS1_000{k}_MR1"
        _nifti(_volume(k), d / "aligned_norm.nii.gz")
        _nifti(_labels(k, [0, 2, 3, 41], np.int16), d / "aligned_seg35.nii.gz")
    return root / "neurite-oasis", ["t1"]


@pytest.mark.parametrize("dataset,make_source", [
    ("lpba40", _lpba40_source), ("mrbrains18", _mrbrains18_source),
    ("oasis", _oasis_source)])
def test_prepare(dataset, make_source, clean_env, tmp_path):
    src, modalities = make_source(tmp_path / "src")
    dst = tmp_path / "prepared"
    out = ok(fastsyn(clean_env, tmp_path, "prepare", dataset, src, dst))
    assert f"prepared {dataset} from {src} into {dst}: 2 subjects" in out
    assert json.loads((dst / "dataset.json").read_text())["name"] == dataset
    subjects = sorted(p for p in dst.iterdir() if p.is_dir())
    assert len(subjects) == 2
    for subject in subjects:
        written = sorted(p.name for p in subject.iterdir())
        assert written == sorted([f"{m}.nii.gz" for m in modalities]
                                 + ["labels.nii.gz", "mask.nii.gz"])
        assert nib.load(str(subject / "labels.nii.gz")).shape == SHAPE


@pytest.mark.parametrize("subcommand,options,name,key,params", [
    ("thick-slices", ["--slices", "2", "--axis", "1"], "mrbrains18-thick2", "thick_slices",
     {"slices": 2, "axis": 1}),
    ("noisy", ["--noise", "3", "--seed", "7"], "mrbrains18-noise3", "noise",
     {"percent": 3.0, "seed": 7}),
    ("biased", ["--bias", "40", "--seed", "2"], "mrbrains18-bias40", "bias",
     {"percent": 40.0, "seed": 2}),
])
def test_prepare_derived_set(subcommand, options, name, key, params, clean_env, tmp_path):
    src, _ = _mrbrains18_source(tmp_path / "src")
    ok(fastsyn(clean_env, tmp_path, "prepare", "mrbrains18", src, tmp_path / "mr"))
    dst = tmp_path / "derived"
    out = ok(fastsyn(clean_env, tmp_path, "prepare", subcommand, tmp_path / "mr", dst,
                     *options, "--subjects", "4"))
    assert f"prepared {subcommand} from {tmp_path / 'mr'} into {dst}: 2 subjects" in out
    stamp = json.loads((dst / "dataset.json").read_text())
    assert stamp["name"] == name and stamp[key] == {**params, "subjects": ["4"]}
    for subject, changed in (("1", False), ("4", True)):
        before = nib.load(str(tmp_path / "mr" / subject / "t1.nii.gz"))
        after = nib.load(str(dst / subject / "t1.nii.gz"))
        same = before.shape == after.shape and np.array_equal(before.dataobj, after.dataobj)
        assert same != changed
    if subcommand == "thick-slices":
        assert after.shape == (6, 3, 5) and after.header.get_zooms() == (1.0, 2.4, 1.5)


# --------------------------------------------------------------------- bench
@pytest.fixture(scope="module")
def bench_results(clean_env, tmp_path_factory):
    """One embedded-mono pair at 6 mm, fastsyn only, a few iterations."""
    cwd = tmp_path_factory.mktemp("bench-run")
    proc = fastsyn(clean_env, cwd, "bench", "run", "--dataset", "embedded-mono",
                   "--methods", "fastsyn", "--metric", "cc", "--sample", "1",
                   "--levels", "2,2", "--resolution", "6", "--workers", "1", "--quiet",
                   "--results", "results")
    return proc, cwd / "results"


def test_bench_run(bench_results):
    proc, results = bench_results
    out = ok(proc)
    # One pair: the fastsyn record and the unregistered baseline.
    assert "embedded-mono: 1 pairs, 0 already finished, 2 records written, 0 errors" in out
    from fastsyn.bench.store import ResultStore

    records = ResultStore(results).records()
    assert len(records) == 2 and "fastsyn" in {r["method"] for r in records}
    rec = next(r for r in records if r["method"] == "fastsyn")
    assert rec["status"] == "ok" and rec["config"]["levels"] == [2, 2]
    assert 0 < rec["metrics"]["dice_mean"] <= 1


def test_bench_table(bench_results, clean_env, tmp_path):
    results = bench_results[1]
    md = ok(fastsyn(clean_env, tmp_path, "bench", "table", "--results", results))
    assert md.startswith("### embedded-mono\n")
    assert "| Method | NCC |" in md and "| fastsyn |" in md
    csv = ok(fastsyn(clean_env, tmp_path, "bench", "table", "--results", results,
                     "--format", "csv")).splitlines()
    assert csv[0].startswith("Dataset,Method,n,") and len(csv) == 3
    table = json.loads(ok(fastsyn(clean_env, tmp_path, "bench", "table", "--results", results,
                                  "--format", "json")))
    assert table["embedded-mono"]["fastsyn"]["n"] == 1


@pytest.fixture(scope="module")
def speed_run(clean_env, tmp_path_factory):
    """Kernels and SyN CC at 32^3, one round, fastsyn on 1 and 2 threads."""
    cwd = tmp_path_factory.mktemp("speed")
    proc = fastsyn(clean_env, cwd, "bench", "speed", "--size", "32", "--levels", "2,2",
                   "--repeat", "1", "--metric", "cc", "--external", "", "--threads", "1,2",
                   "--out", "speed.json")
    return proc, cwd / "speed.json"


def test_bench_speed_times_every_thread_count(speed_run):
    proc, path = speed_run
    out = ok(proc)
    assert "fastsyn on 1, 2 thread(s)" in out and f"wrote {path.name}" in out
    result = json.loads(path.read_text())
    assert result["environment"]["threads_timed"] == [1, 2]
    # provenance: the commit (None from an installed, non-git copy) and the time
    assert {"git", "timestamp"} <= set(result["environment"])
    cases = {r["case"] for r in result["rows"]}
    assert any(c.startswith("SyN CC 32^3") for c in cases) and len(cases) == 6
    # the harness's rigid and affine prealignment rows, timed like the rest
    assert sum(c.startswith(("rigid prealign 32^3", "affine prealign 32^3"))
               for c in cases) == 2
    for case in cases:
        timed = sorted((r["impl"], r["threads"]) for r in result["rows"] if r["case"] == case)
        # end to end, fastsyn's ANTs mode is timed beside the default
        mode = [("fastsyn-ants", 1), ("fastsyn-ants", 2)] if case.startswith("SyN") else []
        assert timed == [("dipy", 1), ("fastsyn", 1), ("fastsyn", 2), *mode], case
    assert {(q["threads"], q["baseline"]) for q in result["ratios"]} == {
        (1, "dipy"), (2, "dipy"), (2, "fastsyn-1"), (1, "fastsyn"), (2, "fastsyn")}
    assert all(q["impl"] == "fastsyn-ants" and q["case"].startswith("SyN")
               for q in result["ratios"] if q["baseline"] == "fastsyn")
    table_rows = [line.split() for line in out.splitlines() if line.startswith("SyN CC")]
    assert sorted(row[6] for row in table_rows if row[5] == "fastsyn") == ["1", "2"]


def test_bench_speed_times_partial_volume_mi(clean_env, tmp_path):
    # MI with partial-volume histograms is a case of its own, timed like MI
    proc = fastsyn(clean_env, tmp_path, "bench", "speed", "--size", "32", "--levels", "2,2",
                   "--repeat", "1", "--metric", "mi-pv", "--external", "", "--threads", "1",
                   "--no-prealign", "--no-ants-mode", "--out", "speed.json")
    ok(proc)
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    syn = [r for r in rows if r["case"].startswith("SyN")]
    assert [(r["case"], r["impl"]) for r in syn] == [("SyN MI-PV 32^3 levels 2/2", "fastsyn")]
    assert syn[0]["ncc"] > 0.5


def test_speed_metrics_are_the_metrics_named():
    # the case's name says partial volume: the worker's metric must have it
    # on every level; "mi" is MIMetric's defaults
    from fastsyn.bench.speed import _syn_metric
    from fastsyn.metrics import MIMetric

    assert _syn_metric("mi-pv").partial_volume is True
    assert _syn_metric("mi").partial_volume == MIMetric(3).partial_volume == "coarse"
    assert _syn_metric("mi", ants_mode=True).partial_volume is False  # ANTs' Mattes
    assert type(_syn_metric("cc")).__name__ == "CCMetric"


def test_thread_counts_keep_every_value():
    from fastsyn.bench.speed import thread_counts

    assert thread_counts((1, 2)) == (1, 2)
    assert thread_counts((4, 2, 2)) == (1, 2, 4)  # serial reference always timed
    assert thread_counts(3) == (1, 3)


# ------------------------------------------------------------ profile, report
@pytest.fixture(scope="module")
def profile_run(clean_env, tmp_path_factory):
    """The default (shipped) pair, found from a folder without fixtures/."""
    cwd = tmp_path_factory.mktemp("profile")
    proc = fastsyn(clean_env, cwd, "profile", "--levels", "2,2", "--threads", "1",
                   "--no-lines", "--out", "profile.json")
    return proc, cwd / "profile.json"


def test_profile_default_pair_from_any_folder(profile_run):
    proc, path = profile_run
    out = ok(proc)
    assert not (path.parent / "fixtures").exists()
    assert out.startswith("SyN profile: pair3d 40x50x42, metric cc, levels 2/2")
    assert "iterations: fastsyn 4, DIPY 4" in out and f"profile saved to {path.name}" in out
    result = json.loads(path.read_text())
    assert result["pair"] == "pair3d" and set(result["runs"]) == {"fastsyn", "dipy"}
    assert result["speedup"]["total"] > 0 and result["line_profile"] is None


def test_profile_multimodal_pair(clean_env, tmp_path):
    out = ok(fastsyn(clean_env, tmp_path, "profile", "--pair", "pair3d_multimodal",
                     "--metric", "mi", "--levels", "2", "--no-dipy", "--no-lines"))
    assert out.startswith("SyN profile: pair3d_multimodal 40x50x42, metric mi")
    assert "DIPY" not in out and not list(tmp_path.iterdir())  # nothing written


def test_report(bench_results, speed_run, profile_run, clean_env, tmp_path):
    proc = fastsyn(clean_env, tmp_path, "report", "--results", bench_results[1],
                   "--speed", speed_run[1], "--profile", profile_run[1], "--out", "reports")
    out = ok(proc)
    page = tmp_path / "reports" / "index.html"
    assert f"report written to {Path('reports') / 'index.html'}" in out
    html = page.read_text()
    assert "embedded-mono" in html and "SyN CC 32^3" in html and "pair3d" in html


# ---------------------------------------------------------------------- demo
def test_demo_quick_from_another_folder(clean_env, tmp_path):
    out = ok(fastsyn(clean_env, tmp_path, "demo", "--quick", "--levels", "2",
                     "--speed-levels", "2", "--out", "rep"))
    rep = tmp_path / "rep"
    for banner in ("embedded-mono: 1 sampled pair(s)", "embedded-multi: 1 sampled pair(s)",
                   "accuracy: embedded-mono", "speed:", "profile:", "=== report ==="):
        assert banner in out
    assert f"Open the report: {rep / 'index.html'}" in out
    assert "SyN profile: pair3d" in out and "SyN MI 32^3" in out
    speed = json.loads((rep / "speed.json").read_text())
    assert {r["case"].split(" levels")[0] for r in speed["rows"]} >= {"SyN CC 32^3",
                                                                        "SyN MI 32^3"}
    assert json.loads((rep / "profile.json").read_text())["pair"] == "pair3d"
    html = (rep / "index.html").read_text()
    assert "embedded-mono" in html and "embedded-multi" in html
    assert "fastsyn (ANTs mode)" in html  # both fastsyn modes in the accuracy tables
    assert (rep / "results").is_dir() and not (tmp_path / "reports").exists()


# -------------------------------------------------------------- error paths
@pytest.mark.parametrize("args,problem", [
    (["prepare", "lpba40", "{tmp}/missing", "{tmp}/out"],
     "LPBA40 source folder not found: {tmp}/missing"),
    (["prepare", "nosuch", "{tmp}", "{tmp}/out"], "invalid choice: 'nosuch'"),
    (["prepare", "lpba40", "{tmp}", "{tmp}/out", "--resolution", "1"],
     "--resolution applies to spm12, niivue, ixi, bids, thick-slices, noisy and biased, not lpba40"),
    (["prepare", "thick-slices", "{tmp}", "{tmp}/out", "--slices", "2", "--noise", "5"],
     "--noise applies to noisy, not thick-slices"),
    (["prepare", "oasis", "{tmp}", "{tmp}/out", "--subjects", "a"],
     "--subjects applies to thick-slices, noisy, biased, ixi and bids, not oasis"),
    (["prepare", "ixi", "{tmp}/missing", "{tmp}/out"], "IXI folder not found: {tmp}/missing"),
    (["prepare", "ixi", "{tmp}", "{tmp}/out"], "no IXI subject with a T1 under {tmp}"),
    (["prepare", "bids", "{tmp}", "{tmp}/out"], "no BIDS subject with a T1 under {tmp}"),
    (["prepare", "noisy", "{tmp}", "{tmp}/out"], "noisy needs --noise PCT"),
    (["prepare", "biased", "{tmp}", "{tmp}/out"], "biased needs --bias PCT"),
    (["prepare", "noisy", "{tmp}", "{tmp}/out", "--noise", "5", "--bias", "20"],
     "--bias applies to biased, not noisy"),
    (["prepare", "oasis", "{tmp}", "{tmp}/out", "--seed", "1"],
     "--seed applies to noisy and biased, not oasis"),
    (["prepare", "noisy", "{tmp}", "{tmp}/out", "--noise", "5", "--axis", "1"],
     "--axis applies to thick-slices, not noisy"),
    (["prepare", "oasis", "{tmp}", "{tmp}/out", "--slices", "3"],
     "--slices applies to thick-slices, not oasis"),
    (["prepare", "thick-slices", "{tmp}", "{tmp}/out"], "thick-slices needs --slices K"),
    (["prepare", "thick-slices", "{tmp}/missing", "{tmp}/out", "--slices", "3"],
     "missing"),
    (["prepare", "spm12", "{tmp}", "{tmp}/out", "--resolution", "0.1"],
     "resolution must be"),
    (["bench", "study", "--anchors", "elastix", "--results", "{tmp}/res"],
     "--anchors must list some of ants, greedy, got 'elastix'"),
    (["bench", "speed", "--threads", "1,x"], "argument --threads: expected thread counts"),
    (["bench", "speed", "--threads", "0"], "argument --threads: expected thread counts"),
    (["bench", "speed", "--metric", "pv"], "--metric must list cc and/or mi and/or mi-pv"),
    (["bench", "run", "--dataset", "nosuch", "--methods", "fastsyn", "--metric", "cc",
      "--results", "{tmp}/res"], "unknown dataset 'nosuch'"),
    (["bench", "table", "--results", "{tmp}/missing"], "results folder not found"),
    (["report", "--results", "{tmp}/missing", "--out", "{tmp}/rep"],
     "results folder not found"),
    (["profile", "--pair", "nosuch"], "fixture 'nosuch' not found"),
])
def test_errors_are_one_line(args, problem, clean_env, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = fastsyn(clean_env, tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsyn: error: "), proc.stderr
    assert problem.format(tmp=tmp_path) in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()


def test_bench_roofline_and_scaling(clean_env, tmp_path):
    out = tmp_path / "roof.json"
    stdout = ok(fastsyn(clean_env, tmp_path, "bench", "roofline", "--size", "24",
                        "--threads", "2", "--repeat", "1", "--out", out))
    assert "copy bandwidth" in stdout and "of bound" in stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["kernel"] for r in rows} >= {"compose", "invert (per sweep)", "mi step"}
    assert all(r["ns_per_voxel"] > 0 and r["bound_ns_per_voxel"] > 0 for r in rows)
    out = tmp_path / "scale.json"
    ok(fastsyn(clean_env, tmp_path, "bench", "scaling", "--size", "40", "--threads",
               "1,2,4096", "--repeat", "1", "--levels", "2,1", "--out", out))
    result = json.loads(out.read_text())
    assert result["skipped"] == [4096] and result["threads"][0] == 1
    assert any(r["case"].startswith("SyN MI") for r in result["rows"])


def test_bench_scaling_at_a_resolution(clean_env, tmp_path):
    """--resolution runs on the whole template grid (here 8 mm: 25x29x24)."""
    out = tmp_path / "scaling-8mm.json"
    stdout = ok(fastsyn(clean_env, tmp_path, "bench", "scaling", "--resolution", "8",
                        "--threads", "1,2", "--repeat", "1", "--levels", "2,1", "--out", out))
    assert "thread scaling, 8mm 25x29x24" in stdout
    assert json.loads(out.read_text())["grid"] == "8mm 25x29x24"
    proc = fastsyn(clean_env, tmp_path, "bench", "scaling", "--resolution", "8", "--size", "9")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
