"""The on-disk layout of a dataset folder, and how to read and write it.

A dataset on disk is a folder in this layout::

    DIR/<subject>/<modality>.nii.gz      one per modality (t1, t2, flair, ...)
    DIR/<subject>/labels.nii.gz          integer label map (0 = background)
    DIR/<subject>/mask.nii.gz            optional brain mask
    DIR/<subject>/truth_to_template.nii.gz     optional ground truth (embedded)
    DIR/<subject>/truth_from_template.nii.gz   optional ground truth (embedded)
    DIR/dataset.json                     optional stamp (name, modalities)

This module is the bottom of the dataset stack: the converters
(:mod:`fastsyn.bench.convert`) write folders with :func:`save_nifti` and
:func:`write_dataset_stamp` and read them back with :func:`load_folder`;
:mod:`fastsyn.bench.datasets` adds the embedded cohorts and the public
:func:`~fastsyn.bench.datasets.load_dataset` on top.  It imports no other
module of :mod:`fastsyn.bench`, so neither of those two has to import the other.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Subject",
    "Dataset",
    "STAMP",
    "check_subject",
    "load_folder",
    "read_stamp",
    "save_nifti",
    "write_dataset_stamp",
]

#: Name of the JSON stamp at the root of a dataset folder.
STAMP = "dataset.json"

#: File stems of a subject folder that are not images.
RESERVED = frozenset({"labels", "mask", "truth_to_template", "truth_from_template"})


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
        Every modality of the dataset.  A *sparse* dataset (stamp
        ``"sparse_modalities": true``) lets a subject have only some of them.
    synthetic : list of str
        Subjects marked synthetic in the stamp (pairs of two of them are left
        out by :func:`~fastsyn.bench.pairs.make_pairs`).
    label_names : dict of int to str
        Names of the label values, from the stamp's ``"labels"`` (e.g.
        ``{1: "csf", 2: "gm", 3: "wm"}``); empty when the stamp names none.
    """

    name: str
    root: Path
    subjects: list[Subject]
    modalities: list[str]
    synthetic: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)

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
# NIfTI files
# --------------------------------------------------------------------------


def nii_path(folder: Path, stem: str) -> Path:
    """``folder/<stem>.nii.gz``, the name every writer of this package uses."""
    return folder / f"{stem}.nii.gz"


