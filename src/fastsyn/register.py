"""Register two image files: affine then SyN, with files that ANTs tools read.

:func:`register_files` is the work behind ``fastsyn register``.  It reads a
fixed and a moving image (NIfTI or Analyze, through nibabel), aligns them with
an affine pipeline (``center_of_mass`` -> ``translation`` -> ``rigid``
[-> ``affine``], mutual information), refines with fastsyn's SyN (CC radius 4
or MI) and writes, for an output prefix ``P``::

    Pwarped.nii.gz          moving image on the fixed grid (float32, linear)
    Pwarped_labels.nii.gz   moving labels on the fixed grid (nearest), if given
    Paffine_ras.tsv         4x4 world (RAS) matrix, fixed point -> moving point
                            (DIPY's ``prealign`` convention); not named
                            ``.txt``, which ANTs and ITK would read as their
                            own transform format
    Paffine.mat             the same matrix as an ITK transform (LPS)
    PWarp.nii.gz            forward displacement on the fixed grid (ITK layout)
    PInverseWarp.nii.gz     inverse displacement on the fixed grid (ITK layout)

The displacement files follow ANTs' convention, so that
``antsApplyTransforms -r FIXED -i MOVING -t PWarp.nii.gz -t Paffine.mat``
(or greedy ``-r PWarp.nii.gz Paffine.mat``) reproduces ``Pwarped.nii.gz``: a
fixed world point ``x`` maps to ``A(x + u(x))`` in the moving space, where
``A`` is the affine and ``u`` the forward field, stored as a 5D NIfTI
``(X, Y, Z, 1, 3)`` vector image (intent ``vector``) whose components are in
ITK's LPS world frame.  The inverse map is ``y -> z + v(z)`` with
``z = A^-1 y`` and ``v`` the inverse field, used as
``-t [Paffine.mat,1] -t PInverseWarp.nii.gz`` with the moving image as
reference.

The affine step is fastsyn's threaded :func:`fastsyn.affine_registration`
with the benchmark harness's settings (:func:`_affine_registration`).
"""

import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np

from fastsyn._validation import check_bool, check_bool_or_coarse
from fastsyn.imaffine import affine_registration

__all__ = ["register_files", "check_overlap", "AFFINE_PIPELINES", "DEFAULT_AFFINE_LEVELS",
           "MIN_OVERLAP", "MIN_SIZE"]

#: The affine pipeline run before each ``transform`` choice.
AFFINE_PIPELINES = {
    "rigid": ("center_of_mass", "translation", "rigid"),
    "affine": ("center_of_mass", "translation", "rigid", "affine"),
    "syn": ("center_of_mass", "translation", "rigid", "affine"),
}
#: Iterations, smoothing sigmas (voxels) and shrink factors of the affine
#: pyramid: the benchmark harness's prealignment settings.
DEFAULT_AFFINE_LEVELS = {"level_iters": (100, 50, 25), "sigmas": (3.0, 1.0, 0.0),
                         "factors": (4, 2, 1), "nbins": 32}

#: Fewest voxels along any axis: the affine pyramid shrinks by 4, and a level
#: needs at least 2 voxels per axis for a gradient.
MIN_SIZE = 8
#: Least fraction of the fixed foreground that the prealigned moving
#: foreground must cover; below it the images do not overlap and any metric
#: value is noise.
MIN_OVERLAP = 0.05

# RAS (nibabel, DIPY) <-> LPS (ITK): negate the first two world axes.
_RAS_LPS = np.diag([-1.0, -1.0, 1.0])


def _affine_registration(moving, static, *, moving_affine, static_affine, pipeline,
                         level_iters, sigmas, factors, nbins=32, sampling_proportion=None,
                         static_mask=None, moving_mask=None, num_threads=None):
    """fastsyn's threaded affine registration with the harness's arguments
    (``(resampled moving, static-to-moving world matrix)``)."""
    kwargs = dict(moving_affine=moving_affine, static_affine=static_affine,
                  pipeline=list(pipeline), level_iters=list(level_iters),
                  sigmas=list(sigmas), factors=list(factors), nbins=int(nbins),
                  sampling_proportion=sampling_proportion, static_mask=static_mask,
                  moving_mask=moving_mask)
    return affine_registration(moving, static, num_threads=num_threads, **kwargs)


