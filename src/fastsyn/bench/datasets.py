"""Datasets for the benchmark: embedded synthetic cohorts and folder datasets.

A dataset on disk is a folder in this layout::

    DIR/<subject>/<modality>.nii.gz      one per modality (t1, t2, flair, ...)
    DIR/<subject>/labels.nii.gz          integer label map (0 = background)
    DIR/<subject>/mask.nii.gz            optional brain mask
    DIR/<subject>/truth_to_template.nii.gz     optional ground truth (embedded)
    DIR/<subject>/truth_from_template.nii.gz   optional ground truth (embedded)
    DIR/dataset.json                     optional stamp (name, modalities)

The embedded cohorts ``embedded-mono`` (T1 only) and ``embedded-multi`` (T1,
T2, FLAIR) are built from nilearn's bundled MNI152 template on first use and
cached (see :func:`load_dataset`).

Ground-truth displacement files are NIfTI images of shape ``(X, Y, Z, 1, 3)``
(float32, intent "vector"), in nibabel's RAS+ world millimetres -- not ITK's
LPS convention.  ``truth_to_template`` lives on the subject grid and maps a
subject point ``x`` to the template point ``x + u(x)``; ``truth_from_template``
lives on the template grid and is its numerical inverse.  Use
:func:`load_displacement` and :func:`true_displacement` to read them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Subject",
    "Dataset",
    "EMBEDDED",
    "GENERATOR_VERSION",
    "STAMP",
    "load_dataset",
    "check_subject",
    "default_cache_root",
    "load_displacement",
    "save_displacement",
    "true_displacement",
    "write_dataset_stamp",
    "convert_lpba40",
    "convert_mrbrains18",
    "convert_oasis",
    "CONVERTERS",
]

#: Name of the JSON stamp at the root of a dataset folder.
STAMP = "dataset.json"
#: Name of the per-subject completion marker of embedded cohorts.
_SUBJECT_DONE = ".complete.json"
#: Bumped whenever the synthetic generator changes its output.
GENERATOR_VERSION = 1

_RESERVED = {"labels", "mask", "truth_to_template", "truth_from_template"}

#: Embedded cohorts: modalities, default subject count, cohort seed and
#: whether T1 is synthesised from the tissue maps (True) or the real template.
EMBEDDED = {
    "embedded-mono": {"modalities": ("t1",), "n_subjects": 8, "seed": 1, "synthetic_contrast": False},
    "embedded-multi": {
        "modalities": ("t1", "t2", "flair"),
        "n_subjects": 7,
        "seed": 2,
        "synthetic_contrast": True,
    },
}


@dataclass
class Subject:
    """One subject of a dataset (paths only; nothing is loaded).

    Attributes
    ----------
    name : str
    images : dict of str to pathlib.Path
        Modality -> NIfTI path, e.g. ``{"t1": Path(".../t1.nii.gz")}``.
    labels : pathlib.Path
        Integer label map.
    mask : pathlib.Path or None
    truth_to_template : pathlib.Path or None
        Displacement (mm, world) on this subject's grid: ``x -> x + u(x)`` in
        template world space.
    truth_from_template : pathlib.Path or None
        Its inverse, on the template grid.
    """

    name: str
    images: dict[str, Path]
    labels: Path
    mask: Path | None = None
    truth_to_template: Path | None = None
    truth_from_template: Path | None = None


@dataclass
class Dataset:
    """A named collection of subjects sharing the same modalities.

    Attributes
    ----------
    name : str
    root : pathlib.Path
    subjects : list of Subject
    modalities : list of str
    """

    name: str
    root: Path
    subjects: list[Subject]
    modalities: list[str]

    @property
    def multimodal(self) -> bool:
        """True when the dataset has two or more modalities."""
        return len(self.modalities) >= 2

    @property
    def names(self) -> list[str]:
        """Subject names, in dataset order."""
        return [s.name for s in self.subjects]

    def subject(self, name: str) -> Subject:
        """The subject called ``name``.

        Raises
        ------
        KeyError
            If there is no such subject.
        """
        for s in self.subjects:
            if s.name == name:
                return s
        raise KeyError(f"dataset {self.name!r} has no subject {name!r}")

    def __len__(self) -> int:
        return len(self.subjects)


# --------------------------------------------------------------------------
# NIfTI helpers
# --------------------------------------------------------------------------


def _nii(path: Path, suffix: str) -> Path:
    return path / f"{suffix}.nii.gz"


def _find_nii(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _save_nifti(data, affine, path, *, dtype=None, intent=None):
    import nibabel as nib

    data = np.asarray(data)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(data.dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    if intent is not None:
        img.header.set_intent(intent)
    nib.save(img, str(path))


def save_displacement(disp, affine, path) -> None:
    """Write a displacement field as a 5D NIfTI ``(X, Y, Z, 1, 3)`` float32.

    Values are rounded to multiples of 2**-10 mm (below 0.001 mm), which
    leaves low mantissa bits at zero so gzip compresses them well.

    Parameters
    ----------
    disp : ndarray, shape ``(X, Y, Z, 3)``
        Displacement in world mm (RAS+).
    affine : ndarray, (4, 4)
        Grid-to-world affine of the field's grid.
    path : str or pathlib.Path
    """
    disp = np.asarray(disp, dtype=np.float64)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"disp must have shape (X, Y, Z, 3), got {disp.shape}")
    q = (np.round(disp * 1024.0) / 1024.0).astype(np.float32)
    _save_nifti(q[:, :, :, None, :], affine, path, intent="vector")


def load_displacement(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a displacement field written by :func:`save_displacement`.

    Parameters
    ----------
    path : str or pathlib.Path
        NIfTI of shape ``(X, Y, Z, 3)`` or ``(X, Y, Z, 1, 3)``.

    Returns
    -------
    disp : ndarray, float32, shape ``(X, Y, Z, 3)``
    affine : ndarray, (4, 4)

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the shape is not that of a 3D vector field.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"displacement file not found: {path}")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[-1] != 3:
        raise ValueError(f"{path}: expected a (X, Y, Z, [1,] 3) displacement field, got {img.shape}")
    return np.ascontiguousarray(data), img.affine.copy()


def true_displacement(fixed: Subject, moving: Subject) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth displacement between two subjects of a synthetic cohort.

    Parameters
    ----------
    fixed, moving : Subject
        Both need ``truth_to_template`` / ``truth_from_template``.

    Returns
    -------
    disp : ndarray, float32, shape ``fixed grid + (3,)``
        For every fixed-grid point ``x`` (world mm), ``x + disp(x)`` is the
        corresponding point in the moving subject's world space.
    affine : ndarray
        The fixed grid's affine.

    Raises
    ------
    ValueError
        If either subject has no ground truth.
    """
    from .synth import grid_points, sample_field

    for role, s in (("fixed", fixed), ("moving", moving)):
        if s.truth_to_template is None or s.truth_from_template is None:
            raise ValueError(f"{role} subject {s.name!r} has no ground-truth deformation")
    u, aff_f = load_displacement(fixed.truth_to_template)
    w, aff_t = load_displacement(moving.truth_from_template)
    pts = grid_points(u.shape[:3], aff_f)
    y = pts + u
    z = y + sample_field(w, aff_t, y)
    return (z - pts).astype(np.float32), aff_f


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _spatial(shape, path):
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise ValueError(f"{path}: expected a 2D or 3D image, got shape {shape}")
    return shape


