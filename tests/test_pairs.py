"""Pair definitions: counts, ids, sampling."""

import itertools
from pathlib import Path

import pytest

from fastsyn.bench.datasets import Dataset, Subject
from fastsyn.bench.pairs import Pair, make_pairs

NAMES40 = [f"S{i:02d}" for i in range(1, 41)]
NAMES7 = [f"S{i:02d}" for i in range(1, 8)]
MODS = ["t1", "t2", "flair"]


def _dataset(names, modalities):
    subjects = [
        Subject(name=n, images={m: Path(f"/x/{n}/{m}.nii.gz") for m in modalities},
                labels=Path(f"/x/{n}/labels.nii.gz"))
        for n in names
    ]
    return Dataset(name="toy", root=Path("/x"), subjects=subjects, modalities=list(modalities))


def test_monomodal_all_unordered_pairs():
    pairs = make_pairs(NAMES40)
    assert len(pairs) == 780
    assert len({p.id for p in pairs}) == 780
    unordered = {frozenset((p.fixed, p.moving)) for p in pairs}
    assert len(unordered) == 780
    assert all(p.fixed_modality == p.moving_modality == "t1" for p in pairs)
    assert all(NAMES40.index(p.fixed) < NAMES40.index(p.moving) for p in pairs)


def test_multimodal_every_ordered_modality_combination():
    pairs = make_pairs(NAMES7, MODS)
    assert len(pairs) == 126
    assert all(p.fixed_modality != p.moving_modality for p in pairs)
    for a, b in itertools.combinations(NAMES7, 2):
        combos = {(p.fixed_modality, p.moving_modality) for p in pairs if (p.fixed, p.moving) == (a, b)}
        assert combos == set(itertools.permutations(MODS, 2))


def test_dataset_input_uses_its_modalities():
    ds = _dataset(NAMES7, MODS)
    assert make_pairs(ds) == make_pairs(NAMES7, MODS)
    mono = make_pairs(ds, "t2")
    assert len(mono) == 21 and all(p.fixed_modality == "t2" for p in mono)
    two = make_pairs(ds, "t1,flair")
    assert len(two) == 21 * 2
    with pytest.raises(ValueError, match="not in the dataset"):
        make_pairs(ds, ["t1", "pd"])


def test_pair_id_is_stable_and_parses():
    p = Pair("S01", "S02", "t1", "flair")
    assert p.id == "S01-t1__S02-flair"
    assert str(p) == p.id
    assert Pair.from_id(p.id) == p
    assert Pair.from_id("sub-01-t1__sub-02-t2") == Pair("sub-01", "sub-02", "t1", "t2")
    assert hash(p) == hash(Pair("S01", "S02", "t1", "flair"))
    with pytest.raises(ValueError, match="pair id"):
        Pair.from_id("S01_S02")


def test_sample_reproducible_subset_in_order():
    full = make_pairs(NAMES40)
    a = make_pairs(NAMES40, sample=25, seed=3)
    b = make_pairs(NAMES40, sample=25, seed=3)
    assert a == b and len(a) == 25
    assert set(a) <= set(full)
    positions = [full.index(p) for p in a]
    assert positions == sorted(positions)
    assert make_pairs(NAMES40, sample=25, seed=4) != a
    # Nested: a smaller sample with the same seed is contained in a larger one.
    assert set(make_pairs(NAMES40, sample=10, seed=3)) <= set(a)
    assert make_pairs(NAMES7, MODS, sample=1000) == make_pairs(NAMES7, MODS)


@pytest.mark.parametrize(
    "args, kwargs, exc",
    [
        ((["S01"],), {}, ValueError),
        ((["S01", "S01", "S02"],), {}, ValueError),
        (("S01,S02",), {}, TypeError),
        ((NAMES7,), {"sample": 0}, ValueError),
        ((NAMES7,), {"sample": 2.5}, ValueError),
        ((NAMES7,), {"sample": 3, "seed": -1}, ValueError),
        ((NAMES7, ["t1", "t1"]), {}, ValueError),
        ((NAMES7, []), {}, ValueError),
        (([1, 2],), {}, TypeError),
    ],
)
def test_bad_input(args, kwargs, exc):
    with pytest.raises(exc):
        make_pairs(*args, **kwargs)