def find_nii(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.nii.gz`` or ``folder/<stem>.nii``, whichever exists first."""
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def nii_stem(path: Path) -> str:
    """The file name without its ``.nii.gz`` / ``.nii`` suffix."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def save_nifti(data, affine, path, *, dtype=None, intent=None) -> None:
    """Write an array as NIfTI-1 with both qform and sform set to ``affine``.

    Parameters
    ----------
    data : array_like
    affine : array_like, (4, 4)
        Grid-to-world matrix (RAS+ mm).
    path : str or pathlib.Path
    dtype : numpy dtype, optional
        On-disk type; default the array's own.
    intent : str, optional
        NIfTI intent code name (e.g. ``"vector"``).
    """
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


def read_image_header(path: Path, what: str, who: str = ""):
    """``nibabel.load`` that names the file when it is not a readable image.

    Raises
    ------
    ValueError
        If nibabel cannot read the header (truncated, corrupt or foreign file).
    """
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types
        prefix = f"{who}: " if who else ""
        raise ValueError(f"{prefix}cannot read {what} file {path}: {exc}") from exc


def read_image_data(img, path: Path, what: str, who: str = "") -> np.ndarray:
    """The data of a loaded image; a truncated data block names the file.

    Raises
    ------
    ValueError
        If the data cannot be read (e.g. the file is shorter than its header says).
    """
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, OSError, zlib.error, ValueError ...
        prefix = f"{who}: " if who else ""
        raise ValueError(f"{prefix}cannot read the data of {what} file {path}: {exc}") from exc


# --------------------------------------------------------------------------
# Dataset stamp
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


def read_stamp(root: Path) -> dict:
    """The stamp of a dataset folder as a dict (empty when there is none).

    Raises
    ------
    ValueError
        If the stamp is not a JSON object; the message names the file.
    """
    path = Path(root) / STAMP
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"dataset stamp {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"dataset stamp {path} must hold a JSON object")
    return data


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


def _subject_files(subject: Subject, who: str) -> dict:
    """Role -> path of a subject's images, labels and mask; all must exist."""
    if not subject.images:
        raise ValueError(f"{who} has no images")
    files = {f"image {m!r}": Path(p) for m, p in subject.images.items()}
    files["labels"] = Path(subject.labels)
    if subject.mask is not None:
        files["mask"] = Path(subject.mask)
    for what, path in files.items():
        if not path.exists():
            raise FileNotFoundError(f"{who}: {what} file not found: {path}")
    return files


def _check_same_grid(headers: dict, files: dict, who: str) -> tuple[int, ...]:
    """Every header on the label map's grid (shape and affine); returns the shape."""
    ref = headers["labels"]
    ref_shape = _spatial(ref.shape, files["labels"])
    for what, img in headers.items():
        shape = _spatial(img.shape, files[what])
        if shape != ref_shape:
            raise ValueError(
                f"{who}: {what} {files[what]} shape {shape} does not match the labels "
                f"shape {ref_shape}"
            )
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(f"{who}: {what} {files[what]} affine differs from the labels affine")
    return ref_shape


def _check_contents(headers: dict, files: dict, who: str) -> None:
    """Integer-valued, non-empty label map and non-empty mask.

    Image data are not read here (that would double the reading time of a
    cohort); a truncated image fails when a pair reads it and is recorded
    with its path as that pair's error.
    """
    lab = read_image_data(headers["labels"], files["labels"], "labels", who)
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
            raise ValueError(
                f"{who}: label map {files['labels']} is not integer-valued (dtype {lab.dtype})"
            )
    if not np.any(lab):
        raise ValueError(f"{who}: label map {files['labels']} is all zero")
    if "mask" in headers:
        mask = read_image_data(headers["mask"], files["mask"], "mask", who)
        if not np.any(mask):
            raise ValueError(f"{who}: mask {files['mask']} is empty")


def _check_truth(subject: Subject, who: str, ref_shape) -> None:
    """Ground-truth fields, when present, are 3-vector fields; ``to`` on the subject grid."""
    for what in ("truth_to_template", "truth_from_template"):
        path = getattr(subject, what)
        if path is None:
            continue
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{who}: {what} file not found: {path}")
        shape = tuple(read_image_header(path, what, who).shape)
        if len(shape) not in (4, 5) or shape[-1] != 3:
            raise ValueError(f"{who}: {what} {path} is not a 3-vector field (shape {shape})")
        if what == "truth_to_template" and shape[:3] != ref_shape:
            raise ValueError(
                f"{who}: {what} grid {shape[:3]} does not match the labels shape {ref_shape}"
            )


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
    if not isinstance(subject, Subject):
        raise TypeError(f"subject must be a Subject, got {type(subject).__name__}")
    who = f"subject {subject.name!r}"
    files = _subject_files(subject, who)
    headers = {what: read_image_header(path, what, who) for what, path in files.items()}
    ref_shape = _check_same_grid(headers, files, who)
    if full:
        _check_contents(headers, files, who)
    _check_truth(subject, who, ref_shape)
    return ref_shape


# --------------------------------------------------------------------------
# Reading a folder
# --------------------------------------------------------------------------


def subject_from_dir(folder: Path) -> Subject:
    """The :class:`Subject` whose files are in ``folder`` (nothing is read).

    Raises
    ------
    ValueError
        If the folder has no label map.
    """
    labels = find_nii(folder, "labels")
    if labels is None:
        raise ValueError(f"subject folder {folder} has no labels.nii.gz")
    images = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."):
            stem = nii_stem(p)
            if stem not in RESERVED:
                images[stem] = p
    return Subject(
        name=folder.name,
        images=images,
        labels=labels,
        mask=find_nii(folder, "mask"),
        truth_to_template=find_nii(folder, "truth_to_template"),
        truth_from_template=find_nii(folder, "truth_from_template"),
    )


def subject_dirs(root: Path, stamp: dict) -> list[Path]:
    """Subject folders of a dataset: the stamp's list, else every visible sub-folder.

    Raises
    ------
    FileNotFoundError
        If the stamp lists a subject whose folder is missing.
    ValueError
        If there is no subject folder.
    """
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
    return dirs


def dataset_modalities(root: Path, stamp: dict, subjects: list[Subject]) -> list[str]:
    """The stamp's modalities, else every image stem found (``t1`` first)."""
    if "modalities" in stamp:
        modalities = [str(m) for m in stamp["modalities"]]
    else:
        found = sorted({m for s in subjects for m in s.images})
        modalities = (["t1"] if "t1" in found else []) + [m for m in found if m != "t1"]
    if not modalities:
        raise ValueError(f"dataset {root}: no image files found in the subject folders")
    return modalities


def keep_modalities(root: Path, subject: Subject, modalities: list[str]) -> None:
    """Restrict ``subject.images`` to ``modalities``, in that order.

    Raises
    ------
    ValueError
        If the subject lacks one of them; the message names the files expected.
    """
    missing = [m for m in modalities if m not in subject.images]
    if missing:
        folder = Path(subject.labels).parent
        expected = [str(nii_path(folder, m)) for m in missing]
        raise ValueError(
            f"dataset {root}: subject {subject.name!r} lacks modalities {missing} "
            f"(expected {expected})"
        )
    subject.images = {m: subject.images[m] for m in modalities}


def load_folder(root, *, name=None, n_subjects=None, check=True) -> Dataset:
    """Read a dataset folder (see the module docstring for its layout).

    Parameters
    ----------
    root : str or pathlib.Path
    name : str, optional
        Dataset name; default the stamp's name, else the folder name.
    n_subjects : int, optional
        Keep the first ``n_subjects`` subjects.
    check : bool
        Validate every subject with :func:`check_subject`.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        If the folder, a subject folder or a modality file is missing.
    ValueError
        For a bad layout or stamp, or a subject that fails :func:`check_subject`.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"dataset path {root} is not a folder")
    stamp = read_stamp(root)
    dirs = subject_dirs(root, stamp)
    if n_subjects is not None:
        dirs = dirs[:n_subjects]
    subjects = [subject_from_dir(d) for d in dirs]
    modalities = dataset_modalities(root, stamp, subjects)
    sparse = bool(stamp.get("sparse_modalities"))
    for s in subjects:
        if sparse:
            s.images = {m: s.images[m] for m in modalities if m in s.images}
            if not s.images:
                raise ValueError(f"dataset {root}: subject {s.name!r} has none of the "
                                 f"modalities {modalities}")
        else:
            keep_modalities(root, s, modalities)
        if check:
            check_subject(s)
    return Dataset(
        name=name or str(stamp.get("name") or root.name),
        root=root,
        subjects=subjects,
        modalities=modalities,
        synthetic=[str(n) for n in stamp.get("synthetic", [])],
        label_names=_label_names(root, stamp),
    )


def _label_names(root, stamp):
    """The stamp's ``"labels"`` as ``{value: name}`` (empty when absent)."""
    names = stamp.get("labels")
    if names is None:
        return {}
    try:
        return {int(k): str(v) for k, v in dict(names).items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dataset {root}: the stamp's \"labels\" must map label values "
                         f"to names, got {names!r}") from exc
