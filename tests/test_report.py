"""The HTML report: built from small synthetic inputs, checked as text and
rendered in headless Chromium; and the stage profiler on a small pair."""

import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from fastsyn.bench.report import latest_pytest_benchmarks, write_report
from fastsyn.bench.store import ResultStore

METHODS = {
    # method: (label, config extras, dice mean, time mean)
    "baseline": ("Baseline", {}, 0.58, None),
    "dipy": ("DIPY", {"metric": "cc", "threads": 1}, 0.70, 30.0),
    "fastsyn": ("fastsyn", {"metric": "cc", "threads": 2}, 0.70, 6.0),
    "ants": ("ANTs", {"metric": "cc", "threads": 2}, 0.69, 25.0),
}


def _records(root):
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    for dataset in ("embedded-t1", "embedded-multimodal"):
        for i in range(6):
            pair = f"s{i:02d}_s{i + 1:02d}"
            for method, (label, extra, dice, seconds) in METHODS.items():
                configs = [dict(extra)]
                if method == "fastsyn":  # same pair, serial and threaded
                    configs.append(dict(extra, threads=1))
                metrics = {"ncc": 0.6 + 0.3 * dice + rng.normal(0, 0.01),
                           "nmi": 1.05 + 0.1 * dice, "dice_mean": dice + rng.normal(0, 0.02),
                           "jaccard_mean": dice - 0.15 + rng.normal(0, 0.02),
                           "folding_pct": 0.0, "logjac_sd": 0.25 * dice,
                           # the true field is known on the T1 cohort only
                           "tre_mean": 9.0 - 5.0 * dice if dataset == "embedded-t1"
                           else float("nan")}
                for cfg in configs:
                    rec = {"dataset": dataset, "pair": pair, "method": method,
                           "label": label, "config": dict(cfg, method=method),
                           "status": "ok", "metrics": metrics,
                           "seconds": None if seconds is None else
                           seconds * (1.0 + 0.05 * rng.standard_normal()),
                           "threads": cfg.get("threads"), "peak_mem_mb": 500.0}
                    store.put(rec)
    store.put({"dataset": "embedded-t1", "pair": "s09_s10", "method": "ants",
               "label": "ANTs", "config": {"metric": "cc", "threads": 2, "method": "ants"},
               "status": "error", "error": "RuntimeError: boom"})


def _speed():
    rows, ratios = [], []
    cases = {"invert 128^3 float32": 1.2, "compose 128^3 float32": 0.15,
             "SyN CC 128^3 levels 20/20/10": 160.0}
    for case, dipy_s in cases.items():
        rows.append({"case": case, "impl": "dipy", "threads": 1, "median_s": dipy_s,
                     "min_s": dipy_s * 0.98, "max_s": dipy_s * 1.03, "peak_mem_mb": 900.0})
        for threads, factor in ((1, 2.5), (2, 4.6)):
            rows.append({"case": case, "impl": "fastsyn", "threads": threads,
                         "median_s": dipy_s / factor, "min_s": dipy_s / factor * 0.97,
                         "max_s": dipy_s / factor * 1.05, "peak_mem_mb": 700.0})
            ratios.append({"case": case, "impl": "fastsyn", "threads": threads,
                           "baseline": "dipy", "speedup": factor})
        ratios.append({"case": case, "impl": "fastsyn", "threads": 2,
                       "baseline": "fastsyn-1", "speedup": 4.6 / 2.5})
    rows.append({"case": "SyN CC 128^3 levels 20/20/10", "impl": "greedy", "threads": 2,
                 "median_s": 38.0, "min_s": 37.0, "max_s": 39.0, "peak_mem_mb": None})
    rows.append({"case": "SyN CC 128^3 levels 20/20/10", "impl": "ants", "threads": 2,
                 "median_s": 120.0, "min_s": 118.0, "max_s": 123.0, "peak_mem_mb": 1500.0})
    return {"environment": {"cpu": "test CPU", "cores": 2, "threads_all": 2},
            "rows": rows, "ratios": ratios}


def _profile():
    stages = ("warping", "metric", "smoothing", "update", "inversion", "other")

    def run(times, threads):
        total = sum(times)
        return {"stage_times": dict(zip(stages, times)), "total_s": total,
                "share": {s: t / total for s, t in zip(stages, times)},
                "iterations": 50, "threads": threads}

    fast = run([1.0, 1.5, 0.8, 0.6, 2.0, 0.5], 2)
    stock = run([4.0, 5.0, 4.2, 3.1, 12.0, 1.5], 1)
    return {"kind": "fastsyn-profile", "pair": "pair3d", "shape": [40, 50, 42],
            "metric": "cc", "threads": 2, "levels": [20, 10, 5], "stages": list(stages),
            "runs": {"fastsyn": fast, "dipy": stock},
            "speedup": {s: stock["stage_times"][s] / fast["stage_times"][s] for s in stages}
            | {"total": stock["total_s"] / fast["total_s"]},
            "line_profile": {"fastsyn": {"lines": [
                {"function": "_iterate", "file": "imwarp.py", "line": 232, "hits": 50,
                 "time_s": 2.0, "source": "_invert_models(self, w2g, spacing, n)"}],
                "functions": [], "text": ""}}}


