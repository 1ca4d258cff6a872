"""Deterministic synthetic subjects built from nilearn's bundled MNI152 2009 template.

Everything here works offline: the template (T1 plus grey- and white-matter
probability maps, ICBM 2009a symmetric, 1 mm) ships inside the ``nilearn``
package.  From it we derive

* a brain mask (GM + WM probability above a threshold, largest component,
  holes filled, so the ventricles are inside),
* a CSF-like probability map (what GM and WM leave inside the mask),
* a label map combining three tissue classes (CSF-like, GM, WM) with a
  deterministic, left/right-symmetric parcellation of the brain into
  ``N_REGIONS`` regions, so that Dice measures local alignment,
* T1-, T2- and FLAIR-like contrasts from the tissue maps (partial volume),

and synthetic subjects: the template warped by a seeded random
diffeomorphism (a small rigid motion composed with the exponential of a
stationary velocity field), seen through a per-subject random non-linear
intensity transfer, gamma, a smooth multiplicative bias field and Rician
noise.  The ground-truth deformation is kept in both directions.

The velocity field of a subject (:func:`anatomical_velocity`) models
inter-subject variability at the scale of real brains -- several mm of local
displacement -- as a sum of four parts: smooth random fields at a coarse and a
fine scale, a ventricle enlargement or shrinkage (flow along the gradient of a
smoothed map of the deep CSF) and regional cortical thickness changes (flow
along the gradient of a smoothed white-matter map, with a smooth random
amplitude that changes sign across the brain).  The tissue-driven parts come
from the template at :data:`ANATOMY_RESOLUTION`, whatever the cohort's
resolution, so a subject is the same anatomy on every grid.

Conventions
-----------
World coordinates are nibabel's RAS+ millimetres.  A *displacement field* on a
grid with grid-to-world ``affine`` is an array of shape ``grid_shape + (ndim,)``
holding, for each grid point ``x`` (in world mm), the vector ``u(x)`` such that
the point maps to ``x + u(x)``.  A subject image ``S`` relates to the template
``T`` by ``S(x) = T(phi(x))`` where ``phi(x) = x + u(x)`` is the subject's
``to_template`` field.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "TISSUES",
    "N_REGIONS",
    "CONTRASTS",
    "Template",
    "Deformation",
    "SyntheticSubject",
    "template_dir",
    "load_template",
    "resample_spacing",
    "brain_mask",
    "region_seeds",
    "label_name",
    "grid_points",
    "sample_image",
    "sample_field",
    "random_velocity",
    "exp_velocity",
    "invert_displacement",
    "random_deformation",
    "VARIABILITY",
    "ANATOMY_RESOLUTION",
    "CONTROL_SPACING",
    "anatomical_velocity",
    "anatomical_deformation",
    "intensity_transfer",
    "apply_transfer",
    "synthesize_contrast",
    "bias_field",
    "log_bias_field",
    "apply_appearance",
    "warp_anatomy",
    "subject_contrast",
    "make_subject",
]

#: Tissue classes, in label order (class index 1, 2, 3).
TISSUES = ("csf", "gm", "wm")

#: Number of regions of the parcellation (half per hemisphere).
N_REGIONS = 12

#: Mean intensity of (CSF-like, GM, WM) for each synthetic contrast.
CONTRASTS = {
    "t1": (0.22, 0.58, 0.88),
    "t2": (1.00, 0.62, 0.42),
    "flair": (0.10, 0.66, 0.46),
}

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Threshold on GM + WM probability defining the brain mask.
MASK_THRESHOLD = 0.3


# --------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------


def template_dir() -> Path:
    """Folder holding nilearn's bundled MNI152 2009 templates.

    Returns
    -------
    pathlib.Path
        ``<nilearn>/datasets/data``.

    Raises
    ------
    FileNotFoundError
        If nilearn is not installed or the bundled files are missing.
    """
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency
        raise FileNotFoundError(
            "nilearn is required for the embedded MNI152 template (pip install nilearn)"
        ) from exc
    folder = Path(nilearn.__file__).resolve().parent / "datasets" / "data"
    missing = [name for name in _TEMPLATE_FILES.values() if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"nilearn's bundled MNI152 template files are missing from {folder}: {missing}"
        )
    return folder


@functools.lru_cache(maxsize=1)
def _native():
    """The 1 mm template maps as float32 in [0, 1] and their affine (cached)."""
    import nibabel as nib

    folder = template_dir()
    maps = {}
    affine = None
    for key, name in _TEMPLATE_FILES.items():
        img = nib.load(folder / name)
        data = np.asarray(img.dataobj, dtype=np.float32) / np.float32(255.0)
        data.flags.writeable = False
        maps[key] = data
        affine = img.affine.copy()
    return maps, affine


def resample_spacing(resolution) -> tuple[float, float, float]:
    """Normalise a voxel-size request to a tuple of three positive floats.

    Parameters
    ----------
    resolution : float or sequence of 3 floats
        Isotropic voxel size in mm, or one size per axis.

    Returns
    -------
    tuple of float

    Raises
    ------
    ValueError
        If the sizes are not finite and positive or not 1 or 3 of them.
    """
    try:
        arr = np.atleast_1d(np.asarray(resolution, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"resolution must be a number or 3 numbers, got {resolution!r}") from exc
    if arr.ndim != 1 or arr.size not in (1, 3):
        raise ValueError(f"resolution must be a number or 3 numbers, got {resolution!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"resolution must be finite and positive, got {resolution!r}")
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    return tuple(float(round(v, 6)) for v in arr)


def _resample_native(data, spacing, order=1):
    """Resample a 1 mm native volume to ``spacing`` (anti-aliased)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if np.allclose(spacing, 1.0):
        return np.array(data, dtype=np.float32)
    src = np.asarray(data, dtype=np.float32)
    sigma = np.sqrt(np.maximum(spacing**2 - 1.0, 0.0)) / 2.355
    if np.any(sigma > 0):
        src = ndimage.gaussian_filter(src, sigma, mode="constant")
    shape = tuple(int(np.floor((n - 1) / s + 1e-9)) + 1 for n, s in zip(data.shape, spacing))
    out = ndimage.affine_transform(
        src, np.diag(spacing), output_shape=shape, order=order, mode="constant", cval=0.0
    )
    return out.astype(np.float32)


