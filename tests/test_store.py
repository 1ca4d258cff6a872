"""Results store: atomic records, skip finished, error records."""

import json
import os

import numpy as np
import pytest

from fastsyn.bench.store import ResultStore, config_hash, make_key


def _record(status="ok", pair="a__b", config=None, **extra):
    rec = {"dataset": "tiny", "pair": pair, "method": "dipy",
           "config": config or {"metric": "cc", "levels": [2, 2]}, "status": status}
    rec.update(extra)
    return rec


def test_put_get_has_records(tmp_path):
    store = ResultStore(tmp_path / "res")
    key = store.put(_record(metrics={"ncc": np.float32(0.5), "tre_mean": float("nan")}))
    assert key == make_key("tiny", "a__b", "dipy", {"metric": "cc", "levels": [2, 2]})
    assert store.has(key)
    rec = store.get(key)
    assert rec["metrics"] == {"ncc": 0.5, "tre_mean": None}  # NaN stored as null
    assert rec["config_hash"] == config_hash(rec["config"])
    assert store.path(key).is_file()
    assert [r["key"] for r in store.records()] == [key]
    assert store.records(dataset="other") == []


def test_config_hash_is_stable_and_distinguishes_configs():
    a = {"metric": "cc", "levels": (2, 2), "threads": 1}
    b = {"threads": 1, "levels": [2, 2], "metric": "cc"}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "threads": 2})
    assert make_key("d", "p", "m", a) != make_key("d", "p", "m", {**a, "metric": "mi"})


def test_error_records_are_not_finished(tmp_path):
    store = ResultStore(tmp_path)
    key = store.put(_record(status="error", error="boom"))
    assert not store.has(key)
    assert store.get(key)["error"] == "boom"
    assert len(store.records(status="error")) == 1
    store.put(_record(status="ok"))  # the retry replaces it
    assert store.has(key) and store.records(status="error") == []


def test_write_is_atomic(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    key = store.put(_record(metrics={"ncc": 0.1}))
    before = store.path(key).read_text()

    def fail(src, dst):
        raise KeyboardInterrupt  # interrupted between write and rename

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        store.put(_record(metrics={"ncc": 0.9}))
    monkeypatch.undo()
    assert store.path(key).read_text() == before
    assert [p.name for p in store.path(key).parent.iterdir()] == [store.path(key).name]


def test_partial_or_foreign_files_are_ignored(tmp_path):
    store = ResultStore(tmp_path)
    key = store.put(_record())
    folder = store.path(key).parent
    (folder / ".tmp-123.json").write_text("{")
    (folder / "junk.json").write_text("not json")
    (folder / "other.json").write_text(json.dumps({"no": "key"}))
    assert [r["key"] for r in store.records()] == [key]


@pytest.mark.parametrize("record, match", [
    ({"dataset": "d", "pair": "p", "method": "m", "config": {}}, "status"),
    (_record(status="done"), "status"),
    ({**_record(), "dataset": ""}, "dataset"),
    ({**_record(), "pair": "///"}, "pair"),
])
def test_bad_records_are_rejected(tmp_path, record, match):
    with pytest.raises(ValueError, match=match):
        ResultStore(tmp_path).put(record)


def test_results_dir_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="results_dir"):
        ResultStore(f)
