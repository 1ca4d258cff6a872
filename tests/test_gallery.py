"""The report's QC gallery: which pairs get a card, worst first, linked from
the Dice plot and the outlier table; the page's size for a 100-pair run; and
the gallery rendered in headless Chromium."""

import re
import shutil

import numpy as np
import pytest
from conftest import load_pair
from test_qc import _ball_fold, _brain, _rgb_of, _screenshot

from fastsyn.bench import gallery, qc
from fastsyn.bench.report import write_report
from fastsyn.bench.store import ResultStore, make_key

METHODS = {"baseline": "Baseline", "fastsyn": "fastsyn", "dipy": "DIPY", "ants": "ANTs"}
#: The page of a 100-pair run (4 methods, 2 mm tiles) stays under this size.
PAGE_BUDGET_100_PAIRS = 4_000_000


@pytest.fixture(scope="module")
def tile_sets():
    """Tiles of the fixture pair (a 4 mm brain, tiles enlarged to about the
    pixel count of 2 mm data): the moving image as registered by each method
    (shifted by a method-specific amount, with the true field's log|J|), and
    a synthetic brain with a fold."""
    pair = load_pair("pair3d")
    fixed, moving, affine = pair["static"], pair["moving"], pair["static_affine"]
    sets = {}
    for i, method in enumerate(METHODS):
        sets[method] = qc.extract_tiles(
            fixed, np.roll(moving, i - 1, axis=1), affine, fixed_labels=pair["static_labels"],
            mask=pair["static_mask"],
            displacement=None if method == "baseline" else pair["true_disp"] * (1 + 0.2 * i))
    image, labels, mask = _brain((78, 94, 78))
    disp, _ = _ball_fold(image.shape, np.diag([2.0, 2.0, 2.0, 1.0]), radius=8)
    sets["folded"] = qc.extract_tiles(image, image, np.diag([2.0, 2.0, 2.0, 1.0]),
                                      fixed_labels=labels, mask=mask, displacement=disp)
    return sets


def _fill(root, tile_sets, n_pairs, *, outlier=None, folded=None, seed=0, methods=METHODS):
    """A results store of ``n_pairs`` pairs x METHODS with tiles; ``outlier``
    (pair) has a very low DIPY Dice; ``folded`` (pair) has ANTs folding."""
    store = ResultStore(root)
    rng = np.random.default_rng(seed)
    base = {"baseline": 0.55, "fastsyn": 0.72, "dipy": 0.71}
    for i in range(n_pairs):
        pair = f"s{i:03d}_s{i + 1:03d}"
        for method, label in methods.items():
            dice = base.get(method, 0.70) + rng.normal(0, 0.01)
            if pair == outlier and method == "dipy":
                dice = 0.45
            fold = pair == folded and method == "ants"
            if fold:
                dice = 0.6  # a folding registration: among ANTs' worst
            rec = {"dataset": "embedded-mono", "pair": pair, "method": method,
                   "label": label, "config": {"method": method, "metric": "cc"},
                   "status": "ok", "seconds": None if method == "baseline" else 5.0,
                   "fixed": pair[:4], "moving": pair[5:], "fixed_modality": "t1",
                   "moving_modality": "t1",
                   "metrics": {"dice_mean": dice, "ncc": 0.9, "nmi": 1.2,
                               "jaccard_mean": dice - 0.15, "tre_mean": 2.0,
                               "folding_pct": 1.5 if fold else 0.0, "logjac_sd": 0.1}}
            key = make_key(rec["dataset"], pair, method, rec["config"])
            qc.save_tiles(store.qc_path(key), tile_sets["folded" if fold else method])
            store.put(rec)
    return store


