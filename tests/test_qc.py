"""QC cards: the cuts, the tiles, the drawing (folds must show on the map) and
``fastsyn register --qc`` as a user runs it, rendered in headless Chromium."""

import base64
import io
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import load_pair

from fastsyn.bench import qc


def _ball_fold(shape, affine, radius=6.0):
    """A displacement that folds a ball in the middle of the grid: inside it
    ``u_x = -1.5 (x - c)``, so ``d(x + u)/dx = -0.5`` and det < 0."""
    idx = np.indices(shape, dtype=np.float64)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    ball = sum((idx[a] - centre[a]) ** 2 for a in range(3)) <= radius ** 2
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    disp = np.zeros(shape + (3,))
    disp[..., 0] = np.where(ball, -1.5 * (idx[0] - centre[0]) * spacing[0], 0.0)
    return disp, ball


def _brain(shape=(40, 48, 36)):
    """A smooth blob with structure, its labels (octants) and mask."""
    idx = np.indices(shape, dtype=np.float64)
    c = (np.asarray(shape) - 1) / 2
    r2 = sum(((idx[a] - c[a]) / (0.42 * shape[a])) ** 2 for a in range(3))
    mask = r2 <= 1
    image = np.where(mask, 100 + 50 * np.cos(idx[0] / 3) * np.sin(idx[2] / 4), 0.0)
    labels = np.where(mask, 1 + (idx[0] > c[0]) + 2 * (idx[1] > c[1]) + 4 * (idx[2] > c[2]),
                      0).astype(np.int16)
    return image, labels, mask


def _rgb_of(uri):
    from PIL import Image

    head, data = uri.split(",", 1)
    assert head in ("data:image/webp;base64", "data:image/png;base64")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_cuts_from_bbox_inside_the_box():
    fg = np.zeros((30, 40, 50), bool)
    fg[5:25, 10:31, 20:41] = True
    cuts = qc.cuts_from_bbox(fg, per_axis=3)
    assert cuts == [[10, 14, 19], [15, 20, 25], [25, 30, 35]]
    # an empty mask means the whole grid
    assert qc.cuts_from_bbox(np.zeros((9, 9, 9), bool), per_axis=1) == [[4], [4], [4]]


def _box(mask, axis, margin=2):
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    return min(mask.shape[axis], present[-1] + margin + 1) - max(0, present[0] - margin)


def test_tiles_keep_the_voxel_aspect_and_fit_the_tile():
    image, labels, mask = _brain()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])  # 3 mm slices: tall voxels
    tiles = qc.extract_tiles(image, image, affine, fixed_labels=labels, mask=mask)
    assert tiles["cuts"].shape == (3, qc.CUTS_PER_AXIS)
    for axis in range(3):
        t = tiles[f"fixed_{axis}"]
        assert t.dtype == np.uint8 and t.shape[0] == qc.CUTS_PER_AXIS
        assert max(t.shape[1:]) <= qc.TILE
        for kind in ("warped", "outline", "mask", "logjac"):
            assert tiles[f"{kind}_{axis}"].shape == t.shape
        assert tiles[f"outline_{axis}"].any()  # the octant boundaries
    # sagittal plane: rows are z (3 mm, so 3 pixels a voxel), columns y (1 mm),
    # over the brain's box: taller than wide, at the data's own resolution
    assert tiles["fixed_0"].shape[1:] == (3 * _box(mask, 2), _box(mask, 1))
    # identical images: identical fixed and warped tiles, a flat log|J|
    assert np.array_equal(tiles["fixed_1"], tiles["warped_1"])
    assert not tiles["logjac_1"].any()
    # a fine grid is shrunk to TILE pixels, keeping the aspect
    # a coarse grid is enlarged by a whole factor (thin outlines)
    image, _, mask = _brain((20, 24, 18))
    coarse = qc.extract_tiles(image, image, np.diag([6.0, 6.0, 6.0, 1.0]), mask=mask)
    zoom = qc.TILE // max(_box(mask, a) for a in range(3))
    assert zoom >= 2
    # the same pixel size in the three orientations
    assert coarse["fixed_0"].shape[1:] == (zoom * _box(mask, 2), zoom * _box(mask, 1))
    assert coarse["fixed_1"].shape[1:] == (zoom * _box(mask, 2), zoom * _box(mask, 0))
    assert coarse["fixed_2"].shape[1:] == (zoom * _box(mask, 1), zoom * _box(mask, 0))
    image, _, mask = _brain((40, 60, 50))
    large = qc.extract_tiles(image, image, affine, mask=mask)
    h, w = large["fixed_0"].shape[1:]
    assert 3 * _box(mask, 2) > qc.TILE
    assert h == qc.TILE and w == pytest.approx(qc.TILE * _box(mask, 1) / (3 * _box(mask, 2)),
                                               abs=1)


def test_a_fold_shows_on_the_log_jacobian_map(tmp_path):
    image, labels, mask = _brain()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    disp, ball = _ball_fold(image.shape, affine)
    tiles = qc.extract_tiles(image, image, affine, fixed_labels=labels, mask=mask,
                             displacement=disp)
    # through the store and back
    tiles = qc.load_tiles(qc.save_tiles(tmp_path / "t.qc.npz", tiles))
    assert qc.fold_fraction(tiles) > 0.01
    panel = qc.render_panels(tiles)["logjac"]
    folded = np.all(panel == qc.FOLD_RGB, axis=-1)
    assert folded.sum() > 50
    # the middle cut of each orientation goes through the ball: folds in
    # every row of the grid, none in a flat map
    rows = np.array_split(np.flatnonzero(panel.any(axis=(1, 2))), 3)
    assert all(folded[r].any() for r in rows)
    flat = qc.render_panels(qc.extract_tiles(image, image, affine, mask=mask))["logjac"]
    assert not np.all(flat == qc.FOLD_RGB, axis=-1).any()
    # encoded compactly and decoded to the same pixels (lossless)
    assert np.array_equal(_rgb_of(qc.encode(panel)), panel)


