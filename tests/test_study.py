"""The MI study (`fastsyn bench study`): settings, balanced pairs, records in
the results store, resume, summary rows, CLI and report section."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from fastsyn.bench import study
from fastsyn.bench.methods import FastsynMethod
from fastsyn.bench.store import ResultStore
from fastsyn.cli import main

LEVELS = (3, 2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from fastsyn.bench.datasets import load_dataset

    cache = tmp_path_factory.mktemp("study-cache")
    ds = load_dataset("embedded-multi", cache_dir=cache, resolution=6.0, n_subjects=2,
                      progress=False)
    return ds, cache


@pytest.fixture(scope="module")
def ran(cohort, tmp_path_factory):
    """One pair, two fastsyn settings, no anchors (ANTs would take most of the budget)."""
    ds, cache = cohort
    res = tmp_path_factory.mktemp("study-results")
    lines = []
    rows = study.run_study(ds, results_dir=res, resolution=6.0, sample=1, levels=LEVELS,
                           grid="none", settings=["nbins=16"], anchors=False,
                           cache_dir=cache, progress=False, log=lines.append)
    return SimpleNamespace(ds=ds, cache=cache, res=res, rows=rows, lines=lines)


def _fake_dataset(n=4, mods=("t1", "t2", "flair")):
    return SimpleNamespace(name="fake", modalities=list(mods),
                           subjects=[SimpleNamespace(name=f"S{i}") for i in range(n)])


# ------------------------------------------------------------ settings, pairs
def test_configuration_records_what_the_syn_defaults_resolve_to(monkeypatch):
    """A record made under other MI defaults must not be resumed as this
    default's: the configuration (so the record key) holds resolved values."""
    from fastsyn import MIMetric
    from fastsyn.bench.store import config_hash
    from fastsyn.imwarp import DIPY_SYN_SETTINGS

    method = FastsynMethod()
    mi = method.configuration("mi", LEVELS, 1)
    cc = method.configuration("cc", LEVELS, 1)
    for name in FastsynMethod.resolved_options:
        for cfg, value in ((mi, MIMetric.syn_defaults.get(name, DIPY_SYN_SETTINGS[name])),
                           (cc, DIPY_SYN_SETTINGS[name])):
            # coarse_moving_share is left out where it is moving_share on
            # every level, so that the records made before the option keep
            # their key
            kept = value is not None and not (
                name == "coarse_moving_share" and value == cfg["moving_share"])
            assert cfg.get(name) == (value if kept else None) and (name in cfg) == kept
    monkeypatch.setattr(MIMetric, "syn_defaults",
                        {**MIMetric.syn_defaults, "total_sigma": 0.7, "reinvert": False})
    moved = method.configuration("mi", LEVELS, 1)
    assert (moved["total_sigma"], moved["reinvert"]) == (0.7, False)
    assert config_hash(moved) != config_hash(mi)
    assert config_hash(method.configuration("cc", LEVELS, 1)) == config_hash(cc)
    # an explicit value is kept as given
    explicit = FastsynMethod(total_sigma=0.0).configuration("mi", LEVELS, 1)
    assert explicit["total_sigma"] == 0.0
    one_share = FastsynMethod(coarse_moving_share=0.65).configuration("mi", LEVELS, 1)
    assert "coarse_moving_share" not in one_share
    assert config_hash(one_share) != config_hash(moved)
    # the default's coarse share yields to the auto masks (a stripped moving
    # image facing a head); one that is given does not, so it has its own key
    from fastsyn.imwarp import COARSE_SHARE_RULE

    assert moved["coarse_share_rule"] == COARSE_SHARE_RULE
    explicit = FastsynMethod(coarse_moving_share=1.0).configuration("mi", LEVELS, 1)
    assert "coarse_share_rule" not in explicit and config_hash(explicit) != config_hash(moved)
    for cfg in (one_share, cc, FastsynMethod(auto_masks=False).configuration("mi", LEVELS, 1)):
        assert "coarse_share_rule" not in cfg


