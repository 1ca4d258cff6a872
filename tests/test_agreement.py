"""Agreement with ANTs (``fastsyn.bench.agreement``, ``fastsyn bench agreement``).

The displacement conventions are checked first: a field read from an ANTs
(ITK) file and a field of a fastsyn map must warp an image the same way
through ANTs and through DIPY's map, or the distances measured between them
would mean nothing.  The ANTs parts are skipped without antspyx.
"""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fastsyn.bench import agreement
from fastsyn.bench.methods import _itk_displacement_to_ras


def _ants():
    return pytest.importorskip("ants", reason="antspyx is not installed")


# ------------------------------------------------------------------ helpers
def _smooth_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), 2.0) * 100).astype(np.float32)


def _smooth_field(shape, seed=1):
    """A translation (2, -1.5, 1) mm plus a smooth random field (a few mm)."""
    rng = np.random.default_rng(seed)
    u = np.empty(shape + (3,))
    for c, shift in enumerate((2.0, -1.5, 1.0)):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 5.0)
        u[..., c] = shift + 2.5 * noise / np.abs(noise).max()
    return u


def _write_itk_displacement(ants, field_ras, reference_path, path):
    """Write a RAS field as ITK does (LPS components, the reference's grid)."""
    ref = ants.image_read(str(reference_path))
    lps = np.array(field_ras, dtype=np.float32)
    lps[..., :2] *= -1.0
    img = ants.from_numpy(lps, origin=ref.origin, spacing=ref.spacing,
                          direction=ref.direction, has_components=True)
    ants.image_write(img, str(path))


def _dipy_pull(image, field, affine):
    """``image`` warped through ``field`` as fastsyn's maps do (x -> x + u(x))."""
    from dipy.align.imwarp import DiffeomorphicMap

    shape = image.shape
    m = DiffeomorphicMap(3, shape, disp_grid2world=affine, domain_shape=shape,
                         domain_grid2world=affine, codomain_shape=shape,
                         codomain_grid2world=affine)
    m.allocate()
    m.forward = np.ascontiguousarray(field, dtype=np.float32)
    return np.asarray(m.transform(image, interpolation="linear"))


# An anisotropic grid with an origin, so that a swapped axis, a missed LPS
# sign or a spacing error shows.
AFFINE = np.array([[2.0, 0, 0, -30], [0, 2.5, 0, -40], [0, 0, 3.0, -20], [0, 0, 0, 1]])
SHAPE = (26, 30, 24)
INNER = (slice(4, -4),) * 3  # away from the border, where the two pad differently


# -------------------------------------------------------------- conventions
def test_ants_field_reads_as_fastsyn_convention(tmp_path):
    """A field written in ANTs' format, applied by ANTs, warps an image as
    DIPY/fastsyn's map does with the field read by ``_itk_displacement_to_ras``."""
    ants = _ants()
    image = _smooth_image(SHAPE)
    u = _smooth_field(SHAPE)
    nib.save(nib.Nifti1Image(image, AFFINE), str(tmp_path / "img.nii.gz"))
    _write_itk_displacement(ants, u, tmp_path / "img.nii.gz", tmp_path / "warp.nii.gz")
    read = _itk_displacement_to_ras(tmp_path / "warp.nii.gz", SHAPE)
    np.testing.assert_allclose(read, u, atol=1e-5)

    img = ants.image_read(str(tmp_path / "img.nii.gz"))
    by_ants = ants.apply_transforms(img, img, [str(tmp_path / "warp.nii.gz")],
                                    interpolator="linear").numpy()
    by_fastsyn = _dipy_pull(image, read, AFFINE)
    scale = np.abs(image).max()
    assert np.abs(by_ants - by_fastsyn)[INNER].max() < 1e-4 * scale
    # the check can fail: the opposite sign warps the other way
    assert np.abs(by_ants - _dipy_pull(image, -read, AFFINE))[INNER].max() > 0.01 * scale