# ---------------------------------------------------------------------- input
def _load(name, path, *, required=True):
    """``(nibabel image, 3D array)`` of a file, errors naming the argument."""
    import nibabel as nib

    if path is None:
        if required:
            raise ValueError(f"{name} is required")
        return None, None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name} not found: {p}")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types
        raise ValueError(f"{name}: cannot read {p}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name} ({p}) must be a 3D volume, got shape {data.shape}")
    if abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name} ({p}) has a singular affine")
    if data.dtype.kind not in "iuf" and data.dtype != bool:
        raise ValueError(f"{name} ({p}) has non-numeric data ({data.dtype})")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise ValueError(f"{name} ({p}) contains NaN or infinite values")
    return img, data


def _same_grid(name, img, data, ref_name, ref_img, ref_data):
    if data.shape != ref_data.shape:
        raise ValueError(f"{name} has shape {data.shape}, but {ref_name} has shape "
                         f"{ref_data.shape}: they must be on the same grid")
    if not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        raise ValueError(f"{name} and {ref_name} have different grid-to-world affines")


def _check_registrable(name, path, data, mask):
    """A volume that can be registered: large enough and not constant."""
    from fastsyn._validation import check_contrast

    if min(data.shape) < MIN_SIZE:
        raise ValueError(f"{name} ({path}) is too small to register: shape {data.shape}, "
                         f"at least {MIN_SIZE} voxels per axis are needed")
    check_contrast(f"{name} ({path})", data, mask)


def _read_inputs(fixed, moving, fixed_mask, moving_mask, labels):
    f_img, f = _load("fixed", fixed)
    m_img, m = _load("moving", moving)
    out = {"fixed": (f_img, f), "moving": (m_img, m)}
    for name, path, ref in (("fixed mask", fixed_mask, "fixed"),
                            ("moving mask", moving_mask, "moving"),
                            ("labels", labels, "moving")):
        img, data = _load(name, path, required=False)
        if img is not None:
            _same_grid(name, img, data, ref, *out[ref])
        out[name] = (img, data)
    _check_registrable("fixed", fixed, f, out["fixed mask"][1])
    _check_registrable("moving", moving, m, out["moving mask"][1])
    return out


def foreground(image, mask=None):
    """The voxels that hold the subject: the mask's nonzero voxels, else the
    image's nonzero ones, else (an image without zeros) all of them."""
    fg = (np.asarray(mask) != 0) if mask is not None else (np.asarray(image) != 0)
    return fg if fg.any() else np.ones(np.shape(image), dtype=bool)


def check_overlap(fixed_fg, moving_fg, fixed_name="fixed", moving_name="moving"):
    """Refuse a prealignment under which the two images barely overlap.

    Parameters
    ----------
    fixed_fg : ndarray of bool
        The fixed image's foreground.
    moving_fg : ndarray of bool
        The moving image's foreground resampled onto the fixed grid by the
        prealignment (nearest neighbour).
    fixed_name, moving_name : str
        What to call the images in the message (e.g. their files).

    Returns
    -------
    float
        The fraction of the fixed foreground that the moving one covers.
    """
    fixed_fg = np.asarray(fixed_fg, dtype=bool)
    covered = np.count_nonzero(fixed_fg & np.asarray(moving_fg, dtype=bool))
    fraction = covered / max(1, np.count_nonzero(fixed_fg))
    if fraction < MIN_OVERLAP:
        raise ValueError(
            f"{moving_name} does not overlap {fixed_name} after prealignment: it covers "
            f"{100 * fraction:.1f}% of the fixed foreground (at least "
            f"{100 * MIN_OVERLAP:g}% is needed); check that both images show the same "
            f"anatomy and that their headers place it in the same world space")
    return fraction


