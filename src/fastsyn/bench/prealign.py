"""Rigid prealignment of a pair, cached on disk.

Every method of a benchmark starts from the same prealigned files: the moving
image is registered rigidly to the fixed image by one of :data:`PREALIGNERS`
(``fastsyn``: fastsyn's threaded affine registration, falling back to DIPY's
when it is not built; ``dipy``: DIPY's ``affine_registration``; both mutual
information on a small three-level pyramid; ``ants``: antspyx ``Rigid``;
``greedy``: ``greedy -a -dof 6`` with NMI), then resampled onto the fixed grid
by the same code whichever registered it (image linear, labels and mask
nearest neighbour). The results go into one folder per pair::

    <cache_root>/<pair id>__<hash>/
        moving.nii.gz          prealigned moving image (float32)
        moving_labels.nii.gz   prealigned moving labels (input label dtype)
        moving_mask.nii.gz     prealigned moving mask (uint8), when given
        truth.nii.gz           true displacement on the fixed grid, when known
        rigid.txt              4x4 matrix: fixed world point -> moving world point
        meta.json              parameters, the source files and the seconds taken

The folder is filled in a temporary sibling and renamed into place, so a cached
pair is always complete, and two processes that prealign the same pair at the
same time cannot corrupt each other's output. The hash covers the input paths
and the registration parameters, the prealigner included, so changing either
prealigns again and the caches of different prealigners never mix.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["PREALIGNERS", "Prealigned", "prealign_pair", "prealign_subjects", "load_truth"]

#: Rigid registrations the harness can prealign with (the first is the default).
PREALIGNERS = ("fastsyn", "dipy", "ants", "greedy")
#: The ``method`` entry of the cache key; DIPY's keeps its historical name so
#: caches written before the choice existed are still found.
_KEY_NAMES = {"fastsyn": "fastsyn-rigid-mi", "dipy": "dipy-rigid-mi",
              "ants": "ants-rigid-mi", "greedy": "greedy-rigid-nmi"}

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
    seconds : float or None
        Wall time of the registration and resampling when the pair was
        prealigned (read back from the cache), None for old cache entries.
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
    seconds: float | None = None

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
        def read(name, path, dtype=None):
            img = _read_header(name, path)
            return img, _read_data(name, path, img, dtype)

        fimg, fixed = read("fixed_image", self.fixed_image, np.float64)
        moving = read("moving_image", self.moving_image, np.float64)[1]
        flab = read("fixed_labels", self.fixed_labels)[1]
        mlab = read("moving_labels", self.moving_labels)[1]
        if self.fixed_mask is not None:
            mask = read("fixed_mask", self.fixed_mask)[1] > 0
        else:
            mask = fixed != 0
        if not mask.any():
            mask = np.ones(fixed.shape, dtype=bool)
        truth = None
        if self.truth is not None:
            truth = read("truth", self.truth, np.float64)[1]
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


def _read_header(name, path):
    """``nibabel.load`` that names the argument and file when it fails."""
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types
        raise ValueError(f"{name}: cannot read {path}: {exc}") from exc


def _read_data(name, path, img, dtype=None):
    """The data of ``img``; a truncated or corrupt file names the argument and file."""
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # EOFError, OSError, zlib.error, ValueError ...
        raise ValueError(f"{name}: cannot read the data of {path}: {exc}") from exc


def _load_volume(name, path):
    img = _read_header(name, path)
    data = _read_data(name, path, img)
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
    img = _read_header("displacement", path)
    d = _read_data("displacement", path, img, np.float64)
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
    """The cached pair in ``folder``, or ``None`` when there is none.

    Raises
    ------
    ValueError
        If the folder holds a damaged or foreign entry (unreadable
        ``meta.json``, missing files, bad ``rigid.txt``); the message names
        the folder, to be deleted so that the pair is prealigned again.
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        listed = meta["files"]
        rigid = np.loadtxt(folder / "rigid.txt").reshape(4, 4)
        missing = [n for n in ("moving.nii.gz", "moving_labels.nii.gz", *listed)
                   if not (folder / n).is_file()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"prealignment cache {folder} is damaged ({type(exc).__name__}: {exc}); "
            "delete it to prealign the pair again") from exc
    if missing:
        raise ValueError(
            f"prealignment cache {folder} is damaged (missing {missing}); "
            "delete it to prealign the pair again")

    def opt(name):
        return folder / name if listed.get(name) else None

    return Prealigned(
        cache_dir=folder,
        fixed_image=fixed_image,
        fixed_labels=fixed_labels,
        fixed_mask=fixed_mask,
        moving_image=folder / "moving.nii.gz",
        moving_labels=folder / "moving_labels.nii.gz",
        moving_mask=opt("moving_mask.nii.gz"),
        truth=opt("truth.nii.gz"),
        rigid=rigid,
        seconds=meta.get("seconds"),
    )