def test_parse_setting_canonical_names_and_errors():
    s = study.parse_setting("clip=1:99+nbins=16+masks=brain")
    assert s.name == "nbins=16+masks=brain+clip=1:99"  # factor order, not input order
    assert s.method == "fastsyn" and s.masks == "brain" and s.factor == "combination"
    assert s.options == {"nbins": 16, "clip": [1.0, 99.0]}
    assert study.parse_setting("nbins=32").name == "default"  # the default's own value
    assert study.parse_setting("ants-mode").method == "fastsyn-ants"
    # MI's smoothing is its own harness option (CC keeps DIPY's sigma_diff)
    assert study.parse_setting("sigma_diff=1").options == {"mi_sigma_diff": 1.0}
    assert study.current_defaults()["sigma_diff"] == FastsynMethod.defaults["mi_sigma_diff"]
    assert study.parse_setting("sampling=none").name == "default"
    both = study.parse_setting("masks=brain+mask_rule=both+ss_sigma_factor=1")
    assert both.masks == "brain"
    assert both.options == {"mask_rule": "both", "ss_sigma_factor": 1.0}
    assert study.parse_setting("mask_rule=either").name == "default"
    # "coarse" (every pyramid level but the finest) is both switches' default
    for factor in ("reinvert", "partial_volume"):
        assert study.parse_setting(f"{factor}=coarse").name == "default"
        assert study.parse_setting(f"{factor}=false").options == {factor: False}
        assert study.parse_setting(f"{factor}=true").options == {factor: True}
    assert study.parse_setting("mask_margin=1").name == "default"
    assert study.parse_setting("coarse_moving_share=none").name == "default"
    assert study.parse_setting("coarse_moving_share=1").name == "default"
    assert study.parse_setting("coarse_moving_share=0.65").options == {"coarse_moving_share": 0.65}
    bare = study.parse_setting("masks=brain+mask_margin=0")
    assert bare.name == "masks=brain+mask_margin=0" and bare.options == {"mask_margin": 0}
    for bad in ("nbins", "bins=16", "nbins=x", "clip=50:10", "masks=skull", "nbins=16+nbins=24",
                "mask_rule=and", "mask_margin=-1", "mask_margin=1.5"):
        with pytest.raises(ValueError):
            study.parse_setting(bad)


def test_default_grid_is_one_factor_at_a_time():
    grid = study.study_grid("default")
    names = [s.name for s in grid]
    assert names[0] == "default" and names[-1] == "ANTs mode"
    assert len(names) == len(set(names))
    defaults = study.current_defaults()
    swept = study.GRIDS["default"]
    # settings, not sweeps
    assert set(swept) == set(study.FACTORS) - {"mask_rule", "mask_margin", "auto_masks"}
    expected = sum(1 for f in swept for v in study.FACTORS[f]
                   if study._normal(f, v) != defaults[f])
    assert len(grid) == expected + 2
    assert all("+" not in n for n in names)
    assert {s.factor for s in grid[1:-1]} == set(swept)
    assert [s.name for s in study.study_grid("none")] == ["default"]
    with pytest.raises(ValueError):
        study.study_grid("huge")


def test_study_pairs_balance_directions_and_nest():
    ds = _fake_dataset()
    six = study.study_pairs(ds, 6, seed=3)
    dirs = [(p.fixed_modality, p.moving_modality) for p in six]
    assert len(set(dirs)) == 6  # every direction once
    assert len({(p.fixed, p.moving) for p in six}) == 6  # each a different subject pair
    twelve = study.study_pairs(ds, 12, seed=3)
    assert twelve[:6] == six
    counts = {}
    for p in twelve:
        counts[(p.fixed_modality, p.moving_modality)] = counts.get(
            (p.fixed_modality, p.moving_modality), 0) + 1
    assert sorted(counts.values()) == [2] * 6
    assert len(study.study_pairs(ds)) == 6 * 6  # 6 subject pairs x 6 directions
    assert study.study_pairs(ds, 6, seed=4) != six
    with pytest.raises(ValueError):
        study.study_pairs(_fake_dataset(mods=("t1",)), 2)


# ---------------------------------------------------------------- summary
def _put(store, pair, method, tag, dice):
    return store.put({"dataset": "d", "pair": pair, "method": method, "config": {"t": tag},
                      "status": "ok", "seconds": 1.0,
                      "metrics": {"dice_mean": dice, "tre_mean": 1.0, "logjac_sd": 0.1,
                                  "folding_pct": 0.0}})