def test_load_tiles_of_a_missing_or_bad_file(tmp_path):
    assert qc.load_tiles(tmp_path / "none.npz") is None
    bad = tmp_path / "bad.qc.npz"
    bad.write_bytes(b"not a zip")
    assert qc.load_tiles(bad) is None


def test_extract_tiles_names_a_wrong_shape():
    image, labels, mask = _brain()
    with pytest.raises(ValueError, match="warped has shape"):
        qc.extract_tiles(image, image[:-1], np.eye(4))


# ------------------------------------------------------ fastsyn register --qc
@pytest.fixture(scope="module")
def card(tmp_path_factory):
    pair = load_pair("pair3d")
    root = tmp_path_factory.mktemp("qc-register")
    for name, key, aff in (("fixed", "static", "static_affine"),
                           ("moving", "moving", "moving_affine"),
                           ("labels", "moving_labels", "moving_affine"),
                           ("fixed_labels", "static_labels", "static_affine"),
                           ("fixed_mask", "static_mask", "static_affine")):
        data = pair[key].astype(np.uint8) if pair[key].dtype == bool else pair[key]
        nib.save(nib.Nifti1Image(data, pair[aff]), str(root / f"{name}.nii.gz"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSYN_", "OMP_"))}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "fastsyn.cli", "register", "fixed.nii.gz", "moving.nii.gz",
         "--out", "out/s1_", "--levels", "4,4,2", "--labels", "labels.nii.gz",
         "--fixed-labels", "fixed_labels.nii.gz", "--fixed-mask", "fixed_mask.nii.gz",
         "--qc", "--quiet"], cwd=root, env=env, capture_output=True, text=True,
        timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return root, proc


def test_register_qc_writes_the_card(card):
    root, proc = card
    html, png = root / "out" / "s1_qc.html", root / "out" / "s1_qc.png"
    assert proc.stdout.splitlines()[-1] == "fastsyn register: QC card -> out/s1_qc.html"
    text = html.read_text(encoding="utf-8")
    # one offline file: no script, nothing fetched
    assert "<script" not in text and not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    # the fixed image and the outlines once (SVG defs, used by the flicker);
    # the warped image, the checkerboard and the log|J| map
    shared = dict(re.findall(r"<image id='qc-(fixed|outline)' [^>]*href='(data:[^']+)'", text))
    uris = re.findall(r"src='(data:image/[a-z]+;base64,[^']+)'", text)
    assert sorted(shared) == ["fixed", "outline"] and len(uris) == 3
    assert text.count("<use href='#qc-fixed'/>") == text.count("<use href='#qc-outline'/>") == 1
    fixed, warped = _rgb_of(shared["fixed"]), _rgb_of(uris[0])
    assert fixed.shape == warped.shape and not np.array_equal(fixed, warped)
    outline = _rgb_of(shared["outline"])  # the fixed labels' outlines
    assert np.all(outline == qc.OUTLINE_RGB, axis=-1).mean() > 0.01
    for name in ("Dice", "Folding (%)", "SD log|J|", "Time (s)"):
        assert f"<dt>{name}</dt>" in text
    assert re.search(r"<dt>Dice</dt><dd>0\.\d{3}</dd>", text)
    assert len(text) < 400_000
    from PIL import Image

    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 3 * img.height


def _screenshot(url, shot, size="1000,1100"):
    """A headless Chromium screenshot (RGB, int16).  Reduced motion stops the
    flicker's blinking, so only the held card can differ between two shots;
    the window is tall enough that no scrolling is needed (a headless
    screenshot of a page scrolled to its fragment comes out blank)."""
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--force-prefers-reduced-motion",
           f"--screenshot={shot}", f"--window-size={size}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_register_card_in_headless_chromium(card, tmp_path):
    root, _ = card
    uri = (root / "out" / "s1_qc.html").resolve().as_uri()
    held = {state: _screenshot(f"{uri}#qc-{state}", tmp_path / f"{state}.png")
            for state in ("fixed", "warped")}
    for pixels in held.values():
        # the images are drawn: red outlines and the log|J| map's colours
        outline = np.all(np.abs(pixels - qc.OUTLINE_RGB) < 40, axis=-1)
        assert outline.mean() > 0.002
        assert (pixels.mean(axis=-1) < 100).mean() > 0.05  # the dark image background
    # holding the fixed and then the warped image changes the flicker view
    changed = np.abs(held["fixed"] - held["warped"]).max(axis=-1) > 24
    assert 500 < changed.sum() < 0.1 * changed.size, changed.sum()


def test_register_fixed_labels_need_qc(card):
    root, _ = card
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSYN_", "OMP_"))}
    for extra, expect in ((["--fixed-labels", "fixed_labels.nii.gz"], "give --qc too"),
                          (["--qc", "--fixed-labels", "nope.nii.gz"],
                           "fixed labels not found: nope.nii.gz")):
        proc = subprocess.run(
            [sys.executable, "-m", "fastsyn.cli", "register", "fixed.nii.gz", "moving.nii.gz",
             "--out", "bad/x_", *extra], cwd=root, env=env, capture_output=True, text=True,
            timeout=300, check=False)
        assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (root / "bad").exists()
