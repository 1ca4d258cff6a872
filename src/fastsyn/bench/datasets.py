"""Datasets for the benchmark: embedded synthetic cohorts and folder datasets.

A dataset on disk is a folder in this layout::

    DIR/<subject>/<modality>.nii.gz      one per modality (t1, t2, flair, ...)
    DIR/<subject>/labels.nii.gz          integer label map (0 = background)
    DIR/<subject>/mask.nii.gz            optional brain mask
    DIR/<subject>/truth_to_template.nii.gz     optional ground truth (embedded)
    DIR/<subject>/truth_from_template.nii.gz   optional ground truth (embedded)
    DIR/dataset.json                     optional stamp (name, modalities)

The folder format itself (and :class:`Subject`, :class:`Dataset`,
:func:`check_subject`) lives in :mod:`fastsyn.bench.layout`; this module adds
the embedded cohorts and re-exports the folder names and the converters of
:mod:`fastsyn.bench.convert`, so one import serves every caller.

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
from pathlib import Path

import numpy as np

from .convert import (
    CONVERTERS,
    biased,
    convert_lpba40,
    convert_mrbrains18,
    convert_oasis,
    noisy,
    thick_slices,
)
from .layout import (
    STAMP,
    Dataset,
    Subject,
    check_subject,
    load_folder,
    nii_path,
    read_image_data,
    read_image_header,
    read_stamp,
    save_nifti,
    write_dataset_stamp,
)

__all__ = [
    "Subject",
    "Dataset",
    "EMBEDDED",
    "NAMED",
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
    "thick_slices",
    "noisy",
    "biased",
]

#: Name of the per-subject completion marker of embedded cohorts.
_SUBJECT_DONE = ".complete.json"
#: Bumped whenever the synthetic generator changes its output.
GENERATOR_VERSION = 2

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


# --------------------------------------------------------------------------
# Displacement files
# --------------------------------------------------------------------------


#: Every dataset known by name: the embedded cohorts and the real-anatomy set
#: (:mod:`fastsyn.bench.realset`, built into the cache on first use).
NAMED = (*EMBEDDED, "real", "real-heads")


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
    save_nifti(q[:, :, :, None, :], affine, path, intent="vector")


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
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"displacement file not found: {path}")
    img = read_image_header(path, "displacement")
    data = np.asarray(read_image_data(img, path, "displacement"), dtype=np.float32)
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
            save_nifti(img, subj.affine, nii_path(tmp, m), dtype=np.float32)
        save_nifti(subj.labels, subj.affine, nii_path(tmp, "labels"), dtype=np.int16)
        save_nifti(subj.mask, subj.affine, nii_path(tmp, "mask"), dtype=np.uint8)
        save_displacement(subj.to_template, subj.affine, nii_path(tmp, "truth_to_template"))
        save_displacement(subj.from_template, subj.template_affine, nii_path(tmp, "truth_from_template"))
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


def _clear_stale_cache(root: Path, stamp_info: dict) -> None:
    """Empty ``root`` when its stamp comes from another generator or resolution."""
    stamp = read_stamp(root) if (root / STAMP).exists() else {}
    if stamp and any(stamp.get(k) != v for k, v in stamp_info.items()):
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()


def _finished_subjects(root: Path) -> list[str]:
    """Names of the embedded subjects whose folder is complete, sorted."""
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and re.fullmatch(r"S\d+", p.name) and (p / _SUBJECT_DONE).exists()
    )


#: Most subjects built at once: two, as each holds its fields while it is
#: built (three subjects at 1 mm peak at 2.3 GB built one at a time and at
#: 3.9 GB with two threads).
_MAX_BUILD_THREADS = 2


def _build_threads(n_subjects):
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n_subjects, cpus, _MAX_BUILD_THREADS))


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
    _clear_stale_cache(root, stamp_info)
    todo = [
        i for i in range(n) if not (root / _subject_name(i) / _SUBJECT_DONE).exists()
    ]
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        def build(i):
            _write_embedded_subject(root, _subject_name(i), i, spec, spacing)

        with tqdm(total=len(todo), desc=f"building {name} ({_res_tag(spacing)})",
                  disable=not progress, unit="subject") as bar:
            # The first subject fills the template's caches; the others are
            # independent (each its own seed and folder) and spend their time
            # in SciPy's resampling, which releases the GIL: two threads
            # build them side by side, each subject the same bit for bit.
            build(todo[0])
            bar.update()
            with ThreadPoolExecutor(_build_threads(len(todo) - 1)) as pool:
                for _ in pool.map(build, todo[1:]):
                    bar.update()
    labels = {int(v): synth.label_name(v) for v in range(1, 3 * synth.N_REGIONS + 1)}
    write_dataset_stamp(root, name, spec["modalities"], _finished_subjects(root),
                        labels=labels, **stamp_info)


def _check_n_subjects(n_subjects):
    if n_subjects is None:
        return None
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)):
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    return int(n_subjects)


def _load_embedded(name, *, cache_dir, resolution, n_subjects, progress) -> Dataset:
    """Build (if needed) and read the embedded cohort ``name``."""
    from .synth import resample_spacing

    spacing = resample_spacing(resolution)
    n = n_subjects if n_subjects is not None else EMBEDDED[name]["n_subjects"]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    root = base / f"{name}-{_res_tag(spacing)}"
    _build_embedded(name, spacing, root, n, progress=progress)
    ds = load_folder(root, name=name, check=False)
    ds.subjects = ds.subjects[:n]
    return ds


def _load_path(name_or_dir, *, n_subjects, check) -> Dataset:
    """Read a dataset folder; a missing one also lists the embedded names."""
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise ValueError(
            f"name_or_dir must be a dataset name or folder path, got {type(name_or_dir).__name__}"
        )
    root = Path(name_or_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"dataset folder not found: {root} (embedded datasets: {sorted(EMBEDDED)})"
        )
    return load_folder(root, n_subjects=n_subjects, check=check)


def load_dataset(name_or_dir, *, cache_dir=None, resolution=2.0, n_subjects=None,
                 check=True, progress=True) -> Dataset:
    """Load a dataset by name (embedded cohort) or folder path.

    Parameters
    ----------
    name_or_dir : str or pathlib.Path
        ``"embedded-mono"`` (8 subjects, modality ``t1``), ``"embedded-multi"``
        (7 subjects, ``t1``, ``t2``, ``flair``), ``"real"`` (the real-anatomy
        study set of :mod:`fastsyn.bench.realset`), ``"real-heads"`` (the same
        set with the SPM subjects' heads kept), or a folder in the layout
        ``DIR/<subject>/<modality>.nii.gz`` + ``labels.nii.gz``.
    cache_dir : str or pathlib.Path, optional
        Root of the embedded-cohort cache; the cohort lives in
        ``<cache_dir>/<name>-<res>mm``.  Default ``$FASTSYN_CACHE`` or
        ``~/.cache/fastsyn``.  Ignored for folders.
    resolution : float or sequence of 3 floats
        Voxel size (mm) of embedded cohorts (2 mm default, 1 mm native) and
        of the real set (one float, 0.5 to 4; 2 mm default, SPM's grid;
        ``<cache_dir>/real-1mm`` at 1 mm).  Ignored for folders.
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
    n_subjects = _check_n_subjects(n_subjects)
    if isinstance(name_or_dir, str) and name_or_dir in ("real", "real-heads"):
        from .realset import (
            HEADS_SUFFIX,
            REAL,
            SYNTHETIC_COHORT,
            check_resolution,
            load_real_set,
            resolution_suffix,
        )

        resolution = check_resolution(resolution)
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        cohort = {**SYNTHETIC_COHORT, "resolution": resolution}
        heads = name_or_dir == REAL + HEADS_SUFFIX
        ds = load_real_set(
            base / (name_or_dir + resolution_suffix(resolution)), progress=progress,
            resolution=resolution, heads=heads,
            synthetic_cohort=lambda: load_dataset(**cohort, cache_dir=cache_dir,
                                                  progress=progress))
        if n_subjects is not None:
            ds.subjects = ds.subjects[:n_subjects]
        return ds
    if isinstance(name_or_dir, str) and name_or_dir in EMBEDDED:
        return _load_embedded(name_or_dir, cache_dir=cache_dir, resolution=resolution,
                              n_subjects=n_subjects, progress=progress)
    return _load_path(name_or_dir, n_subjects=n_subjects, check=check)