def test_summarize_gains_over_ants_per_direction(tmp_path):
    store = ResultStore(tmp_path)
    pairs = [("a", "t1←t2"), ("b", "t1←t2"), ("c", "t2←t1")]
    values = {"Baseline": (0.5, 0.5, 0.5), "ANTs Mattes": (0.60, 0.62, 0.70),
              "default": (0.61, 0.61, 0.66), "nbins=16": (0.63, 0.65, 0.71)}
    methods = {"Baseline": "baseline", "ANTs Mattes": "ants"}
    factors = {"ANTs Mattes": "anchor", "default": "default", "nbins=16": "nbins"}
    keys = {name: {p: _put(store, p, methods.get(name, "fastsyn"), name, v[i])
                   for i, (p, _) in enumerate(pairs)} for name, v in values.items()}
    plan = {"pairs": [{"id": p, "direction": d} for p, d in pairs],
            "baseline_keys": keys.pop("Baseline"),
            "settings": [{"name": n, "factor": factors[n], "method": methods.get(n, "fastsyn"),
                          "options": {}, "masks": "none", "keys": k} for n, k in keys.items()]}
    rows = {r["name"]: r for r in study.summarize(plan, store)}
    assert list(rows) == ["Baseline", "ANTs Mattes", "default", "nbins=16"]
    d = rows["default"]
    assert d["directions"]["t1←t2"] == pytest.approx(0.61)
    assert d["vs_ants"]["t1←t2"] == pytest.approx(0.0)
    assert d["vs_ants"]["t2←t1"] == pytest.approx(-0.04)
    assert d["min_vs_ants"] == pytest.approx(-0.04)
    n16 = rows["nbins=16"]
    assert n16["min_vs_ants"] == pytest.approx(0.01)
    assert n16["vs_default"] == pytest.approx((0.63 + 0.65 + 0.71 - 0.61 - 0.61 - 0.66) / 3)
    assert rows["ANTs Mattes"]["min_vs_ants"] is None
    assert rows["Baseline"]["n"] == 3 and n16["n"] == 3
    text = study.format_study(list(rows.values()))
    assert "| nbins=16 | nbins | 0.663 ± " in text and "+0.010" in text
    # a missing record is not counted; an error record is counted as an error
    store.put({"dataset": "d", "pair": "c", "method": "fastsyn", "config": {"t": "nbins=16"},
               "status": "error", "error": "boom"})
    n16 = {r["name"]: r for r in study.summarize(plan, store)}["nbins=16"]
    assert n16["n"] == 2 and n16["errors"] == 1 and n16["directions"]["t2←t1"] is None
    assert n16["vs_default"] == pytest.approx(0.03)  # paired: pairs a and b only
    # a planned setting without any record is listed, not shown as an empty row
    plan["settings"].append({"name": "nbins=24", "factor": "nbins", "method": "fastsyn",
                             "options": {}, "masks": "none", "keys": {"a": "no/such/key"}})
    rows = study.summarize(plan, store)
    assert study.not_run(rows) == ["nbins=24"]
    text = study.format_study(rows)
    assert "| nbins=24 |" not in text and "Planned, not run (no record): nbins=24" in text


def test_combine_winners_takes_the_best_level_of_each_factor():
    def row(name, factor, gain):
        return {"name": name, "factor": factor, "vs_default": gain}

    rows = [row("default", "default", 0.0), row("nbins=16", "nbins", 0.02),
            row("nbins=24", "nbins", 0.01), row("clip=1:99", "clip", 0.005),
            row("sigma_diff=3", "sigma_diff", -0.01), row("masks=brain", "masks", 0.05),
            row("sampling=0.3", "sampling", 0.0001)]
    combos = [s.name for s in study.combine_winners(rows)]
    assert combos == ["nbins=16+clip=1:99"]  # masks are data; 0.0001 is noise
    rows.append(row("step_length=0.35", "step_length", 0.03))
    combos = [s.name for s in study.combine_winners(rows)]
    assert combos == ["nbins=16+clip=1:99+step_length=0.35", "nbins=16+step_length=0.35"]
    assert study.combine_winners(rows[:3][:1]) == []