def test_fastsyn_forward_field_is_what_ants_applies(tmp_path):
    """A fastsyn registration's ``get_forward_field()``, handed to ANTs, warps
    the moving image onto ``mapping.transform(moving)``."""
    ants = _ants()
    import fastsyn

    static = _smooth_image(SHAPE, seed=2)
    moving = _dipy_pull(static, _smooth_field(SHAPE, seed=3), AFFINE).astype(np.float32)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.CCMetric(3, radius=2),
                                                     level_iters=[5, 5], num_threads=1)
    mapping = sdr.optimize(static, moving, static_grid2world=AFFINE, moving_grid2world=AFFINE)
    field = np.asarray(mapping.get_forward_field(), dtype=np.float64)
    assert field.shape == SHAPE + (3,) and np.abs(field).max() > 0.5
    nib.save(nib.Nifti1Image(moving, AFFINE), str(tmp_path / "moving.nii.gz"))
    _write_itk_displacement(ants, field, tmp_path / "moving.nii.gz", tmp_path / "fw.nii.gz")
    img = ants.image_read(str(tmp_path / "moving.nii.gz"))
    by_ants = ants.apply_transforms(img, img, [str(tmp_path / "fw.nii.gz")],
                                    interpolator="linear").numpy()
    ours = np.asarray(mapping.transform(moving, interpolation="linear"))
    assert np.abs(by_ants - ours)[INNER].max() < 1e-3 * np.abs(static).max()


