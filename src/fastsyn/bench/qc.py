"""Quality-control views of one registration: the tiles and the card.

A registration is judged by looking at it.  This module cuts a few planes out
of a registered pair and draws them as a *card*: the fixed image and the
warped moving image, each with the fixed labels' outlines, shown as a
before/after flicker; a checkerboard of the two; and the log-Jacobian
determinant of the deformation with the folded voxels (det <= 0) marked.

Two steps, so that a report can redraw without re-registering:

* :func:`extract_tiles` reduces a registered pair to small display-ready
  tiles (uint8 intensities, label outlines, a quantised log-Jacobian, a few
  planes per orientation chosen from the foreground's bounding box).  The
  harness keeps them beside each record (:func:`save_tiles`, ``.qc.npz``).
* :func:`render_panels` turns tiles into images and :func:`encode` into
  compact inline data URIs (WebP where Pillow has it, else PNG: lossy for
  the grey anatomy, lossless for the outlines and the log-Jacobian map,
  whose colours must stay exact).  In a card the fixed image and the
  outlines are held once and shared by every method's column.

:mod:`fastsyn.bench.register_card` writes the standalone card of
``fastsyn register --qc`` with the same drawing.
"""

import base64
import hashlib
import io
import os
from pathlib import Path

import numpy as np

__all__ = ["AXES", "CUTS_PER_AXIS", "TILE", "LOGJAC_RANGE", "FOLD_RGB", "OUTLINE_RGB",
           "cuts_from_bbox", "extract_tiles", "save_tiles", "load_tiles", "render_panels",
           "encode", "card_context", "card_numbers", "card_png", "fold_fraction"]

#: The three orientations, named by the RAS axis each plane is normal to.
AXES = ("sagittal", "coronal", "axial")
#: Planes per orientation.
CUTS_PER_AXIS = 3
#: Largest side of one tile, in pixels (tiles keep the voxels' aspect ratio).
TILE = 128
#: log|J| shown from -LOGJAC_RANGE (blue, shrinking) to +LOGJAC_RANGE (red).
LOGJAC_RANGE = 0.5
#: Folded voxels (det <= 0) on the log-Jacobian map: a colour the blue-white-red
#: scale never takes.
FOLD_RGB = (255, 215, 0)
#: The fixed labels' outlines.
OUTLINE_RGB = (255, 60, 60)
#: Stored log-Jacobian: int8 steps of LOGJAC_RANGE / 100; folds are this code.
_FOLD_CODE = -128
_LOGJAC_STEPS = 100
#: Colours a side of the log|J| map (steps of LOGJAC_RANGE / 10 = 0.05).
_LOGJAC_LEVELS = 10
#: Checkerboard square, in pixels.
_CHECKER = 12


# ------------------------------------------------------------------ the cuts
def cuts_from_bbox(foreground, per_axis=CUTS_PER_AXIS):
    """Planes spread evenly inside the foreground's bounding box.

    The planes sit at ``k / (per_axis + 1)`` of the box along each axis
    (never on its edges, where little of the subject is left), as
    niworkflows chooses its cuts.

    Parameters
    ----------
    foreground : ndarray of bool, shape (X, Y, Z)
        The subject's voxels (e.g. the fixed mask), in RAS order.
    per_axis : int
        Planes per orientation.

    Returns
    -------
    list of list of int
        For each axis, the plane indices.
    """
    fg = np.asarray(foreground, dtype=bool)
    if fg.ndim != 3:
        raise ValueError(f"foreground must be a 3D mask, got shape {fg.shape}")
    if not fg.any():
        fg = np.ones(fg.shape, dtype=bool)
    cuts = []
    for axis in range(3):
        present = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = int(present[0]), int(present[-1])
        cuts.append([int(round(lo + (hi - lo) * (k + 1) / (per_axis + 1)))
                     for k in range(per_axis)])
    return cuts