# --------------------------------------------------------------- ITK output
def _save(path, data, affine, intent=None):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    if intent is not None:
        img.header.set_intent(intent)
    nib.save(img, str(path))


def _sample(field, grid_points):
    """Linear interpolation of a vector field at grid points (3, N); 0 outside."""
    from scipy.ndimage import map_coordinates

    return np.stack([map_coordinates(np.asarray(field[..., c], dtype=np.float64),
                                     grid_points, order=1, mode="constant", cval=0.0)
                     for c in range(3)], axis=0)


def _apply(matrix, points):
    return matrix[:3, :3] @ points + matrix[:3, 3:4]


def _dipy_points(mapping, points, inverse=False):
    """Where DIPY's map sends world points (3, N): its ``transform`` direction
    (fixed -> moving) or, with ``inverse``, its ``transform_inverse`` one.

    DIPY has two formulas, picked by the map's ``is_inverse`` flag: the
    forward one ``P p + f(Dinv P p)`` and the backward one
    ``P^-1 (p + b(Dinv p))`` (``f``, ``b`` its fields, ``P`` its prealign,
    ``Dinv`` its displacement grid's world-to-grid matrix).
    """
    dinv = np.asarray(mapping.disp_world2grid)
    use_forward = bool(mapping.is_inverse) == bool(inverse)
    if use_forward:
        pre = np.eye(4) if mapping.prealign is None else np.asarray(mapping.prealign)
        q = _apply(pre, points)
        return q + _sample(mapping.forward, _apply(dinv, q))
    pre_inv = np.eye(4) if mapping.prealign_inv is None else np.asarray(mapping.prealign_inv)
    return _apply(pre_inv, points + _sample(mapping.backward, _apply(dinv, points)))


def ants_displacements(mapping, matrix, shape, grid2world):
    """DIPY's SyN map as ANTs' forward and inverse fields on the fixed grid (RAS).

    ANTs sends a fixed world point ``x`` to ``A (x + u(x))`` and a moving
    point ``y`` to ``z + v(z)`` with ``z = A^-1 y``; both fields live on the
    fixed grid.  They are read off DIPY's map point by point:
    ``u(x) = A^-1 T(x) - x`` and ``v(z) = T^-1(A z) - z``.

    Parameters
    ----------
    mapping : DiffeomorphicMap
        The map returned by SyN's ``optimize`` (with its prealign).
    matrix : ndarray, shape (4, 4)
        ``A``, the affine written beside the fields (static -> moving world).
    shape, grid2world
        The fixed grid.

    Returns
    -------
    u, v : ndarray, shape shape + (3,), float64
    """
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    x = _apply(np.asarray(grid2world, dtype=np.float64), idx)
    a_inv = np.linalg.inv(matrix)
    u = _apply(a_inv, _dipy_points(mapping, x)) - x
    v = _dipy_points(mapping, _apply(matrix, x), inverse=True) - x
    return tuple(d.T.reshape(tuple(shape) + (3,)) for d in (u, v))


def write_itk_displacement(path, disp_ras, grid2world):
    """Write a RAS displacement as the 5D LPS vector NIfTI that ITK reads."""
    lps = disp_ras @ _RAS_LPS  # diagonal: negates the x and y components
    data = lps[:, :, :, None, :].astype(np.float32)
    _save(path, data, grid2world, intent="vector")


def write_itk_affine(path, matrix):
    """Write a RAS static->moving matrix as an ITK affine ``.mat`` (LPS).

    ITK's MATLAB (version 4) transform file: ``AffineTransform_double_3_3``,
    the matrix row by row and then the translation, and ``fixed``, the
    centre (0, so the translation is the offset).  Written with SciPy: no
    ITK is needed, and importing antspyx for it took seconds.
    """
    from scipy.io import savemat

    lin = _RAS_LPS @ matrix[:3, :3] @ _RAS_LPS
    trans = _RAS_LPS @ matrix[:3, 3]
    params = np.concatenate([lin.ravel(), trans]).astype(np.float64).reshape(12, 1)
    savemat(str(path), {"AffineTransform_double_3_3": params, "fixed": np.zeros((3, 1))},
            format="4")