def check_subject(subject: Subject, *, full: bool = True) -> tuple[int, ...]:
    """Validate one subject's files.

    Checks that every file exists and is readable, that images, labels and mask
    share one grid (shape and affine), and (with ``full``) that the label map
    is integer-valued and not all zero and that the mask is not empty.

    Parameters
    ----------
    subject : Subject
    full : bool
        Also read the label and mask data (slower); otherwise headers only.

    Returns
    -------
    tuple of int
        The spatial shape of the subject's grid.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        If anything else is wrong; the message names the subject and file.
    """
    import nibabel as nib

    if not isinstance(subject, Subject):
        raise TypeError(f"subject must be a Subject, got {type(subject).__name__}")
    who = f"subject {subject.name!r}"
    if not subject.images:
        raise ValueError(f"{who} has no images")
    files = {f"image {m!r}": Path(p) for m, p in subject.images.items()}
    files["labels"] = Path(subject.labels)
    if subject.mask is not None:
        files["mask"] = Path(subject.mask)
    for what, path in files.items():
        if not path.exists():
            raise FileNotFoundError(f"{who}: {what} file not found: {path}")
    headers = {}
    for what, path in files.items():
        try:
            headers[what] = nib.load(str(path))
        except Exception as exc:  # nibabel raises several types
            raise ValueError(f"{who}: cannot read {what} file {path}: {exc}") from exc
    ref = headers["labels"]
    ref_shape = _spatial(ref.shape, files["labels"])
    for what, img in headers.items():
        shape = _spatial(img.shape, files[what])
        if shape != ref_shape:
            raise ValueError(
                f"{who}: {what} shape {shape} does not match the labels shape {ref_shape}"
            )
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(f"{who}: {what} affine differs from the labels affine")
    if full:
        lab = np.asanyarray(ref.dataobj)
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
                raise ValueError(
                    f"{who}: label map {files['labels']} is not integer-valued (dtype {lab.dtype})"
                )
        if not np.any(lab):
            raise ValueError(f"{who}: label map {files['labels']} is all zero")
        if "mask" in headers and not np.any(np.asanyarray(headers["mask"].dataobj)):
            raise ValueError(f"{who}: mask {files['mask']} is empty")
    for what in ("truth_to_template", "truth_from_template"):
        path = getattr(subject, what)
        if path is None:
            continue
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{who}: {what} file not found: {path}")
        shape = tuple(nib.load(str(path)).shape)
        if len(shape) not in (4, 5) or shape[-1] != 3:
            raise ValueError(f"{who}: {what} {path} is not a 3-vector field (shape {shape})")
        if what == "truth_to_template" and shape[:3] != ref_shape:
            raise ValueError(
                f"{who}: {what} grid {shape[:3]} does not match the labels shape {ref_shape}"
            )
    return ref_shape