def _pytest_saves(root):
    folder = root / "Linux-CPython-3.11-64bit"
    folder.mkdir(parents=True)
    for i, scale in enumerate((1.0, 1.25)):
        benchmarks = []
        for group, name, median in (("kernel-invert", "test_invert_fastsyn[32-1]", 0.010),
                                    ("kernel-invert", "test_invert_dipy[32]", 0.030),
                                    ("syn-cc", "test_syn_cc_fastsyn[40-all]", 0.200)):
            m = median * (scale if "fastsyn" in name else 1.0)
            benchmarks.append({"group": group, "name": name, "fullname": f"tests/x.py::{name}",
                               "stats": {"min": m * 0.9, "max": m * 1.2, "mean": m,
                                         "stddev": m * 0.05, "rounds": 5, "median": m}})
        path = folder / f"000{i + 1}_abc{i}_20260101_00000{i}.json"
        path.write_text(json.dumps({"benchmarks": benchmarks, "datetime": f"2026-01-0{i + 1}",
                                    "commit_info": {"id": f"abc{i}" * 8}}))
        # make the newest file unambiguous regardless of file-system time stamps
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = root / "results"
    _records(results)
    (root / "speed.json").write_text(json.dumps(_speed()))
    (root / "profile.json").write_text(json.dumps(_profile()))
    _pytest_saves(root / ".benchmarks")
    out = root / "reports"
    (out / "asv").mkdir(parents=True)
    (out / "asv" / "index.html").write_text("<html></html>")
    page = write_report(results, out, speed_json=root / "speed.json",
                        profile_json=root / "profile.json",
                        benchmark_json_dir=root / ".benchmarks")
    return page, page.read_text(encoding="utf-8")


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_report_sections_and_tables(report):
    page, text = report
    assert page.name == "index.html"
    for anchor in ("environment", "speed", "equivalence", "accuracy", "profile",
                   "pytest-benchmark", "asv"):
        assert f"id='{anchor}'" in text
    # Accuracy tables, one per dataset, in the GSoC report's format.
    header = "<th>Method</th>" + "".join(
        f'<th class="num">{c}</th>'
        for c in ("NCC", "NMI", "Label Dice", "Label Jaccard", "Folding (%)", "SD log|J|",
                  "TRE mean (mm)", "Time (s)"))
    assert text.count(header) == 2
    assert "embedded-t1" in text and "embedded-multimodal" in text
    assert re.search(r"<td>Baseline</td><td class=\"num\">0\.\d{3} ± 0\.\d{3}</td>", text)
    assert "1 failed run(s) not counted" in text
    # Speed table with every implementation and the ratios.
    for name in ("stock DIPY", "fastsyn serial", "fastsyn threaded", "ANTs", "greedy"):
        assert name in text
    assert "4.60×" in text and "Speed-up ratios" in text
    # Equivalence: kernels computed now, and the serial/threaded store records.
    assert "bitwise equal" in text and "differs" not in text
    assert "Registrations at several thread counts" in text
    # Environment, profile, pytest-benchmark comparison, asv link.
    assert "Git commit" in text and "dipy" in text
    assert "inversion" in text and "Busiest lines" in text
    assert "test_invert_fastsyn[32-1]" in text and "+25.0%" in text
    assert "href='asv/index.html'" in text


def test_report_is_self_contained(report):
    _, text = report
    assert "<script" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "@import" not in text
    assert not re.search(r"url\((?!#)", text)  # only in-page references (SVG clip paths)


@pytest.mark.skipif(not _has_matplotlib(), reason="plots need matplotlib")
def test_report_plots(report):
    _, text = report
    # Dice box plot and time bars per dataset, speed-up vs threads, stage profile.
    assert text.count("<svg") >= 6
    for title in ("Label Dice per method", "Time per method", "Speed-up against threads",
                  "Where the time goes"):
        assert title in text


def test_latest_pytest_benchmarks_compares_newest_with_previous(tmp_path):
    assert latest_pytest_benchmarks(tmp_path / "missing") is None
    _pytest_saves(tmp_path)
    bench = latest_pytest_benchmarks(tmp_path)
    assert bench["file"].endswith("0002_abc1_20260101_000001.json")
    changes = {r["name"]: r["change"] for r in bench["rows"]}
    assert changes["test_invert_fastsyn[32-1]"] == pytest.approx(0.25)
    assert changes["test_invert_dipy[32]"] == pytest.approx(0.0)


