"""The regression gates: instruction counting, the wall-time statistics, the
correctness comparison, the plants of the self-test and the CLI.

The valgrind runs and the full tracks are ``slow`` (a minute or more each);
the default run checks the parsing, the rules and the commands' errors, and
one short timing round trip through two worker processes.
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fastsyn.bench import costs, gate, selftest, workload
from fastsyn.bench.sides import Side

ROOT = Path(__file__).resolve().parent.parent

needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None,
                                    reason="valgrind is not installed (apt-get install valgrind)")


def _cli(*args, env=None, timeout=900):
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-m", "fastsyn.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env or base, timeout=timeout)


# --------------------------------------------------------------- counting
CALLGRIND_DUMP = """\
version: 1
creator: callgrind-3.19.0
events: Ir
ob=/usr/bin/python3.11
fl=???
fn=_PyEval_EvalFrameDefault
10 1000
cob=/x/site/fastsyn/_kernels/invert.cpython-311-x86_64-linux-gnu.so
cfn=__pyx_pw_7fastsyn_8_kernels_6invert_1invert_3d
calls=1 0
12 5000
ob=/x/site/fastsyn/_kernels/invert.cpython-311-x86_64-linux-gnu.so
fl=???
fn=__pyx_pw_7fastsyn_8_kernels_6invert_1invert_3d
0 300
0 4000
fn=_sweep_slice_3d._omp_fn.0
0 700
ob=/usr/lib/x86_64-linux-gnu/libm.so.6
fn=sqrt
0 20
summary: 6020
"""


def test_kernel_instructions_sums_self_costs_of_the_kernel_objects(tmp_path):
    path = tmp_path / "cg.out.2"
    path.write_text(CALLGRIND_DUMP)
    counts = costs.kernel_instructions(path)
    # 300 + 4000 + 700 in the kernel object; the inclusive 5000 of the call
    # line is not a self cost and is skipped.
    assert counts == {"kernel_ir": 5000, "total_ir": 6020, "objects": ["invert"]}


def test_kernel_instructions_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "x.out"
    path.write_text("events: Dr Dw\nfn=f\n0 1 2\n")
    with pytest.raises(ValueError, match="not a callgrind output"):
        costs.kernel_instructions(path)


def test_cost_table_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown cost case 'nope'"):
        costs.cost_table(["nope"], 24)
    with pytest.raises(ValueError, match="size must be"):
        costs.cost_table(["invert"], 4)


def _path_without_valgrind(tmp_path):
    """PATH as given, minus valgrind (the other tools, e.g. for an editable
    rebuild, stay reachable through links)."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    dirs = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or not Path(d).is_dir():
            continue
        if not (Path(d) / "valgrind").exists():
            dirs.append(d)
            continue
        for entry in Path(d).iterdir():
            if entry.name != "valgrind" and not (shadow / entry.name).exists():
                (shadow / entry.name).symlink_to(entry)
        dirs.append(str(shadow))
    return os.pathsep.join(dict.fromkeys(dirs))


def test_costs_command_without_valgrind_says_why(tmp_path):
    env = {"PATH": _path_without_valgrind(tmp_path), "HOME": os.environ.get("HOME", "/tmp")}
    proc = _cli("bench", "costs", "--cases", "gradient", env=env)
    assert proc.returncode == 2
    assert "valgrind is not installed" in proc.stderr and "Traceback" not in proc.stderr


def test_costs_command_refuses_an_unknown_case():
    proc = _cli("bench", "costs", "--cases", "gradient,nope")
    assert proc.returncode == 2 and "--cases must list cases" in proc.stderr