# ------------------------------------------------------- runs, resume, CLI
def test_study_run_writes_records_and_summary(ran):
    recs = ResultStore(ran.res).records(status="ok")
    assert sorted(r["method"] for r in recs) == ["baseline", "fastsyn", "fastsyn"]
    nbins = sorted(r["config"]["nbins"] for r in recs if r["method"] == "fastsyn")
    assert nbins == [16, FastsynMethod.defaults["nbins"]]
    assert [r["name"] for r in ran.rows] == ["Baseline", "default", "nbins=16"]
    for r in ran.rows:
        assert r["n"] == 1 and r["errors"] == 0 and 0 < r["dice"]["mean"] <= 1
    assert ran.rows[1]["seconds"]["mean"] > 0 and ran.rows[0]["seconds"] is None
    assert list(ran.rows[1]["directions"]) == ["t1←t2"]
    assert len(list(ran.res.glob("study-embedded-multi-6mm-v*-3x2.json"))) == 1


def test_rerun_skips_finished_records_and_cli_exits_0(ran, capsys):
    store = ResultStore(ran.res)
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*.json")}
    rc = main(["bench", "study", "--dataset", str(ran.ds.root), "--resolution", "6",
               "--sample", "1", "--levels", ",".join(map(str, LEVELS)), "--grid", "none",
               "--setting", "nbins=16", "--no-anchors", "--cache-dir", str(ran.cache),
               "--results", str(ran.res)])
    out = capsys.readouterr()
    assert rc == 0
    assert "0 new record(s), 1 pair(s) already done" in out.err
    after = {p: p.stat().st_mtime_ns for p in store.root.rglob("*.json")
             if not p.name.startswith("study-")}
    assert after == {p: t for p, t in before.items() if not p.name.startswith("study-")}
    assert "| default | default |" in out.out and "| nbins=16 | nbins |" in out.out


def test_a_plan_made_under_other_defaults_is_replaced_not_merged(ran, tmp_path,
                                                                 monkeypatch):
    """Setting names are relative to the defaults: after the defaults move, an
    older plan's rows would carry wrong names, so its settings are dropped and
    the new default's records are made afresh."""
    import shutil

    from fastsyn import MIMetric

    res = tmp_path / "results"
    shutil.copytree(ran.res, res)

    def rerun(*settings):
        lines = []
        rows = study.run_study(ran.ds, results_dir=res, resolution=6.0, sample=1,
                               levels=LEVELS, grid="none", settings=list(settings),
                               anchors=False, cache_dir=ran.cache, progress=False,
                               log=lines.append)
        return [r["name"] for r in rows], "\n".join(lines)

    names, _ = rerun()  # same defaults: the older plan's nbins=16 row stays
    assert names == ["Baseline", "default", "nbins=16"]
    monkeypatch.setattr(MIMetric, "syn_defaults", {**MIMetric.syn_defaults, "total_sigma": 0.1})
    names, log = rerun()
    assert names == ["Baseline", "default"]
    assert "default: 1 new record(s)" in log
    names, _ = rerun("nbins=24")  # and merging resumes under the new defaults
    assert names == ["Baseline", "default", "nbins=24"]


def test_cli_study_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "study", "--results", str(tmp_path), "--setting", "bins=3"]) == 2
    assert main(["bench", "study", "--results", str(tmp_path), "--anchor-masks", "x"]) == 2
    assert main(["bench", "study", "--results", str(tmp_path), "--anchors", "elastix"]) == 2
    assert "--anchors must list some of ants, greedy" in capsys.readouterr().err
    assert main(["bench", "study", "--results", str(tmp_path), "--dataset", "nope"]) == 2
    assert "fastsyn: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: not one of tune, report
        main(["bench", "study", "--results", str(tmp_path), "--half", "train"])
    assert exc.value.code == 2 and "--half" in capsys.readouterr().err


def _report_study_section(results, tmp_path):
    """The MI study section of the HTML report of a results folder."""
    from fastsyn.bench.report import write_report

    page = write_report(results, tmp_path / "out", check_equivalence=False,
                        benchmark_json_dir=tmp_path / "nobench").read_text()
    section = page[page.index("id='mi-study'"):]
    return section[:section.index("<h2", 10)]