def test_select_pairs_and_outliers():
    dice = {"A": {"p1": 0.5, "p2": 0.7, "p3": 0.71, "p4": 0.72, "p5": 0.73, "p6": 0.70,
                  "p7": 0.71, "p8": 0.72},
            "B": {"p1": 0.69, "p2": 0.6, "p3": 0.7, "p4": 0.7, "p5": 0.7, "p6": 0.7,
                  "p7": 0.7, "p8": 0.7}}
    why = gallery.select_pairs(dice, ["A", "B"], worst=2)
    assert why == {"p1": ["worst #1 of A", "worst #2 of B", "outlier of A"],
                   "p2": ["worst #2 of A", "worst #1 of B", "outlier of B"],  # p2 < p6 by name
                   "p3": ["median of A"], "p4": ["median of B"]}
    rows = gallery.outliers(dice, ["A", "B"])
    assert [(r["method"], r["pair"]) for r in rows] == [("B", "p2"), ("A", "p1")]
    assert rows[1]["best"] == "B" and rows[1]["gap"] == pytest.approx(0.19)
    assert rows[0]["best"] == "A" and rows[0]["gap"] == pytest.approx(0.1)
    assert rows[0]["z"] < -2 and rows[1]["z"] < -2
    assert gallery.card_id("embedded mono", "s1/s2") == "qc-embedded_mono--s1_s2"


