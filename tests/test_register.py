"""``fastsyn register`` and DIPY's registration workflows under ``patch_dipy``.

The pair is the 3D fixture (40 x 50 x 42 voxels of 4 mm) written to NIfTI in
a temporary folder.  The ANTs checks read fastsyn's written transforms with
antspyx (ITK) and compare its resampling with fastsyn's own: the forward
warp must reproduce ``warped.nii.gz`` (correlation > 0.999 and mean absolute
difference below 0.1 % of the mean intensity inside the fixed mask; measured:
equal to float32 rounding), and the inverse warp must reproduce DIPY's
``transform_inverse`` of the fixed image on the moving grid within the same
tolerances.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import load_pair, run_cli

LEVELS = "4,4,2"


def _close(a, b, mask):
    """Correlation > 0.999 and mean |a - b| < 0.1 % of mean |b| in ``mask``."""
    corr = np.corrcoef(a[mask], b[mask])[0, 1]
    mad = np.abs(a - b)[mask].mean()
    assert corr > 0.999, corr
    assert mad < 1e-3 * np.abs(b[mask]).mean(), mad


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The fixture pair as NIfTI files: fixed, moving, labels, fixed mask."""
    pair = load_pair("pair3d")
    root = tmp_path_factory.mktemp("register-inputs")
    out = {}
    for name, key, aff in (("fixed", "static", "static_affine"),
                           ("moving", "moving", "moving_affine"),
                           ("labels", "moving_labels", "moving_affine"),
                           ("fixed_mask", "static_mask", "static_affine")):
        data = pair[key].astype(np.uint8) if pair[key].dtype == bool else pair[key]
        out[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, pair[aff]), str(out[name]))
    return out


@pytest.fixture(scope="module")
def registered(files, tmp_path_factory):
    """One SyN registration in process: the result of ``register_files``."""
    from fastsyn.register import register_files

    prefix = tmp_path_factory.mktemp("register-lib") / "sub_"
    messages = []
    res = register_files(files["fixed"], files["moving"], str(prefix), metric="cc",
                         levels=(4, 4, 2), threads=2, labels=files["labels"],
                         fixed_mask=files["fixed_mask"], log=messages.append)
    res["messages"] = messages
    return res


def _cli(args, cwd):
    return run_cli(["register", *args], cwd)


# ---------------------------------------------------------------- the command
def test_cli_writes_every_output(files, tmp_path):
    proc = _cli([files["fixed"], files["moving"], "--out", "out/s1_", "--levels", LEVELS,
                 "--labels", files["labels"], "--threads", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsyn register: syn CC in ")
    assert "final NCC" in lines[0]
    for level in ("1/3", "2/3", "3/3"):
        assert f"SyN level {level}" in proc.stderr
    out = tmp_path / "out"
    fixed = nib.load(str(files["fixed"]))
    warped = nib.load(str(out / "s1_warped.nii.gz"))
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine)
    labels = np.asarray(nib.load(str(out / "s1_warped_labels.nii.gz")).dataobj)
    assert labels.dtype.kind in "iu"
    source = np.unique(np.asarray(nib.load(str(files["labels"])).dataobj))
    assert set(np.unique(labels)) <= set(source)  # nearest neighbour: no new values
    assert np.loadtxt(out / "s1_affine_ras.tsv").shape == (4, 4)
    # ANTs and ITK read any .txt as their own transform format: none is written
    assert not list(out.glob("*.txt"))
    for name in ("Warp", "InverseWarp"):
        img = nib.load(str(out / f"s1_{name}.nii.gz"))
        assert img.shape == fixed.shape + (1, 3)
        assert img.header.get_intent()[0] == "vector"
        assert np.allclose(img.affine, fixed.affine)


@pytest.mark.parametrize("case", ["missing", "labels-shape"])
def test_cli_errors(files, tmp_path, case):
    args = [files["fixed"], files["moving"], "--out", "o_"]
    if case == "missing":
        args[1] = tmp_path / "nope.nii.gz"
        expect = "moving not found"
    else:
        bad = tmp_path / "bad_labels.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), str(bad))
        args += ["--labels", bad]
        expect = "labels has shape (5, 5, 5)"
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("fastsyn: error: ") and expect in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("o_*"))