# ------------------------------------------------------------------- stages
def _affine_stage(inputs, pipeline, threads, log):
    (f_img, f), (m_img, m) = inputs["fixed"], inputs["moving"]
    fmask, mmask = inputs["fixed mask"][1], inputs["moving mask"][1]
    t0 = time.perf_counter()
    _, matrix = _affine_registration(
        m.astype(np.float64), f.astype(np.float64), moving_affine=m_img.affine,
        static_affine=f_img.affine, pipeline=pipeline,
        static_mask=None if fmask is None else (fmask > 0).astype(np.int32),
        moving_mask=None if mmask is None else (mmask > 0).astype(np.int32),
        num_threads=threads, **DEFAULT_AFFINE_LEVELS)
    seconds = time.perf_counter() - t0
    log(f"affine ({' -> '.join(pipeline)}): {seconds:.1f} s")
    return np.asarray(matrix, dtype=np.float64), seconds


def _level_logger(log):
    """A SyN callback that logs each finished pyramid level."""
    from dipy.align.imwarp import RegistrationStages

    state = {"iters": 0, "t0": time.perf_counter()}

    def callback(sdr, stage):
        if stage == RegistrationStages.SCALE_START:
            state.update(iters=0, t0=time.perf_counter())
        elif stage == RegistrationStages.ITER_END:
            state["iters"] += 1
        elif stage == RegistrationStages.SCALE_END:
            energy = sdr.energy_list[-1] if len(sdr.energy_list) else float("nan")
            n = len(sdr.level_iters)
            log(f"SyN level {n - sdr.current_level}/{n} ({state['iters']} iterations): "
                f"energy {energy:.6g}, {time.perf_counter() - state['t0']:.1f} s")

    return callback


def _syn_stage(inputs, matrix, metric, levels, threads, log, auto_masks=True,
               partial_volume=None):
    import fastsyn

    (f_img, f), (m_img, m) = inputs["fixed"], inputs["moving"]
    if metric == "cc":
        sim = fastsyn.CCMetric(3, radius=4)
    else:
        # MI registers a whole head stripped by its brain mask, or restricts
        # its histogram and its update to a mask, each on its own image's
        # grid: the scalp and skull then steer nothing
        fmask, mmask = inputs["fixed mask"][1], inputs["moving mask"][1]
        # (None: MIMetric's own default)
        pv = {} if partial_volume is None else {"partial_volume": partial_volume}
        sim = fastsyn.MIMetric(3, static_mask=None if fmask is None else fmask > 0,
                               moving_mask=None if mmask is None else mmask > 0,
                               auto_masks=auto_masks, **pv)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(
        sim, level_iters=list(levels), num_threads=threads, callback=_level_logger(log))
    t0 = time.perf_counter()
    mapping = sdr.optimize(f.astype(np.float64), m.astype(np.float64),
                           static_grid2world=f_img.affine, moving_grid2world=m_img.affine,
                           prealign=matrix)
    seconds = time.perf_counter() - t0
    names = {"static": "fixed", "moving": "moving"}
    stripped = getattr(sim, "images_stripped", ())
    for side in stripped:
        log(f"MI: the {names[side]} mask leaves out much of the image's signal (a brain mask "
            "on a whole head); the image was registered stripped by it (--no-auto-masks "
            "restricts MI to the mask instead)")
    for side in getattr(sim, "masks_set_aside", ()):
        if side not in stripped:  # a stripped image's mask has done its work
            log(f"MI: the {names[side]} mask leaves out nothing but the image's zero "
                "background (skull-stripped); it was set aside (--no-auto-masks keeps it)")
    for side in getattr(sim, "auto_masked", ()):
        log(f"MI: the {names[side]} image is zero where the other has signal "
            "(skull-stripped); its nonzero region served as its mask")
    log(f"SyN ({metric.upper()}, levels {','.join(map(str, levels))}): {seconds:.1f} s")
    return mapping, seconds