def brain_mask(gm, wm, threshold=MASK_THRESHOLD) -> np.ndarray:
    """Brain mask from grey- and white-matter probability maps.

    Parameters
    ----------
    gm, wm : ndarray
        Probability maps in [0, 1], same shape.
    threshold : float
        Voxels with ``gm + wm > threshold`` are brain; the largest connected
        component is kept and its holes (ventricles) filled.

    Returns
    -------
    ndarray of bool
    """
    gm = np.asarray(gm)
    wm = np.asarray(wm)
    if gm.shape != wm.shape:
        raise ValueError(f"gm shape {gm.shape} differs from wm shape {wm.shape}")
    mask = (gm + wm) > threshold
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


@dataclass(eq=False)
class Template:
    """The MNI152 template on one grid, with its derived maps.

    Attributes
    ----------
    t1 : ndarray, float32
        T1 image in [0, 1] (not skull-stripped).
    gm, wm, csf : ndarray, float32
        Tissue probability maps; ``csf`` is ``1 - gm - wm`` inside the mask.
    mask : ndarray, bool
        Brain mask.
    labels : ndarray, int32
        ``3 * region + tissue`` inside the mask (tissue 1 = CSF-like,
        2 = GM, 3 = WM; region 0 .. ``N_REGIONS - 1``), 0 outside.
    affine : ndarray, (4, 4)
        Grid-to-world affine (RAS+ mm).
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape."""
        return self.t1.shape

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each grid axis."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def tissue(self) -> np.ndarray:
        """Stacked (CSF-like, GM, WM) probabilities, shape ``(3,) + shape``."""
        return np.stack([self.csf, self.gm, self.wm])

    def image(self, modality: str, *, synthetic: bool = False) -> np.ndarray:
        """A skull-stripped template image of the given contrast.

        Parameters
        ----------
        modality : {"t1", "t2", "flair"}
        synthetic : bool
            If False and ``modality == "t1"``, the real template T1 masked by the
            brain mask; otherwise the contrast synthesised from the tissue maps.

        Returns
        -------
        ndarray, float32
        """
        if modality == "t1" and not synthetic:
            return (self.t1 * self.mask).astype(np.float32)
        return synthesize_contrast(self.csf, self.gm, self.wm, modality)


def _maps(spacing):
    maps, native_affine = _native()
    gm = _resample_native(maps["gm"], spacing)
    wm = _resample_native(maps["wm"], spacing)
    t1 = _resample_native(maps["t1"], spacing)
    np.clip(gm, 0, 1, out=gm)
    np.clip(wm, 0, 1, out=wm)
    np.clip(t1, 0, 1, out=t1)
    mask = brain_mask(gm, wm)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0).astype(np.float32) * mask
    affine = native_affine @ np.diag(list(spacing) + [1.0])
    return t1, gm, wm, csf.astype(np.float32), mask, affine


def _kmeans(points, k, rng, iterations=50):
    """Plain Lloyd k-means with k-means++ seeding (deterministic given rng)."""
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum())])
    centres = np.asarray(centres)
    for _ in range(iterations):
        assign = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        new = np.array(
            [points[assign == j].mean(0) if np.any(assign == j) else centres[j] for j in range(k)]
        )
        if np.allclose(new, centres):
            break
        centres = new
    return centres