def _check_files(**given):
    """Checked paths of a pair's files (``None`` for an absent optional one)."""
    optional = ("fixed_mask", "moving_mask", "to_template", "from_template")
    names = {"to_template": "fixed_truth_to_template",
             "from_template": "moving_truth_from_template"}
    return {key: _check_file(names.get(key, key), path, required=key not in optional)
            for key, path in given.items()}


def _rigid_params(level_iters, sigmas, factors, nbins, prealigner="fastsyn"):
    """The registration parameters, checked and in the form hashed into the cache key."""
    level_iters = [int(v) for v in level_iters]
    sigmas = [float(v) for v in sigmas]
    factors = [int(v) for v in factors]
    if not (len(level_iters) == len(sigmas) == len(factors)) or not level_iters:
        raise ValueError(
            "level_iters, sigmas and factors must be non-empty and of equal length"
        )
    if any(v < 0 for v in level_iters) or any(f < 1 for f in factors):
        raise ValueError("level_iters must be >= 0 and factors >= 1")
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)) or nbins < 2:
        raise ValueError(f"nbins must be an integer >= 2, got {nbins!r}")
    if prealigner not in PREALIGNERS:
        raise ValueError(f"prealigner must be one of {list(PREALIGNERS)}, got {prealigner!r}")
    return {"method": _KEY_NAMES[prealigner], "level_iters": level_iters,
            "sigmas": sigmas, "factors": factors, "nbins": int(nbins),
            "pipeline": ["center_of_mass", "translation", "rigid"]}


def _spatial_shape(name, path):
    shape = tuple(_read_header(name, path).shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_grids(files):
    """Labels and masks on their image's grid (headers only), named by argument and file."""
    for image, others in (("fixed_image", ("fixed_labels", "fixed_mask")),
                          ("moving_image", ("moving_labels", "moving_mask"))):
        ref = _spatial_shape(image, files[image])
        for name in others:
            if files[name] is None:
                continue
            shape = _spatial_shape(name, files[name])
            if shape != ref:
                raise ValueError(
                    f"{name} {files[name]} has shape {shape}, but {image} "
                    f"{files[image]} has shape {ref}"
                )


def _cache_inputs(files):
    """The resolved input paths that, with the parameters, key the cache."""
    keys = ("fixed_image", "moving_image", "moving_labels", "moving_mask",
            "to_template", "from_template")
    return {k: (str(Path(files[k]).resolve()) if files[k] is not None else None) for k in keys}


def _safe_id(pair_id):
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in pair_id)


def cache_folder(cache_root, pair_id, inputs, params):
    """``<cache_root>/<pair id>__<hash of inputs and params>``."""
    return Path(cache_root) / f"{_safe_id(pair_id)}__{_cache_hash(inputs, params)}"


def _fastsyn_rigid(static, moving, f_aff, m_aff, params, threads):
    from fastsyn.register import _affine_registration

    return _affine_registration(
        moving, static, moving_affine=m_aff, static_affine=f_aff,
        pipeline=params["pipeline"], level_iters=params["level_iters"],
        sigmas=params["sigmas"], factors=params["factors"], nbins=params["nbins"],
        num_threads=threads)[1]


def _dipy_rigid(static, moving, f_aff, m_aff, params, threads):
    from dipy.align import affine_registration

    return affine_registration(
        moving, static, moving_affine=m_aff, static_affine=f_aff,
        pipeline=params["pipeline"], level_iters=params["level_iters"],
        sigmas=params["sigmas"], factors=params["factors"], nbins=params["nbins"])[1]