@pytest.mark.slow
@needs_valgrind
def test_instruction_counts_repeat_see_the_kernel_and_print_the_table(tmp_path):
    # Two counts side by side, one through the API and one through `fastsyn
    # bench costs` (one valgrind process each, mostly the interpreter's
    # start-up): half the wall time on two cores, and counted instructions do
    # not depend on what else runs.
    out = tmp_path / "costs.json"
    with ThreadPoolExecutor(max_workers=2) as pool:
        api = pool.submit(costs.cost_table, ["gradient", "invert"], 16)
        proc = pool.submit(_cli, "bench", "costs", "--size", "16", "--cases", "gradient,invert",
                           "--out", str(out)).result()
        first = api.result()
    assert proc.returncode == 0, proc.stderr
    assert "gradient" in proc.stdout and "invert" in proc.stdout and "16^3" in proc.stdout
    second = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in second] == ["gradient", "invert"]
    for a, b in zip(first, second):
        assert a["instructions"] > 0 and a["kernels"]
        assert abs(a["instructions"] - b["instructions"]) <= 1e-3 * a["instructions"]
    # Twenty inversion sweeps cost far more than one gradient pass.
    assert first[1]["instructions"] > 5 * first[0]["instructions"]


# -------------------------------------------------------------- wall time
def test_noise_thresholds_follow_rustc_perfs_rule():
    changes = {"k": [0.01, -0.02, 0.03, -0.01, 0.02]}
    # |changes| = .01 .01 .02 .02 .03: Q1 = .01, Q3 = .02 -> .02 + 3 * .01
    assert gate.noise_thresholds(changes)["k"] == pytest.approx(0.05)
    assert gate.noise_thresholds({"k": [0.001] * 5})["k"] == gate.MIN_WALL_THRESHOLD
    with pytest.raises(ValueError, match="at least 4"):
        gate.noise_thresholds({"k": [0.1, 0.2]})


def test_compare_wall_needs_significance_and_size():
    base = [1.0, 1.1, 0.9, 1.2, 1.0, 0.95, 1.05, 1.0, 1.1, 0.9, 1.0, 1.02]
    slower = [b * 1.3 for b in base]
    slightly = [b * 1.03 for b in base]
    rows = gate.compare_wall({"k": base}, {"k": slower}, {"k": 0.1})
    assert rows[0]["status"] == "regression" and rows[0]["ratio"] == pytest.approx(1.3)
    assert rows[0]["p"] < gate.ALPHA
    # Significant (every round 3 % slower) but under the threshold: not flagged.
    rows = gate.compare_wall({"k": base}, {"k": slightly}, {"k": 0.1})
    assert rows[0]["p"] < gate.ALPHA and rows[0]["status"] == "same"
    # Large but inconsistent: not significant, not flagged.
    mixed = [b * (1.5 if i % 2 else 0.8) for i, b in enumerate(base)]
    assert gate.compare_wall({"k": base}, {"k": mixed}, {"k": 0.1})[0]["status"] == "same"
    rows = gate.compare_wall({"k": slower}, {"k": base}, {"k": 0.1})
    assert rows[0]["status"] == "improvement"


def test_time_sides_interleaves_two_workers():
    side = Side("this")
    a, b = gate.time_sides([side, side], size=16, threads=1, rounds=2, repeat=1,
                           cases=("gradient", "compose"))
    for samples in (a, b):
        assert set(samples["wall"]) == set(samples["share"]) == {"gradient", "compose"}
        assert all(len(v) == 2 and all(t > 0 for t in v) for v in samples["wall"].values())
        # One thread: all the work is the calling thread's.
        assert all(s > 0.8 for v in samples["share"].values() for s in v)


def test_compare_shares_flags_a_serialised_kernel():
    parallel = [0.52, 0.55, 0.5, 0.6, 0.51, 0.53, 0.56, 0.5, 0.54, 0.52, 0.58, 0.5]
    serial = [0.97, 0.99, 1.0, 0.96, 0.98, 0.99, 1.0, 0.97, 0.99, 0.98, 1.0, 0.99]
    rows = gate.compare_shares({"k": parallel}, {"k": serial})
    assert rows[0]["status"] == "serialised" and rows[0]["p"] < gate.ALPHA
    assert gate.compare_shares({"k": parallel}, {"k": parallel[::-1]})[0]["status"] == "same"
    assert gate.gate_failed({"shares": rows})