@functools.lru_cache(maxsize=1)
def region_seeds() -> np.ndarray:
    """World coordinates of the parcellation seeds (deterministic, cached).

    k-means (seed 0) on the left-hemisphere voxels of the 4 mm brain mask gives
    ``N_REGIONS // 2`` seeds, mirrored across the mid-sagittal plane ``x = 0`` of
    the symmetric template.  Seeds are ordered left then right, each half
    sorted by (z, y).

    Returns
    -------
    ndarray, shape (N_REGIONS, 3)
    """
    *_, mask, affine = _maps((4.0, 4.0, 4.0))
    idx = np.argwhere(mask).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    left = world[world[:, 0] < 0]
    centres = _kmeans(left, N_REGIONS // 2, np.random.default_rng(0))
    centres = centres[np.lexsort((centres[:, 1], centres[:, 2]))]
    right = centres * np.array([-1.0, 1.0, 1.0])
    seeds = np.concatenate([centres, right])
    seeds.flags.writeable = False
    return seeds


def _parcellate(mask, affine):
    seeds = region_seeds()
    idx = np.argwhere(mask).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    region = np.argmin(((world[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    out = np.full(mask.shape, -1, dtype=np.int32)
    out[mask] = region
    return out


def label_name(label: int) -> str:
    """Human-readable name of an embedded label, e.g. ``"L03-gm"``.

    Parameters
    ----------
    label : int
        Label value ``3 * region + tissue`` (1 .. ``3 * N_REGIONS``).

    Returns
    -------
    str
    """
    label = int(label)
    if not 1 <= label <= 3 * N_REGIONS:
        raise ValueError(f"label must be in 1..{3 * N_REGIONS}, got {label}")
    region, tissue = divmod(label - 1, 3)
    half = N_REGIONS // 2
    side = "L" if region < half else "R"
    return f"{side}{region % half + 1:02d}-{TISSUES[tissue]}"


@functools.lru_cache(maxsize=4)
def _template_cached(spacing):
    t1, gm, wm, csf, mask, affine = _maps(spacing)
    region = _parcellate(mask, affine)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.int32) + 1
    labels = np.where(mask, 3 * region + tissue, 0).astype(np.int32)
    tpl = Template(t1=t1, gm=gm, wm=wm, csf=csf, mask=mask, labels=labels, affine=affine)
    for arr in (tpl.t1, tpl.gm, tpl.wm, tpl.csf, tpl.mask, tpl.labels, tpl.affine):
        arr.flags.writeable = False
    return tpl


def load_template(resolution=2.0) -> Template:
    """The MNI152 2009 template resampled to a voxel size, with derived maps.

    Parameters
    ----------
    resolution : float or sequence of 3 floats
        Voxel size in mm (1.0 is the native grid).  The field of view is kept;
        the grid origin stays at the native first voxel.

    Returns
    -------
    Template
        Cached, read-only arrays (copy before modifying).
    """
    return _template_cached(resample_spacing(resolution))


# --------------------------------------------------------------------------
# Fields and sampling (any dimension)
# --------------------------------------------------------------------------


def _check_affine(affine, ndim, name="affine"):
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (ndim + 1, ndim + 1):
        raise ValueError(f"{name} must be ({ndim + 1}, {ndim + 1}), got {affine.shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:ndim, :ndim])) < 1e-12:
        raise ValueError(f"{name} must be finite and invertible")
    return affine


def grid_points(shape, affine) -> np.ndarray:
    """World coordinates of every grid point.

    Parameters
    ----------
    shape : tuple of int
    affine : ndarray, (ndim + 1, ndim + 1)

    Returns
    -------
    ndarray, float64, shape ``shape + (ndim,)``
    """
    ndim = len(shape)
    affine = _check_affine(affine, ndim)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    return idx @ affine[:ndim, :ndim].T + affine[:ndim, ndim]


def _to_index(points, affine):
    ndim = points.shape[-1]
    inv = np.linalg.inv(affine)
    idx = points @ inv[:ndim, :ndim].T + inv[:ndim, ndim]
    return np.moveaxis(idx, -1, 0)


def sample_image(image, affine, points, *, order=1, cval=0.0) -> np.ndarray:
    """Sample an image at world points.

    Parameters
    ----------
    image : ndarray
    affine : ndarray
        Grid-to-world affine of ``image``.
    points : ndarray, shape ``(..., ndim)``
        World coordinates.
    order : int
        Spline order (0 nearest, 1 linear).
    cval : float
        Value outside the grid.

    Returns
    -------
    ndarray, shape ``points.shape[:-1]``, dtype of ``image`` for ``order=0``,
    float32 otherwise.
    """
    image = np.asarray(image)
    affine = _check_affine(affine, image.ndim)
    idx = _to_index(np.asarray(points, dtype=np.float64), affine)
    if order == 0:
        # Round explicitly, so ties are resolved the same way everywhere.
        r = np.floor(idx + 0.5).astype(np.intp)
        inside = np.ones(r.shape[1:], dtype=bool)
        for ax, n in enumerate(image.shape):
            inside &= (r[ax] >= 0) & (r[ax] < n)
            np.clip(r[ax], 0, n - 1, out=r[ax])
        out = image[tuple(r)]
        return np.where(inside, out, np.asarray(cval, dtype=image.dtype))
    src = image.astype(np.float32, copy=False)
    return ndimage.map_coordinates(
        src, idx, order=order, mode="constant", cval=cval, prefilter=order > 1
    ).astype(np.float32)


def sample_field(disp, affine, points, *, order=1) -> np.ndarray:
    """Sample a displacement field at world points (edge values extend outward).

    Parameters
    ----------
    disp : ndarray, shape ``grid + (ndim,)``
    affine : ndarray
        Grid-to-world affine of the field's grid.
    points : ndarray, shape ``(..., ndim)``

    Returns
    -------
    ndarray, float64, shape ``points.shape``
    """
    disp = np.asarray(disp)
    ndim = disp.shape[-1]
    affine = _check_affine(affine, ndim)
    idx = _to_index(np.asarray(points, dtype=np.float64), affine)
    out = np.empty(idx.shape[1:] + (ndim,), dtype=np.float64)
    for c in range(ndim):
        out[..., c] = ndimage.map_coordinates(
            np.asarray(disp[..., c], dtype=np.float64), idx, order=order, mode="nearest",
            prefilter=order > 1,
        )
    return out


def random_velocity(shape, affine, rng, *, max_norm=5.0, sigma_mm=16.0) -> np.ndarray:
    """A random smooth stationary velocity field.

    Gaussian-smoothed white noise per component, scaled so that the largest
    vector norm on the grid equals ``max_norm``.

    Parameters
    ----------
    shape : tuple of int
    affine : ndarray
        Grid-to-world affine (sets the voxel size for ``sigma_mm``).
    rng : numpy.random.Generator
    max_norm : float
        Largest velocity norm, in mm.
    sigma_mm : float
        Smoothing width in mm (larger: smoother, more global deformation).

    Returns
    -------
    ndarray, float64, shape ``shape + (ndim,)``, in mm.
    """
    ndim = len(shape)
    affine = _check_affine(affine, ndim)
    if not (np.isfinite(max_norm) and max_norm >= 0):
        raise ValueError(f"max_norm must be finite and >= 0, got {max_norm}")
    if not (np.isfinite(sigma_mm) and sigma_mm > 0):
        raise ValueError(f"sigma_mm must be finite and > 0, got {sigma_mm}")
    spacing = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    v = np.empty(tuple(shape) + (ndim,), dtype=np.float64)
    for c in range(ndim):
        v[..., c] = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_mm / spacing, mode="reflect")
    peak = np.sqrt((v**2).sum(-1)).max()
    v *= max_norm / peak if peak > 0 else 0.0
    return v


def exp_velocity(velocity, affine, *, max_step=None) -> np.ndarray:
    """Exponentiate a stationary velocity field by scaling and squaring.

    Parameters
    ----------
    velocity : ndarray, shape ``grid + (ndim,)``, mm
    affine : ndarray
        Grid-to-world affine.
    max_step : float, optional
        Largest displacement (mm) of the initial scaled field; default a quarter
        of the smallest voxel size.

    Returns
    -------
    ndarray, float64
        Displacement field of the diffeomorphism ``exp(velocity)``.
    """
    v = np.asarray(velocity, dtype=np.float64)
    ndim = v.shape[-1]
    affine = _check_affine(affine, ndim)
    spacing = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    if max_step is None:
        max_step = 0.25 * float(spacing.min())
    peak = float(np.sqrt((v**2).sum(-1)).max())
    steps = 0 if peak <= max_step else int(np.ceil(np.log2(peak / max_step)))
    u = v / (2.0**steps)
    pts = grid_points(v.shape[:-1], affine)
    for _ in range(steps):
        u = u + sample_field(u, affine, pts + u)
    return u


def invert_displacement(disp, affine, *, init=None, iterations=50, tol=1e-4) -> np.ndarray:
    """Numerical inverse of a displacement field on its own grid (fixed point).

    Solves ``w(y) = -u(y + w(y))`` by fixed-point iteration, which converges
    for fields whose Jacobian stays close to the identity.

    Parameters
    ----------
    disp : ndarray, shape ``grid + (ndim,)``
    affine : ndarray
    init : ndarray, optional
        Starting guess (e.g. ``exp(-v)``); default ``-disp``.
    iterations : int
        Maximum number of iterations.
    tol : float
        Stop when the largest update (mm) is below this.

    Returns
    -------
    ndarray, float64
    """
    u = np.asarray(disp, dtype=np.float64)
    ndim = u.shape[-1]
    affine = _check_affine(affine, ndim)
    w = -u.copy() if init is None else np.array(init, dtype=np.float64)
    if w.shape != u.shape:
        raise ValueError(f"init shape {w.shape} differs from disp shape {u.shape}")
    pts = grid_points(u.shape[:-1], affine)
    for _ in range(int(iterations)):
        new = -sample_field(u, affine, pts + w)
        step = float(np.abs(new - w).max())
        w = new
        if step < tol:
            break
    return w


# --------------------------------------------------------------------------
# Deformations
# --------------------------------------------------------------------------


def _rotation(angles_deg):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(eq=False)
class Deformation:
    """A smooth diffeomorphism of world space, ``phi(x) = R(x + f(x))``.

    ``f`` (nonlinear part) and its inverse ``g`` are stored on a control grid
    and sampled linearly elsewhere; ``R`` is a rigid world transform.

    Attributes
    ----------
    forward : ndarray
        ``f`` on the control grid (mm).
    inverse : ndarray
        ``g`` on the control grid, the numerical inverse of ``f``.
    affine : ndarray
        Control-grid-to-world affine.
    rigid : ndarray, (ndim + 1, ndim + 1)
        World rigid transform applied after the nonlinear part.
    """

    forward: np.ndarray
    inverse: np.ndarray
    affine: np.ndarray
    rigid: np.ndarray = field(default=None)

    def __post_init__(self):
        ndim = self.forward.shape[-1]
        if self.rigid is None:
            self.rigid = np.eye(ndim + 1)

    @property
    def ndim(self) -> int:
        """Spatial dimension."""
        return self.forward.shape[-1]

    def map_points(self, points) -> np.ndarray:
        """``phi(points)``: subject world points to template world points."""
        p = np.asarray(points, dtype=np.float64)
        q = p + sample_field(self.forward, self.affine, p)
        n = self.ndim
        return q @ self.rigid[:n, :n].T + self.rigid[:n, n]

    def inverse_points(self, points, *, refine=3) -> np.ndarray:
        """``phi^-1(points)``: template world points to subject world points.

        Parameters
        ----------
        points : ndarray, shape ``(..., ndim)``
        refine : int
            Fixed-point iterations polishing the interpolated inverse against
            the interpolated forward field.
        """
        n = self.ndim
        inv = np.linalg.inv(self.rigid)
        z = np.asarray(points, dtype=np.float64) @ inv[:n, :n].T + inv[:n, n]
        q = z + sample_field(self.inverse, self.affine, z)
        for _ in range(int(refine)):
            q = z - sample_field(self.forward, self.affine, q)
        return q

    def displacement_on(self, shape, affine) -> np.ndarray:
        """``phi(x) - x`` on a grid (float32, mm)."""
        pts = grid_points(shape, affine)
        return (self.map_points(pts) - pts).astype(np.float32)

    def inverse_displacement_on(self, shape, affine, *, refine=3) -> np.ndarray:
        """``phi^-1(y) - y`` on a grid (float32, mm)."""
        pts = grid_points(shape, affine)
        return (self.inverse_points(pts, refine=refine) - pts).astype(np.float32)


def random_deformation(
    rng,
    shape,
    affine,
    *,
    max_disp=5.0,
    sigma_mm=16.0,
    control_spacing=4.0,
    max_rotation=0.0,
    max_translation=0.0,
    center=None,
) -> Deformation:
    """A seeded random smooth diffeomorphism covering a grid's field of view.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape, affine : tuple, ndarray
        The grid whose field of view the control grid covers (plus a margin).
        Only the world box matters, so any resampling of the same field of
        view gives the same deformation.
    max_disp : float
        Largest norm (mm) of the stationary velocity field; the nonlinear
        displacement stays close to this.
    sigma_mm : float
        Smoothness of the velocity (mm).
    control_spacing : float
        Control-grid spacing (mm).
    max_rotation : float
        Largest rotation (degrees) about each axis (3D only).
    max_translation : float
        Largest translation (mm) along each axis.
    center : sequence of float, optional
        Rotation centre (world mm); default the world origin.

    Returns
    -------
    Deformation
    """
    ndim = len(shape)
    cshape, caff = _control_grid(shape, affine, control_spacing)
    v = random_velocity(cshape, caff, rng, max_norm=max_disp, sigma_mm=sigma_mm)
    return _deformation_from_velocity(v, caff, rng, ndim, max_rotation=max_rotation,
                                      max_translation=max_translation, center=center)


def _control_grid(shape, affine, control_spacing):
    """A grid of spacing ``control_spacing`` covering a grid's world box plus a margin."""
    ndim = len(shape)
    affine = _check_affine(affine, ndim)
    if not control_spacing > 0:
        raise ValueError(f"control_spacing must be > 0, got {control_spacing}")
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(ndim, -1).T
    world = corners @ affine[:ndim, :ndim].T + affine[:ndim, ndim]
    lo = world.min(0) - 2 * control_spacing
    hi = world.max(0) + 2 * control_spacing
    cshape = tuple(int(np.ceil((h - a) / control_spacing)) + 1 for a, h in zip(lo, hi))
    caff = np.eye(ndim + 1)
    caff[:ndim, :ndim] *= control_spacing
    caff[:ndim, ndim] = lo
    return cshape, caff


def _deformation_from_velocity(v, caff, rng, ndim, *, max_rotation, max_translation, center,
                               iterations=50, tol=1e-6):
    """``exp(v)``, its inverse and a random rigid part (drawn from ``rng`` last)."""
    fwd = exp_velocity(v, caff)
    inv = invert_displacement(fwd, caff, init=exp_velocity(-v, caff), iterations=iterations,
                              tol=tol)
    rigid = np.eye(ndim + 1)
    angles = rng.uniform(-1, 1, 3) * max_rotation
    shift = rng.uniform(-1, 1, ndim) * max_translation
    if ndim == 3:
        rot = _rotation(angles)
    else:
        rot = np.eye(ndim)
    c = np.zeros(ndim) if center is None else np.asarray(center, dtype=np.float64)
    rigid[:ndim, :ndim] = rot
    rigid[:ndim, ndim] = c - rot @ c + shift
    return Deformation(forward=fwd, inverse=inv, affine=caff, rigid=rigid)


#: Voxel size (mm) of the template that drives the tissue-dependent parts of
#: the anatomical variability.
ANATOMY_RESOLUTION = 2.0
#: Spacing (mm) of the control grid that carries a subject's deformation: the
#: finest structure of the flow (the grey/white boundary smoothed over 2 mm)
#: survives linear interpolation from it, and each subject costs a few seconds.
CONTROL_SPACING = 3.0

#: Default anatomical variability of the embedded subjects.  ``max_disp`` and
#: ``fine_disp`` are the peak velocity norms (mm) of the smooth random fields
#: of widths ``sigma_mm`` and ``fine_sigma_mm``; ``ventricle_mm`` bounds the
#: flow at the ventricle walls (enlargement or shrinkage) and ``cortex_mm``
#: the flow of the grey/white boundary (cortical thickness change).  Over the
#: brain a subject's displacement from the template is about 3-4 mm on
#: average, so two subjects differ by 4-6 mm, up to 15 mm -- the size of real
#: inter-subject differences after a rigid alignment.
VARIABILITY = {"max_disp": 16.0, "sigma_mm": 20.0, "fine_disp": 6.0, "fine_sigma_mm": 8.0,
               "ventricle_mm": 2.0, "cortex_mm": 1.5}

# Depth (mm from the brain surface) beyond which CSF counts as ventricular,
# and the smoothing widths (mm) of the ventricle and white-matter maps whose
# gradients move the ventricle walls and the grey/white boundary.
_VENTRICLE_DEPTH_MM = 15.0
_VENTRICLE_SIGMA_MM = 6.0
_WM_SIGMA_MM = 2.0
# Width (mm) of the random amplitude field of the cortical change: regions
# of thickening and thinning a few centimetres across.
_CORTEX_FIELD_SIGMA_MM = 20.0


def _unit_gradient(volume, spacing, mask):
    """Gradient (per mm) of ``volume``, scaled so its norm reaches 1 in the brain.

    The 99.5th percentile of the norm over ``mask`` is scaled to 1 and larger
    norms are clipped to 1, so one sharp voxel cannot set the scale.
    """
    grad = np.stack(np.gradient(volume.astype(np.float64), *spacing), axis=-1)
    norm = np.sqrt((grad**2).sum(-1))
    ref = float(np.percentile(norm[mask], 99.5)) if mask.any() else 0.0
    if ref <= 0:
        return np.zeros_like(grad)
    grad /= ref
    over = norm / ref > 1.0
    grad[over] /= (norm[over] / ref)[:, None]
    return grad


@functools.lru_cache(maxsize=1)
def _anatomy_drivers():
    """Control grid of the native field of view and the tissue flow fields on it.

    Returns
    -------
    cshape : tuple of int
    caff : ndarray
        Control grid (spacing :data:`CONTROL_SPACING`) covering the 1 mm
        template's field of view plus a margin.
    ventricle, cortex : ndarray, shape ``cshape + (3,)``
        Unit-peak flows pointing into the ventricles (gradient of the
        smoothed deep-CSF map) and into the white matter (gradient of the
        smoothed WM map), sampled on the control grid.
    """
    native_maps, native_affine = _native()
    cshape, caff = _control_grid(native_maps["t1"].shape, native_affine, CONTROL_SPACING)
    tpl = load_template(ANATOMY_RESOLUTION)
    spacing = np.asarray(tpl.spacing)
    depth = ndimage.distance_transform_edt(tpl.mask, sampling=spacing)
    deep_csf = np.where(depth > _VENTRICLE_DEPTH_MM, tpl.csf, 0.0)
    vent = ndimage.gaussian_filter(deep_csf, _VENTRICLE_SIGMA_MM / spacing, mode="constant")
    wm = ndimage.gaussian_filter(tpl.wm.astype(np.float64), _WM_SIGMA_MM / spacing,
                                 mode="constant")
    pts = grid_points(cshape, caff)
    out = []
    for volume in (vent, wm):
        grad = _unit_gradient(volume, spacing, tpl.mask)
        sampled = sample_field(grad, tpl.affine, pts)
        # outside the template's grid the flows vanish (nearest extension
        # would copy the edge values into the margin)
        idx = _to_index(pts, tpl.affine)
        inside = np.all([(i >= 0) & (i <= n - 1) for i, n in zip(idx, tpl.shape)], axis=0)
        sampled[~inside] = 0.0
        sampled.flags.writeable = False
        out.append(sampled)
    caff.flags.writeable = False
    return cshape, caff, out[0], out[1]


def anatomical_velocity(rng, *, max_disp=VARIABILITY["max_disp"],
                        sigma_mm=VARIABILITY["sigma_mm"], fine_disp=VARIABILITY["fine_disp"],
                        fine_sigma_mm=VARIABILITY["fine_sigma_mm"],
                        ventricle_mm=VARIABILITY["ventricle_mm"],
                        cortex_mm=VARIABILITY["cortex_mm"]):
    """A subject's stationary velocity field over the template's field of view.

    The sum of a coarse and a fine smooth random field, a ventricle term
    ``a * g_v`` with one random factor ``a`` in ``[-ventricle_mm,
    ventricle_mm]`` and a cortical term ``c(x) * g_w`` with a smooth random
    scalar field ``c`` whose peak is ``cortex_mm``; ``g_v`` and ``g_w`` are
    the unit-peak gradients of the smoothed deep-CSF and white-matter maps
    (see :func:`_anatomy_drivers`).  Drawn from ``rng`` in that order.

    Parameters
    ----------
    rng : numpy.random.Generator
    max_disp, sigma_mm : float
        Peak norm (mm) and width (mm) of the coarse random field.
    fine_disp, fine_sigma_mm : float
        Peak norm and width of the fine random field.
    ventricle_mm : float
        Bound of the flow at the ventricle walls (mm).
    cortex_mm : float
        Peak flow of the grey/white boundary (mm).

    Returns
    -------
    velocity : ndarray, float64, shape ``cshape + (3,)``
    affine : ndarray
        Control-grid-to-world affine (spacing :data:`CONTROL_SPACING`).
    """
    for name, value in (("max_disp", max_disp), ("fine_disp", fine_disp),
                        ("ventricle_mm", ventricle_mm), ("cortex_mm", cortex_mm)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    cshape, caff, g_vent, g_wm = _anatomy_drivers()
    caff = np.array(caff)
    v = random_velocity(cshape, caff, rng, max_norm=max_disp, sigma_mm=sigma_mm)
    v += random_velocity(cshape, caff, rng, max_norm=fine_disp, sigma_mm=fine_sigma_mm)
    v += (ventricle_mm * rng.uniform(-1, 1)) * g_vent
    amp = ndimage.gaussian_filter(rng.standard_normal(cshape),
                                  _CORTEX_FIELD_SIGMA_MM / CONTROL_SPACING, mode="reflect")
    peak = np.abs(amp).max()
    amp *= cortex_mm / peak if peak > 0 else 0.0
    v += amp[..., None] * g_wm
    return v, caff


def anatomical_deformation(rng, *, max_rotation=0.0, max_translation=0.0, center=None,
                           **variability) -> Deformation:
    """A subject's deformation: ``exp`` of :func:`anatomical_velocity`, then a rigid motion.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the velocity (see :func:`anatomical_velocity`), then the rigid
        angles and shift.
    max_rotation, max_translation, center
        As in :func:`random_deformation`.
    **variability
        Keywords of :func:`anatomical_velocity` (default :data:`VARIABILITY`).

    Returns
    -------
    Deformation
        Subject world point -> template world point, on the control grid of
        the native template's field of view.
    """
    v, caff = anatomical_velocity(rng, **variability)
    # Starting from exp(-v), 10 fixed-point iterations leave about 1e-3 mm at
    # 99.9 % of the control points (a few hundredths where the flow compresses
    # tissue most and the iteration converges slowly): about the 2**-10 mm
    # the stored fields are rounded to, and Deformation.inverse_points
    # polishes every query point further.  More iterations cost seconds per
    # subject for nothing measurable.
    return _deformation_from_velocity(v, caff, rng, 3, max_rotation=max_rotation,
                                      max_translation=max_translation, center=center,
                                      iterations=10, tol=1e-4)


# --------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------


def synthesize_contrast(csf, gm, wm, modality, *, means=None) -> np.ndarray:
    """A contrast synthesised from tissue probabilities (partial volume).

    Parameters
    ----------
    csf, gm, wm : ndarray
        Tissue probabilities (0 outside the brain).
    modality : {"t1", "t2", "flair"}
    means : sequence of 3 floats, optional
        Mean intensity of (CSF-like, GM, WM); default ``CONTRASTS[modality]``.

    Returns
    -------
    ndarray, float32
        ``csf * m_csf + gm * m_gm + wm * m_wm`` (0 outside the brain).
    """
    if means is None:
        if modality not in CONTRASTS:
            raise ValueError(f"modality must be one of {sorted(CONTRASTS)}, got {modality!r}")
        means = CONTRASTS[modality]
    m = np.asarray(means, dtype=np.float32)
    if m.shape != (3,):
        raise ValueError(f"means must hold 3 values (csf, gm, wm), got {means!r}")
    return (np.asarray(csf) * m[0] + np.asarray(gm) * m[1] + np.asarray(wm) * m[2]).astype(np.float32)


def intensity_transfer(rng, *, knots=6, concentration=3.0) -> np.ndarray:
    """A random monotone non-linear intensity transfer, as its knot values.

    The transfer maps ``[0, 1]`` onto ``[0, 1]`` through ``knots`` equally
    spaced knots whose increments are drawn from a symmetric Dirichlet
    distribution: every increment is positive (the map is increasing) and
    they sum to 1.  Lower ``concentration`` bends the map more; with the
    default a segment's slope is 0.2 to 1.9 times the mean slope (5th to 95th
    percentile).

    Parameters
    ----------
    rng : numpy.random.Generator
    knots : int
        Number of knots (at least 3).
    concentration : float
        Dirichlet concentration of each increment (> 0).

    Returns
    -------
    ndarray, float64, shape ``(knots,)``
        Values at ``x = linspace(0, 1, knots)``, from 0 to 1.
    """
    knots = int(knots)
    if knots < 3:
        raise ValueError(f"knots must be >= 3, got {knots}")
    if not (np.isfinite(concentration) and concentration > 0):
        raise ValueError(f"concentration must be finite and > 0, got {concentration}")
    inc = rng.dirichlet(np.full(knots - 1, float(concentration)))
    y = np.concatenate([[0.0], np.cumsum(inc)])
    y[-1] = 1.0
    return y


def apply_transfer(image, values) -> np.ndarray:
    """Apply an intensity transfer given by its knot values.

    A monotone cubic (PCHIP) interpolation through ``(linspace(0, 1, n),
    values)`` on ``[0, 1]``, continued linearly with the end slopes outside,
    so intensities above the normalising percentile stay ordered.

    Parameters
    ----------
    image : ndarray
        Intensities, normalised so that the brain's bright end is near 1.
    values : sequence of float
        Knot values (see :func:`intensity_transfer`).

    Returns
    -------
    ndarray, float32
    """
    from scipy.interpolate import PchipInterpolator

    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1 or y.size < 2 or np.any(np.diff(y) < 0):
        raise ValueError(f"values must be a non-decreasing sequence of knots, got {values!r}")
    x = np.linspace(0.0, 1.0, y.size)
    f = PchipInterpolator(x, y, extrapolate=False)
    df = f.derivative()
    img = np.asarray(image, dtype=np.float64)
    out = f(np.clip(img, 0.0, 1.0))
    lo, hi = img < 0.0, img > 1.0
    out[lo] = y[0] + img[lo] * float(df(0.0))
    out[hi] = y[-1] + (img[hi] - 1.0) * float(df(1.0))
    return out.astype(np.float32)


def bias_field(points, rng, *, amplitude=0.15, scale_mm=100.0) -> np.ndarray:
    """A smooth multiplicative bias field (exp of a random quadratic).

    The exponential of :func:`log_bias_field`, in float32.

    Parameters
    ----------
    points : ndarray, shape ``(..., ndim)``
        World points (mm).
    rng : numpy.random.Generator
    amplitude : float
        The field lies within ``[1/(1+amplitude), 1+amplitude]`` on
        ``|x| <= scale_mm``.
    scale_mm : float
        Normalising length for the coordinates.

    Returns
    -------
    ndarray, float32, shape ``points.shape[:-1]``
    """
    return np.exp(log_bias_field(points, rng, amplitude=amplitude,
                                 scale_mm=scale_mm)).astype(np.float32)


def log_bias_field(points, rng, *, amplitude=0.15, scale_mm=100.0) -> np.ndarray:
    """The logarithm of :func:`bias_field`, in float64: a random quadratic
    of the points whose coefficients' absolute values sum to
    ``log1p(amplitude)``.

    Parameters
    ----------
    points : ndarray, shape ``(..., ndim)``
        World points (mm).
    rng : numpy.random.Generator
        Draws ``ndim * (ndim + 3) / 2`` standard normal coefficients.
    amplitude, scale_mm : float
        As in :func:`bias_field`.

    Returns
    -------
    ndarray, float64, shape ``points.shape[:-1]``
    """
    p = np.asarray(points, dtype=np.float64) / scale_mm
    ndim = p.shape[-1]
    terms = [p[..., i] for i in range(ndim)]
    terms += [p[..., i] * p[..., j] for i in range(ndim) for j in range(i, ndim)]
    coef = rng.standard_normal(len(terms))
    coef *= np.log1p(amplitude) / np.abs(coef).sum()
    return sum(c * t for c, t in zip(coef, terms))


def apply_appearance(image, support, points, rng, *, gamma=1.0, bias=0.0, noise=0.0) -> np.ndarray:
    """Gamma, bias field and Rician noise, in that order.

    Parameters
    ----------
    image : ndarray
        Non-negative intensities (roughly [0, 1]).
    support : ndarray of bool
        Where the image is non-zero after processing (skull-stripped support).
    points : ndarray
        World coordinates of the voxels (for the bias field).
    rng : numpy.random.Generator
    gamma : float
        Exponent applied to the intensities.
    bias : float
        Bias-field amplitude (0: none).
    noise : float
        Rician noise standard deviation (0: none).

    Returns
    -------
    ndarray, float32
    """
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, None) ** gamma
    b = bias_field(points, rng, amplitude=bias) if bias > 0 else 1.0
    img = img * b
    if noise > 0:
        n1 = rng.standard_normal(img.shape) * noise
        n2 = rng.standard_normal(img.shape) * noise
        img = np.sqrt((img + n1) ** 2 + n2**2)
    return np.where(support, img, 0.0).astype(np.float32)


@dataclass(eq=False)
class SyntheticSubject:
    """A synthetic subject on the template's grid.

    Attributes
    ----------
    images : dict of str to ndarray (float32)
    labels : ndarray, int32
    mask : ndarray, bool
    affine : ndarray
        Subject grid-to-world.
    to_template : ndarray, float32, shape ``grid + (3,)``
        ``u(x)``: subject point ``x`` maps to template point ``x + u(x)``.
    from_template : ndarray, float32, on the template grid
        ``w(y)``: template point ``y`` maps to subject point ``y + w(y)``.
    template_affine : ndarray
    params : dict
        JSON-serialisable generation parameters.
    """

    images: dict
    labels: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    to_template: np.ndarray
    from_template: np.ndarray
    template_affine: np.ndarray
    params: dict


def _check_modalities(modalities) -> tuple[str, ...]:
    modalities = tuple(modalities)
    if not modalities:
        raise ValueError("modalities must not be empty")
    for m in modalities:
        if m not in CONTRASTS:
            raise ValueError(f"unknown modality {m!r}; expected one of {sorted(CONTRASTS)}")
    return modalities


def _native_deformation(rng, *, max_rotation, max_translation, **variability) -> Deformation:
    """A subject's deformation, drawn over the 1 mm template's field of view.

    Drawing it on the native field of view (whatever the cohort resolution)
    is what makes a subject the same anatomy at every resolution.
    """
    return anatomical_deformation(rng, max_rotation=max_rotation,
                                  max_translation=max_translation, **variability)


@functools.lru_cache(maxsize=4)
def _subject_deformation(seed, max_rotation, max_translation, variability):
    """The deformation of the subject of ``seed`` (a tuple of ints), cached.

    A subject's deformation takes seconds and is the same for every grid and
    modality, so rebuilding one (another resolution, a damaged cache, the
    same subject with other modalities) reuses it.  Its stream is the first
    child of the seed, as in :func:`make_subject`; the arrays are read-only.
    """
    (def_ss,) = np.random.SeedSequence(list(seed)).spawn(1)
    deform = _native_deformation(np.random.default_rng(def_ss), max_rotation=max_rotation,
                                 max_translation=max_translation, **dict(variability))
    for arr in (deform.forward, deform.inverse, deform.affine, deform.rigid):
        arr.flags.writeable = False
    return deform


def warp_anatomy(template: Template, deform: Deformation) -> dict:
    """Geometry of a subject on the template grid: fields, labels, mask, support.

    Parameters
    ----------
    template : Template
    deform : Deformation
        Subject world point -> template world point.

    Returns
    -------
    dict
        ``points`` (grid points, world mm), ``mapped`` (their images under
        ``deform``), ``to_template`` and ``from_template`` (float32
        displacements), ``labels`` (int32, nearest neighbour), ``mask``
        (``labels > 0``) and ``support`` (where the warped brain mask is
        above 0.01: the skull-stripped support of the images).
    """
    shape, affine = template.shape, template.affine
    pts = grid_points(shape, affine)
    mapped = deform.map_points(pts)
    labels = sample_image(template.labels, affine, mapped, order=0).astype(np.int32)
    return {
        "points": pts,
        "mapped": mapped,
        "to_template": (mapped - pts).astype(np.float32),
        "from_template": deform.inverse_displacement_on(shape, affine),
        "labels": labels,
        "mask": labels > 0,
        "support": sample_image(template.mask.astype(np.float32), affine, mapped, order=1) > 0.01,
    }


def subject_contrast(template: Template, anatomy: dict, modality: str, rng, *,
                     synthetic_contrast=False, gamma_range=(0.85, 1.15),
                     bias_range=(0.05, 0.20), noise_range=(0.01, 0.03),
                     contrast_jitter=0.12, transfer_knots=6,
                     transfer_concentration=3.0) -> tuple[np.ndarray, dict]:
    """One modality of a subject: warped template contrast plus appearance.

    The tissue contrast (partial volume, jittered tissue means), normalised
    by its 99th percentile in the brain, goes through the subject's random
    intensity transfer (:func:`intensity_transfer`), is warped, and gets
    gamma, bias field and Rician noise (:func:`apply_appearance`).

    Parameters
    ----------
    template : Template
    anatomy : dict
        From :func:`warp_anatomy`.
    modality : str
    rng : numpy.random.Generator
        This modality's own stream; draws gamma, bias, noise, the three
        tissue jitters and the transfer, in that order, then the bias field
        and noise.
    synthetic_contrast, gamma_range, bias_range, noise_range, contrast_jitter
        See :func:`make_subject`.
    transfer_knots, transfer_concentration
        See :func:`intensity_transfer`; ``transfer_knots=0`` keeps the
        intensities linear (nothing is drawn for the transfer then).

    Returns
    -------
    image : ndarray, float32
    params : dict
        ``gamma``, ``bias``, ``noise``, ``jitter`` and ``transfer`` (the knot
        values, or None), JSON-serialisable.
    """
    gamma = float(rng.uniform(*gamma_range))
    bias = float(rng.uniform(*bias_range))
    noise = float(rng.uniform(*noise_range))
    # drawn for every modality, used or not, so each stream stays aligned
    jitter = 1.0 + contrast_jitter * rng.uniform(-1, 1, 3)
    transfer = None
    if transfer_knots:
        transfer = intensity_transfer(rng, knots=transfer_knots,
                                      concentration=transfer_concentration)
    if modality == "t1" and not synthetic_contrast:
        base = template.image("t1")
    else:
        base = synthesize_contrast(
            template.csf, template.gm, template.wm, modality,
            means=np.asarray(CONTRASTS[modality]) * jitter,
        )
    scale = float(np.percentile(base[template.mask], 99)) or 1.0
    base = base / scale
    if transfer is not None:
        # outside the brain stays 0 (the transfer maps 0 to 0)
        base = apply_transfer(base, transfer)
    warped = sample_image(base, template.affine, anatomy["mapped"], order=1)
    image = apply_appearance(
        warped, anatomy["support"], anatomy["points"], rng, gamma=gamma, bias=bias, noise=noise
    )
    params = {"gamma": gamma, "bias": bias, "noise": noise, "jitter": jitter.round(6).tolist(),
              "transfer": None if transfer is None else transfer.round(6).tolist()}
    return image, params


def make_subject(
    template: Template,
    seed,
    *,
    modalities=("t1",),
    synthetic_contrast=False,
    max_disp=VARIABILITY["max_disp"],
    sigma_mm=VARIABILITY["sigma_mm"],
    fine_disp=VARIABILITY["fine_disp"],
    fine_sigma_mm=VARIABILITY["fine_sigma_mm"],
    ventricle_mm=VARIABILITY["ventricle_mm"],
    cortex_mm=VARIABILITY["cortex_mm"],
    max_rotation=3.0,
    max_translation=3.0,
    gamma_range=(0.85, 1.15),
    bias_range=(0.05, 0.20),
    noise_range=(0.01, 0.03),
    contrast_jitter=0.12,
    transfer_knots=6,
    transfer_concentration=3.0,
) -> SyntheticSubject:
    """Make one deterministic synthetic subject.

    The random streams are split (deformation, then one per modality for
    appearance), so the deformation does not depend on the grid or on the
    modalities, and a subject built at 1 mm is the same anatomy as at 2 mm.

    Parameters
    ----------
    template : Template
    seed : int or sequence of int
        Entropy for :class:`numpy.random.SeedSequence`.
    modalities : sequence of str
        Contrasts to produce ("t1", "t2", "flair").
    synthetic_contrast : bool
        If False, "t1" is the real template T1; other contrasts are always
        synthesised from the tissue maps.
    max_disp, sigma_mm, fine_disp, fine_sigma_mm, ventricle_mm, cortex_mm : float
        Anatomical variability (see :func:`anatomical_velocity` and
        :data:`VARIABILITY`).
    max_rotation, max_translation : float
        Rigid part bounds (degrees, mm).
    gamma_range, bias_range, noise_range : tuple of float
        Uniform ranges for gamma, bias amplitude and Rician noise level
        (relative to the 99th percentile of brain intensities).
    contrast_jitter : float
        Relative jitter of the tissue means of synthesised contrasts.
    transfer_knots, transfer_concentration
        The per-modality random intensity transfer (see
        :func:`intensity_transfer`; 0 knots: none).

    Returns
    -------
    SyntheticSubject
    """
    modalities = _check_modalities(modalities)
    variability = {"max_disp": max_disp, "sigma_mm": sigma_mm, "fine_disp": fine_disp,
                   "fine_sigma_mm": fine_sigma_mm, "ventricle_mm": ventricle_mm,
                   "cortex_mm": cortex_mm}
    ss = np.random.SeedSequence(seed)
    _, *app_ss = ss.spawn(1 + len(modalities))
    deform = _subject_deformation(
        tuple(int(v) for v in np.atleast_1d(seed)), float(max_rotation),
        float(max_translation), tuple((k, float(v)) for k, v in variability.items()))
    anatomy = warp_anatomy(template, deform)
    images = {}
    params = {"seed": [int(s) for s in np.atleast_1d(seed)], **variability,
              "rigid": deform.rigid.round(6).tolist(), "modalities": {}}
    for m, mss in zip(modalities, app_ss):
        images[m], params["modalities"][m] = subject_contrast(
            template, anatomy, m, np.random.default_rng(mss),
            synthetic_contrast=synthetic_contrast, gamma_range=gamma_range,
            bias_range=bias_range, noise_range=noise_range, contrast_jitter=contrast_jitter,
            transfer_knots=transfer_knots, transfer_concentration=transfer_concentration,
        )
    affine = template.affine
    return SyntheticSubject(
        images=images,
        labels=anatomy["labels"],
        mask=anatomy["mask"],
        affine=np.array(affine),
        to_template=anatomy["to_template"],
        from_template=anatomy["from_template"],
        template_affine=np.array(affine),
        params=params,
    )