# --------------------------------------------------------------------------
# Folder datasets
# --------------------------------------------------------------------------


def write_dataset_stamp(root, name, modalities, subjects, **extra) -> Path:
    """Write ``root/dataset.json`` atomically.

    Parameters
    ----------
    root : str or pathlib.Path
    name : str
    modalities : sequence of str
    subjects : sequence of str
    **extra
        More JSON-serialisable entries.

    Returns
    -------
    pathlib.Path
        The stamp's path.
    """
    root = Path(root)
    data = {"name": name, "modalities": list(modalities), "subjects": list(subjects), **extra}
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".stamp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, root / STAMP)
    return root / STAMP


def _read_stamp(root: Path) -> dict:
    path = root / STAMP
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"dataset stamp {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"dataset stamp {path} must hold a JSON object")
    return data


def _subject_from_dir(folder: Path) -> Subject:
    labels = _find_nii(folder, "labels")
    if labels is None:
        raise ValueError(f"subject folder {folder} has no labels.nii.gz")
    images = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."):
            stem = _stem(p)
            if stem not in _RESERVED:
                images[stem] = p
    return Subject(
        name=folder.name,
        images=images,
        labels=labels,
        mask=_find_nii(folder, "mask"),
        truth_to_template=_find_nii(folder, "truth_to_template"),
        truth_from_template=_find_nii(folder, "truth_from_template"),
    )


