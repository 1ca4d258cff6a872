"""Results store: one JSON record per (dataset, pair, method, configuration).

Layout under the results directory::

    RESULTS_DIR/<dataset>/<method>/<pair>__<config hash>.json
    RESULTS_DIR/<dataset>/<method>/<pair>__<config hash>.qc.npz   (QC tiles)

Each record is written to a temporary file in the same folder and moved into
place with :func:`os.replace`, so a record either exists complete or not at
all: an interrupted run (Ctrl-C, a killed worker) never leaves a half-written
record, and a rerun skips every record whose ``status`` is ``"ok"``. A pair
that failed is stored with ``status="error"`` and its error text; it is retried
on the next run.
"""

import hashlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["config_hash", "make_key", "ResultStore"]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def write_json(path, data, *, default=str):
    """Write ``data`` as JSON to ``path`` atomically (parents created): a
    reader sees the old file or the complete new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=default))
    os.replace(tmp, path)
    return path


def _safe(name, what):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    out = _SAFE.sub("_", name).strip("._")
    if not out:
        raise ValueError(f"{what} {name!r} has no usable characters")
    return out


def _plain(value):
    """Turn NumPy scalars/arrays, paths and non-finite floats into JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def config_hash(config):
    """Short stable hash of a configuration dictionary.

    Parameters
    ----------
    config : dict
        JSON-serialisable configuration (tuples are treated as lists).

    Returns
    -------
    str
        The first 12 hex digits of the SHA-1 of the canonical JSON form.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    text = json.dumps(_plain(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def make_key(dataset, pair, method, config):
    """Record key ``<dataset>/<method>/<pair>__<config hash>``.

    Parameters
    ----------
    dataset, pair, method : str
        Dataset name, pair id and method name.
    config : dict
        The method configuration; its hash is part of the key.

    Returns
    -------
    str
        The key, which is also the record's path relative to the results
        directory, without the ``.json`` suffix.
    """
    return "/".join([
        _safe(dataset, "dataset"),
        _safe(method, "method"),
        f"{_safe(pair, 'pair')}__{config_hash(config)}",
    ])


class ResultStore:
    """Records of a benchmark, kept as JSON files under one directory.

    Parameters
    ----------
    results_dir : str or Path
        Directory that holds the records; created when missing.
    """

    def __init__(self, results_dir):
        if results_dir is None or str(results_dir) == "":
            raise ValueError("results_dir must be a directory path")
        self.root = Path(results_dir)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"results_dir {self.root} exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key):
        """Path of the record file for ``key``."""
        parts = key.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"malformed record key {key!r}")
        return self.root.joinpath(*parts[:-1], parts[-1] + ".json")

    def qc_path(self, key):
        """Path of the QC tiles kept beside the record ``key`` (``.qc.npz``,
        see :mod:`fastsyn.bench.qc`)."""
        return self.path(key).with_suffix(".qc.npz")

    def get(self, key):
        """The record stored under ``key``, or ``None``.

        A file that is not a JSON object (half-written by a foreign tool,
        truncated, or any other JSON) counts as no record: the pair is run
        again and the file replaced.
        """
        p = self.path(key)
        try:
            rec = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
            return None
        return rec if isinstance(rec, dict) else None

    def has(self, key):
        """Whether a finished (``status == "ok"``) record exists for ``key``."""
        rec = self.get(key)
        return rec is not None and rec.get("status") == "ok"

    def put(self, record):
        """Write a record atomically.

        Parameters
        ----------
        record : dict
            Must hold ``dataset``, ``pair``, ``method``, ``config`` (dict) and
            ``status`` (``"ok"`` or ``"error"``). ``key``, ``config_hash`` and
            ``timestamp`` are filled in.

        Returns
        -------
        str
            The record key.
        """
        if not isinstance(record, dict):
            raise TypeError(f"record must be a dict, got {type(record).__name__}")
        for field in ("dataset", "pair", "method", "config", "status"):
            if field not in record:
                raise ValueError(f"record is missing the field {field!r}")
        if record["status"] not in ("ok", "error"):
            raise ValueError(
                f"record status must be 'ok' or 'error', got {record['status']!r}"
            )
        key = make_key(record["dataset"], record["pair"], record["method"],
                       record["config"])
        rec = dict(record)
        rec["key"] = key
        rec["config_hash"] = config_hash(record["config"])
        rec.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S"))
        text = json.dumps(_plain(rec), indent=1, sort_keys=True)
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=dest.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return key

    def records(self, dataset=None, status=None):
        """All stored records, sorted by key.

        Parameters
        ----------
        dataset : str, optional
            Keep only records of this dataset.
        status : str, optional
            Keep only records with this status (``"ok"`` or ``"error"``).

        Returns
        -------
        list of dict
        """
        if status not in (None, "ok", "error"):
            raise ValueError(f"status must be None, 'ok' or 'error', got {status!r}")
        out = []
        for p in sorted(self.root.glob("*/*/*.json")):
            if p.name.startswith(".tmp-"):
                continue
            try:
                rec = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue
            if not isinstance(rec, dict) or "key" not in rec:
                continue
            if dataset is not None and rec.get("dataset") != dataset:
                continue
            if status is not None and rec.get("status") != status:
                continue
            out.append(rec)
        return out
