"""The harness's choice of prealigner (``--prealign fastsyn|dipy|ants|greedy``).

Each prealigner must recover a known rigid motion of the 3D fixture in the
harness's convention (a 4x4 RAS matrix, fixed world point -> moving world
point): on the brain voxels the recovered and the true matrices move points
less than 2 mm apart (RMS; the voxels are 4 mm).  The prealigner is part of
the cache key and of every record's configuration.
"""

import importlib.util

import nibabel as nib
import numpy as np
import pytest
from conftest import load_pair
from scipy import ndimage

from fastsyn.bench.prealign import PREALIGNERS, _rigid_params, cache_folder, prealign_pair

FAST = {"level_iters": (30, 15), "sigmas": (1.0, 0.0), "factors": (2, 1)}
NEEDS = {"ants": "ants", "greedy": "picsl_greedy"}


def _true_motion():
    """6 degrees about z, 3 degrees about x, a (3, -2, 4) mm shift, about the centre."""
    def rot(axis, deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    return rot(2, 6.0) @ rot(0, 3.0), np.array([3.0, -2.0, 4.0])


@pytest.fixture(scope="module")
def moved_pair(tmp_path_factory):
    """The fixture's static image and a copy moved by a known rigid matrix."""
    pair = load_pair("pair3d")
    fixed, aff = pair["static"].astype(np.float32), pair["static_affine"]
    lin, shift = _true_motion()
    centre = aff[:3, :3] @ (np.array(fixed.shape) - 1) / 2 + aff[:3, 3]
    truth = np.eye(4)
    truth[:3, :3] = lin
    truth[:3, 3] = centre + shift - lin @ centre
    # moving(y) = fixed(truth^-1 y): sample the fixed image there
    to_fixed = np.linalg.inv(aff) @ np.linalg.inv(truth) @ aff
    moving = ndimage.affine_transform(fixed, to_fixed[:3, :3], to_fixed[:3, 3], order=1)
    root = tmp_path_factory.mktemp("prealign-pair")
    files = {}
    for name, data in (("fixed", fixed), ("moving", moving.astype(np.float32)),
                       ("fixed_labels", pair["static_labels"]),
                       ("moving_labels", pair["static_labels"])):
        files[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), str(files[name]))
    return files, truth, pair["static_mask"], aff


@pytest.mark.parametrize("prealigner", PREALIGNERS)
def test_prealigner_recovers_a_known_motion(moved_pair, tmp_path, prealigner):
    if prealigner in NEEDS and importlib.util.find_spec(NEEDS[prealigner]) is None:
        pytest.skip(f"{NEEDS[prealigner]} is not installed")
    files, truth, mask, aff = moved_pair
    pre = prealign_pair(files["fixed"], files["moving"], files["moving_labels"], tmp_path,
                        fixed_labels=files["fixed_labels"], pair_id="p", threads=2,
                        prealigner=prealigner, **FAST)
    pts = np.argwhere(mask).astype(float) @ aff[:3, :3].T + aff[:3, 3]
    diff = (pts @ pre.rigid[:3, :3].T + pre.rigid[:3, 3]) - (pts @ truth[:3, :3].T
                                                             + truth[:3, 3])
    rms = float(np.sqrt((diff ** 2).sum(1).mean()))
    assert rms < 2.0, (prealigner, rms)
    assert pre.seconds is not None and pre.seconds > 0
    # labels stay labels: nearest neighbour, no new values
    labels = pre.load()["moving_labels"]
    assert set(np.unique(labels)) <= set(np.unique(load_pair("pair3d")["static_labels"]))


def test_prealigners_never_share_a_cache(tmp_path):
    inputs = {"fixed_image": "/a", "moving_image": "/b"}
    keys = {p: _rigid_params((10,), (0.0,), (1,), 32, p) for p in PREALIGNERS}
    folders = {cache_folder(tmp_path, "pair", inputs, k) for k in keys.values()
               if k["method"] != keys["dipy"]["method"]}
    assert len({k["method"] for k in keys.values()}) >= len(PREALIGNERS) - 1
    assert len(folders) == len({k["method"] for k in keys.values()}) - 1
    with pytest.raises(ValueError, match="prealigner must be one of"):
        _rigid_params((10,), (0.0,), (1,), 32, "elastix")


def test_each_prealigner_has_its_own_cache_key():
    keys = {p: _rigid_params((10,), (0.0,), (1,), 32, p)["method"]
            for p in ("fastsyn", "dipy", "ants", "greedy")}
    assert len(set(keys.values())) == 4
    assert keys["fastsyn"] == "fastsyn-rigid-mi"


def test_run_records_the_prealigner(tmp_path):
    from test_harness import _write_tiny_dataset

    from fastsyn.bench.run import BASELINE, run_benchmark
    from fastsyn.bench.store import ResultStore
    from fastsyn.bench.tables import summary_table

    data = _write_tiny_dataset(tmp_path / "tiny", n=2)
    res = tmp_path / "res"
    for prealign in ("dipy", "fastsyn"):
        run_benchmark(data, "fastsyn", "cc", levels=(2, 2), results_dir=res, workers=1,
                      progress=False, prealign=prealign, prealign_options=dict(FAST))
    recs = ResultStore(res).records(status="ok")
    base = [r for r in recs if r["method"] == BASELINE]
    assert sorted(r["config"]["prealign"]["prealigner"] for r in base) == ["dipy", "fastsyn"]
    for r in recs:
        assert r["prealign_seconds"] > 0 and r["eval_seconds"] >= 0
    labels = {row["Method"] for row in summary_table(recs)}
    assert {"Baseline (prealign dipy)", "Baseline (prealign fastsyn)"} <= labels
    with pytest.raises(ValueError, match="prealign must be one of"):
        run_benchmark(data, "fastsyn", "cc", results_dir=res, prealign="elastix",
                      progress=False)