def test_a_side_built_elsewhere_is_imported_from_its_folder(tmp_path):
    # A fake "build": a fastsyn package that only says where it is.
    pkg = tmp_path / "site" / "fastsyn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("WHERE = 'side'\n")
    script = tmp_path / "probe.py"
    script.write_text("import fastsyn, numpy\nprint(fastsyn.WHERE, fastsyn.__file__)\n")
    side = Side("fake", str(tmp_path / "site"))
    proc = subprocess.run(side.command(script), capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("side ") and str(tmp_path) in proc.stdout


# ------------------------------------------------------------ correctness
def _tracks(dice=0.8, deterministic=1, mi=-0.7):
    return {"tracks": {"syn_mi": {"dice": dice, "deterministic": deterministic,
                                  "hashes": {"1": "a", "2": "a" if deterministic else "b"},
                                  "energy": {"cc": -100.0, "mi": mi}}}}


def test_compare_tracks_flags_races_and_accuracy_whatever_the_speed():
    base = _tracks()
    assert gate.compare_tracks(base, _tracks())[0]["status"] == "same"
    assert gate.compare_tracks(base, _tracks(deterministic=0))[0]["status"] == \
        "nondeterministic"
    assert gate.compare_tracks(base, _tracks(dice=0.79))[0]["status"] == "accuracy"
    assert gate.compare_tracks(base, _tracks(dice=0.797))[0]["status"] == "values changed" \
        or gate.compare_tracks(base, _tracks(dice=0.797))[0]["status"] == "same"
    assert gate.compare_tracks(base, _tracks(mi=-0.69))[0]["status"] == "values changed"
    result = {"tracks": gate.compare_tracks(base, _tracks(deterministic=0))}
    assert gate.gate_failed(result)
    assert not gate.gate_failed({"tracks": gate.compare_tracks(base, _tracks(mi=-0.69))})


def test_compare_instructions_threshold():
    base = [{"case": "k", "instructions": 1000000}]
    rows = gate.compare_instructions(base, [{"case": "k", "instructions": 1020000}])
    assert rows[0]["status"] == "regression" and rows[0]["ratio"] == pytest.approx(1.02)
    rows = gate.compare_instructions(base, [{"case": "k", "instructions": 1001000}])
    assert rows[0]["status"] == "same"


def test_format_gate_reads_like_a_table():
    result = {"base": "main", "head": "HEAD", "instructions_size": 24,
              "instructions": gate.compare_instructions(
                  [{"case": "invert", "instructions": 100}],
                  [{"case": "invert", "instructions": 110}]),
              "wall": None, "tracks": None}
    text = gate.format_gate(result)
    assert "invert" in text and "+10.000%" in text and "REGRESSION" in text


@pytest.mark.slow
def test_tracks_command_on_the_fixtures(tmp_path):
    out = tmp_path / "tracks.json"
    proc = _cli("bench", "tracks", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    tracks = json.loads(out.read_text())["tracks"]
    assert all(t["deterministic"] == 1 for t in tracks.values())
    assert all(t["dice"] > t["dice_before"] for t in tracks.values())


# ------------------------------------------------------------------ plants
def test_every_plant_applies_to_the_current_sources(tmp_path):
    # A plant whose text no longer matches would make the self-test fail
    # late; copy the touched files and apply each plant there.
    files = {rel for p in selftest.PLANTS.values() for rel, _, _ in p["edits"]}
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    for name in selftest.PLANTS:
        originals = selftest.apply_plant(tmp_path, name)
        changed = [rel for rel in originals if (tmp_path / rel).read_text() != originals[rel]]
        assert changed, name
        selftest._revert(tmp_path, originals)
    for rel in files:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text()


def test_a_stale_plant_is_reported(tmp_path):
    (tmp_path / "src/fastsyn/metrics").mkdir(parents=True)
    (tmp_path / "src/fastsyn/metrics/mi.py").write_text("nothing to plant here\n")
    with pytest.raises(ValueError, match="stale plant"):
        selftest.apply_plant(tmp_path, "d_bins")


def test_selftest_summary_and_rerun_alarms():
    wall = gate.compare_wall({"mi_step": [1.0] * 12},
                             {"mi_step": [1.9 + 0.01 * i for i in range(12)]},
                             {"mi_step": 0.1})
    result = {"wall": {"plants": {"b_serial": wall},
                       "reruns": [gate.compare_wall({"k": [1.0] * 12}, {"k": [1.0] * 12}, {})]}}
    rows = selftest.summary_rows(result)
    assert rows == [{"plant": "b_serial", "what": selftest.PLANTS["b_serial"]["what"],
                     "expected": "wall", "gate": "wall", "caught": True,
                     "flagged": ["mi_step"], "evidence": rows[0]["evidence"]}]
    assert "mi_step: +95.50%" in rows[0]["evidence"]
    assert selftest.rerun_alarms(result)["wall"] == (1, 0)


def test_gate_command_errors():
    proc = _cli("bench", "gate", "--base", "HEAD", "--gates", "speed")
    assert proc.returncode == 2 and "--gates must list" in proc.stderr
    proc = _cli("bench", "gate", "--base", "HEAD", "--repo", "/", "--gates", "wall")
    assert proc.returncode == 2 and "not a git checkout" in proc.stderr
    proc = _cli("bench", "noise", "--runs", "3", "--out", "/tmp/x.json")
    assert proc.returncode == 2 and "at least 4" in proc.stderr
    proc = _cli("bench", "gate", "--base", "HEAD", "--gates", "wall", "--calibration", "2")
    assert proc.returncode == 2 and "--calibration must be 0 or at least 4" in proc.stderr


def test_gate_refuses_noise_measured_with_other_settings(tmp_path):
    noise = tmp_path / "noise.json"
    noise.write_text(json.dumps({"thresholds": {"invert": 0.03}, "size": 64, "threads": 2,
                                 "rounds": gate.ROUNDS, "repeat": 3}))
    proc = _cli("bench", "gate", "--base", "HEAD", "--gates", "wall", "--noise", str(noise))
    assert proc.returncode == 2
    assert "measured with other settings: size 64 (this run: 48)" in proc.stderr


def test_gate_measures_its_noise_first_when_none_is_stored(monkeypatch):
    """Without stored noise the base is timed against itself first and the
    thresholds come from those runs (a fake clock: same-build runs move by
    +-1 %, the head is 10 % slower in every round)."""
    calls = []

    def fake_time_sides(sides, *, rounds, cases=workload.TIMED_CASES, **kw):
        calls.append([s.label for s in sides])
        base = [1.0 + 0.01 * ((r * 7) % 3 - 1) for r in range(rounds)]
        slow = 1.1 if sides[1].label == "head" else 1.0
        wiggle = 1.0 + 0.01 * (len(calls) % 2)
        share = {c: [0.5] * rounds for c in cases}
        return [{"wall": {c: base for c in cases}, "share": share},
                {"wall": {c: [b * slow * wiggle for b in base] for c in cases},
                 "share": share}]

    monkeypatch.setattr(gate, "time_sides", fake_time_sides)
    base, head = Side("base", "/nowhere"), Side("head", "/nowhere")
    result = gate.run_gate(base, head, calibration=4, instructions=False, tracks=False)
    assert calls == [["base", "base"]] * 4 + [["base", "head"]]
    assert result["noise"]["runs"] == 4
    case = result["wall"][0]["case"]
    assert result["wall"][0]["threshold"] == result["noise"]["thresholds"][case]
    assert {r["status"] for r in result["wall"]} == {"regression"} and result["failed"]
    assert "Q3 + 3 IQR of 4 same-build runs" in gate.format_gate(result)
    with pytest.raises(ValueError, match="at least 4"):
        gate.run_gate(base, head, calibration=2, instructions=False, tracks=False)


def test_workload_cases_are_described():
    assert set(workload.TIMED_CASES) <= set(workload.CASES)
    with pytest.raises(ValueError, match="unknown case"):
        workload.prepare("nope", workload.make_inputs(12))


# ------------------------------------------------------------------ report
def test_report_shows_the_gate_and_the_selftest(tmp_path):
    from fastsyn.bench.report import write_report

    base = [1.0 + 0.01 * (i % 3) for i in range(12)]
    wall = gate.compare_wall({"cc_factors": base}, {"cc_factors": [b * 1.8 for b in base]},
                             {"cc_factors": 0.2})
    tracks = gate.compare_tracks(_tracks(), _tracks(deterministic=0))
    result = {"ref": "HEAD", "wall_settings": {"size": 48, "threads": 2, "rounds": 12,
                                               "repeat": 3},
              "load": [7.5, 8.25],
              "wall": {"plants": {"b_serial": wall}, "reruns": [],
                       "noise": {"runs": 4, "size": 48, "threads": 2,
                                 "thresholds": {"cc_factors": 0.2},
                                 "changes": {"cc_factors": [0.01, -0.05, 0.1, 0.02]}}},
              "tracks": {"plants": {"e_race": tracks}, "reruns": [tracks]}}
    result["summary"] = selftest.summary_rows(result)
    result["reruns"] = {k: {"runs": n, "alarms": bad}
                        for k, (n, bad) in selftest.rerun_alarms(result).items()}
    results = tmp_path / "results"
    results.mkdir()
    (results / "selftest.json").write_text(json.dumps(result))
    (results / "gate.json").write_text(json.dumps(
        {"base": "main", "head": "HEAD", "instructions": gate.compare_instructions(
            [{"case": "invert", "instructions": 1000}], [{"case": "invert",
                                                          "instructions": 1100}]),
         "wall": wall, "shares": None, "tracks": tracks, "failed": True}))
    page = write_report(results, tmp_path / "out", benchmark_json_dir=tmp_path / "nobench",
                        check_equivalence=False)
    text = page.read_text(encoding="utf-8")
    section = text[text.index("id='gate'"):]
    assert "b_serial" in section and "e_race" in section and "nondeterministic" in section
    assert "+80.0" in section and "1,100" in section and "REGRESSION" in section
    assert "7.5, 8.2" in section or "7.5, 8.3" in section


def test_selftest_plan_puts_each_plants_expected_gate_first():
    steps = selftest._plan(list(selftest.PLANTS), 2, 4, ["instructions", "wall", "tracks"])
    first_rerun = next(i for i, s in enumerate(steps) if s[2] == "rerun")
    expected = [(p["gate"], name) for name, p in selftest.PLANTS.items()]
    positions = [steps.index((key, name, "plant")) for key, name in expected]
    others = [i for i, s in enumerate(steps) if s[2] == "plant" and
              selftest.PLANTS[s[1]]["gate"] != s[0]]
    assert max(positions) < min(others) < first_rerun
    assert sum(1 for s in steps if s[2] == "rerun") == 6
    assert sum(1 for s in steps if s[2] == "calibration") == 4
    # The calibration comes before any wall-time comparison.
    assert steps.index(("wall", "calibration 4", "calibration")) < steps.index(
        ("wall", "b_serial", "plant"))


def test_selftest_merges_runs_of_different_gates():
    tracks = {"plants": {"e_race": gate.compare_tracks(_tracks(), _tracks(deterministic=0))},
              "reruns": [gate.compare_tracks(_tracks(), _tracks())]}
    instr = {"plants": {"a_arith": gate.compare_instructions(
        [{"case": "cc_step", "instructions": 100}], [{"case": "cc_step",
                                                      "instructions": 102}])},
             "reruns": []}
    merged = selftest.merge_results([{"ref": "HEAD", "tracks": tracks, "load": [1.0]},
                                     {"ref": "HEAD", "instructions": instr, "load": [2.0]}])
    caught = {(r["plant"], r["gate"]): r["caught"] for r in merged["summary"]}
    assert caught == {("a_arith", "instructions"): True, ("e_race", "tracks"): True}
    assert merged["reruns"]["tracks"] == {"runs": 1, "alarms": 0}
    with pytest.raises(ValueError, match="two parts"):
        selftest.merge_results([{"tracks": tracks}, {"tracks": tracks}])