# RAS (nibabel, DIPY) <-> LPS (ITK): negate the first two world axes.
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ants_rigid(static, moving, f_aff, m_aff, params, threads):
    """antspyx ``Rigid`` (mattes MI; ``Affine`` when the pipeline ends in
    ``affine``); ITK's LPS transform turned into RAS."""
    import ants

    # ITK reads its thread count once, from this variable, when first used
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(threads or 1))
    with tempfile.TemporaryDirectory(prefix="fastsyn-prealign-ants-") as tmp:
        images = []
        for name, data, aff in (("fixed", static, f_aff), ("moving", moving, m_aff)):
            path = str(Path(tmp) / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(data.astype(np.float32), aff), path)
            images.append(ants.image_read(path))
        f, m = images
        kind = "Affine" if params["pipeline"][-1] == "affine" else "Rigid"
        reg = ants.registration(f, m, type_of_transform=kind,
                                aff_iterations=tuple(params["level_iters"]),
                                aff_shrink_factors=tuple(params["factors"]),
                                aff_smoothing_sigmas=tuple(params["sigmas"]),
                                outprefix=str(Path(tmp) / "rigid_"))
        tx = ants.read_transform(reg["fwdtransforms"][0])
    par = np.asarray(tx.parameters, dtype=np.float64)
    center = np.asarray(tx.fixed_parameters, dtype=np.float64)
    lin, trans = par[:9].reshape(3, 3), par[9:12]
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = trans + center - lin @ center
    return _FLIP @ lps @ _FLIP


def _greedy_rigid(static, moving, f_aff, m_aff, params, threads):
    """greedy ``-a -dof 6`` (NMI; ``-dof 12`` when the pipeline ends in ``affine``);
    its matrix is already RAS, fixed -> moving."""
    import io

    from picsl_greedy import Greedy3D

    from .methods import _QuietFds

    with tempfile.TemporaryDirectory(prefix="fastsyn-prealign-greedy-") as tmp:
        tmp = Path(tmp)
        fx, mv, out = tmp / "fixed.nii.gz", tmp / "moving.nii.gz", tmp / "rigid.mat"
        nib.save(nib.Nifti1Image(static.astype(np.float32), f_aff), str(fx))
        nib.save(nib.Nifti1Image(moving.astype(np.float32), m_aff), str(mv))
        log = io.StringIO()
        dof = 12 if params["pipeline"][-1] == "affine" else 6
        cmd = (f"-d 3 -a -dof {dof} -i {fx} {mv} -o {out} -m NMI -ia-image-centers "
               f"-n {'x'.join(str(v) for v in params['level_iters'])} "
               f"-threads {threads or 1}")
        try:
            with _QuietFds(tmp / "greedy.log"):
                Greedy3D().execute(cmd, out=log, err=log)
        except Exception as exc:
            tail = (log.getvalue() + (tmp / "greedy.log").read_text(errors="replace"))
            raise RuntimeError(f"greedy rigid failed: {exc}; log tail: {tail[-2000:]}") from exc
        return np.loadtxt(out).reshape(4, 4)


#: Rigid registration by prealigner: ``(static, moving, static affine, moving
#: affine, params, threads) -> 4x4 matrix``, fixed world point -> moving one.
RIGID = {"fastsyn": _fastsyn_rigid, "dipy": _dipy_rigid, "ants": _ants_rigid,
         "greedy": _greedy_rigid}