# ------------------------------------------------------------------ measures
def test_field_distance_values():
    a = np.zeros((4, 5, 6, 3))
    b = np.zeros_like(a)
    b[..., 0] = 3.0
    b[..., 1] = 4.0  # distance 5 everywhere
    b[0] = 0.0  # distance 0 on the first slab
    mask = np.ones(a.shape[:3], dtype=bool)
    d = agreement.field_distance(a, b, mask)
    n0, n = 5 * 6, 4 * 5 * 6
    assert d["n_voxels"] == n
    assert d["rms_mm"] == pytest.approx(np.sqrt(25.0 * (n - n0) / n))
    assert d["max_mm"] == pytest.approx(5.0)
    mask[1:] = False
    assert agreement.field_distance(a, b, mask)["rms_mm"] == 0.0
    with pytest.raises(ValueError, match="mask selects no voxel"):
        agreement.field_distance(a, b, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        agreement.field_distance(a, b[..., :2], None)


def _tiny_pair():
    """The shipped pair3d cut to a block around the brain (fast to register)."""
    pair = agreement.package_pair("pair3d")
    box = (slice(6, 34), slice(8, 42), slice(6, 36))
    out = {k: (v[box] if isinstance(v, np.ndarray) and v.ndim >= 3 else v)
           for k, v in pair.items()}
    return out


def test_agreement_pair_without_ants_against_fastsyn():
    """The measuring code runs with any reference: ANTs mode against DIPY mode."""
    pair = _tiny_pair()
    rec = agreement.agreement_pair(pair, metric="mi", levels=(3, 2), threads=1,
                                   configs=("fastsyn-ants",), reference="fastsyn")
    d = rec["configs"]["fastsyn-ants"]["distance"]
    assert np.isfinite(d["rms_mm"]) and d["rms_mm"] > 0
    assert rec["reference"]["method"] == "fastsyn" and rec["between_configs"] is None
    rows = agreement.summarize([rec], ("fastsyn-ants",))
    assert [r["method"] for r in rows] == ["fastsyn", "fastsyn-ants"] * 2


def test_agreement_pair_with_ants_both_modes_finite():
    _ants()
    pair = _tiny_pair()
    rec = agreement.agreement_pair(pair, metric="mi", levels=(3, 2), threads=1)
    assert set(rec["configs"]) == {"fastsyn", "fastsyn-ants"}
    for name, entry in rec["configs"].items():
        rms = entry["distance"]["rms_mm"]
        assert np.isfinite(rms) and 0 < rms < 20, (name, rms)
        assert 0 < entry["dice"] <= 1 and entry["seconds"] > 0
    assert 0 < rec["reference"]["dice"] <= 1
    assert rec["reference"]["rms_displacement_mm"] > 0
    text = agreement.format_agreement({"records": [rec],
                                       "summary": agreement.summarize([rec])})
    assert "fastsyn-ants" in text and "ants" in text


# ----------------------------------------------------------------- command
def test_cli_bench_agreement_writes_json(tmp_path):
    _ants()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FASTSYN_", "OMP_", "MPLBACKEND"))}
    env.update(OMP_NUM_THREADS="1", FASTSYN_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "agreement.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastsyn.cli", "bench", "agreement", "--pairs", "pair3d",
         "--metric", "mi", "--levels", "2,1", "--threads", "1", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMS to ANTs" in proc.stdout
    data = json.loads(out.read_text())
    (rec,) = data["records"]
    assert rec["pair"] == "pair3d" and rec["metric"] == "mi" and rec["levels"] == [2, 1]
    assert all(np.isfinite(c["distance"]["rms_mm"]) for c in rec["configs"].values())


@pytest.mark.parametrize("args, problem", [
    (["--pairs", "nope"], "unknown pair"),
    (["--metric", "ssd"], "--metric must list cc and/or mi"),
    (["--pairs", ""], "nothing to register"),
    (["--pairs", "pair3d", "--dataset", "no-such-cohort"], "unknown dataset"),
])
def test_cli_bench_agreement_bad_arguments(args, problem, capsys):
    from fastsyn.cli import main

    assert main(["bench", "agreement", *args]) == 2
    assert problem in capsys.readouterr().err


# ------------------------------------------------------------------ report
def _record(pair, metric, rms_dipy, rms_ants):
    def entry(dice, seconds, rms=None):
        e = {"dice": dice, "seconds": seconds, "tre_mean": 1.0}
        if rms is not None:
            e["distance"] = {"rms_mm": rms, "p95_mm": 2 * rms}
        return e
    return {"pair": pair, "direction": "t1<-t2", "metric": metric,
            "reference": {"method": "ants", **entry(0.8, 9.0)},
            "configs": {"fastsyn": entry(0.7, 1.0, rms_dipy),
                        "fastsyn-ants": entry(0.75, 1.1, rms_ants)}}


def test_report_renders_agreement_section(tmp_path):
    from fastsyn.bench.report import write_report

    records = [_record("S01_t1__S02_t2", "cc", 1.5, 0.75),
               _record("<b>odd</b>", "mi", 1.25, 1.0),
               {"pair": "S03", "direction": "t1<-t1", "metric": "mi", "error": "boom"}]
    data = {"records": records, "summary": agreement.summarize(records), "levels": [20, 10],
            "threads": 1, "reference": "ants"}
    path = tmp_path / "agreement.json"
    path.write_text(json.dumps(data))
    page = write_report(None, tmp_path / "out", agreement_json=path,
                        benchmark_json_dir=tmp_path / "nobench",
                        check_equivalence=False).read_text()
    section = page[page.index("id='agreement'"):page.index("id='profile'")]
    assert "20/10 per level" in section
    assert "fastsyn (ANTs mode)" in section and "RMS to ANTs (mm)" in section
    # the means over both records: (1.5 + 1.25) / 2 and (0.75 + 1.0) / 2
    assert ">1.375<" in section and ">0.875<" in section
    assert "failed: boom" in section
    assert "&lt;b&gt;odd&lt;/b&gt;" in section and "<b>odd" not in section
    empty = write_report(None, tmp_path / "out2", benchmark_json_dir=tmp_path / "nobench",
                         check_equivalence=False).read_text()
    assert "No agreement results" in empty
