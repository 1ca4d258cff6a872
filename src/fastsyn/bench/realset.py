"""The real-anatomy study set: real contrasts of real brains, offline.

Registration defaults must be chosen on data like the users', and warps of
one template are not: this set pairs *different* real anatomies across
*real* contrasts.  It is a folder dataset (:mod:`fastsyn.bench.layout`)
named ``real``, built on first use into the cache from files that ship with
fastsyn, or by ``fastsyn prepare spm12 SPM12_DIR DST`` from a copy of SPM12.
``fastsyn prepare niivue NIIVUE_DIR DST`` builds the same set with one more
subject, real single-scan T1 and PD images of one person that cannot ship
(see ``chris`` below).

Subjects
--------
``avg152``
    T1, T2 and PD: SPM12's ``canonical/avg152{T1,T2,PD}.nii`` (MNI's ICBM152
    linear averages), three real contrasts of one population anatomy.
``avg305``
    T1: ``canonical/avg305T1.nii`` (MNI305 average).
``colin27``
    T1: ``canonical/single_subj_T1.nii`` (one person scanned 27 times).
``mni2009``
    T1: nilearn's bundled MNI152 2009 template, resampled to the same grid.
``synthetic01``, ``synthetic02``
    T2-like and FLAIR-like images of the embedded multimodal cohort's first
    two subjects (:mod:`fastsyn.bench.synth`: synthetic contrasts on warps of
    the 2009 template), the "real T1 against a synthetic T2/FLAIR" check.
``chris`` (only with ``fastsyn prepare niivue``)
    T1 and PD: ``chris_t1.nii.gz`` (0.88 mm) and ``chris_PD.nii.gz``
    (0.86 x 0.86 x 2.4 mm) of the niivue-demo-images repository
    (https://github.com/niivue/niivue-demo-images), one person scanned once
    per contrast at the McCausland Center for Brain Imaging, distributed under
    CC BY-NC 4.0.  The only images of the set with a single scan's noise and
    sharpness, and its only real PD besides avg152's.  The T1 is registered
    affinely to avg152T1 and the PD rigidly to the T1 (:func:`affine_registration`
    of :mod:`fastsyn.imaffine`, MI), each resampled once onto the SPM grid; the
    mask is the MNI152 2009 brain mask inside the PD's field of view (its
    slab leaves out the top and bottom of the head).  The licence forbids
    commercial use, so the files are not shipped: the user's copy is
    converted, and the notice is written beside the set (``NOTICE-niivue.txt``).
``ixi<number>`` (only with ``fastsyn prepare ixi``)
    T1, T2 and PD of the IXI dataset (https://brain-development.org/ixi-dataset/,
    CC BY-SA 3.0): real single scans of many people, heads, 0.94 x 0.94 x
    1.2 mm, from a copy of its ``IXI-T1``, ``IXI-T2`` and ``IXI-PD`` archives
    (files ``IXI002-Guys-0828-T1.nii.gz`` and so on, in one folder or in
    subfolders).  Each subject is aligned as ``chris``: the T1 affinely to
    avg152T1, the T2 rigidly to the T1 and the PD with it (IXI's T2 and PD are
    the two echoes of one acquisition, on one grid; a PD on another grid is
    registered on its own), then masked and labelled the same way.  The
    notice is written beside the set (``NOTICE-ixi.txt``).
``sub-<label>`` (only with ``fastsyn prepare bids``)
    The T1w, T2w, PDw and FLAIR scans of a BIDS dataset's people (your own
    cohort), each aligned, masked and labelled as ``chris``.

The SPM images share SPM's 2 mm MNI grid (91 x 109 x 91); all are in MNI
space after an affine registration, so the remaining differences between two
of them are anatomy, which is what a deformable method must recover.
``load_dataset("real", resolution=1)`` (``--resolution 1``) builds the same
set on the 1 mm grid over the same field of view (182 x 218 x 182), named
``real-1mm``: users register 1 mm scans, and voxel-counted settings (step
lengths, smoothing) mean twice as little there.  mni2009, the synthetic
subjects and ``chris`` then carry 1 mm detail; the SPM images are their
2 mm data interpolated.  The
files that ship are SPM12's own, gzip-compressed
(``fastsyn/data/real/NOTICE.txt`` keeps MNI's copyright notice).

Pairs (:func:`fastsyn.bench.pairs.make_pairs`): every ordered pair of two
different subjects and two different modalities that both exist, except two
synthetic subjects (that is the embedded cohort's own job): T1<->T2 and
T1<->PD between the averages and the T1 anatomies, T1<->T2/FLAIR and
PD/T2<->FLAIR/T2 against the synthetic subjects.  There is no T2<->PD pair
of two real anatomies (only avg152 has both).

Masks and labels (the same for every method)
--------------------------------------------
Brain mask: the MNI152 2009 brain mask (:func:`fastsyn.bench.synth.brain_mask`)
sampled on each SPM grid; the synthetic subjects keep their own.  Every image
is multiplied by its mask (skull-stripped), except in ``real-heads``
(``load_dataset("real-heads")``, ``heads=True``): there the SPM subjects
(avg152, avg305, colin27) keep their whole heads, as SPM ships them, with the
same masks, labels and pairs, so that Dice still scores the brain.  mni2009
(nilearn's template has little head) and the synthetic subjects stay brain
only (as ``chris`` of ``fastsyn prepare niivue``), so its pairs are head
against head, head against brain and brain against brain.
Labels: three tissue classes
(1 CSF, 2 GM, 3 WM) from :func:`tissue_classes`, a one-dimensional k-means of
the subject's T1 intensities inside its mask, applied the same way to every
subject (the T2/PD of avg152 share avg152T1's classes; a synthetic subject
takes them from its synthetic T1, which is not registered).  No real regional
atlas ships offline with a licence that allows it, so there are no regional
labels: Dice here measures tissue overlap only.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import numpy as np

__all__ = [
    "REAL",
    "HEADS_SUFFIX",
    "REALSET_VERSION",
    "SYNTHETIC_COHORT",
    "SPM12_IMAGES",
    "NIIVUE_IMAGES",
    "find_ixi_scans",
    "find_bids_scans",
    "tissue_classes",
    "grid_at_resolution",
    "check_resolution",
    "resolution_suffix",
    "build_real_set",
    "load_real_set",
    "shipped_images_available",
]

#: Name of the dataset (``load_dataset("real")``).
REAL = "real"
#: Suffix of the variant whose SPM subjects keep their heads.
HEADS_SUFFIX = "-heads"
#: Bumped whenever the set's images, masks or labels change.
REALSET_VERSION = 1
#: (subject, modality) -> stem of the SPM12 ``canonical/`` image.
SPM12_IMAGES = {
    ("avg152", "t1"): "avg152T1",
    ("avg152", "t2"): "avg152T2",
    ("avg152", "pd"): "avg152PD",
    ("avg305", "t1"): "avg305T1",
    ("colin27", "t1"): "single_subj_T1",
}
#: (subject, modality) -> file in a copy of niivue-demo-images (CC BY-NC 4.0).
NIIVUE_IMAGES = {
    ("chris", "t1"): "chris_t1.nii.gz",
    ("chris", "pd"): "chris_PD.nii.gz",
}
#: Written beside a set built with the niivue images (their licence asks for
#: it), with the set's voxel size.
NIIVUE_NOTICE = """\
The subject `chris` of this folder is derived from chris_t1.nii.gz and
chris_PD.nii.gz of the niivue-demo-images repository
(https://github.com/niivue/niivue-demo-images), acquired by Chris Rorden at
the McCausland Center for Brain Imaging and distributed under the Creative
Commons Attribution-NonCommercial 4.0 International licence
(https://creativecommons.org/licenses/by-nc/4.0/).  Changes: registered to
the SPM12 avg152T1 grid (affine for the T1, rigid PD-to-T1), resampled to
{resolution:g} mm, masked with the MNI152 2009 brain mask, tissue classes added.
Non-commercial use only.
"""
#: An IXI scan's file name: subject number, site, series, contrast.
IXI_FILE = re.compile(r"^IXI(\d+)-([A-Za-z]+)-(\d+)-(T1|T2|PD)\.nii(\.gz)?$")
#: Written beside a set built with IXI scans (their licence asks for it).
IXI_NOTICE = """\
The subjects ixi* of this folder are derived from the IXI dataset
(https://brain-development.org/ixi-dataset/), distributed under the Creative
Commons Attribution-ShareAlike 3.0 licence
(https://creativecommons.org/licenses/by-sa/3.0/).  Changes: registered to
the SPM12 avg152T1 grid (affine for the T1, rigid T2-to-T1 with the PD moved
as its T2), resampled to {resolution:g} mm, masked with the MNI152 2009 brain
mask, tissue classes added.  Derived files are shared under the same licence.
"""
#: A BIDS anatomical file: subject, then the suffix (other entities between).
BIDS_FILE = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_[A-Za-z]+-[A-Za-z0-9]+)*_(T1w|T2w|PDw|PD|FLAIR)"
                       r"\.nii(?:\.gz)?$")
#: BIDS anatomical suffixes read, and the set's modality of each.
BIDS_SUFFIXES = {"T1w": "t1", "T2w": "t2", "PDw": "pd", "PD": "pd", "FLAIR": "flair"}
#: Written into a set's folder as the subjects of a folder of scans are
#: finished, so that a rerun keeps them (see :func:`build_real_set`).
SCANS_DONE = ".scans-done.json"
#: Embedded-multi subjects used as synthetic T2/FLAIR partners, and their names here.
_SYNTHETIC = {"S01": "synthetic01", "S02": "synthetic02"}
#: The cohort they come from (arguments of ``load_dataset``).
SYNTHETIC_COHORT = {"name_or_dir": "embedded-multi", "resolution": 2.0,
                    "n_subjects": len(_SYNTHETIC)}
_SYNTHETIC_MODALITIES = ("t2", "flair")
_MODALITIES = ("t1", "t2", "pd", "flair")
TISSUE_NAMES = {1: "csf", 2: "gm", 3: "wm"}


# --------------------------------------------------------------------- labels
def tissue_classes(t1, mask, *, iterations=100):
    """Three tissue classes of a T1 image by a 1-D k-means inside a mask.

    Lloyd's algorithm on the intensities of the masked voxels, started from
    their 15th, 50th and 85th percentiles (deterministic: no random start);
    the classes are numbered by increasing centre (1 CSF, 2 GM, 3 WM on a
    T1-weighted image).

    Parameters
    ----------
    t1 : array
        T1-weighted image.
    mask : array
        Brain mask (nonzero inside), same shape.
    iterations : int
        Maximum Lloyd iterations (it stops when no voxel changes class).

    Returns
    -------
    labels : ndarray of int16
        0 outside the mask, 1-3 inside.
    """
    t1 = np.asarray(t1, dtype=np.float64)
    inside = np.asarray(mask) != 0
    if t1.shape != inside.shape:
        raise ValueError(f"t1 and mask shapes differ: {t1.shape} vs {inside.shape}")
    values = t1[inside]
    if values.size < 3 or not np.ptp(values) > 0:
        raise ValueError("the T1 image has no contrast inside the mask: cannot "
                         "classify tissues")
    centres = np.percentile(values, (15, 50, 85))
    assign = None
    for _ in range(int(iterations)):
        # 1-D: the nearest centre is decided by the midpoints between sorted centres
        cuts = (centres[:-1] + centres[1:]) / 2
        new = np.searchsorted(cuts, values)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        centres = np.array([values[assign == k].mean() if np.any(assign == k) else centres[k]
                            for k in range(3)])
        centres.sort()
    labels = np.zeros(t1.shape, dtype=np.int16)
    labels[inside] = assign + 1
    return labels


# --------------------------------------------------------------------- images
def _shipped_root():
    from importlib.resources import files
    return files("fastsyn.data").joinpath("real")


def shipped_images_available():
    """Whether the SPM12 images ship with this installation of fastsyn."""
    root = _shipped_root()
    return all(root.joinpath(f"{stem}.nii.gz").is_file() for stem in SPM12_IMAGES.values())


def _spm_image(source, stem):
    """(data, affine) of one SPM12 canonical image, from a folder or the package."""
    import gzip
    import io

    import nibabel as nib

    if source is None:
        raw = gzip.decompress(_shipped_root().joinpath(f"{stem}.nii.gz").read_bytes())
        img = nib.Nifti1Image.from_stream(io.BytesIO(raw))
        where = f"fastsyn's shipped {stem}.nii.gz"
    else:
        folder = Path(source).expanduser()
        path = next((p for p in (folder / "canonical" / f"{stem}.nii",
                                 folder / "canonical" / f"{stem}.nii.gz",
                                 folder / f"{stem}.nii", folder / f"{stem}.nii.gz")
                     if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"SPM12 image {stem}.nii not found under {folder} "
                                    "(expected SPM12_DIR/canonical/{stem}.nii)")
        img = nib.load(str(path))
        where = str(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3 or not np.isfinite(data).all() or not np.ptp(data) > 0:
        raise ValueError(f"{where}: expected a finite 3D image with contrast, got shape "
                         f"{data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def grid_at_resolution(shape, affine, resolution):
    """(shape, affine) of the grid of ``resolution`` mm voxels over the field
    of view of the grid (``shape``, ``affine``), the same corners.

    The grid itself when its voxels are already ``resolution`` mm, so that
    the 2 mm set is SPM's grid bit for bit.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.allclose(spacing, resolution):
        return tuple(shape), affine
    scale = resolution / spacing
    new_shape = tuple(int(round(n / s)) for n, s in zip(shape, scale))
    refine = np.eye(4)
    refine[:3, :3] = np.diag(scale)
    # voxel centres move so that the corners of the field of view stay put
    refine[:3, 3] = (scale - 1) / 2
    return new_shape, affine @ refine


def _mni2009_on(shape, affine, resolution=2.0):
    """(T1, brain mask) of the MNI152 2009 template, at ``resolution`` mm,
    sampled on a grid."""
    from . import synth

    tpl = synth.load_template(resolution)
    points = synth.grid_points(shape, affine)
    t1 = synth.sample_image(tpl.t1, tpl.affine, points, order=1).reshape(shape)
    mask = synth.sample_image(tpl.mask.astype(np.float32), tpl.affine, points,
                              order=0).reshape(shape) > 0.5
    return t1.astype(np.float32), mask


def _real_subjects(spm_dir, niivue_dir=None, num_threads=None, resolution=2.0, heads=False,
                   scans=None):
    """Yield (name, images, labels, mask, affine) for the real anatomies
    (with ``heads`` the SPM subjects' images unmasked; ``scans``: the
    subjects of a folder of scans, the set's folder and the layout, see
    :func:`_scan_subjects`)."""
    ref, ref_affine = _spm_image(spm_dir, SPM12_IMAGES[("avg152", "t1")])
    shape, affine = grid_at_resolution(ref.shape, ref_affine, resolution)
    mni_t1, mask = _mni2009_on(shape, affine, resolution)
    by_subject = {}
    for (subject, modality), stem in SPM12_IMAGES.items():
        data, aff = (ref, ref_affine) if stem == "avg152T1" else _spm_image(spm_dir, stem)
        if data.shape != ref.shape or not np.allclose(aff, ref_affine, atol=1e-3):
            raise ValueError(f"SPM12 image {stem} is not on avg152T1's grid")
        if shape != ref.shape:
            # SPM's 2 mm images, interpolated: a finer grid, not finer anatomy
            data = _on_grid(data, ref_affine, np.eye(4), shape, affine).astype(np.float32)
        by_subject.setdefault(subject, {})[modality] = data
    by_subject["mni2009"] = {"t1": mni_t1}
    for name, images in by_subject.items():
        labels = tissue_classes(images["t1"], mask)
        keep_head = heads and name != "mni2009"
        yield name, {m: (v if keep_head else np.where(mask, v, 0)).astype(np.float32)
                     for m, v in images.items()}, labels, mask, affine
    if niivue_dir is not None:
        yield _niivue_subject(niivue_dir, (ref, ref_affine), (shape, affine), mask, num_threads)
    if scans is not None:
        yield from _scan_subjects(*scans, (ref, ref_affine), (shape, affine), mask, resolution,
                                  num_threads)


def _niivue_image(folder, filename):
    """A niivue-demo-images volume as (data, affine), checked."""
    path = Path(folder).expanduser() / filename
    if not path.is_file():
        raise FileNotFoundError(f"{filename} not found in {folder} (expected a copy of "
                                "https://github.com/niivue/niivue-demo-images)")
    return _scan_image(path, "niivue-demo-images")


def _on_grid(data, data_affine, world_map, shape, affine):
    """``data`` sampled (linear, 0 outside) at ``world_map`` of each point of a grid."""
    from . import synth

    points = synth.grid_points(shape, world_map @ affine)
    return synth.sample_image(data, data_affine, points, order=1).reshape(shape)


def _niivue_subject(niivue_dir, reference, grid, mask, num_threads=None):
    """(name, images, labels, mask, affine) of ``chris`` on the study grid
    (:func:`_scan_subject`)."""
    scans = {m: _niivue_image(niivue_dir, NIIVUE_IMAGES[("chris", m)]) for m in ("t1", "pd")}
    return _scan_subject("chris", scans, reference, grid, mask, num_threads)


def _scan_subject(name, scans, reference, grid, mask, num_threads=None, same_acquisition=None):
    """(name, images, labels, mask, affine) of one person's scans on the study grid.

    ``scans`` maps modalities to (data, affine), a ``t1`` among them.  The T1
    is registered affinely to avg152T1 (``reference``: its data and affine;
    both with their skulls), every other scan rigidly to the T1, except one
    that ``same_acquisition`` maps to another modality of the same
    acquisition on the same grid (IXI's PD to its T2), which moves with that
    one.  Each image is resampled once, through the composed matrices, onto
    ``grid`` (shape, affine); the mask is ``mask`` where every scan other than
    the T1 has data.
    """
    from ..imaffine import affine_registration
    from ..register import _quiet_dipy

    ref, ref_affine = reference
    shape, affine = grid
    t1, t1_affine = scans["t1"]
    same_acquisition = same_acquisition or {}
    # Every matrix maps points of the static world to the moving world.
    to = {}
    with _quiet_dipy():
        _, to["t1"] = affine_registration(t1, ref, t1_affine, ref_affine,
                                          num_threads=num_threads)
        # a scan that may move with a partner comes after the others
        for modality in sorted(scans, key=lambda m: m in same_acquisition):
            if modality in to:
                continue
            data, data_affine = scans[modality]
            partner = same_acquisition.get(modality)
            if partner in to and data.shape == scans[partner][0].shape \
                    and np.allclose(data_affine, scans[partner][1], atol=1e-3):
                to[modality] = to[partner]
                continue
            _, to_t1 = affine_registration(data, t1, data_affine, t1_affine,
                                           pipeline=["center_of_mass", "translation", "rigid"],
                                           num_threads=num_threads)
            to[modality] = to_t1 @ to["t1"]
    images = {m: _on_grid(data, data_affine, to[m], shape, affine)
              for m, (data, data_affine) in scans.items()}
    # A slab (chris's PD) covers less of the head than the T1: keep the voxels
    # whose interpolation stencil lies wholly inside every other scan.
    inside = np.array(mask, dtype=bool)
    for modality, (data, data_affine) in scans.items():
        if modality != "t1":
            coverage = _on_grid(np.ones_like(data), data_affine, to[modality], shape, affine)
            inside &= coverage > 0.999
    labels = tissue_classes(images["t1"], inside)
    return (name, {m: np.where(inside, v, 0).astype(np.float32) for m, v in images.items()},
            labels, inside, affine)


def _found_scans(folder, what, files, example):
    """``{subject: {modality: path}}`` from (subject, modality, path) triples
    in sorted path order: the first file of a contrast is kept, only subjects
    with a T1 (it aligns and labels them)."""
    found = {}
    for subject, modality, path in files:
        found.setdefault(subject, {}).setdefault(modality, path)
    usable = {k: v for k, v in sorted(found.items()) if "t1" in v}
    if not usable:
        raise FileNotFoundError(f"no {what} subject with a T1 under {folder} (expected files "
                                f"such as {example})")
    return usable


def _scan_folder(folder, what):
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    return folder


def find_ixi_scans(folder):
    """The IXI scans under ``folder``, by subject.

    Parameters
    ----------
    folder : str or Path
        A copy of IXI's ``IXI-T1``, ``IXI-T2`` and ``IXI-PD`` archives,
        extracted into it or into subfolders of it (any depth).

    Returns
    -------
    dict
        ``{"ixi002": {"t1": path, "t2": path, "pd": path}, ...}`` (names in
        lower case), sorted by subject, only subjects with a T1 (it aligns
        and labels the subject).

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder or holds no such subject.
    ValueError
        If two files give one subject the same contrast.
    """
    folder = _scan_folder(folder, "IXI")
    files, seen = [], set()
    for path in sorted(folder.rglob("IXI*")):
        match = IXI_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        subject, modality = f"ixi{match.group(1)}", match.group(4).lower()
        if (subject, modality) in seen:
            raise ValueError(f"two IXI {match.group(4)} scans of subject IXI{match.group(1)}")
        seen.add((subject, modality))
        files.append((subject, modality, path))
    return _found_scans(folder, "IXI", files, "IXI002-Guys-0828-T1.nii.gz")


def find_bids_scans(folder):
    """The anatomical scans of a BIDS dataset, by subject.

    Parameters
    ----------
    folder : str or Path
        A BIDS dataset: ``sub-<label>/[ses-<label>/]anat/`` folders with
        files ``sub-<label>[_<key>-<value>...]_<suffix>.nii[.gz]``; the
        suffixes read are those of :data:`BIDS_SUFFIXES`.

    Returns
    -------
    dict
        ``{"sub-01": {"t1": path, "t2": path, ...}, ...}``, sorted by
        subject, only subjects with a T1w.  Where a subject has several files
        of one contrast (sessions, runs, acquisitions), the first in sorted
        path order is taken: each subject is one person, so that every pair
        is of two anatomies.

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder or holds no subject with a T1w.
    """
    folder = _scan_folder(folder, "BIDS")
    files = []
    for path in sorted(folder.glob("sub-*/**/anat/sub-*")):   # ** also matches no folder
        match = BIDS_FILE.match(path.name)
        if match is not None and path.is_file():
            files.append((match.group(1), BIDS_SUFFIXES[match.group(2)], path))
    return _found_scans(folder, "BIDS", files, "sub-01/anat/sub-01_T1w.nii.gz")


#: Folders of people's scans that ``build_real_set`` adds: how to find their
#: subjects, how a subject may be named, which contrast moves with another
#: (the same acquisition, on the same grid), and the notice written beside.
SCAN_LAYOUTS = {
    "ixi": {"find": find_ixi_scans, "name": lambda s: s.strip().lower(),
            "same_acquisition": {"pd": "t2"}, "notice": ("NOTICE-ixi.txt", IXI_NOTICE)},
    "bids": {"find": find_bids_scans,
             "name": lambda s: s.strip() if s.strip().startswith("sub-") else
             f"sub-{s.strip()}", "same_acquisition": {}, "notice": None},
}


def _chosen_scans(folder, layout, subjects, dst=None):
    """The subjects of a folder of scans (:data:`SCAN_LAYOUTS`), restricted to
    ``subjects`` (in their order), checked (and that ``dst``, the set's
    folder, is another folder)."""
    if layout not in SCAN_LAYOUTS:
        raise ValueError(f"scans_layout must be one of {sorted(SCAN_LAYOUTS)}, got {layout!r}")
    spec = SCAN_LAYOUTS[layout]
    found = spec["find"](folder)
    if dst is not None and Path(dst).expanduser().resolve() == Path(folder).expanduser().resolve():
        raise ValueError("destination must differ from the folder of scans")
    if subjects is None:
        return found
    if isinstance(subjects, (str, bytes)):
        raise TypeError(f"scan_subjects must be a sequence of subject names, got the string "
                        f"{subjects!r}")
    names = [spec["name"](str(s)) for s in subjects]
    missing = [s for s, name in zip(subjects, names) if name not in found]
    if missing:
        raise ValueError(f"subjects without a T1 in the {layout.upper()} folder {folder}: "
                         f"{missing} (found {len(found)}, e.g. {', '.join(list(found)[:3])})")
    if not names:
        raise ValueError("scan_subjects is empty")
    return {name: found[name] for name in names}


def _scans_key(scans, resolution):
    """What a finished subject was built from: the set's version and voxel
    size, and each scan's file name, size and time (not its folder, so that a
    moved copy is still recognised)."""
    return {"version": REALSET_VERSION, "resolution": resolution,
            "files": {m: [Path(p).name, Path(p).stat().st_size, Path(p).stat().st_mtime_ns]
                      for m, p in sorted(scans.items())}}


def _read_done(dst):
    try:
        return json.loads((dst / SCANS_DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _scan_subjects(found, dst, layout, reference, grid, mask, resolution, num_threads=None):
    """Yield (name, images, labels, mask, affine) of each subject of a folder
    of scans not yet finished in ``dst``, else (name, None, ...) for one that
    is."""
    done = _read_done(dst)
    same_acquisition = SCAN_LAYOUTS[layout]["same_acquisition"]
    for name, files in found.items():
        if done.get(name) == _scans_key(files, resolution) \
                and (dst / name / "labels.nii.gz").is_file():
            yield name, None, None, None, None
            continue
        scans = {m: _scan_image(files[m], f"{m.upper()} of {name}")
                 for m in _MODALITIES if m in files}
        try:
            subject = _scan_subject(name, scans, reference, grid, mask, num_threads,
                                    same_acquisition=same_acquisition)
        except ValueError as exc:  # name the person among many (the finished ones are kept)
            raise ValueError(f"subject {name}: {exc}") from None
        yield subject


def _mark_done(dst, name, files, resolution):
    """Record one finished subject (atomically) for a rerun to keep."""
    done = _read_done(dst)
    done[name] = _scans_key(files, resolution)
    tmp = dst / (SCANS_DONE + ".tmp")
    tmp.write_text(json.dumps(done, indent=1))
    os.replace(tmp, dst / SCANS_DONE)


def _scan_image(path, what):
    """A scan as (data, affine), checked: 3D, finite, with contrast."""
    from .layout import read_image_data, read_image_header

    img = read_image_header(path, what)
    data = np.asarray(read_image_data(img, path, what), dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 or not np.isfinite(data).all() or not np.ptp(data) > 0:
        raise ValueError(f"{path} ({what}): expected a finite 3D image with contrast, got "
                         f"shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def _synthetic_subjects(cohort):
    import nibabel as nib

    subjects = {s.name: s for s in cohort.subjects}
    missing = [n for n in _SYNTHETIC if n not in subjects]
    if missing:
        raise ValueError(f"the synthetic cohort lacks subjects {missing}")
    for name, new_name in _SYNTHETIC.items():
        s = subjects[name]
        mask = np.asarray(nib.load(str(s.mask)).dataobj) > 0
        t1 = nib.load(str(s.images["t1"]))
        affine = np.asarray(t1.affine, dtype=np.float64)
        labels = tissue_classes(np.asarray(t1.dataobj), mask)
        images = {m: np.where(mask, np.asarray(nib.load(str(s.images[m])).dataobj), 0)
                  .astype(np.float32) for m in _SYNTHETIC_MODALITIES}
        yield new_name, images, labels, mask, affine


# ---------------------------------------------------------------------- build
def build_real_set(dst, *, synthetic_cohort, spm_dir=None, niivue_dir=None, scans_dir=None,
                   scans_layout="ixi", scan_subjects=None, num_threads=None, progress=True,
                   resolution=2.0, heads=False):
    """Write the real-anatomy study set into ``dst`` (see the module docstring).

    Parameters
    ----------
    dst : str or Path
        Output folder (created; finished subjects are replaced).
    synthetic_cohort : callable
        Returns the embedded multimodal cohort (:data:`SYNTHETIC_COHORT`:
        ``load_dataset("embedded-multi", resolution=2.0, n_subjects=2)``, at
        ``resolution``) whose first subjects become the synthetic ones;
        called once.
    spm_dir : str or Path, optional
        A copy of SPM12 (its ``canonical/`` folder is read); default the
        images shipped in ``fastsyn.data``.
    niivue_dir : str or Path, optional
        A copy of niivue-demo-images: adds the subject ``chris``
        (:data:`NIIVUE_IMAGES`; the dataset is then named ``real-niivue``).
    scans_dir : str or Path, optional
        A folder of people's scans, each person with a T1: adds them, each
        aligned, masked and labelled as ``chris`` (:func:`_scan_subject`),
        and the dataset is named ``real-ixi`` or ``real-bids``.  A subject
        finished by an earlier build into ``dst`` from the same files is
        kept, not registered again, so that an interrupted build resumes.
    scans_layout : {"ixi", "bids"}
        How ``scans_dir`` is laid out: a copy of the IXI dataset
        (:func:`find_ixi_scans`; subjects ``ixi002``, ...; its notice is
        written beside the set) or a BIDS dataset (:func:`find_bids_scans`;
        subjects ``sub-01``, ...).
    scan_subjects : sequence of str, optional
        The subjects of ``scans_dir`` to add (``IXI002`` or ``ixi002``;
        ``sub-01`` or ``01``); default all found.
    num_threads : int or None, optional
        Threads of the affine registrations that align ``chris`` and the
        subjects of ``scans_dir``.
    progress : bool
        Show progress bars.
    resolution : float
        Voxel size in mm (default 2, SPM's grid).  Another value samples
        every subject on a grid of that voxel size over the same field of
        view (:func:`grid_at_resolution`): mni2009 and the synthetic
        subjects from the template at that resolution, ``chris`` from its
        own scans, the SPM images interpolated from their 2 mm; the set is
        then named ``real-1mm`` (``real-niivue-1mm``), and so are its
        records.
    heads : bool
        Keep the SPM subjects' heads (see the module docstring); the set is
        then named ``real-heads`` (``real-heads-1mm`` at 1 mm).

    Returns
    -------
    Dataset
    """
    from tqdm.auto import tqdm

    from .convert import _write_subject
    from .layout import load_folder, write_dataset_stamp

    resolution = check_resolution(resolution)
    dst = Path(dst).expanduser()
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"destination {dst} exists and is not a folder")
    if spm_dir is None and not shipped_images_available():
        raise FileNotFoundError("the SPM12 images are not shipped with this installation: "
                                "run `fastsyn prepare spm12 SPM12_DIR DST` with a copy of "
                                "SPM12 and use --dataset DST")
    if niivue_dir is not None:
        for stem in NIIVUE_IMAGES.values():
            _niivue_image(niivue_dir, stem)          # a missing file fails before any work
    scans = None
    if scans_dir is not None:                        # checked before any work
        scans = (_chosen_scans(scans_dir, scans_layout, scan_subjects, dst), dst, scans_layout)
    dst.mkdir(parents=True, exist_ok=True)
    names, synthetic = [], []
    real = _real_subjects(spm_dir, niivue_dir, num_threads, resolution, heads, scans)
    subjects = itertools.chain(real, _synthetic_subjects(synthetic_cohort()))
    # the SPM subjects, mni2009, chris, the scanned people, the synthetic ones
    total = (len({subject for subject, _ in SPM12_IMAGES}) + 1 + (niivue_dir is not None)
             + (len(scans[0]) if scans else 0) + len(_SYNTHETIC))
    for name, images, labels, mask, affine in tqdm(subjects, desc="building the real set",
                                                   unit="subject", total=total,
                                                   disable=not progress):
        if images is not None:                       # None: a person kept from before
            _write_subject(dst, name, images, labels, mask, affine)
            if scans and name in scans[0]:
                _mark_done(dst, name, scans[0][name], resolution)
        names.append(name)
        if name in _SYNTHETIC.values():
            synthetic.append(name)
    set_name, source = _write_notices(dst, spm_dir, niivue_dir,
                                      None if scans_dir is None else scans_layout, scans_dir,
                                      resolution)
    set_name += (HEADS_SUFFIX if heads else "") + resolution_suffix(resolution)
    write_dataset_stamp(dst, set_name, _MODALITIES, names, sparse_modalities=True,
                        synthetic=synthetic, labels=TISSUE_NAMES, source=source,
                        version=REALSET_VERSION, generator="fastsyn.bench.realset",
                        resolution=resolution, **({"heads": True} if heads else {}))
    return load_folder(dst, check=False)


def _write_notices(dst, spm_dir, niivue_dir, scans_layout, scans_dir, resolution):
    """Write the notices the added images' licences ask for beside the set;
    the set's name (without the heads and resolution suffixes) and source."""
    source = "SPM12 copy " + str(spm_dir) if spm_dir is not None else "fastsyn.data.real"
    set_name = REAL
    if niivue_dir is not None:
        (dst / "NOTICE-niivue.txt").write_text(NIIVUE_NOTICE.format(resolution=resolution))
        source += f"; niivue-demo-images copy {niivue_dir}"
        set_name = f"{REAL}-niivue"
    if scans_layout:
        notice = SCAN_LAYOUTS[scans_layout]["notice"]
        if notice is not None:
            (dst / notice[0]).write_text(notice[1].format(resolution=resolution))
        source += f"; {scans_layout.upper()} folder {scans_dir}"
        set_name += f"-{scans_layout}"
    return set_name, source


def load_real_set(root, *, synthetic_cohort, progress=True, resolution=2.0, heads=False):
    """The real-anatomy set in ``root``, built there first if absent or stale.

    Parameters
    ----------
    root : str or Path
        Its folder (``load_dataset("real")`` uses ``<cache>/real``,
        ``resolution=1`` ``<cache>/real-1mm``, ``load_dataset("real-heads")``
        ``<cache>/real-heads``).
    synthetic_cohort : callable
        See :func:`build_real_set`.
    progress : bool
    resolution, heads : float, bool
        See :func:`build_real_set`.

    Returns
    -------
    Dataset
    """
    from .layout import STAMP, load_folder

    root = Path(root).expanduser()
    stamp = root / STAMP
    current = False
    if stamp.is_file():
        try:
            info = json.loads(stamp.read_text())
            current = (info.get("version") == REALSET_VERSION
                       and info.get("generator") == "fastsyn.bench.realset"
                       and info.get("resolution", 2.0) == resolution
                       and info.get("heads", False) == heads)
        except (OSError, json.JSONDecodeError):
            current = False
    if not current:
        build_real_set(root, synthetic_cohort=synthetic_cohort, progress=progress,
                       resolution=resolution, heads=heads)
    name = REAL + (HEADS_SUFFIX if heads else "") + resolution_suffix(resolution)
    return load_folder(root, name=name, check=False)


def check_resolution(resolution):
    """``resolution`` as a float of mm, checked (0.5 to 4 mm)."""
    from fastsyn._validation import check_real

    return check_real("resolution", resolution, low=0.5, high=4)


def resolution_suffix(resolution):
    """The suffix of the set's name at a voxel size: none at SPM's 2 mm."""
    return "" if resolution == 2.0 else f"-{resolution:g}mm"
