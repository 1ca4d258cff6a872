"""Images that cannot be registered are refused with a clear error at every
registration entry point: ``fastsyn register``, ``affine_registration``, SyN
with either metric and the benchmark harness.  A blank or constant volume has
no contrast (DIPY's affine stage stops with ``AffineInvalidValuesError``), a
3x3x3 volume is too small for the pyramid, and a moving image that covers
almost none of the fixed one after prealignment gives a meaningless metric.
"""


import nibabel as nib
import numpy as np
import pytest
from conftest import load_pair, run_cli

import fastsyn
from fastsyn.register import MIN_OVERLAP, check_overlap


@pytest.fixture(scope="module")
def pair():
    return load_pair("pair3d")


@pytest.fixture(scope="module")
def files(pair, tmp_path_factory):
    """The fixture pair as NIfTI files, plus images that cannot be registered."""
    root = tmp_path_factory.mktemp("registrability")
    shape, aff = pair["moving"].shape, pair["moving_affine"]
    dot = np.zeros(shape, np.float32)  # contrast, but a 2x2x2 object
    dot[20:22, 25:27, 20:22] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    volumes = {"fixed": (pair["static"], pair["static_affine"]),
               "moving": (pair["moving"], aff),
               "blank": (np.zeros(shape, np.float32), aff),
               "constant": (np.full(shape, 7, np.int16), aff),
               "tiny": (np.random.default_rng(0).random((3, 3, 3)), np.eye(4)),
               "dot": (dot, aff)}
    out = {}
    for name, (data, affine) in volumes.items():
        out[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(out[name]))
    return out


def _cli(args, cwd):
    return run_cli(["register", *args], cwd)


@pytest.mark.parametrize("fixed, moving, expect", [
    ("fixed", "blank", "moving ({moving}) has no contrast: every voxel is 0"),
    ("constant", "moving", "fixed ({fixed}) has no contrast: every voxel is 7"),
    ("fixed", "tiny", "moving ({moving}) is too small to register: shape (3, 3, 3)"),
    # rigid: an affine stage could stretch the dot over the brain
    ("fixed", "dot", "moving ({moving}) does not overlap fixed ({fixed}) after prealignment"),
])
def test_register_refuses(files, tmp_path, fixed, moving, expect):
    proc = _cli([files[fixed], files[moving], "--out", "o_", "--levels", "2,2",
                 "--transform", "rigid", "--quiet"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("fastsyn: error: "), proc.stderr
    assert expect.format(fixed=files[fixed], moving=files[moving]) in proc.stderr
    assert "Traceback" not in proc.stderr and "AffineInvalidValuesError" not in proc.stderr
    assert not list(tmp_path.glob("o_*"))


def test_check_overlap_fraction():
    fixed = np.zeros((10, 10, 10), bool)
    fixed[:, :, :5] = True
    moving = np.zeros_like(fixed)
    moving[:, :, 4:] = True  # one plane of five in common
    assert check_overlap(fixed, moving) == pytest.approx(0.2)
    moving[:] = False
    moving[0, 0, 0] = True
    assert 1 / 500 < MIN_OVERLAP
    with pytest.raises(ValueError, match=r"B does not overlap A after prealignment: it "
                                         r"covers 0\.2% of the fixed foreground"):
        check_overlap(fixed, moving, "A", "B")


def test_affine_registration_refuses_constant(pair):
    static, moving = pair["static"], pair["moving"]
    kwargs = dict(static_affine=pair["static_affine"], moving_affine=pair["moving_affine"],
                  pipeline=["center_of_mass", "translation"], level_iters=[2],
                  sigmas=[0.0], factors=[1])
    with pytest.raises(ValueError, match="static has no contrast: every voxel is 0"):
        fastsyn.affine_registration(moving, np.zeros_like(static), **kwargs)
    with pytest.raises(ValueError, match="moving has no contrast: every voxel is 3"):
        fastsyn.affine_registration(np.full_like(moving, 3.0), static, **kwargs)
    # constant where the mask says to look: refused too, and said so
    flat = static.copy()
    flat[pair["static_mask"]] = 5.0
    with pytest.raises(ValueError, match="static has no contrast: every voxel inside "
                                         "its mask is 5"):
        fastsyn.affine_registration(moving, flat, static_mask=pair["static_mask"], **kwargs)


@pytest.mark.parametrize("metric", ["cc", "mi"])
def test_syn_refuses_constant(pair, metric):
    sim = fastsyn.CCMetric(3, radius=2) if metric == "cc" else fastsyn.MIMetric(3)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(sim, level_iters=[1])
    static = pair["static"]
    with pytest.raises(ValueError, match="moving has no contrast"):
        sdr.optimize(static, np.zeros_like(static))
    with pytest.raises(ValueError, match="static has no contrast"):
        sdr.optimize(np.ones_like(static), static)


def test_harness_records_no_contrast_naming_the_file(pair, tmp_path):
    from fastsyn.bench.run import run_benchmark

    root = tmp_path / "data"
    for subject, image in (("s1", pair["static"]), ("s2", np.zeros_like(pair["static"]))):
        (root / subject).mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, pair["static_affine"]),
                 str(root / subject / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(pair["static_labels"].astype(np.int16),
                                 pair["static_affine"]), str(root / subject / "labels.nii.gz"))
    summary = run_benchmark(str(root), "fastsyn", "cc", results_dir=tmp_path / "res",
                            levels=[1], progress=False, workers=1)
    assert summary["ok"] == 0 and summary["errors"] == summary["ran"] > 0
    from fastsyn.bench.store import ResultStore

    for rec in ResultStore(tmp_path / "res").records():
        assert "has no contrast: every voxel is 0" in rec["error"]
        assert str(root / "s2" / "t1.nii.gz") in rec["error"]