@pytest.fixture(scope="module")
def page(tile_sets, tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    _fill(root / "results", tile_sets, 10, outlier="s004_s005", folded="s007_s008")
    out = write_report(root / "results", root / "out", benchmark_json_dir=root / "nobench",
                       check_equivalence=False)
    return out, out.read_text(encoding="utf-8")


def test_gallery_cards_worst_first_with_every_method(page):
    _, text = page
    assert "id='gallery'" in text and "Registrations (QC)" in text
    cards = re.findall(r"<section class='qc-card' id='([^']+)'>", text)
    # the outlier (DIPY's Dice 0.45) is the worst pair: first card
    assert cards[0] == gallery.card_id("embedded-mono", "s004_s005")
    assert len(cards) == len(set(cards)) <= 3 * 4
    first = text[text.index(f"id='{cards[0]}'"):text.index(f"id='{cards[1]}'")]
    assert re.search(r"worst #1 of [^;]*DIPY", first) and "outlier of DIPY" in first
    # every method on the pair side by side, the Baseline first
    labels = re.findall(r"<figcaption><b>([^<]+)</b>", first)
    assert labels[0] == "Baseline" and sorted(labels) == sorted(METHODS.values())
    # in the accuracy table's order
    table = re.findall(r"<tr><td>(Baseline|fastsyn|DIPY|ANTs)</td><td class=\"num\">", text)
    assert labels == table[:len(labels)]
    # per method: warped, checkerboard, log|J|; the fixed image and the
    # outlines once per card, used by every method's flicker
    assert first.count("src='data:image/") == 3 * 4
    assert first.count("href='data:image/") == 2
    assert first.count(f"<use href='#{cards[0]}-fixed'/>") == 4
    # no script, nothing fetched
    assert "<script" not in text and not re.search(r"""(src|href)=["']?(https?:)?//""", text)


def test_gallery_outlier_table_and_dice_plot_link_to_cards(page):
    _, text = page
    target = gallery.card_id("embedded-mono", "s004_s005")
    row = re.search(r"<tr><td>DIPY</td><td><a href='#(qc-[^']+)'>s004_s005</a></td>"
                    r"\s*<td class=\"num qc-worst\">0\.450</td>", text)
    assert row and row.group(1) == target
    # the Dice plot's ringed dots link to the cards (SVG <a>)
    svg_links = set(re.findall(r'<a xlink:href="#(qc-[^"]+)"', text))
    cards = set(re.findall(r"<section class='qc-card' id='([^']+)'>", text))
    assert target in svg_links and svg_links <= cards


def test_gallery_shows_the_folding_pair_on_the_map(page, tile_sets):
    _, text = page
    card = gallery.card_id("embedded-mono", "s007_s008")
    assert f"id='{card}'" in text  # one of ANTs' worst three (its Dice is low)
    part = text[text.index(f"id='{card}'"):]
    part = part[:part.index("</section>")]
    ants = part[part.index("<b>ANTs</b>"):]
    logjac = re.search(r"class='qc-logjac' src='([^']+)'", ants).group(1)
    assert np.all(_rgb_of(logjac) == qc.FOLD_RGB, axis=-1).sum() > 20
    assert "<dt>Folding (%)</dt><dd>1.500</dd>" in ants


def test_page_size_of_a_100_pair_run(tile_sets, tmp_path):
    _fill(tmp_path / "results", tile_sets, 100, outlier="s042_s043", seed=1)
    page = write_report(tmp_path / "results", tmp_path / "out",
                        benchmark_json_dir=tmp_path / "nobench", check_equivalence=False)
    size = page.stat().st_size
    cards = page.read_text(encoding="utf-8").count("<section class='qc-card'")
    assert 4 <= cards <= 3 * 3 + 3 + 3  # worst 3 + median per method, outliers
    print(f"\n100 pairs x 4 methods, fixture tiles: {size} bytes, {cards} cards")
    assert size < PAGE_BUDGET_100_PAIRS, f"{size} bytes for {cards} cards"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_gallery_in_headless_chromium(page, tmp_path):
    out, text = page
    first = re.findall(r"<section class='qc-card' id='([^']+)'>", text)[0]
    uri = out.resolve().as_uri()
    # the first card sits below the accuracy section: a window that holds it
    held = {s: _screenshot(f"{uri}#{first}-{s}", tmp_path / f"{s}.png", "1280,4000")
            for s in ("fixed", "warped")}
    for pixels in held.values():
        assert np.all(np.abs(pixels - qc.OUTLINE_RGB) < 40, axis=-1).mean() > 0.002
    changed = np.abs(held["fixed"] - held["warped"]).max(axis=-1) > 24
    assert 500 < changed.sum() < 0.1 * changed.size, changed.sum()
    # only the held card changes: the rows that differ span one card's images
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.max() - rows.min() < 400


def test_harness_keeps_tiles_and_report_redraws_from_them(tmp_path):
    """A real run keeps each record's tiles; a rerun leaves them alone; the
    report draws the cards from them without registering again."""
    import nibabel as nib
    from conftest import load_pair

    from fastsyn.bench.run import run_benchmark

    pair = load_pair("pair3d")
    root = tmp_path / "data"
    for subject, key in (("s1", "static"), ("s2", "moving")):
        (root / subject).mkdir(parents=True)
        aff = pair[f"{key}_affine"]
        nib.save(nib.Nifti1Image(pair[key], aff), str(root / subject / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(pair[f"{key}_labels"].astype(np.int16), aff),
                 str(root / subject / "labels.nii.gz"))
    kwargs = dict(results_dir=tmp_path / "res", levels=[2, 1], progress=False, workers=1)
    summary = run_benchmark(str(root), "fastsyn", "cc", **kwargs)
    assert summary["ok"] == 2  # Baseline and fastsyn
    store = ResultStore(tmp_path / "res")
    records = store.records()
    stamps = {}
    for rec in records:
        path = store.qc_path(rec["key"])
        tiles = qc.load_tiles(path)
        assert tiles is not None and "qc_error" not in rec
        stamps[path] = path.stat().st_mtime_ns
    assert run_benchmark(str(root), "fastsyn", "cc", **kwargs)["skipped"] == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    text = write_report(tmp_path / "res", tmp_path / "out", check_equivalence=False,
                        benchmark_json_dir=tmp_path / "nobench").read_text(encoding="utf-8")
    cards = re.findall(r"<section class='qc-card' id='([^']+)'>", text)
    assert len(cards) == 1  # one pair: the worst, the median and the only one
    assert re.findall(r"<figcaption><b>([^<]+)</b>", text) == ["Baseline", "fastsyn"]