def _register_rigid(files, params, prealigner="fastsyn", threads=1):
    """Rigid registration of the moving image to the fixed one, then resampling.

    Returns
    -------
    dict
        ``affine`` (fixed grid), ``rigid`` (4x4), ``arrays`` (file name ->
        array to write: the moving image, labels and, when given, mask and
        true displacement, all on the fixed grid).
    """
    from dipy.align.imaffine import AffineMap

    from fastsyn._validation import check_contrast
    from fastsyn.register import check_overlap, foreground

    f_img, f_data = _load_volume("fixed_image", files["fixed_image"])
    m_img, m_data = _load_volume("moving_image", files["moving_image"])
    _, ml_data = _load_volume("moving_labels", files["moving_labels"])
    if ml_data.shape != m_data.shape:
        raise ValueError(
            f"moving_labels shape {ml_data.shape} differs from moving_image "
            f"shape {m_data.shape}"
        )
    static = f_data.astype(np.float64)
    moving = m_data.astype(np.float64)
    for name, arr in (("fixed_image", static), ("moving_image", moving)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} ({files[name]}) contains NaN or infinite values")
        check_contrast(f"{name} ({files[name]})", arr)
    rigid = np.asarray(RIGID[prealigner](static, moving, f_img.affine, m_img.affine, params,
                                         threads), dtype=np.float64)
    amap = AffineMap(rigid, domain_grid_shape=static.shape,
                     domain_grid2world=f_img.affine,
                     codomain_grid_shape=moving.shape,
                     codomain_grid2world=m_img.affine)
    on_fixed = amap.transform(foreground(moving).astype(np.float64), interpolation="nearest")
    check_overlap(foreground(static), on_fixed > 0.5, f"fixed_image ({files['fixed_image']})",
                  f"moving_image ({files['moving_image']})")
    arrays = {"moving.nii.gz": amap.transform(moving, interpolation="linear").astype(np.float32)}
    lab_dtype = ml_data.dtype if ml_data.dtype.kind in "iu" else np.int32
    warped_lab = amap.transform(ml_data.astype(np.float64), interpolation="nearest")
    arrays["moving_labels.nii.gz"] = np.rint(warped_lab).astype(lab_dtype)
    if files["moving_mask"] is not None:
        _, mm = _load_volume("moving_mask", files["moving_mask"])
        wm = amap.transform((mm > 0).astype(np.float64), interpolation="nearest")
        arrays["moving_mask.nii.gz"] = (wm > 0.5).astype(np.uint8)
    if files["to_template"] is not None and files["from_template"] is not None:
        arrays["truth.nii.gz"] = _true_displacement(
            static.shape, f_img.affine, files["to_template"], files["from_template"], rigid)
    return {"affine": f_img.affine, "rigid": rigid, "arrays": arrays}


def _write_cache(folder, pair_id, outputs, meta):
    """Fill a temporary sibling of ``folder`` and rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{_safe_id(pair_id)}-", dir=folder.parent))
    try:
        files = {}
        for name, data in outputs["arrays"].items():
            nib.save(nib.Nifti1Image(data, outputs["affine"]), str(tmp / name))
            files[name] = True
        np.savetxt(tmp / "rigid.txt", outputs["rigid"])
        meta = {"pair": pair_id, **meta, "files": files,
                "rigid": np.asarray(outputs["rigid"]).tolist()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            # another process finished the same pair first: use its files
            if not (folder / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prealign_pair(fixed_image, moving_image, moving_labels, cache_root, *,
                  fixed_labels, pair_id, fixed_mask=None, moving_mask=None,
                  fixed_truth_to_template=None, moving_truth_from_template=None,
                  level_iters=DEFAULT_LEVEL_ITERS, sigmas=DEFAULT_SIGMAS,
                  factors=DEFAULT_FACTORS, nbins=32, prealigner="fastsyn", threads=1):
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
    prealigner : {"fastsyn", "dipy", "ants", "greedy"}
        Who registers (see :data:`PREALIGNERS`); part of the cache key.
    threads : int or None
        Threads of the registration (not part of the cache key).

    Returns
    -------
    Prealigned
        Paths of the prealigned files and the rigid matrix.
    """
    files = _check_files(fixed_image=fixed_image, moving_image=moving_image,
                         moving_labels=moving_labels, fixed_labels=fixed_labels,
                         fixed_mask=fixed_mask, moving_mask=moving_mask,
                         to_template=fixed_truth_to_template,
                         from_template=moving_truth_from_template)
    params = _rigid_params(level_iters, sigmas, factors, nbins, prealigner)
    if not isinstance(cache_root, (str, os.PathLike)) or str(cache_root) == "":
        raise ValueError(f"cache_root must be a folder path, got {cache_root!r}")
    if not isinstance(pair_id, str) or not pair_id:
        raise ValueError(f"pair_id must be a non-empty string, got {pair_id!r}")
    _check_grids(files)
    inputs = _cache_inputs(files)
    folder = cache_folder(cache_root, pair_id, inputs, params)
    cached = _read_cached(folder, files["fixed_image"], files["fixed_labels"],
                          files["fixed_mask"])
    if cached is not None:
        return cached
    start = time.perf_counter()
    outputs = _register_rigid(files, params, prealigner, threads)
    _write_cache(folder, pair_id, outputs, {"inputs": inputs, "params": params,
                                            "prealigner": prealigner, "threads": threads,
                                            "seconds": time.perf_counter() - start})
    return _read_cached(folder, files["fixed_image"], files["fixed_labels"],
                        files["fixed_mask"])


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