def test_anchor_settings_of_some_anchors():
    names = [s.name for s in study.anchor_settings(("none", "brain"))]
    assert names == ["ANTs Mattes", "greedy NMI", "ANTs Mattes [brain]", "greedy NMI [brain]"]
    greedy = study.anchor_settings(methods=("greedy",))
    assert [(s.name, s.method, s.factor) for s in greedy] == [("greedy NMI", "greedy", "anchor")]
    with pytest.raises(ValueError, match="anchors must name some of ants, greedy"):
        study.anchor_settings(methods=("elastix",))
    with pytest.raises(ValueError, match="got none"):
        study.anchor_settings(methods=())


def test_paired_differences_against_the_anchors(tmp_path):
    """Per direction and over all pairs: mean, Student-t 95 % interval (none
    for a single pair) and pairs won, in the table, the CLI text and the report."""
    from scipy.stats import t


    store = ResultStore(tmp_path / "res")
    pairs = [("a", "t1←t2"), ("b", "t1←t2"), ("c", "t1←t2"), ("d", "t2←t1")]
    values = {"Baseline": (0.5,) * 4, "ANTs Mattes": (0.60, 0.62, 0.64, 0.70),
              "greedy NMI": (0.63, 0.60, 0.60, 0.72), "default": (0.61, 0.61, 0.65, 0.66)}
    methods = {"Baseline": "baseline", "ANTs Mattes": "ants", "greedy NMI": "greedy",
               "default": "fastsyn"}
    keys = {name: {p: _put(store, p, methods[name], name, v[i])
                   for i, (p, _) in enumerate(pairs)} for name, v in values.items()}
    plan = {"version": study._PLAN_VERSION, "data": "d-v1", "levels": [2, 1],
            "threads": 1, "seed": 0, "half": "report",
            "pairs": [{"id": p, "direction": d} for p, d in pairs],
            "baseline_keys": keys.pop("Baseline"),
            "settings": [{"name": n, "factor": "default" if n == "default" else "anchor",
                          "method": methods[n], "options": {}, "masks": "none", "keys": k}
                         for n, k in keys.items()]}
    rows = {r["name"]: r for r in study.summarize(plan, store)}
    assert "vs_anchors" not in rows["ANTs Mattes"]
    vs = rows["default"]["vs_anchors"]
    assert list(vs) == ["ANTs Mattes", "greedy NMI"]
    diffs = np.array([0.61 - 0.63, 0.61 - 0.60, 0.65 - 0.60])
    g = vs["greedy NMI"]["t1←t2"]
    half = t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert g["n"] == 3 and g["wins"] == 2
    assert g["mean"] == pytest.approx(diffs.mean())
    assert (g["low"], g["high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    single = vs["ANTs Mattes"]["t2←t1"]
    assert single["n"] == 1 and single["mean"] == pytest.approx(-0.04)
    assert single["low"] is None and single["wins"] == 0
    assert vs["ANTs Mattes"]["all"]["n"] == 4 and vs["ANTs Mattes"]["all"]["wins"] == 2
    text = study.format_study(list(rows.values()))
    assert "| Direction | n | Δ vs ANTs Mattes [95 % CI] | won | Δ vs greedy NMI" in text
    assert "| t2←t1 | 1 | -0.040 | 0/1 | -0.060 | 0/1 |" in text
    lo, hi = diffs.mean() - half, diffs.mean() + half
    assert f"{diffs.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | 2/3 |" in text
    (store.root / "study-d-v1-2x1-report.json").write_text(json.dumps(plan))
    section = _report_study_section(store.root, tmp_path)
    assert "Δ vs greedy NMI [95 % CI]" in section and ">2/3<" in section
    assert f"{lo:+.3f}, {hi:+.3f}]" in section


def test_paired_differences_label_by_label(tmp_path):
    """Which labels a difference comes from: per-label paired statistics,
    named from the plan's label_names, in the table and the report; no
    label table for a regional atlas of many labels."""

    store = ResultStore(tmp_path / "res")
    pairs = ["a", "b", "c"]
    per_label = {"ANTs Mattes": [(0.50, 0.70), (0.52, 0.72), (0.54, 0.70)],
                 "default": [(0.56, 0.69), (0.55, 0.70), (0.60, 0.71)]}
    methods = {"ANTs Mattes": "ants", "default": "fastsyn"}

    def put(pair, name, dice, labels):
        return store.put({"dataset": "d", "pair": pair, "method": methods[name],
                          "config": {"t": name, "n": len(labels)}, "status": "ok",
                          "seconds": 1.0,
                          "metrics": {"dice_mean": float(np.mean(dice)), "labels": labels,
                                      "dice": list(dice), "logjac_sd": 0.1,
                                      "folding_pct": 0.0}})

    def plan_for(labels):
        keys = {n: {p: put(p, n, v[i] * (len(labels) // 2), labels)
                    for i, p in enumerate(pairs)} for n, v in per_label.items()}
        return {"version": study._PLAN_VERSION, "data": "d-v1", "levels": [2, 1],
                "threads": 1, "seed": 0, "pairs": [{"id": p, "direction": "t1←t2"}
                                                   for p in pairs],
                "baseline_keys": {}, "label_names": {"1": "csf", "2": "wm"},
                "settings": [{"name": n, "factor": "default" if n == "default" else "anchor",
                              "method": methods[n], "options": {}, "masks": "none",
                              "keys": k} for n, k in keys.items()]}

    plan = plan_for([1, 2])
    rows = {r["name"]: r for r in study.summarize(plan, store)}
    assert rows["default"]["labels"]["csf"]["mean"] == pytest.approx(0.57)
    by_label = rows["default"]["vs_anchors_by_label"]["ANTs Mattes"]
    assert list(by_label) == ["csf", "wm"]
    assert by_label["csf"]["mean"] == pytest.approx(0.05) and by_label["csf"]["wins"] == 3
    assert by_label["wm"]["mean"] == pytest.approx(-0.02 / 3) and by_label["wm"]["wins"] == 1
    text = study.format_study(list(rows.values()))
    assert "against the anchors, label by label" in text
    assert "| csf | 3 | +0.050 [" in text and "| 3/3 |" in text
    (store.root / "study-d-v1-2x1.json").write_text(json.dumps(plan))
    section = _report_study_section(store.root, tmp_path)
    assert "label by label" in section and "<td>wm</td>" in section

    many = list(range(1, 2 * (study.MAX_LABELS_COMPARED // 2 + 1) + 1))
    rows = study.summarize(plan_for(many), store)
    default = study.default_row(rows)
    assert len(default["vs_anchors_by_label"]["ANTs Mattes"]) == len(many)
    assert study.anchor_comparison(default, "label") is None
    assert "label by label" not in study.format_study(rows)
    with pytest.raises(ValueError, match="by must be"):
        study.anchor_comparison(default, "subject")


def test_report_renders_the_study_section(ran, tmp_path):
    from fastsyn.bench.report import write_report

    page = write_report(ran.res, tmp_path / "out", check_equivalence=False,
                        benchmark_json_dir=tmp_path / "nobench").read_text()
    section = page[page.index("id='mi-study'"):]
    section = section[:section.index("<h2", 10)]
    assert "nbins=16" in section and "t1←t2" in section
    assert section.count("<tr>") == 1 + 3  # header and Baseline, default, nbins=16
    assert "Parzen window" in section  # what was not studied is said
    assert "<svg" in section


def test_report_names_a_study_of_one_subjects_pairs(ran, tmp_path):
    """A ``--pairs-with`` plan beside the full one gets its own heading and id."""
    import json
    import shutil

    from fastsyn.bench.report import write_report

    res = tmp_path / "res"
    shutil.copytree(ran.res, res)
    plan_path = next(res.glob("study-*.json"))
    plan = json.loads(plan_path.read_text())
    subject = plan["pairs"][0]["id"].split("__")[0].split("-")[0]
    plan["pairs_with"], plan["half"] = [subject], "tune"
    (res / plan_path.name.replace(".json", f"-with-{subject}-tune.json")).write_text(
        json.dumps(plan))
    page = write_report(res, tmp_path / "out", check_equivalence=False,
                        benchmark_json_dir=tmp_path / "nobench").read_text()
    assert f"pairs with {subject}, tune half</h3>" in page
    assert f"-with-{subject}-tune'" in page and page.count("<h3 id='study-") == 2
