"""Pairs per hour from a results store, cohort projections, table and report."""

import json

import pytest

from fastsyn.bench.store import ResultStore
from fastsyn.bench.throughput import format_throughput, project_wall_time, throughput

PRE = {"level_iters": [10], "sigmas": [0.0], "factors": [1], "nbins": 32,
       "prealigner": "greedy"}


def _records():
    """Two pairs: prealign 2 s / 4 s, baseline evaluation 1 s, method A
    10 + 1 s, method B 30 + 1 s (pair 2 has no B record)."""
    recs = []
    for pair, pre in (("p1", 2.0), ("p2", 4.0)):
        common = {"dataset": "ds", "pair": pair, "status": "ok", "prealign_seconds": pre,
                  "threads": 1, "metrics": {"ncc": 0.5}}
        recs.append(dict(common, method="baseline", label="Baseline",
                         config={"method": "baseline", "prealign": PRE}, eval_seconds=1.0,
                         threads=None))
        recs.append(dict(common, method="a", label="A", config={"method": "a", "prealign": PRE},
                         seconds=8.0, run_seconds=10.0, eval_seconds=1.0))
        if pair == "p1":
            recs.append(dict(common, method="b", label="B",
                             config={"method": "b", "prealign": PRE},
                             seconds=25.0, run_seconds=30.0, eval_seconds=1.0))
    return recs


def test_throughput_rows_add_up():
    t = throughput(_records(), "ds")
    rows = {r["name"]: r for r in t["rows"]}
    assert t["pairs"] == 2 and t["prealigners"] == ["greedy"] and t["threads"] == [1]
    assert rows["Prealignment (greedy)"]["seconds"] == pytest.approx(3.0)
    assert rows["A"]["seconds"] == pytest.approx(11.0)
    assert rows["A"]["pairs_per_hour"] == pytest.approx(3600 / 11)
    assert rows["B"]["n"] == 1 and rows["B"]["seconds"] == pytest.approx(31.0)
    assert rows["Baseline"]["seconds"] == pytest.approx(1.0)
    whole = t["rows"][-1]
    # pair 1: 2 + 1 + 11 + 31 = 45; pair 2: 4 + 1 + 11 = 16
    assert whole["seconds"] == pytest.approx((45 + 16) / 2)
    assert whole["pairs_per_hour"] == pytest.approx(3600 / 30.5)
    assert rows["Prealignment (greedy)"]["share"] == pytest.approx(3.0 / 30.5)
    assert throughput(_records(), "other") is None


def test_projection_counts_whole_rounds():
    rows = project_wall_time(10.0, threads=1, cores=2, dask_workers=(32,))
    by = {(r["cohort"], r["where"]): r for r in rows}
    assert by[("LPBA40", "2 cores")]["workers"] == 2
    assert by[("LPBA40", "2 cores")]["hours"] == pytest.approx(390 * 10 / 3600)
    assert by[("MRBrainS18", "Dask 32 workers")]["hours"] == pytest.approx(4 * 10 / 3600)
    two_threads = project_wall_time(10.0, threads=2, cores=2, dask_workers=())
    assert two_threads[0]["workers"] == 1
    with pytest.raises(ValueError, match="seconds_per_pair"):
        project_wall_time(0.0)


def test_table_command_prints_throughput(tmp_path, capsys):
    from fastsyn.cli import main

    store = ResultStore(tmp_path / "res")
    for rec in _records():
        store.put(rec)
    assert main(["bench", "table", "--results", str(tmp_path / "res"), "--throughput"]) == 0
    out = capsys.readouterr().out
    assert "| Whole run (prealign + every method + evaluation) | 2 | 30.50 | 118.0 | 100 % |" \
        in out
    assert "| LPBA40 | 780 | 2 cores | 3.30 |" in out  # 390 rounds x 30.5 s
    assert main(["bench", "table", "--results", str(tmp_path / "res"), "--throughput",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ds"]["rows"][-1]["pairs_per_hour"] == pytest.approx(3600 / 30.5)
    assert main(["bench", "table", "--results", str(tmp_path / "res"), "--throughput",
                 "--format", "csv"]) == 2
    assert "not csv" in capsys.readouterr().err
    assert "no records with measured costs" in format_throughput([], ["ds"])


def test_report_shows_throughput(tmp_path):
    from fastsyn.bench.report import _render_page

    store = ResultStore(tmp_path / "res")
    for rec in _records():
        store.put(rec)
    page = _render_page(tmp_path / "res", tmp_path / "out", check_equivalence=False)
    assert "<h2 id='throughput'>Throughput</h2>" in page
    assert "Prealignment (greedy)" in page and "LPBA40" in page
    assert "href='#throughput'" in page
