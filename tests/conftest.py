"""Shared test helpers: the fixture pairs, random smooth fields and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastsyn._threads import parallel_grain


@pytest.fixture(autouse=True)
def _real_threads():
    """Split even tiny inputs across threads, so that every 1-vs-N-threads
    equality test really compares serial and threaded runs (the default grain
    would run the small test inputs on one thread). Set here, never from the
    caller's environment."""
    with parallel_grain(1):
        yield

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load_pair(name):
    """Load fixture pair ``fixtures/<name>.npz`` as a dict.

    Keys: ``static``, ``moving`` (float32 images), ``static_labels``,
    ``moving_labels`` (int32), ``static_affine``, ``moving_affine``
    (grid-to-world), ``static_mask`` (bool), and where known ``true_disp``
    (the displacement, in world mm on the static grid, that maps static points
    to their moving counterparts).
    """
    path = FIXTURES / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"fixture {path.name} not generated (run fixtures/make_fixtures.py)")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def fixture_manifest():
    path = FIXTURES / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def smooth_field(shape, dtype, *, amplitude=2.0, seed=0, sigma=None):
    """A random smooth displacement field of the given spatial shape."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    dim = len(shape)
    sigma = sigma if sigma is not None else max(1.0, min(shape) / 8)
    field = np.empty(tuple(shape) + (dim,), dtype=np.float64)
    for c in range(dim):
        noise = rng.standard_normal(shape)
        comp = ndimage.gaussian_filter(noise, sigma)
        comp *= amplitude / (np.abs(comp).max() + 1e-12)
        field[..., c] = comp
    return np.ascontiguousarray(field.astype(dtype))


def smooth_image(shape, dtype, *, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0) * 100.0
    return np.ascontiguousarray(img.astype(dtype))


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-examples", type=int, default=15,
        help="hypothesis examples per target in tests/test_fuzz.py (default 15; "
             "`tox -e fuzz` runs many more)")


def cli_env(**extra):
    """The environment of a ``fastsyn`` subprocess: the caller's minus
    fastsyn's and OpenMP's variables, one OpenMP thread, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSYN_", "OMP_"))}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_cli(args, cwd, env=None, timeout=600):
    """Run ``python -m fastsyn.cli ARGS`` in ``cwd``; the completed process."""
    return subprocess.run([sys.executable, "-m", "fastsyn.cli", *map(str, args)], cwd=cwd,
                          env=cli_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout, check=False)