def test_report_without_inputs(tmp_path):
    page = write_report(tmp_path / "none", tmp_path / "out",
                        benchmark_json_dir=tmp_path / "nobench", check_equivalence=False)
    text = page.read_text(encoding="utf-8")
    assert "No records in the results folder" in text
    assert "No speed results" in text and "No profile" in text
    assert "No asv pages yet" in text


def test_report_outside_a_git_work_tree(tmp_path, monkeypatch):
    # An installed package has no git commit to show.
    from fastsyn.bench import machine

    monkeypatch.setattr(machine, "git_commit", lambda start=None: None)
    page = write_report(None, tmp_path / "out", benchmark_json_dir=tmp_path / "nobench",
                        check_equivalence=False)
    text = page.read_text(encoding="utf-8")
    assert re.search(r"<dt>Git commit</dt><dd>–</dd>", text)
    assert "· commit" not in text


def test_report_bad_speed_file(tmp_path):
    bad = tmp_path / "speed.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="speed file"):
        write_report(None, tmp_path / "out", speed_json=bad, check_equivalence=False)
    with pytest.raises(ValueError, match="does not exist"):
        write_report(None, tmp_path / "out", profile_json=tmp_path / "nope.json",
                     check_equivalence=False)


def test_report_escapes_names(tmp_path):
    # Labels, method names, speed cases and file names come from user input:
    # autoescaping must print them as text, never as markup.
    evil = "<script>alert('x')</script>"
    store = ResultStore(tmp_path / "results")
    for i, (method, label) in enumerate((("baseline", "Baseline"), (evil, evil))):
        store.put({"dataset": "embedded-t1", "pair": "s00_s01", "method": method,
                   "label": label, "config": {"metric": "cc", "method": method},
                   "status": "ok", "seconds": 1.0 + i,
                   "metrics": {"ncc": 0.8, "nmi": 1.1, "dice_mean": 0.6 + 0.1 * i,
                               "jaccard_mean": 0.5}})
    speed = _speed()
    speed["rows"][0]["case"] = evil
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    profile = _profile()
    profile["pair"] = evil
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    page = write_report(tmp_path / "results", tmp_path / "out",
                        speed_json=tmp_path / "speed.json",
                        profile_json=tmp_path / "profile.json",
                        benchmark_json_dir=tmp_path / "nobench", check_equivalence=False)
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    # accuracy row, speed row, profile note and the best-Dice headline card
    assert text.count(escaped) >= 4
    assert f"<td>{escaped}</td>" in text
    assert f"<b>{escaped}</b>" in text


def test_report_inlines_packaged_style_sheet(report):
    _, text = report
    css = (resources.files("fastsyn.bench") / "templates" / "report.css").read_text(
        encoding="utf-8")
    assert ".table-wrap" in css
    assert f"<style>\n{css}" in text


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    page, _ = report
    shot = tmp_path / "report.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--screenshot={shot}",
           "--window-size=1280,2000", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert shot.is_file(), proc.stderr[-2000:]
    assert _png_size(shot) == (1280, 2000)
    assert shot.stat().st_size > 30_000  # a blank page compresses to a few kB
    if _has_matplotlib():
        from matplotlib.image import imread

        pixels = imread(str(shot))[..., :3]
        ink = (pixels.mean(axis=-1) < 0.85).mean()
        assert 0.01 < ink < 0.6, f"fraction of non-background pixels {ink:.3f}"
        assert pixels.std() > 0.05


def test_profile_registration_small_pair(tmp_path):
    from conftest import load_pair

    from fastsyn.bench.profile import STAGES, format_stage_table, main_profile

    pair = load_pair("pair2d")
    fixture = tmp_path / "small.npz"
    np.savez(fixture, **{k: pair[k] for k in ("static", "moving", "static_affine",
                                              "moving_affine")})
    out = tmp_path / "profile.json"

    class Args:
        pass

    args = Args()
    args.pair, args.fixed, args.moving = str(fixture), None, None
    args.metric, args.threads, args.out, args.levels = "cc", 1, str(out), "4,2"
    assert main_profile(args) == 0
    result = json.loads(out.read_text())
    assert result["stages"] == list(STAGES)
    for impl in ("fastsyn", "dipy"):
        run = result["runs"][impl]
        assert run["iterations"] == 6
        assert sum(run["stage_times"].values()) == pytest.approx(run["total_s"], rel=1e-6)
        assert sum(run["share"].values()) == pytest.approx(1.0, rel=1e-6)
    assert result["runs"]["dipy"]["stage_times"]["inversion"] > 0
    assert result["runs"]["dipy"]["stage_times"]["smoothing"] > 0
    table = format_stage_table(result)
    assert "inversion" in table and "speed-up" in table
    try:
        import line_profiler  # noqa: F401
    except ImportError:
        assert result["line_profile"] is None
    else:
        assert result["line_profile"]["fastsyn"]["lines"]
        assert result["line_profile"]["dipy"]["lines"]