def test_cli_partial_volume_reaches_mi_syn(files, tmp_path):
    # --partial-volume takes MIMetric's partial_volume: MI's default
    # ("coarse"), the flag alone (every level) and "none" give three different,
    # still sound results; with CC it is a one-line error.
    runs = {}
    for name, extra in (("coarse", []), ("pv", ["--partial-volume"]),
                        ("parzen", ["--partial-volume", "none"])):
        proc = _cli([files["fixed"], files["moving"], "--out", f"{name}_", "--metric", "mi",
                     "--levels", LEVELS, "--threads", "1", *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr
        runs[name] = np.asarray(nib.load(str(tmp_path / f"{name}_Warp.nii.gz")).dataobj)
        assert np.isfinite(runs[name]).all() and np.abs(runs[name]).max() > 0
    assert not np.array_equal(runs["parzen"], runs["pv"])
    assert not np.array_equal(runs["coarse"], runs["pv"])
    assert not np.array_equal(runs["coarse"], runs["parzen"])
    proc = _cli([files["fixed"], files["moving"], "--out", "cc_", "--partial-volume"],
                tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fastsyn: error: --partial-volume is an option of --metric mi")
    proc = _cli([files["fixed"], files["moving"], "--out", "x_", "--metric", "mi",
                 "--partial-volume", "fine"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid choice: 'fine'" in proc.stderr
    # the library: None is MI's default; any other value is MI's alone
    from fastsyn.register import register_files

    with pytest.raises(ValueError, match="option of the MI metric"):
        register_files(files["fixed"], files["moving"], str(tmp_path / "y_"),
                       partial_volume=False, log=print)
    with pytest.raises(TypeError, match="'coarse'"):
        register_files(files["fixed"], files["moving"], str(tmp_path / "y_"), metric="mi",
                       partial_volume="fine", log=print)
    assert not list(tmp_path.glob("y_*"))


# ----------------------------------------------------------- the library side
def test_progress_and_summary(registered):
    msgs = registered["messages"]
    assert msgs[0].startswith("affine (center_of_mass -> translation -> rigid -> affine)")
    assert [m.split(" (")[0] for m in msgs if m.startswith("SyN level")] == \
        ["SyN level 1/3", "SyN level 2/3", "SyN level 3/3"]
    # the registration improves on the affine alignment of this pair
    assert registered["ncc"] > 0.9


def test_written_affine_is_dipy_prealign(registered):
    text = np.loadtxt(registered["files"]["affine"])
    np.testing.assert_allclose(text, registered["matrix"], rtol=0, atol=1e-12)
    assert np.allclose(text[3], [0, 0, 0, 1])


def test_itk_affine_file_layout(registered):
    """The .mat is ITK's MATLAB v4 transform file, written without ITK: the
    LPS matrix row by row and the translation, then a zero centre (read
    back by ITK in the next test where antspyx is installed)."""
    from scipy.io import loadmat

    data = loadmat(str(registered["files"]["affine_itk"]))
    assert [k for k in data if not k.startswith("__")] == ["AffineTransform_double_3_3",
                                                          "fixed"]
    params = data["AffineTransform_double_3_3"]
    assert params.shape == (12, 1) and params.dtype == np.float64
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS
    matrix = registered["matrix"]
    np.testing.assert_array_equal(params[:9, 0].reshape(3, 3), flip @ matrix[:3, :3] @ flip)
    np.testing.assert_array_equal(params[9:, 0], flip @ matrix[:3, 3])
    np.testing.assert_array_equal(data["fixed"], np.zeros((3, 1)))


def test_ants_reads_forward_and_inverse_fields(registered, files):
    ants = pytest.importorskip("ants")
    out = registered["files"]
    assert "affine_itk" in out
    fixed = ants.image_read(str(files["fixed"]))
    moving = ants.image_read(str(files["moving"]))
    mask = np.asarray(nib.load(str(files["fixed_mask"])).dataobj) > 0
    ours = np.asarray(nib.load(str(out["warped"])).dataobj, dtype=np.float64)
    theirs = ants.apply_transforms(fixed, moving, [str(out["warp"]), str(out["affine_itk"])])
    _close(theirs.numpy().astype(np.float64), ours, mask)
    # and the fields are not the identity: the affine alone differs
    affine_only = ants.apply_transforms(fixed, moving, [str(out["affine_itk"])]).numpy()
    assert np.abs(affine_only - ours)[mask].mean() > 1e-2 * np.abs(ours[mask]).mean()

    inverse = ants.apply_transforms(moving, fixed, [str(out["affine_itk"]),
                                                    str(out["inverse_warp"])],
                                    whichtoinvert=[True, False]).numpy()
    f_data = np.asarray(nib.load(str(files["fixed"])).dataobj, dtype=np.float64)
    dipy_inv = registered["mapping"].transform_inverse(f_data)
    m_mask = np.asarray(nib.load(str(files["moving"])).dataobj) > 0
    _close(inverse.astype(np.float64), dipy_inv, m_mask)


def test_masks_reach_mi_syn(files, tmp_path, monkeypatch):
    """With ``metric="mi"`` the masks restrict SyN's metric too, each on its
    own image's grid, and change the result; CC takes none."""
    import fastsyn
    from fastsyn.register import register_files

    made = []

    class Recording(fastsyn.MIMetric):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(fastsyn, "MIMetric", Recording)
    fixed = nib.load(str(files["fixed"]))
    moving = nib.load(str(files["moving"]))
    # a moving mask that leaves out a slab: the result must move with it
    mmask = np.asarray(moving.dataobj) > 0
    mmask[: mmask.shape[0] // 3] = False
    nib.save(nib.Nifti1Image(mmask.astype(np.uint8), moving.affine), str(tmp_path / "mm.nii"))
    results = {}
    for name, kwargs in (("none", {}),
                         ("masks", {"fixed_mask": files["fixed_mask"],
                                    "moving_mask": tmp_path / "mm.nii"})):
        results[name] = register_files(files["fixed"], files["moving"], str(tmp_path / name),
                                       metric="mi", levels=(4, 4, 2), threads=2,
                                       log=lambda msg: None, **kwargs)
    assert made[0]["static_mask"] is None and made[0]["moving_mask"] is None
    fmask = np.asarray(nib.load(str(files["fixed_mask"])).dataobj) > 0
    assert made[1]["static_mask"].shape == fixed.shape
    assert np.array_equal(made[1]["static_mask"], fmask)
    assert np.array_equal(made[1]["moving_mask"], mmask)
    assert not np.array_equal(results["none"]["arrays"]["displacement"],
                              results["masks"]["arrays"]["displacement"])


def test_a_stripped_image_against_a_head_is_masked_and_logged(files, tmp_path):
    """MI's auto_masks: the fixture's images are zero outside the brain
    (skull-stripped); given the fixed one a bright 'scalp' around its brain,
    the moving image is masked by its nonzero region and the command says
    so, unless --no-auto-masks.  Between the two stripped images nothing is
    masked, and brain masks given for them are set aside; the head with its
    brain mask is registered stripped by it."""
    from scipy import ndimage

    from fastsyn.register import register_files

    fixed = nib.load(str(files["fixed"]))
    data = np.asarray(fixed.dataobj, dtype=np.float32)
    brain = data != 0
    scalp = ndimage.binary_dilation(brain, iterations=4) & ~brain
    head = np.where(scalp, np.float32(0.8 * data.max()), data)
    nib.save(nib.Nifti1Image(head, fixed.affine), str(tmp_path / "head.nii"))
    said = "the moving image is zero where the other has signal"
    for extra, expected in (([], True), (["--no-auto-masks"], False)):
        proc = _cli([tmp_path / "head.nii", files["moving"], "--out", "out/h_", "--metric",
                     "mi", "--levels", "2,2", "--threads", "2", *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (said in proc.stderr) is expected
    lines = []
    register_files(files["fixed"], files["moving"], str(tmp_path / "out" / "s_"), metric="mi",
                   levels=(2, 2), threads=2, log=lines.append)
    assert not [line for line in lines if "served as its mask" in line]
    # Brain masks on the two stripped images leave out only zeros: both are
    # set aside (and said so), unless --no-auto-masks.
    for side in ("fixed", "moving"):
        image = nib.load(str(files[side]))
        nib.save(nib.Nifti1Image((np.asarray(image.dataobj) != 0).astype(np.uint8),
                                 image.affine), str(tmp_path / f"{side}_mask.nii"))
    for extra, expected in (([], True), (["--no-auto-masks"], False)):
        proc = _cli([files["fixed"], files["moving"], "--out", "out/m_", "--metric", "mi",
                     "--levels", "2,2", "--threads", "2", "--fixed-mask",
                     tmp_path / "fixed_mask.nii", "--moving-mask", tmp_path / "moving_mask.nii",
                     *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr
        for name in ("fixed", "moving"):
            assert (f"the {name} mask leaves out nothing but" in proc.stderr) is expected
    # The head with its brain mask is registered stripped by it (and said
    # so, not that the mask was set aside), unless --no-auto-masks.
    for extra, expected in (([], True), (["--no-auto-masks"], False)):
        proc = _cli([tmp_path / "head.nii", files["moving"], "--out", "out/hm_", "--metric",
                     "mi", "--levels", "2,2", "--threads", "2", "--fixed-mask",
                     tmp_path / "fixed_mask.nii", *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert ("the fixed mask leaves out much of the image" in proc.stderr) is expected
        assert "the fixed mask leaves out nothing but" not in proc.stderr
    with pytest.raises(TypeError, match="auto_masks"):
        register_files(files["fixed"], files["moving"], str(tmp_path / "x_"), metric="mi",
                       auto_masks="no", log=lines.append)


def test_itk_displacement_components_are_lps(tmp_path):
    from fastsyn.register import write_itk_displacement

    disp = np.zeros((2, 3, 4, 3))
    disp[..., 0], disp[..., 1], disp[..., 2] = 1.0, 2.0, 3.0
    path = tmp_path / "d.nii.gz"
    write_itk_displacement(path, disp, np.diag([2.0, 2.0, 2.0, 1.0]))
    data = np.asarray(nib.load(str(path)).dataobj)
    assert data.shape == (2, 3, 4, 1, 3)
    assert np.array_equal(data[0, 0, 0, 0], [-1.0, -2.0, 3.0])


# ------------------------------------------------------- DIPY's own workflows
def test_dipy_syn_workflow_runs_on_fastsyn(files, tmp_path, monkeypatch):
    """``dipy_align_syn``'s flow, unchanged, runs on fastsyn under the patch."""
    from dipy.workflows.align import SynRegistrationFlow

    import fastsyn
    from fastsyn import imwarp

    calls = []
    original = imwarp._iterate

    def counting(self, *args, **kwargs):
        calls.append(type(self).__module__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(imwarp, "_iterate", counting)
    with fastsyn.patch_dipy(num_threads=2):
        SynRegistrationFlow().run(str(files["fixed"]), str(files["moving"]),
                                  level_iters=(4, 4, 2), out_dir=str(tmp_path))
    assert calls and set(calls) == {"dipy.align.imwarp"}  # DIPY's class, our iteration
    warped = nib.load(str(tmp_path / "warped_moved.nii.gz")).get_fdata()
    field = nib.load(str(tmp_path / "displacement_field.nii.gz"))
    fixed = nib.load(str(files["fixed"])).get_fdata()
    moving = nib.load(str(files["moving"])).get_fdata()
    assert warped.shape == fixed.shape and field.shape[:3] == fixed.shape
    mask = fixed > 0
    assert (np.corrcoef(warped[mask], fixed[mask])[0, 1]
            > np.corrcoef(moving[mask], fixed[mask])[0, 1])
    assert Path(tmp_path / "inc_static.nii.gz").is_file()
