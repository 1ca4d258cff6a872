"""Rigid prealignment of a pair, cached on disk.

Every method of a benchmark starts from the same prealigned files: the moving
image is registered rigidly to the fixed image with DIPY (mutual information,
a small three-level pyramid), then resampled onto the fixed grid (image linear,
labels and mask nearest neighbour). The results go into one folder per pair::

    <cache_root>/<pair id>__<hash>/
        moving.nii.gz          prealigned moving image (float32)
        moving_labels.nii.gz   prealigned moving labels (input label dtype)
        moving_mask.nii.gz     prealigned moving mask (uint8), when given
        truth.nii.gz           true displacement on the fixed grid, when known
        rigid.txt              4x4 matrix: fixed world point -> moving world point
        meta.json              parameters and the source files

The folder is filled in a temporary sibling and renamed into place, so a cached
pair is always complete, and two processes that prealign the same pair at the
same time cannot corrupt each other's output. The hash covers the input paths
and the registration parameters, so changing either prealigns again.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["Prealigned", "prealign_pair", "prealign_subjects", "load_truth"]

DEFAULT_LEVEL_ITERS = (100, 50, 25)
DEFAULT_SIGMAS = (3.0, 1.0, 0.0)
DEFAULT_FACTORS = (4, 2, 1)


@dataclass(frozen=True)
class Prealigned:
    """The files of a prealigned pair.

    Attributes
    ----------
    cache_dir : Path
        Folder that holds the prealigned moving files.
    fixed_image, fixed_labels : Path
        The fixed subject's files (not copied).
    fixed_mask : Path or None
        The fixed mask; ``None`` means "nonzero voxels of the fixed image".
    moving_image, moving_labels : Path
        The moving image and labels resampled onto the fixed grid.
    moving_mask : Path or None
        The resampled moving mask, when the moving subject has one.
    truth : Path or None
        True displacement on the fixed grid (world mm): fixed point ``x``
        corresponds to ``x + truth(x)`` in the prealigned moving space.
    rigid : ndarray, shape (4, 4)
        The rigid matrix mapping fixed world points to moving world points.
    """

    cache_dir: Path
    fixed_image: Path
    fixed_labels: Path
    fixed_mask: Path | None
    moving_image: Path
    moving_labels: Path
    moving_mask: Path | None
    truth: Path | None
    rigid: np.ndarray

    def load(self):
        """Read all arrays of the pair.

        Returns
        -------
        dict
            ``fixed``, ``moving`` (float64), ``fixed_labels``,
            ``moving_labels`` (int32), ``mask`` (bool, the fixed mask),
            ``affine`` (the fixed grid-to-world matrix), ``truth`` (float64 or
            ``None``) and ``rigid``.
        """
        fimg = nib.load(str(self.fixed_image))
        fixed = np.asarray(fimg.dataobj, dtype=np.float64)
        moving = np.asarray(nib.load(str(self.moving_image)).dataobj, dtype=np.float64)
        flab = np.asarray(nib.load(str(self.fixed_labels)).dataobj)
        mlab = np.asarray(nib.load(str(self.moving_labels)).dataobj)
        if self.fixed_mask is not None:
            mask = np.asarray(nib.load(str(self.fixed_mask)).dataobj) > 0
        else:
            mask = fixed != 0
        if not mask.any():
            mask = np.ones(fixed.shape, dtype=bool)
        truth = None
        if self.truth is not None:
            truth = np.asarray(nib.load(str(self.truth)).dataobj, dtype=np.float64)
        return {
            "fixed": fixed,
            "moving": moving,
            "fixed_labels": np.rint(flab).astype(np.int32),
            "moving_labels": np.rint(mlab).astype(np.int32),
            "mask": mask,
            "affine": fimg.affine.copy(),
            "truth": truth,
            "rigid": self.rigid.copy(),
        }


def _check_file(name, path, required=True):
    if path is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name} not found: {p}")
    return p


def _load_volume(name, path):
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name} ({path}) must be a 3D volume, got shape {data.shape}")
    if abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name} ({path}) has a singular affine")
    return img, data


def load_truth(path):
    """Read a displacement NIfTI as ``(field (X, Y, Z, 3) float64, affine)``.

    Accepts the ``(X, Y, Z, 3)`` and the ``(X, Y, Z, 1, 3)`` layouts.
    """
    img = nib.load(str(path))
    d = np.asarray(img.dataobj, dtype=np.float64)
    if d.ndim == 5 and d.shape[3] == 1:
        d = d[:, :, :, 0, :]
    if d.ndim != 4 or d.shape[3] != 3:
        raise ValueError(
            f"displacement file {path} must have shape (X, Y, Z, 3), got {d.shape}"
        )
    return d, img.affine


def _sample_field(field, affine, points):
    """Linear interpolation of a vector field at world points (N, 3)."""
    from scipy.ndimage import map_coordinates

    inv = np.linalg.inv(affine)
    idx = points @ inv[:3, :3].T + inv[:3, 3]
    out = np.empty_like(points)
    for c in range(3):
        out[:, c] = map_coordinates(field[..., c], idx.T, order=1, mode="nearest")
    return out


def _true_displacement(shape, affine, to_template, from_template, rigid):
    """True displacement on the fixed grid, in the prealigned moving space."""
    u, u_aff = load_truth(to_template)
    v, v_aff = load_truth(from_template)
    ii = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    x = ii @ affine[:3, :3].T + affine[:3, 3]
    if u.shape[:3] == tuple(shape) and np.allclose(u_aff, affine, atol=1e-6):
        y = x + u.reshape(-1, 3)
    else:
        y = x + _sample_field(u, u_aff, x)
    p = y + _sample_field(v, v_aff, y)
    rinv = np.linalg.inv(rigid)
    q = p @ rinv[:3, :3].T + rinv[:3, 3]
    return (q - x).reshape(tuple(shape) + (3,)).astype(np.float32)


def _cache_hash(inputs, params):
    text = json.dumps({"inputs": inputs, "params": params}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def _read_cached(folder, fixed_image, fixed_labels, fixed_mask):
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())

    def opt(name):
        return folder / name if meta["files"].get(name) else None

    return Prealigned(
        cache_dir=folder,
        fixed_image=fixed_image,
        fixed_labels=fixed_labels,
        fixed_mask=fixed_mask,
        moving_image=folder / "moving.nii.gz",
        moving_labels=folder / "moving_labels.nii.gz",
        moving_mask=opt("moving_mask.nii.gz"),
        truth=opt("truth.nii.gz"),
        rigid=np.loadtxt(folder / "rigid.txt").reshape(4, 4),
    )


def prealign_pair(fixed_image, moving_image, moving_labels, cache_root, *,
                  fixed_labels, pair_id, fixed_mask=None, moving_mask=None,
                  fixed_truth_to_template=None, moving_truth_from_template=None,
                  level_iters=DEFAULT_LEVEL_ITERS, sigmas=DEFAULT_SIGMAS,
                  factors=DEFAULT_FACTORS, nbins=32):
    """Rigidly prealign a moving subject to a fixed one, or reuse the cache.

    Parameters
    ----------
    fixed_image, moving_image, moving_labels : str or Path
        NIfTI files of the two subjects.
    cache_root : str or Path
        Folder that holds one subfolder per prealigned pair.
    fixed_labels : str or Path
        The fixed label map (recorded, not resampled).
    pair_id : str
        Name of the pair, used for the cache folder.
    fixed_mask, moving_mask : str or Path, optional
        Brain masks. The moving mask is resampled with the labels.
    fixed_truth_to_template, moving_truth_from_template : str or Path, optional
        Ground-truth displacements of a synthetic cohort (see
        :mod:`fastsyn.bench.datasets`); when both are given the true
        fixed-to-moving displacement is stored as ``truth.nii.gz``.
    level_iters, sigmas, factors : sequence
        DIPY ``AffineRegistration`` pyramid (coarsest level first).
    nbins : int
        Histogram bins of the mutual-information metric.

    Returns
    -------
    Prealigned
        Paths of the prealigned files and the rigid matrix.
    """
    fixed_image = _check_file("fixed_image", fixed_image)
    moving_image = _check_file("moving_image", moving_image)
    moving_labels = _check_file("moving_labels", moving_labels)
    fixed_labels = _check_file("fixed_labels", fixed_labels)
    fixed_mask = _check_file("fixed_mask", fixed_mask, required=False)
    moving_mask = _check_file("moving_mask", moving_mask, required=False)
    to_t = _check_file("fixed_truth_to_template", fixed_truth_to_template, False)
    from_t = _check_file("moving_truth_from_template", moving_truth_from_template, False)
    level_iters = [int(v) for v in level_iters]
    sigmas = [float(v) for v in sigmas]
    factors = [int(v) for v in factors]
    if not (len(level_iters) == len(sigmas) == len(factors)) or not level_iters:
        raise ValueError(
            "level_iters, sigmas and factors must be non-empty and of equal length"
        )
    if any(v < 0 for v in level_iters) or any(f < 1 for f in factors):
        raise ValueError("level_iters must be >= 0 and factors >= 1")
    if not isinstance(pair_id, str) or not pair_id:
        raise ValueError(f"pair_id must be a non-empty string, got {pair_id!r}")

    params = {"method": "dipy-rigid-mi", "level_iters": level_iters,
              "sigmas": sigmas, "factors": factors, "nbins": int(nbins),
              "pipeline": ["center_of_mass", "translation", "rigid"]}
    inputs = {k: (str(Path(v).resolve()) if v is not None else None) for k, v in {
        "fixed_image": fixed_image, "moving_image": moving_image,
        "moving_labels": moving_labels, "moving_mask": moving_mask,
        "to_template": to_t, "from_template": from_t}.items()}
    safe_id = "".join(c if c.isalnum() or c in "._+-" else "_" for c in pair_id)
    cache_root = Path(cache_root)
    folder = cache_root / f"{safe_id}__{_cache_hash(inputs, params)}"
    cached = _read_cached(folder, fixed_image, fixed_labels, fixed_mask)
    if cached is not None:
        return cached

    from dipy.align import affine_registration
    from dipy.align.imaffine import AffineMap

    f_img, f_data = _load_volume("fixed_image", fixed_image)
    m_img, m_data = _load_volume("moving_image", moving_image)
    ml_img, ml_data = _load_volume("moving_labels", moving_labels)
    if ml_data.shape != m_data.shape:
        raise ValueError(
            f"moving_labels shape {ml_data.shape} differs from moving_image "
            f"shape {m_data.shape}"
        )
    static = f_data.astype(np.float64)
    moving = m_data.astype(np.float64)
    for name, arr in (("fixed_image", static), ("moving_image", moving)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    _, rigid = affine_registration(
        moving, static, moving_affine=m_img.affine, static_affine=f_img.affine,
        pipeline=params["pipeline"], level_iters=level_iters, sigmas=sigmas,
        factors=factors, nbins=int(nbins))
    amap = AffineMap(rigid, domain_grid_shape=static.shape,
                     domain_grid2world=f_img.affine,
                     codomain_grid_shape=moving.shape,
                     codomain_grid2world=m_img.affine)
    warped = amap.transform(moving, interpolation="linear").astype(np.float32)
    lab_dtype = ml_data.dtype if ml_data.dtype.kind in "iu" else np.int32
    warped_lab = amap.transform(ml_data.astype(np.float64), interpolation="nearest")
    warped_lab = np.rint(warped_lab).astype(lab_dtype)

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{safe_id}-", dir=cache_root))
    try:
        files = {}

        def save(name, data):
            nib.save(nib.Nifti1Image(data, f_img.affine), str(tmp / name))
            files[name] = True

        save("moving.nii.gz", warped)
        save("moving_labels.nii.gz", warped_lab)
        if moving_mask is not None:
            _, mm = _load_volume("moving_mask", moving_mask)
            wm = amap.transform((mm > 0).astype(np.float64), interpolation="nearest")
            save("moving_mask.nii.gz", (wm > 0.5).astype(np.uint8))
        if to_t is not None and from_t is not None:
            save("truth.nii.gz",
                 _true_displacement(static.shape, f_img.affine, to_t, from_t, rigid))
        np.savetxt(tmp / "rigid.txt", rigid)
        meta = {"pair": pair_id, "inputs": inputs, "params": params,
                "files": files, "rigid": np.asarray(rigid).tolist()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            # another process finished the same pair first: use its files
            if _read_cached(folder, fixed_image, fixed_labels, fixed_mask) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _read_cached(folder, fixed_image, fixed_labels, fixed_mask)


def _subject(dataset, name):
    subjects = dataset.subjects
    if isinstance(subjects, dict):
        if name in subjects:
            return subjects[name]
    else:
        for s in subjects:
            if s.name == name:
                return s
    raise KeyError(f"dataset {dataset.name!r} has no subject {name!r}")


def prealign_subjects(dataset, pair, cache_root, **kwargs):
    """Prealign the moving subject of ``pair`` to its fixed subject.

    Parameters
    ----------
    dataset : fastsyn.bench.datasets.Dataset
        The cohort that holds both subjects.
    pair : fastsyn.bench.pairs.Pair
        Subject names and modalities.
    cache_root : str or Path
        Folder for the cached prealigned pairs.
    **kwargs
        Passed to :func:`prealign_pair` (pyramid settings).

    Returns
    -------
    Prealigned
    """
    fs = _subject(dataset, pair.fixed)
    ms = _subject(dataset, pair.moving)
    for subj, mod in ((fs, pair.fixed_modality), (ms, pair.moving_modality)):
        if mod not in subj.images:
            raise KeyError(f"subject {subj.name!r} has no modality {mod!r}")
    return prealign_pair(
        fs.images[pair.fixed_modality], ms.images[pair.moving_modality],
        ms.labels, cache_root, fixed_labels=fs.labels, pair_id=pair.id,
        fixed_mask=getattr(fs, "mask", None), moving_mask=getattr(ms, "mask", None),
        fixed_truth_to_template=getattr(fs, "truth_to_template", None),
        moving_truth_from_template=getattr(ms, "truth_from_template", None),
        **kwargs)