def test_report_accuracy_quality_columns(report):
    """Folding, SD log|J| and TRE beside Dice; TRE blank where no truth is known."""
    _, text = report
    sections = text.split("<h3 id='acc-")[1:]
    tables = {sec.split("'", 1)[0]: sec for sec in sections}
    row = re.compile(r"<tr><td>([^<]+)</td>((?:<td class=\"num\">[^<]*</td>)+)</tr>")

    def cells(section, label):
        for name, tds in row.findall(section):
            if name == label:
                return re.findall(r"<td class=\"num\">([^<]*)</td>", tds)
        raise AssertionError(f"no row {label!r}")

    t1 = cells(tables["embedded-t1"], "Baseline")
    multi = cells(tables["embedded-multimodal"], "Baseline")
    # Method | NCC NMI Dice Jaccard Folding SDlogJ TRE Time | n
    assert len(t1) == 9
    assert re.fullmatch(r"\d\.\d{2} ± \d\.\d{2}", t1[6])  # TRE, 2 decimals
    assert t1[4] == "0.000 ± 0.000" and t1[7] == "–"
    assert multi[6] == "–"
    assert "Masks given to the methods: none." in text


def test_report_roofline_and_scaling(tmp_path):
    """Both tables come from real (tiny) runs found beside the results."""
    from fastsyn.bench.report import write_report
    from fastsyn.bench.roofline import roofline, scaling

    results = tmp_path / "results"
    results.mkdir()
    (results / "roofline.json").write_text(json.dumps(roofline(16, threads=2, repeat=1)))
    (results / "scaling.json").write_text(json.dumps(
        scaling(16, threads=(1, 2, 99), repeat=1, syn=False)))
    page = write_report(results, tmp_path / "out", check_equivalence=False)
    text = page.read_text()
    assert "id='roofline'" in text and "GB/s" in text
    assert "invert (per sweep)" in text and "2 threads" in text
    assert "Not measured here (more threads than CPUs): 99" in text


def test_report_one_scaling_table_per_grid(tmp_path):
    """scaling.json and scaling-*.json beside the results give a table each,
    in that order; --scaling picks files explicitly."""
    from fastsyn.bench.report import write_report
    from fastsyn.bench.roofline import scaling

    results = tmp_path / "results"
    results.mkdir()
    (results / "scaling.json").write_text(json.dumps(
        scaling(16, threads=(1, 2), repeat=1, syn=False)))
    (results / "scaling-8mm.json").write_text(json.dumps(
        scaling("8mm", threads=(1, 2), repeat=1, syn=False)))
    text = write_report(results, tmp_path / "out", check_equivalence=False).read_text()
    assert text.index("Thread scaling, 16³") < text.index("Thread scaling, 8mm 25x29x24")
    page = write_report(results, tmp_path / "one", check_equivalence=False,
                        scaling_json=str(results / "scaling-8mm.json"))
    text = page.read_text()
    assert "Thread scaling, 8mm 25x29x24" in text and "Thread scaling, 16³" not in text


def test_table_labels_tell_configurations_apart_with_few_keys():
    """Two fastsyn runs on one dataset, MI and CC, are "fastsyn (MI)" and
    "fastsyn (CC)", not a list of every setting that follows the metric; a
    setting is named where the metric does not tell the runs apart."""
    from fastsyn.bench.tables import summary_table

    mi = {"metric": "mi", "threads": 2, "moving_share": 0.65, "step_length": 0.4}
    cc = {"metric": "cc", "threads": 2, "moving_share": 0.5, "step_length": 0.25}
    longer = dict(mi, step_length=0.5)
    recs = [{"dataset": "d", "method": "fastsyn", "label": "fastsyn", "config": c,
             "status": "ok", "metrics": {"dice_mean": 0.7}, "seconds": 1.0}
            for c in (mi, cc, longer)]
    labels = sorted(row["Method"] for row in summary_table(recs))
    assert labels == ["fastsyn (CC)", "fastsyn (MI, step_length=0.4)",
                      "fastsyn (MI, step_length=0.5)"]
    assert sorted(row["Method"] for row in summary_table(recs[:2])) == \
        ["fastsyn (CC)", "fastsyn (MI)"]
