"""A measurement kept out of the default test run (the file name does not
match ``test_*.py``): the report's size for a 100-pair run with real 2 mm
tiles.  Run it with ``python -m pytest tests/measure_gallery_size.py -s``
(about three minutes on two busy cores: it builds two embedded subjects and
registers one pair)."""

from test_gallery import METHODS, PAGE_BUDGET_100_PAIRS, _fill

from fastsyn.bench import qc
from fastsyn.bench.report import write_report
from fastsyn.bench.store import ResultStore


def test_page_size_of_a_100_pair_run_with_embedded_2mm_tiles(tmp_path):
    """The size budget with real tiles: one 2 mm embedded pair registered by
    fastsyn (about a minute with the cohort build), its tiles replicated to
    100 pairs x 5 methods with scattered Dice (the cards a 100-pair run
    selects).  Prints the size."""
    from fastsyn.bench.datasets import load_dataset
    from fastsyn.bench.run import run_benchmark

    data = load_dataset("embedded-mono", cache_dir=tmp_path / "cache", resolution=2.0,
                        n_subjects=2, progress=False)
    run_benchmark(data, "fastsyn", "cc", results_dir=tmp_path / "one", levels=[8, 4],
                  progress=False, workers=1, threads=2)
    one = ResultStore(tmp_path / "one")
    real = {rec["method"]: qc.load_tiles(one.qc_path(rec["key"])) for rec in one.records()}
    sets = {"baseline": real["baseline"], "fastsyn": real["fastsyn"], "dipy": real["fastsyn"],
            "ants": real["fastsyn"], "folded": real["fastsyn"]}
    sets["greedy"] = real["fastsyn"]
    _fill(tmp_path / "results", sets, 100, outlier="s042_s043", seed=2,
          methods=dict(METHODS, greedy="greedy"))
    page = write_report(tmp_path / "results", tmp_path / "out",
                        benchmark_json_dir=tmp_path / "nobench", check_equivalence=False)
    text = page.read_text(encoding="utf-8")
    cards = text.count("<section class='qc-card'")
    print(f"\n100 pairs x 5 methods, 2 mm tiles: {page.stat().st_size} bytes, {cards} cards")
    assert page.stat().st_size < PAGE_BUDGET_100_PAIRS