def _affine_mapping(inputs, matrix):
    from dipy.align.imaffine import AffineMap

    (f_img, f), (m_img, m) = inputs["fixed"], inputs["moving"]
    return AffineMap(matrix, domain_grid_shape=f.shape, domain_grid2world=f_img.affine,
                     codomain_grid_shape=m.shape, codomain_grid2world=m_img.affine)


def _check_prealigned_overlap(inputs, matrix, fixed, moving):
    (_, f), (_, m) = inputs["fixed"], inputs["moving"]
    moving_fg = foreground(m, inputs["moving mask"][1]).astype(np.float64)
    on_fixed = _affine_mapping(inputs, matrix).transform(moving_fg, interpolation="nearest")
    check_overlap(foreground(f, inputs["fixed mask"][1]), on_fixed > 0.5,
                  f"fixed ({fixed})", f"moving ({moving})")


def _ncc(a, b, mask):
    a = a[mask] - a[mask].mean()
    b = b[mask] - b[mask].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


# ---------------------------------------------------------------------- main
@contextlib.contextmanager
def _quiet_dipy():
    """DIPY logs every affine step at INFO; progress here is our own."""
    logger = logging.getLogger("dipy")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_options(metric, transform, levels, threads):
    if metric not in ("cc", "mi"):
        raise ValueError(f"metric must be 'cc' or 'mi', got {metric!r}")
    if transform not in AFFINE_PIPELINES:
        raise ValueError(f"transform must be one of {sorted(AFFINE_PIPELINES)}, "
                         f"got {transform!r}")
    levels = tuple(levels)
    if not levels or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                         or v < 0 for v in levels):
        raise ValueError(f"levels must be integers >= 0, got {levels!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return levels


def _write_outputs(prefix, inputs, matrix, mapping):
    """Write every output file.

    Returns
    -------
    files : dict
        Name -> Path of each file written.
    arrays : dict
        ``warped`` (float32), ``warped_labels`` and ``displacement`` (the
        forward field ``u`` in RAS mm on the fixed grid), None when absent.
    """
    f_img, f = inputs["fixed"]
    m = inputs["moving"][1]
    transform = (mapping or _affine_mapping(inputs, matrix)).transform
    out = {"warped": Path(f"{prefix}warped.nii.gz"),
           "affine": Path(f"{prefix}affine_ras.tsv")}
    warped = transform(m.astype(np.float64)).astype(np.float32)
    _save(out["warped"], warped, f_img.affine)
    labels = inputs["labels"][1]
    arrays = {"warped": warped, "warped_labels": None, "displacement": None}
    if labels is not None:
        out["warped_labels"] = Path(f"{prefix}warped_labels.nii.gz")
        wl = transform(labels.astype(np.float64), interpolation="nearest")
        dtype = labels.dtype if labels.dtype.kind in "iu" else np.int32
        arrays["warped_labels"] = np.rint(wl).astype(dtype)
        _save(out["warped_labels"], arrays["warped_labels"], f_img.affine)
    np.savetxt(out["affine"], matrix, delimiter="\t", fmt="%.17g",
               header="DIPY prealign: 4x4 RAS world matrix, fixed point -> moving point. "
                      "Not an ITK transform: ANTs/ITK tools read "
                      f"{Path(f'{prefix}affine.mat').name}")
    out["affine_itk"] = Path(f"{prefix}affine.mat")
    write_itk_affine(out["affine_itk"], matrix)
    if mapping is not None:
        fields = ants_displacements(mapping, matrix, f.shape, f_img.affine)
        for key, name, disp in zip(("warp", "inverse_warp"), ("Warp", "InverseWarp"),
                                   fields):
            out[key] = Path(f"{prefix}{name}.nii.gz")
            write_itk_displacement(out[key], disp, f_img.affine)
        arrays["displacement"] = fields[0]
    return out, arrays


def register_files(fixed, moving, out, *, metric="cc", transform="syn", threads=None,
                   levels=(20, 20, 10), fixed_mask=None, moving_mask=None, labels=None,
                   auto_masks=True, partial_volume=None, log=None):
    """Register a moving image file to a fixed one and write the results.

    Parameters
    ----------
    fixed, moving : str or Path
        3D NIfTI or Analyze images.
    out : str
        Output prefix (``out/`` for a folder; missing folders are created).
    metric : {"cc", "mi"}
        SyN similarity: CC (radius 4) for one modality, MI across modalities.
        The affine stage always uses mutual information.
    transform : {"rigid", "affine", "syn"}
        The last stage: ``syn`` runs the affine pipeline then SyN.
    threads : int, optional
        Threads (default: every CPU, the OpenMP default).
    levels : sequence of int
        SyN iterations per level, coarsest first.
    fixed_mask, moving_mask : str or Path, optional
        Masks (nonzero = inside) on the fixed / moving grid, for the affine
        stage's metric, MI SyN's metric (``metric="mi"``; CC has no mask) and
        the summary's NCC.
    labels : str or Path, optional
        Moving label map, warped with nearest-neighbour interpolation.
    auto_masks : bool, optional
        MI SyN's :class:`~fastsyn.MIMetric` ``auto_masks``: an image without
        a mask that is exactly zero where the other has signal (a
        skull-stripped image against a whole head) is masked by its nonzero
        region, a whole head given its brain mask is registered stripped by
        it, and a mask that leaves out only its image's zero background is
        set aside (default True; logged when it happens; False: masks only
        restrict MI).
    partial_volume : bool, "coarse" or None, optional
        MI SyN's :class:`~fastsyn.MIMetric` ``partial_volume``: histograms
        that read each image's own voxels instead of interpolated values,
        on every pyramid level but the finest (``"coarse"``, MI's default),
        on every level (True; about 1.3x the SyN time) or on none (False).
        Default None: MI's default; with ``metric="cc"`` it must stay None.
    log : callable, optional
        Progress messages (default: print to stderr).

    Returns
    -------
    dict
        ``files`` (name -> Path), ``seconds`` (total), ``affine_seconds``,
        ``syn_seconds``, ``ncc`` (fixed vs warped, inside the fixed mask or
        the fixed image's nonzero voxels), ``matrix`` (4x4) and ``mapping``
        (SyN's ``DiffeomorphicMap``, None unless ``transform="syn"``) and
        ``arrays`` (see :func:`_write_outputs`: the warped image and labels
        and the forward displacement, for a QC card).
    """
    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)
    levels = _check_options(metric, transform, levels, threads)
    auto_masks = check_bool("auto_masks", auto_masks)
    if partial_volume is not None:
        partial_volume = check_bool_or_coarse("partial_volume", partial_volume)
        if metric != "mi":
            raise ValueError("partial_volume is an option of the MI metric (metric='mi')")
    if not isinstance(out, (str, Path)) or not str(out):
        raise ValueError(f"out must be an output prefix, got {out!r}")
    t0 = time.perf_counter()
    inputs = _read_inputs(fixed, moving, fixed_mask, moving_mask, labels)
    Path(f"{out}x").parent.mkdir(parents=True, exist_ok=True)
    with _quiet_dipy():
        matrix, affine_s = _affine_stage(inputs, AFFINE_PIPELINES[transform], threads, log)
        _check_prealigned_overlap(inputs, matrix, fixed, moving)
        mapping, syn_s = None, 0.0
        if transform == "syn":
            mapping, syn_s = _syn_stage(inputs, matrix, metric, levels, threads, log,
                                        auto_masks=auto_masks,
                                        partial_volume=partial_volume)
        files, arrays = _write_outputs(out, inputs, matrix, mapping)
    f = inputs["fixed"][1]
    mask = foreground(f, inputs["fixed mask"][1])
    return {"files": files, "seconds": time.perf_counter() - t0, "affine_seconds": affine_s,
            "syn_seconds": syn_s,
            "ncc": _ncc(f.astype(np.float64), arrays["warped"], mask),
            "matrix": matrix, "mapping": mapping, "arrays": arrays}