def _load_folder(root: Path, *, name=None, n_subjects=None, check=True) -> Dataset:
    if not root.exists():
        raise FileNotFoundError(
            f"dataset folder not found: {root} (embedded datasets: {sorted(EMBEDDED)})"
        )
    if not root.is_dir():
        raise ValueError(f"dataset path {root} is not a folder")
    stamp = _read_stamp(root)
    dirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    if "subjects" in stamp:
        listed = [str(s) for s in stamp["subjects"]]
        missing = [s for s in listed if not (root / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"dataset {root}: subject folders missing: {missing}")
        dirs = [root / s for s in listed]
    if not dirs:
        raise ValueError(
            f"dataset folder {root} is empty: expected DIR/<subject>/<modality>.nii.gz "
            "and DIR/<subject>/labels.nii.gz"
        )
    if n_subjects is not None:
        dirs = dirs[:n_subjects]
    subjects = [_subject_from_dir(d) for d in dirs]
    if "modalities" in stamp:
        modalities = [str(m) for m in stamp["modalities"]]
    else:
        found = sorted({m for s in subjects for m in s.images})
        modalities = (["t1"] if "t1" in found else []) + [m for m in found if m != "t1"]
    if not modalities:
        raise ValueError(f"dataset {root}: no image files found in the subject folders")
    for s in subjects:
        missing = [m for m in modalities if m not in s.images]
        if missing:
            raise ValueError(f"dataset {root}: subject {s.name!r} lacks modalities {missing}")
        s.images = {m: s.images[m] for m in modalities}
        if check:
            check_subject(s)
    return Dataset(
        name=name or str(stamp.get("name") or root.name),
        root=root,
        subjects=subjects,
        modalities=modalities,
    )


# --------------------------------------------------------------------------
# Embedded cohorts
# --------------------------------------------------------------------------


def default_cache_root() -> Path:
    """Folder under which embedded cohorts are cached.

    ``$FASTSYN_CACHE`` if set, else ``~/.cache/fastsyn``.
    """
    env = os.environ.get("FASTSYN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastsyn"


def _res_tag(spacing) -> str:
    if len(set(spacing)) == 1:
        return f"{spacing[0]:g}mm"
    return "x".join(f"{s:g}" for s in spacing) + "mm"


def _subject_name(i: int) -> str:
    return f"S{i + 1:02d}"


def _write_embedded_subject(root: Path, name: str, index: int, spec: dict, spacing) -> None:
    from . import synth

    tpl = synth.load_template(spacing)
    subj = synth.make_subject(
        tpl,
        [spec["seed"], index],
        modalities=spec["modalities"],
        synthetic_contrast=spec["synthetic_contrast"],
    )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
    try:
        for m, img in subj.images.items():
            _save_nifti(img, subj.affine, _nii(tmp, m), dtype=np.float32)
        _save_nifti(subj.labels, subj.affine, _nii(tmp, "labels"), dtype=np.int16)
        _save_nifti(subj.mask, subj.affine, _nii(tmp, "mask"), dtype=np.uint8)
        save_displacement(subj.to_template, subj.affine, _nii(tmp, "truth_to_template"))
        save_displacement(subj.from_template, subj.template_affine, _nii(tmp, "truth_from_template"))
        (tmp / _SUBJECT_DONE).write_text(json.dumps({"index": index, **subj.params}, indent=1))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same subject first; its copy is identical.
            if not (final / _SUBJECT_DONE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_embedded(name, spacing, root: Path, n: int, progress=True) -> None:
    from . import synth

    spec = EMBEDDED[name]
    stamp_info = {
        "generator": "fastsyn.bench.synth",
        "version": GENERATOR_VERSION,
        "resolution": list(spacing),
        "cohort_seed": spec["seed"],
    }
    root.mkdir(parents=True, exist_ok=True)
    stamp = _read_stamp(root) if (root / STAMP).exists() else {}
    if stamp and any(stamp.get(k) != v for k, v in stamp_info.items()):
        # Stale cache from another generator version: rebuild from scratch.
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
    todo = [
        i for i in range(n) if not (root / _subject_name(i) / _SUBJECT_DONE).exists()
    ]
    if todo:
        from tqdm.auto import tqdm

        for i in tqdm(todo, desc=f"building {name} ({_res_tag(spacing)})", disable=not progress,
                      unit="subject"):
            _write_embedded_subject(root, _subject_name(i), i, spec, spacing)
    have = sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and re.fullmatch(r"S\d+", p.name) and (p / _SUBJECT_DONE).exists()
    )
    labels = {int(v): synth.label_name(v) for v in range(1, 3 * synth.N_REGIONS + 1)}
    write_dataset_stamp(root, name, spec["modalities"], have, labels=labels, **stamp_info)


def load_dataset(name_or_dir, *, cache_dir=None, resolution=2.0, n_subjects=None,
                 check=True, progress=True) -> Dataset:
    """Load a dataset by name (embedded cohort) or folder path.

    Parameters
    ----------
    name_or_dir : str or pathlib.Path
        ``"embedded-mono"`` (8 subjects, modality ``t1``), ``"embedded-multi"``
        (7 subjects, ``t1``, ``t2``, ``flair``), or a folder in the layout
        ``DIR/<subject>/<modality>.nii.gz`` + ``labels.nii.gz``.
    cache_dir : str or pathlib.Path, optional
        Root of the embedded-cohort cache; the cohort lives in
        ``<cache_dir>/<name>-<res>mm``.  Default ``$FASTSYN_CACHE`` or
        ``~/.cache/fastsyn``.  Ignored for folders.
    resolution : float or sequence of 3 floats
        Voxel size (mm) of embedded cohorts (2 mm default, 1 mm native).
        Ignored for folders.
    n_subjects : int, optional
        Use the first ``n_subjects`` subjects.  For embedded cohorts any
        positive number is allowed (default 8 mono, 7 multi); subjects are
        deterministic per index, so a larger request only adds subjects.
    check : bool
        Validate folder datasets with :func:`check_subject` (reads labels).
    progress : bool
        Show a progress bar while building an embedded cohort.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        If a folder or file is missing.
    ValueError
        For a bad layout, bad label maps or mismatched grids, or a bad
        ``n_subjects`` / ``resolution``.
    """
    if n_subjects is not None:
        if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)):
            raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
        if n_subjects < 1:
            raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
        n_subjects = int(n_subjects)
    if isinstance(name_or_dir, str) and name_or_dir in EMBEDDED:
        from .synth import resample_spacing

        spacing = resample_spacing(resolution)
        name = name_or_dir
        n = n_subjects if n_subjects is not None else EMBEDDED[name]["n_subjects"]
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        root = base / f"{name}-{_res_tag(spacing)}"
        _build_embedded(name, spacing, root, n, progress=progress)
        ds = _load_folder(root, name=name, check=False)
        ds.subjects = ds.subjects[:n]
        return ds
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise ValueError(
            f"name_or_dir must be a dataset name or folder path, got {type(name_or_dir).__name__}"
        )
    return _load_folder(Path(name_or_dir).expanduser(), n_subjects=n_subjects, check=check)


from .convert import CONVERTERS, convert_lpba40, convert_mrbrains18, convert_oasis  # noqa: E402