def _canonical(volumes, affine):
    """Volumes reoriented to RAS (nibabel's closest canonical) and the voxel sizes."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = spacing[ornt[:, 0].astype(int).argsort()]
    out = {k: None if v is None else nib.orientations.apply_orientation(v, ornt)
           for k, v in volumes.items()}
    return out, spacing


def _bbox(fg, margin=2):
    """Slices of the foreground's bounding box, widened by ``margin`` voxels."""
    out = []
    for axis in range(3):
        present = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        out.append(slice(max(0, present[0] - margin),
                         min(fg.shape[axis], present[-1] + margin + 1)))
    return tuple(out)


def _plane(volume, axis, index):
    """One plane shown as seen by a radiologist's viewer: superior (or
    anterior, for axial planes) up."""
    return np.flipud(np.take(volume, index, axis=axis).T)


def _pixel_scale(shape, spacing, tile):
    """Pixels per finest voxel, the same for the three orientations: the
    longest side of the box becomes at most ``tile`` pixels, and coarse data
    is enlarged by a whole factor while it fits (the label outlines, one
    pixel wide, then stay thinner than a voxel; the page scales the images
    itself, so nothing finer is stored)."""
    extent = (np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)).max()
    extent /= min(spacing)
    return min(tile / extent, max(1, tile // extent))


def _tile_shape(shape2d, spacing2d, scale, finest):
    """Pixels of a tile: the plane's physical aspect at ``scale`` pixels per
    ``finest`` millimetres."""
    size = np.asarray(shape2d, dtype=float) * np.asarray(spacing2d, dtype=float) / finest
    return tuple(max(1, int(round(s * scale))) for s in size)


def _resize(plane, shape, nearest):
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(plane))
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(img.resize((shape[1], shape[0]), method))


def _window(image, fg):
    """Display range: the 0.5th-99.5th percentiles inside the foreground."""
    values = image[fg] if fg.any() else image.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _to_uint8(plane, window):
    lo, hi = window
    return np.clip((plane - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)


def _outline(labels):
    """Pixels where the label changes to a neighbour (one pixel wide)."""
    edge = np.zeros(labels.shape, dtype=bool)
    diff_r = labels[:, 1:] != labels[:, :-1]
    diff_d = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= diff_r
    edge[1:, :] |= diff_d
    return edge


def _logjac_codes(displacement, affine, shape):
    """log|J| of ``x -> x + u(x)`` as int8 codes (folds: ``_FOLD_CODE``)."""
    if displacement is None:
        return np.zeros(shape, dtype=np.int8)
    from .evaluate import jacobian_determinant

    det = jacobian_determinant(displacement, affine)
    with np.errstate(divide="ignore", invalid="ignore"):
        logj = np.log(np.where(det > 0, det, 1.0))
    codes = np.clip(np.round(logj * (_LOGJAC_STEPS / LOGJAC_RANGE)), -_LOGJAC_STEPS,
                    _LOGJAC_STEPS).astype(np.int8)
    codes[det <= 0] = _FOLD_CODE
    return codes


def _label_outline_source(fixed, fixed_labels, fg):
    """What the outlines trace: the fixed labels, else the fixed image's
    intensity terciles inside its foreground (rough tissue boundaries)."""
    if fixed_labels is not None:
        return np.asarray(fixed_labels).astype(np.int32)
    lo, hi = np.percentile(fixed[fg], [33.3, 66.7]) if fg.any() else (0.0, 0.0)
    bands = 1 + (fixed > lo).astype(np.int32) + (fixed > hi)
    return np.where(fg, bands, 0)


def _check_volumes(fixed, others):
    fixed = np.asarray(fixed)
    if fixed.ndim != 3:
        raise ValueError(f"fixed must be a 3D volume, got shape {fixed.shape}")
    for name, value in others.items():
        if value is not None and np.shape(value)[:3] != fixed.shape:
            raise ValueError(f"{name} has shape {np.shape(value)}, expected the fixed "
                             f"grid {fixed.shape}")
    return fixed


def _plane_tiles(vols, axis, index, spacing, scale):
    """The display tiles of one plane (dict of 2D arrays)."""
    sp2d = [spacing[a] for a in range(3) if a != axis][::-1]
    planes = {k: _plane(v, axis, index) for k, v in vols.items()}
    shape = _tile_shape(planes["fixed"].shape, sp2d, scale, min(spacing))
    labels = _resize(planes["labels"].astype(np.int32), shape, nearest=True)
    folds = _resize((planes["logjac"] == _FOLD_CODE).astype(np.uint8) * 255, shape,
                    nearest=False) > 0
    logjac = _resize(planes["logjac"].astype(np.int32), shape, nearest=True).astype(np.int8)
    logjac[folds] = _FOLD_CODE
    return {"fixed": _resize(planes["fixed"].astype(np.float32), shape, nearest=False),
           "warped": _resize(planes["warped"].astype(np.float32), shape, nearest=False),
           "outline": _outline(labels).astype(np.uint8),
           "mask": _resize(planes["mask"].astype(np.uint8), shape, nearest=True),
           "logjac": logjac}


def extract_tiles(fixed, warped, affine, *, fixed_labels=None, mask=None,
                  displacement=None, per_axis=CUTS_PER_AXIS, tile=TILE):
    """Reduce a registered pair to the small tiles its QC card is drawn from.

    Parameters
    ----------
    fixed, warped : ndarray, shape (X, Y, Z)
        The fixed image and the moving image warped onto its grid.
    affine : ndarray, shape (4, 4)
        The fixed grid's grid-to-world matrix (the planes are cut in RAS).
    fixed_labels : ndarray of int, optional
        The fixed label map, whose outlines are drawn; without it, the
        boundaries of the fixed image's intensity terciles.
    mask : ndarray of bool, optional
        The fixed foreground (cuts, display windows, the log-Jacobian's
        extent); the fixed image's nonzero voxels when omitted.
    displacement : ndarray, shape (X, Y, Z, 3), optional
        The deformable part in world mm on the fixed grid (``x -> x + u(x)``);
        None for an identity (e.g. the prealigned baseline).
    per_axis, tile : int
        Planes per orientation and the largest tile side in pixels.

    Returns
    -------
    dict of ndarray
        ``{kind}_{axis}`` for kind in fixed, warped (uint8 grey levels),
        outline, mask (uint8 0/1) and logjac (int8: log|J| in steps of
        ``LOGJAC_RANGE / 100``, -128 where det <= 0), axis in 0, 1, 2, each of
        shape (per_axis, h, w); ``cuts`` (3, per_axis) plane indices in RAS.
    """
    fixed = _check_volumes(fixed, {"warped": warped, "fixed_labels": fixed_labels,
                                   "mask": mask, "displacement": displacement})
    fixed = fixed.astype(np.float64)
    warped = np.asarray(warped, dtype=np.float64)
    fg = (np.asarray(mask) != 0) if mask is not None else fixed != 0
    if not fg.any():
        fg = np.ones(fixed.shape, dtype=bool)
    vols = {"fixed": fixed, "warped": warped, "mask": fg.astype(np.uint8),
            "labels": _label_outline_source(fixed, fixed_labels, fg),
            "logjac": _logjac_codes(displacement, affine, fixed.shape)}
    vols, spacing = _canonical(vols, affine)
    box = _bbox(vols["mask"] > 0)
    vols = {k: v[box] for k, v in vols.items()}
    fg = vols["mask"] > 0
    windows = {k: _window(vols[k], fg) for k in ("fixed", "warped")}
    cuts = cuts_from_bbox(fg, per_axis)
    scale = _pixel_scale(fg.shape, spacing, tile)
    tiles = {"cuts": np.asarray(cuts, dtype=np.int32)}
    for axis, indices in enumerate(cuts):
        planes = [_plane_tiles(vols, axis, i, spacing, scale) for i in indices]
        for kind in ("fixed", "warped", "outline", "mask", "logjac"):
            stack = np.stack([p[kind] for p in planes])
            if kind in windows:
                stack = _to_uint8(stack, windows[kind])
            tiles[f"{kind}_{axis}"] = stack
    return tiles


def save_tiles(path, tiles):
    """Write tiles atomically as a compressed ``.npz`` (readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **tiles)
    os.replace(tmp, path)
    return path


def load_tiles(path):
    """Tiles written by :func:`save_tiles`, or None if absent or unreadable."""
    try:
        with np.load(path) as data:
            tiles = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):
        return None
    need = {f"{k}_{a}" for k in ("fixed", "warped", "outline", "mask", "logjac")
            for a in range(3)}
    return tiles if need <= set(tiles) else None


# ---------------------------------------------------------------- drawing
def _grey(tile):
    return np.repeat(tile[..., None], 3, axis=-1)


def _outline_rgba(outline):
    """The outlines alone: ``OUTLINE_RGB`` where drawn, transparent elsewhere
    (laid over the fixed and the warped image by the page)."""
    rgba = np.zeros(outline.shape + (4,), dtype=np.uint8)
    rgba[outline > 0] = OUTLINE_RGB + (255,)
    return rgba


def _with_outline(rgb, outline_rgba):
    """An image with the outline layer burnt in (for the PNG card)."""
    out = rgb.copy()
    out[outline_rgba[..., 3] > 0] = OUTLINE_RGB
    return out


def _checker(fixed, warped):
    rows, cols = np.indices(fixed.shape)
    first = ((rows // _CHECKER) + (cols // _CHECKER)) % 2 == 0
    return _grey(np.where(first, fixed, warped))


def _logjac_rgb(codes, mask):
    """Blue (shrinking) - white - red (growing) inside the mask, in
    ``_LOGJAC_LEVELS`` steps a side (flat colours compress well), black
    outside; folds in ``FOLD_RGB``."""
    levels = _LOGJAC_LEVELS
    t = np.clip(np.round(codes.astype(np.float64) * (levels / _LOGJAC_STEPS)) / levels,
                -1.0, 1.0)
    t = t[..., None]
    white = np.array([255.0, 255.0, 255.0])
    red, blue = np.array([200.0, 30.0, 30.0]), np.array([30.0, 60.0, 200.0])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    rgb = np.where((mask > 0)[..., None], rgb, 0.0).round().astype(np.uint8)
    rgb[codes == _FOLD_CODE] = FOLD_RGB
    return rgb


def _grid(tiles_by_axis, gap=2):
    """Tiles (list per axis of RGB arrays) as one image: a row per orientation."""
    width = max(sum(t.shape[1] for t in row) + gap * (len(row) - 1) for row in tiles_by_axis)
    height = sum(max(t.shape[0] for t in row) for row in tiles_by_axis)
    height += gap * (len(tiles_by_axis) - 1)
    out = np.zeros((height, width, tiles_by_axis[0][0].shape[-1]), dtype=np.uint8)
    y = 0
    for row in tiles_by_axis:
        x = 0
        for t in row:
            out[y:y + t.shape[0], x:x + t.shape[1]] = t
            x += t.shape[1] + gap
        y += max(t.shape[0] for t in row) + gap
    return out


def render_panels(tiles):
    """The card's images of one registration, as arrays.

    Parameters
    ----------
    tiles : dict
        From :func:`extract_tiles` (or :func:`load_tiles`).

    Returns
    -------
    dict of ndarray
        ``fixed`` and ``warped`` (grey), ``outline`` (the fixed labels'
        outlines on a transparent ground, RGBA, laid over either),
        ``checker`` (alternating squares of the two) and ``logjac`` (the
        log-Jacobian map, folds marked), each (H, W, 3) uint8 but the
        outline's (H, W, 4).
    """
    draw = {
        "fixed": lambda t, a, i: _grey(t[f"fixed_{a}"][i]),
        "warped": lambda t, a, i: _grey(t[f"warped_{a}"][i]),
        "outline": lambda t, a, i: _outline_rgba(t[f"outline_{a}"][i]),
        "checker": lambda t, a, i: _checker(t[f"fixed_{a}"][i], t[f"warped_{a}"][i]),
        "logjac": lambda t, a, i: _logjac_rgb(t[f"logjac_{a}"][i], t[f"mask_{a}"][i]),
    }
    return {name: _grid([[fn(tiles, a, i) for i in range(len(tiles[f"fixed_{a}"]))]
                         for a in range(3)])
            for name, fn in draw.items()}


def fold_fraction(tiles):
    """Fraction of the tiles' foreground pixels drawn as folded."""
    folded = sum(np.count_nonzero((tiles[f"logjac_{a}"] == _FOLD_CODE)
                                  & (tiles[f"mask_{a}"] > 0)) for a in range(3))
    inside = sum(np.count_nonzero(tiles[f"mask_{a}"]) for a in range(3))
    return folded / max(1, inside)


#: Panels that may be encoded lossily: grey anatomy, where WebP at this
#: quality is a third of the lossless size and its error is below what the
#: eye sees at the page's scale.  The outlines and the log|J| map (exact
#: colours, flat areas) stay lossless.
LOSSY = {"fixed": 85, "warped": 85, "checker": 70}
#: Panels that every method's column of a card shares.
SHARED = ("fixed", "outline")


def encode(image, quality=None):
    """An RGB or RGBA image as a ``data:`` URI: WebP (lossless unless a
    ``quality`` is given) where Pillow can write it, else PNG."""
    from PIL import Image, features

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(image))
    if features.check("webp"):
        fmt = "webp"
        if quality is None:
            img.save(buf, format="WEBP", lossless=True, quality=100, method=4)
        else:
            img.save(buf, format="WEBP", quality=int(quality), method=4)
    else:
        fmt = "png"
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------ cards
def _number(value, fmt):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return fmt.format(value)


def card_numbers(metrics, seconds=None):
    """The (name, text) rows printed under a method's views."""
    metrics = metrics or {}
    return [("Dice", _number(metrics.get("dice_mean"), "{:.3f}")),
            ("TRE (mm)", _number(metrics.get("tre_mean"), "{:.2f}")),
            ("Folding (%)", _number(metrics.get("folding_pct"), "{:.3f}")),
            ("SD log|J|", _number(metrics.get("logjac_sd"), "{:.3f}")),
            ("NCC", _number(metrics.get("ncc"), "{:.3f}")),
            ("Time (s)", _number(seconds, "{:.1f}"))]


def card_context(card_id, title, note, columns):
    """What the ``_qc_card.html`` macro draws.

    Parameters
    ----------
    card_id : str
        The card's HTML id (letters, digits, ``-`` and ``_``).
    title, note : str
        Heading and the line under it (plain text, escaped when drawn).
    columns : list of dict
        One per method: ``label``, ``numbers`` (see :func:`card_numbers`)
        and ``tiles`` (see :func:`extract_tiles`).

    Returns
    -------
    dict
    """
    cols, encoded = [], {}

    def once(name, image):  # every column has the same fixed image: encode it once
        key = (name, image.shape, hashlib.sha1(image.tobytes()).hexdigest())
        if key not in encoded:
            encoded[key] = encode(image, LOSSY.get(name))
        return encoded[key]

    for col in columns:
        panels = render_panels(col["tiles"])
        cols.append({"label": col["label"], "numbers": col["numbers"],
                     "images": {k: once(k, v) for k, v in panels.items()},
                     "size": panels["fixed"].shape[1::-1]})
    # The fixed image and the outlines are the same in every column: the page
    # holds them once per card (SVG <use>), not once per method.
    shared = {}
    for name in SHARED:
        uris = {c["images"][name] for c in cols}
        if len(uris) == 1 and len({c["size"] for c in cols}) == 1:
            shared[name] = uris.pop()
            for c in cols:
                del c["images"][name]
    return {"id": card_id, "title": title, "note": note, "columns": cols, "shared": shared,
            "size": cols[0]["size"] if cols else (0, 0),
            "logjac_range": f"{LOGJAC_RANGE:g}"}


def card_png(tiles):
    """One registration's four views side by side (fixed, warped, checkerboard,
    log|J|) as an RGB array, for the PNG beside ``PREFIXqc.html``."""
    panels = render_panels(tiles)
    # coarse data makes small tiles: enlarge by whole pixels to >= 300 rows
    zoom = max(1, -(-300 // panels["fixed"].shape[0]))
    panels["fixed"] = _with_outline(panels["fixed"], panels["outline"])
    panels["warped"] = _with_outline(panels["warped"], panels["outline"])
    views = [np.kron(panels[k], np.ones((zoom, zoom, 1), dtype=np.uint8))
             for k in ("fixed", "warped", "checker", "logjac")]
    gap = np.full((views[0].shape[0], 6, 3), 255, dtype=np.uint8)
    row = [views[0]]
    for v in views[1:]:
        row += [gap, v]
    return np.concatenate(row, axis=1)
