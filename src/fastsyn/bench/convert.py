"""Converters from public datasets, as distributed, to fastsyn's folder layout.

Every converter writes ``DST/<subject>/<modality>.nii.gz``,
``DST/<subject>/labels.nii.gz`` and ``DST/<subject>/mask.nii.gz`` plus the
stamp ``DST/dataset.json``, one subject at a time (each written into a
temporary folder and renamed into place, so an interrupted run never leaves a
half-written subject), and returns the :class:`~fastsyn.bench.layout.Dataset`.
It builds on :mod:`fastsyn.bench.layout` (and the noise model of
:mod:`fastsyn.bench.synth`) only; :mod:`fastsyn.bench.datasets`
re-exports the converters.

Supported sources
-----------------
LPBA40
    ``LPBA40/delineation_space/S01/S01.delineation.skullstripped.{hdr,img}``
    (or ``.img.gz``) and ``S01.delineation.structure.label.{hdr,img}``.
    Grid, spacing, affine and label dtype are kept; labels 181 and 182 are
    dropped (set to 0); mask = nonzero voxels of the skull-stripped image;
    modality ``t1``.
MRBrainS18
    ``training/<id>/pre/{FLAIR,IR,T1}.nii.gz`` and ``training/<id>/segm.nii.gz``.
    Every modality is skull-stripped with ``segm > 0``; labels = segm;
    mask = ``segm > 0``; modalities ``flair``, ``ir``, ``t1``.
OASIS (neurite layout)
    ``<subject>/aligned_norm.nii.gz`` and ``<subject>/aligned_seg35.nii.gz``;
    modality ``t1``; mask = nonzero voxels of ``aligned_norm``.

Three functions derive a set from a set of this layout: :func:`thick_slices`
(some subjects as if scanned in thick slices, as a clinical T2 or FLAIR of 3
to 5 mm slices often is), :func:`noisy` (some subjects with a single scan's
Rician noise, which population averages such as SPM's templates lack) and
:func:`biased` (some subjects with the smooth intensity inhomogeneity of a
scan not corrected for it, which the averages lack too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .layout import (
    load_folder,
    read_image_data,
    read_image_header,
    read_stamp,
    save_nifti,
    write_dataset_stamp,
)
from .synth import apply_appearance, log_bias_field

__all__ = ["convert_lpba40", "convert_mrbrains18", "convert_oasis", "CONVERTERS",
           "thick_slices", "noisy", "biased"]

#: LPBA40 labels removed by the converter (cerebellum and brainstem).
LPBA40_DROPPED = (181, 182)
#: MRBrainS18 modalities: output name -> file name in ``pre/``.
MRBRAINS18_MODALITIES = {"flair": "FLAIR", "ir": "IR", "t1": "T1"}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _existing(*paths):
    for p in paths:
        if p.exists():
            return p
    return None


def _load_analyze(folder: Path, stem: str):
    """Load an Analyze (or NIfTI pair) image whose header and data may differ in compression.

    Returns the image (data still on disk) and the path of its data file.
    """
    hdr = _existing(folder / f"{stem}.hdr", folder / f"{stem}.hdr.gz")
    img = _existing(folder / f"{stem}.img", folder / f"{stem}.img.gz")
    if hdr is None or img is None:
        raise FileNotFoundError(
            f"{folder}: expected {stem}.hdr and {stem}.img (or .img.gz); "
            f"found header={hdr}, image={img}"
        )
    klass = type(read_image_header(hdr, "Analyze header"))  # sniffs the header only
    try:
        file_map = klass.filespec_to_file_map(str(hdr))
        file_map["image"].filename = str(img)
        return klass.from_file_map(file_map), img
    except Exception as exc:  # nibabel raises several types
        raise ValueError(f"cannot read Analyze image {hdr} + {img}: {exc}") from exc


def _array(img, path, *, integer=False):
    """Data of an image in its on-disk dtype when possible, squeezed to 3D."""
    data = read_image_data(img, path, "label map" if integer else "image")
    disk = img.get_data_dtype()
    if data.dtype != disk:
        if np.issubdtype(disk, np.integer) and np.array_equal(data, np.round(data)):
            data = data.astype(disk)
        elif integer:
            raise ValueError(f"{path}: label map is not integer-valued after scaling")
        else:
            data = data.astype(np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {img.shape}")
    if integer and not np.issubdtype(data.dtype, np.integer):
        if not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: label map is not integer-valued (dtype {data.dtype})")
    return data


def _load_nifti(path: Path, *, integer=False):
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    img = read_image_header(path, "label map" if integer else "image")
    return _array(img, path, integer=integer), img.affine.copy()


def _write_subject(dst: Path, name: str, images: dict, labels, mask, affine) -> None:
    """Write one subject atomically (temporary folder, then rename)."""
    tmp = Path(tempfile.mkdtemp(dir=dst, prefix=f".tmp-{name}-"))
    try:
        for modality, data in images.items():
            save_nifti(data, affine, tmp / f"{modality}.nii.gz")
        save_nifti(labels, affine, tmp / "labels.nii.gz")
        save_nifti(np.asarray(mask, dtype=np.uint8), affine, tmp / "mask.nii.gz")
        final = dst / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_same_grid(name, ref_shape, ref_affine, what, shape, affine):
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(f"subject {name!r}: {what} shape {tuple(shape)} differs from {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise ValueError(f"subject {name!r}: {what} affine differs from the label map's")


def _prepare(src, dst, what):
    src = Path(src).expanduser()
    dst = Path(dst).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{what} source folder not found: {src}")
    if not src.is_dir():
        raise ValueError(f"{what} source {src} is not a folder")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"destination {dst} exists and is not a folder")
    if dst.resolve() == src.resolve():
        raise ValueError("destination must differ from the source folder")
    return src, dst


def _run(items, dst, name, modalities, convert_one, progress, desc, **stamp):
    """Convert every (subject, args) item, then stamp the set (``source`` is
    ``desc`` unless ``stamp`` names one)."""
    from tqdm.auto import tqdm

    dst.mkdir(parents=True, exist_ok=True)
    done = []
    for subject, args in tqdm(items, desc=desc, unit="subject", disable=not progress):
        convert_one(subject, *args)
        done.append(subject)
    write_dataset_stamp(dst, name, modalities, done, **{"source": desc, **stamp})
    return load_folder(dst, check=False)


def _select(found: dict, subjects, what, src):
    if not found:
        raise FileNotFoundError(f"no {what} subjects found under {src}")
    if subjects is None:
        return sorted(found.items())
    if isinstance(subjects, (str, bytes)):
        raise TypeError(f"subjects must be a sequence of subject names, got the string {subjects!r}")
    missing = [s for s in subjects if s not in found]
    if missing:
        raise ValueError(f"{what}: subjects not found under {src}: {missing}")
    return [(s, found[s]) for s in subjects]


# --------------------------------------------------------------------------
# LPBA40
# --------------------------------------------------------------------------


def convert_lpba40(src, dst, *, subjects=None, progress=True):
    """Convert LPBA40 (delineation space, Analyze) to the folder layout.

    Parameters
    ----------
    src : str or pathlib.Path
        The ``LPBA40`` folder (holding ``delineation_space/``) or the
        ``delineation_space`` folder itself.
    dst : str or pathlib.Path
        Output folder (created).
    subjects : sequence of str, optional
        Only these subjects (e.g. ``["S01", "S02"]``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        If the source or a subject's files are missing.
    ValueError
        If a subject's images disagree in shape or affine, or labels are not integers.
    """
    src, dst = _prepare(src, dst, "LPBA40")
    base = src / "delineation_space" if (src / "delineation_space").is_dir() else src
    found = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        stem = f"{d.name}.delineation.skullstripped"
        if _existing(d / f"{stem}.hdr", d / f"{stem}.hdr.gz"):
            found[d.name] = (d,)
    items = _select(found, subjects, "LPBA40", base)

    def one(name, folder):
        img, img_path = _load_analyze(folder, f"{name}.delineation.skullstripped")
        lab, lab_path = _load_analyze(folder, f"{name}.delineation.structure.label")
        t1 = _array(img, img_path)
        labels = _array(lab, lab_path, integer=True)
        _check_same_grid(name, labels.shape, lab.affine, "skull-stripped image", t1.shape, img.affine)
        labels = labels.copy()
        labels[np.isin(labels, LPBA40_DROPPED)] = 0
        _write_subject(dst, name, {"t1": t1}, labels, t1 != 0, lab.affine)

    return _run(items, dst, "lpba40", ["t1"], one, progress, "LPBA40")


# --------------------------------------------------------------------------
# MRBrainS18
# --------------------------------------------------------------------------


def convert_mrbrains18(src, dst, *, subjects=None, progress=True):
    """Convert MRBrainS18 training data to the folder layout.

    Parameters
    ----------
    src : str or pathlib.Path
        The folder holding ``training/`` or the ``training`` folder itself.
    dst : str or pathlib.Path
        Output folder (created).
    subjects : sequence of str, optional
        Only these subject ids.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Dataset
        Modalities ``flair``, ``ir``, ``t1``, each skull-stripped with ``segm > 0``.

    Raises
    ------
    FileNotFoundError
        If the source, a ``segm.nii.gz`` or a modality file is missing.
    ValueError
        If shapes or affines disagree, or segm is not integer-valued.
    """
    src, dst = _prepare(src, dst, "MRBrainS18")
    base = src / "training" if (src / "training").is_dir() else src
    found = {
        d.name: (d,)
        for d in sorted(p for p in base.iterdir() if p.is_dir())
        if (d / "segm.nii.gz").exists() or (d / "pre").is_dir()
    }
    items = _select(found, subjects, "MRBrainS18", base)

    def one(name, folder):
        segm, affine = _load_nifti(folder / "segm.nii.gz", integer=True)
        brain = segm > 0
        images = {}
        for modality, fname in MRBRAINS18_MODALITIES.items():
            data, aff = _load_nifti(folder / "pre" / f"{fname}.nii.gz")
            _check_same_grid(name, segm.shape, affine, f"pre/{fname}.nii.gz", data.shape, aff)
            images[modality] = np.where(brain, data, 0).astype(data.dtype)
        _write_subject(dst, name, images, segm, brain, affine)

    return _run(items, dst, "mrbrains18", list(MRBRAINS18_MODALITIES), one, progress, "MRBrainS18")


# --------------------------------------------------------------------------
# OASIS (neurite layout)
# --------------------------------------------------------------------------


def convert_oasis(src, dst, *, subjects=None, progress=True):
    """Convert OASIS in the neurite layout to the folder layout.

    Parameters
    ----------
    src : str or pathlib.Path
        Folder of ``<subject>/aligned_norm.nii.gz`` + ``aligned_seg35.nii.gz``.
    dst : str or pathlib.Path
        Output folder (created).
    subjects : sequence of str, optional
        Only these subjects.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        If the source or a subject's files are missing.
    ValueError
        If shapes or affines disagree or labels are not integer-valued.
    """
    src, dst = _prepare(src, dst, "OASIS")
    found = {
        d.name: (d,)
        for d in sorted(p for p in src.iterdir() if p.is_dir())
        if (d / "aligned_norm.nii.gz").exists() or (d / "aligned_seg35.nii.gz").exists()
    }
    items = _select(found, subjects, "OASIS", src)

    def one(name, folder):
        t1, aff_img = _load_nifti(folder / "aligned_norm.nii.gz")
        labels, affine = _load_nifti(folder / "aligned_seg35.nii.gz", integer=True)
        _check_same_grid(name, labels.shape, affine, "aligned_norm.nii.gz", t1.shape, aff_img)
        _write_subject(dst, name, {"t1": t1}, labels, t1 != 0, affine)

    return _run(items, dst, "oasis", ["t1"], one, progress, "OASIS")


#: Converters by dataset name, for the command line (``fastsyn prepare NAME SRC DST``).
CONVERTERS = {"lpba40": convert_lpba40, "mrbrains18": convert_mrbrains18, "oasis": convert_oasis}


# --------------------------------------------------------------------------
# Sets derived from a set of this layout
# --------------------------------------------------------------------------


def _derive(dataset, dst, subjects):
    """Source and destination folders of a derived set, and the chosen
    subjects' names (all when ``subjects`` is None)."""
    src, dst = _prepare(dataset.root, dst, dataset.name)
    chosen = [name for name, _ in _select({s.name: s for s in dataset.subjects}, subjects,
                                          dataset.name, src)]
    if not chosen:
        raise ValueError("subjects names none of the set's subjects")
    return src, dst, chosen


def _read_subject(subject, who):
    """A subject's arrays (its images, ``labels`` and ``mask`` when it has
    one) and its grid's affine."""
    files = dict(subject.images, labels=subject.labels)
    if subject.mask is not None:
        files["mask"] = subject.mask
    arrays, headers = {}, {}
    for key, path in files.items():
        headers[key] = read_image_header(Path(path), key, who)
        arrays[key] = read_image_data(headers[key], Path(path), key, who)
    return arrays, headers["labels"].affine     # the layout keeps a subject on one grid


def _kept_stamp(src):
    """The source stamp's entries that a derived set keeps (pairs, halves and
    labels depend on them, not on grids or intensities)."""
    stamp = read_stamp(src)
    return {k: stamp[k] for k in ("sparse_modalities", "synthetic", "labels", "resolution")
            if k in stamp}


def _derived_set(dataset, dst, subjects, change, *, suffix, desc, what, key, params,
                 generator, progress):
    """Write ``dataset`` into ``dst`` with ``change(who, name, arrays, affine)
    -> (arrays, affine)`` applied to the chosen subjects (``arrays`` holds the
    images, ``labels`` and ``mask`` when the subject has one), the others
    copied; the set is named ``<source>-<suffix>`` and its stamp records
    ``params`` and the subjects under ``key``."""
    src, dst, chosen = _derive(dataset, dst, subjects)

    def one(name, subject):
        who = f"subject {name!r}"
        arrays, affine = _read_subject(subject, who)
        if name in chosen:
            arrays, affine = change(who, name, arrays, affine)
        labels = arrays.pop("labels")
        mask = arrays.pop("mask") if "mask" in arrays else labels > 0
        _write_subject(dst, name, arrays, labels, mask, affine)

    return _run([(s.name, (s,)) for s in dataset.subjects], dst, f"{dataset.name}-{suffix}",
                dataset.modalities, one, progress, desc, **_kept_stamp(src),
                source=f"{dataset.name} ({src}), {', '.join(chosen)} {what}",
                **{key: {**params, "subjects": chosen}}, generator=generator)


# --------------------------------------------------------------------------
# Thick slices
# --------------------------------------------------------------------------


def _thick(data, slices, axis, how):
    """Blocks of ``slices`` planes along ``axis`` (a rest that fills no block
    is dropped): their mean (``"mean"``), or their middle plane."""
    data = np.moveaxis(np.asarray(data), axis, -1)
    n = data.shape[-1] // slices * slices
    blocks = data[..., :n].reshape(data.shape[:-1] + (n // slices, slices))
    out = blocks.mean(-1, dtype=np.float64).astype(np.float32) if how == "mean" \
        else blocks[..., slices // 2]
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def _thick_affine(affine, slices, axis):
    """The affine of the grid of blocks: the axis's step ``slices`` times as
    long, the first voxel at the centre of the first block."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] += out[:3, axis] * (slices - 1) / 2
    out[:3, axis] *= slices
    return out


def thick_slices(dataset, dst, *, slices, axis=2, subjects=None, progress=True):
    """Write a dataset with some subjects resampled to thick slices.

    A clinical T2 or FLAIR is often 3 to 5 mm thick in one direction.  Each
    chosen subject's images become the mean of every ``slices`` consecutive
    planes along ``axis`` (the partial-volume blur of a thick slice); its
    labels and mask are those of each block's middle plane.  The other
    subjects are copied unchanged.  Pairs, their directions and the tune and
    report halves of :func:`fastsyn.bench.study.study_pairs` do not depend on
    the grids, so they are the source set's.

    Parameters
    ----------
    dataset : Dataset
        The source set (:func:`fastsyn.bench.layout.load_folder`); its
        subjects' truth fields, if any, are not carried over.
    dst : str or Path
        Output folder; it may not be the source's.
    slices : int
        Planes per thick slice (2 or more).
    axis : int
        Voxel axis across the slices (0, 1 or 2; default 2, axial on an
        RAS grid).
    subjects : sequence of str, optional
        Subjects to thicken (default all).
    progress : bool

    Returns
    -------
    Dataset
        Named ``<source name>-thick<slices>``.
    """
    if isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or slices < 2:
        raise ValueError(f"slices must be an integer of at least 2, got {slices!r}")
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    def thicken(who, name, arrays, affine):
        if min(a.shape[axis] for a in arrays.values()) < 2 * slices:
            raise ValueError(f"{who}: axis {axis} has fewer than {2 * slices} planes, "
                             f"too few for two {slices}-plane slices")
        arrays = {k: _thick(a, slices, axis, "middle" if k in ("labels", "mask") else "mean")
                  for k, a in arrays.items()}
        return arrays, _thick_affine(affine, slices, axis)

    return _derived_set(dataset, dst, subjects, thicken, suffix=f"thick{slices}",
                        desc=f"{slices}-plane slices",
                        what=f"in {slices}-plane slices along axis {axis}", key="thick_slices",
                        params={"slices": int(slices), "axis": int(axis)},
                        generator="fastsyn.bench.convert.thick_slices", progress=progress)


# --------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------


def noisy(dataset, dst, *, percent, subjects=None, seed=0, progress=True):
    """Write a dataset with Rician noise added to some subjects' images.

    A population average (SPM's avg152, avg305, the MNI templates) has almost
    no noise; a single scan has plenty.  Each chosen subject's image becomes
    the magnitude ``|I + n1 + i n2|`` of its complex sum with two independent
    Gaussian noises of standard deviation ``percent`` % of the image's 99th
    percentile, on its non-zero voxels (a skull-stripped image keeps its zero
    background).  Labels, masks and grids are unchanged, the other subjects
    are copied unchanged, and the pairs and halves of
    :func:`fastsyn.bench.study.study_pairs` are the source set's.  The noise
    of one image depends only on ``seed``, the subject and the modality.

    Parameters
    ----------
    dataset : Dataset
        The source set (:func:`fastsyn.bench.layout.load_folder`); its
        subjects' truth fields, if any, are not carried over.
    dst : str or Path
        Output folder; it may not be the source's.
    percent : float
        Noise standard deviation in percent of each image's 99th percentile
        (of its non-zero voxels); above 0 and at most 100.  BrainWeb's
        simulated scans quote 3 % (its default) to 9 % of the brightest tissue.
    subjects : sequence of str, optional
        Subjects to make noisy (default all).
    seed : int
        Seed of every image's noise (a non-negative integer).
    progress : bool

    Returns
    -------
    Dataset
        Named ``<source name>-noise<percent>``.

    Raises
    ------
    ValueError
        If ``percent`` or ``seed`` is out of range, a subject is unknown, or
        a chosen image has negative intensities (Rician noise is that of MR
        magnitude images).
    """
    _check_percent_and_seed(percent, seed)
    def add_noise(who, name, arrays, affine):
        return {k: a if k in ("labels", "mask") else _rician(a, percent, seed, name, k, who)
                for k, a in arrays.items()}, affine

    return _derived_set(dataset, dst, subjects, add_noise, suffix=f"noise{percent:g}",
                        desc=f"{percent:g} % Rician noise",
                        what=f"with Rician noise of {percent:g} % of each image's 99th "
                             "percentile", key="noise",
                        params={"percent": float(percent), "seed": int(seed)},
                        generator="fastsyn.bench.convert.noisy", progress=progress)


def _image_stream(seed, subject, modality):
    """The random stream of one image of a derived set: it depends on the
    seed, the subject and the modality only, not on which other subjects or
    modalities are converted."""
    return np.random.default_rng([seed, zlib.crc32(f"{subject}/{modality}".encode())])


def _check_percent_and_seed(percent, seed):
    """The checks of the ``percent`` and ``seed`` arguments of a derived set."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float, np.integer, np.floating)) \
            or not 0 < percent <= 100:
        raise ValueError(f"percent must be a number above 0 and at most 100, got {percent!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _rician(image, percent, seed, subject, modality, who):
    """One image with :func:`noisy`'s noise (float32)."""
    image = np.asarray(image, dtype=np.float64)
    if image.min() < 0:
        raise ValueError(f"{who}: {modality} has negative intensities ({image.min():g}); "
                         "Rician noise models MR magnitude images, which are not negative")
    support = image != 0
    if not support.any():
        return image.astype(np.float32)
    sigma = percent / 100.0 * float(np.percentile(image[support], 99))
    return apply_appearance(image, support, None, _image_stream(seed, subject, modality),
                            noise=sigma)


# --------------------------------------------------------------------------
# Intensity inhomogeneity
# --------------------------------------------------------------------------

def biased(dataset, dst, *, percent, subjects=None, seed=0, progress=True):
    """Write a dataset with a smooth intensity inhomogeneity on some subjects' images.

    An MR scan not corrected for its receive field (N4, SPM's bias
    correction) is brighter on one side of the head than on the other;
    population averages such as SPM's templates are not.  Each chosen
    subject's image is multiplied by its own field: the exponential of a
    random quadratic polynomial of the world coordinates (the shape of
    :mod:`fastsyn.bench.synth`'s fields), scaled so that over the image's
    non-zero voxels its largest value is ``1 + percent/100`` times its
    smallest, the two on either side of 1 (20 %: from 0.91 to 1.10, as
    BrainWeb's "20 % INU").  Zeros stay zero; labels, masks and grids are
    unchanged, the other subjects are copied unchanged, and the pairs and
    halves of :func:`fastsyn.bench.study.study_pairs` are the source set's.
    The field of one image depends only on ``seed``, the subject and the
    modality.

    Parameters
    ----------
    dataset : Dataset
        The source set (:func:`fastsyn.bench.layout.load_folder`); its
        subjects' truth fields, if any, are not carried over.
    dst : str or Path
        Output folder; it may not be the source's.
    percent : float
        The field's spread over the image: its largest value exceeds its
        smallest by this many percent (above 0, at most 100).  BrainWeb's
        simulated scans offer 20 % and 40 %.
    subjects : sequence of str, optional
        Subjects to change (default all).
    seed : int
        Seed of every image's field (a non-negative integer).
    progress : bool

    Returns
    -------
    Dataset
        Named ``<source name>-bias<percent>``.

    Raises
    ------
    ValueError
        If ``percent`` or ``seed`` is out of range, or a subject is unknown.
    """
    _check_percent_and_seed(percent, seed)
    def add_bias(who, name, arrays, affine):
        return {k: a if k in ("labels", "mask") else _inhomogeneous(a, affine, percent, seed,
                                                                     name, k)
                for k, a in arrays.items()}, affine

    return _derived_set(dataset, dst, subjects, add_bias, suffix=f"bias{percent:g}",
                        desc=f"{percent:g} % intensity inhomogeneity",
                        what=f"with a smooth intensity inhomogeneity of {percent:g} %",
                        key="bias", params={"percent": float(percent), "seed": int(seed)},
                        generator="fastsyn.bench.convert.biased", progress=progress)


def _inhomogeneous(image, affine, percent, seed, subject, modality):
    """One image times :func:`biased`'s field (float32)."""
    image = np.asarray(image, dtype=np.float64)
    support = image != 0
    if not support.any():
        return image.astype(np.float32)
    # world coordinates from the centre of the signal (the affine's translation
    # cancels), so the field's shape does not depend on where the origin lies
    grid = np.indices(image.shape, dtype=np.float64).reshape(3, -1)
    points = (np.asarray(affine, dtype=np.float64)[:3, :3] @ grid).T.reshape(image.shape + (3,))
    points -= points[support].mean(axis=0)
    log_field = log_bias_field(points, _image_stream(seed, subject, modality))
    lo, hi = log_field[support].min(), log_field[support].max()
    if hi > lo:         # one voxel of signal has no spread to scale
        log_field = (log_field - (lo + hi) / 2) * (np.log1p(percent / 100.0) / (hi - lo))
    else:
        log_field[:] = 0.0
    return np.where(support, image * np.exp(log_field), 0.0).astype(np.float32)
