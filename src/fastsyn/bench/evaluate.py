"""Accuracy measures for registered pairs.

One definition of each measure, used by every part of the harness (see the
Evaluation section of ``DESIGN.md``):

* NCC: Pearson correlation of the fixed and warped images inside the fixed mask.
* NMI: ``(H(A) + H(B)) / H(A, B)`` with 32 equal-width bins per image, inside the
  fixed mask.
* Dice and Jaccard: per label present in the fixed label map (label 0 excluded),
  then the unweighted mean over those labels.
* Jacobian: the determinant of ``I + du/dx`` for a displacement ``u`` given in
  world millimetres on the fixed grid; reported as the percentage of mask voxels
  with a determinant ``<= 0`` and the standard deviation of ``log(det)`` over the
  mask voxels with a positive determinant.
* Target error: Euclidean distance in millimetres between the estimated and
  the true correspondence of each fixed-mask voxel; mean and median.

Everything is vectorised NumPy; no function loops over voxels or labels in
Python.
"""

import numpy as np

__all__ = [
    "ncc",
    "nmi",
    "label_overlap",
    "jacobian_determinant",
    "jacobian_stats",
    "target_error",
    "evaluate_pair",
]


def _as_float_array(name, value):
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _mask_for(name, mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(
            f"{name} has shape {mask.shape}, expected the image shape {tuple(shape)}"
        )
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError(f"{name} selects no voxels")
    return mask


def _pair_values(a, b, mask):
    a = _as_float_array("fixed", a)
    b = _as_float_array("warped", b)
    if a.shape != b.shape:
        raise ValueError(f"fixed has shape {a.shape} but warped has shape {b.shape}")
    m = _mask_for("mask", mask, a.shape)
    return a[m], b[m]


def ncc(fixed, warped, mask=None):
    """Pearson correlation of two images inside a mask.

    Parameters
    ----------
    fixed, warped : ndarray
        Images of the same shape.
    mask : ndarray of bool, optional
        Voxels to use (the fixed mask); all voxels when omitted.

    Returns
    -------
    float
        The correlation in ``[-1, 1]``; ``0.0`` when either image is constant
        inside the mask.
    """
    x, y = _pair_values(fixed, warped, mask)
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denom == 0.0:
        return 0.0
    return float(np.dot(x, y) / denom)


def _bin_index(values, bins):
    lo = values.min()
    hi = values.max()
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.intp)
    idx = ((values - lo) * (bins / (hi - lo))).astype(np.intp)
    np.clip(idx, 0, bins - 1, out=idx)
    return idx


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def nmi(fixed, warped, mask=None, bins=32):
    """Normalised mutual information ``(H(A) + H(B)) / H(A, B)``.

    Parameters
    ----------
    fixed, warped : ndarray
        Images of the same shape.
    mask : ndarray of bool, optional
        Voxels to use (the fixed mask); all voxels when omitted.
    bins : int, optional
        Number of equal-width bins spanning each image's range inside the mask.

    Returns
    -------
    float
        A value in ``[1, 2]``; 2 for images in one-to-one correspondence, 1 for
        independent images. Two constant images give 1.
    """
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    x, y = _pair_values(fixed, warped, mask)
    ix = _bin_index(x, bins)
    iy = _bin_index(y, bins)
    joint = np.bincount(ix * bins + iy, minlength=bins * bins).astype(np.float64)
    joint = joint.reshape(bins, bins)
    h_joint = _entropy(joint)
    if h_joint == 0.0:
        return 1.0
    return float((_entropy(joint.sum(axis=1)) + _entropy(joint.sum(axis=0))) / h_joint)


def label_overlap(fixed_labels, warped_labels):
    """Per-label Dice and Jaccard for the labels of the fixed map.

    Parameters
    ----------
    fixed_labels, warped_labels : ndarray of int
        Label maps of the same shape. Label 0 is background and is ignored.

    Returns
    -------
    dict
        ``labels`` (list of int, the nonzero labels present in the fixed map),
        ``dice`` and ``jaccard`` (lists aligned with ``labels``), and
        ``dice_mean`` / ``jaccard_mean`` (unweighted means; NaN when the fixed
        map has no nonzero label).
    """
    f = np.asarray(fixed_labels)
    w = np.asarray(warped_labels)
    if f.shape != w.shape:
        raise ValueError(
            f"fixed_labels has shape {f.shape} but warped_labels has shape {w.shape}"
        )
    for name, arr in (("fixed_labels", f), ("warped_labels", w)):
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} holds non-integer values")
    f = f.astype(np.int64, copy=False).ravel()
    w = w.astype(np.int64, copy=False).ravel()
    labels = np.unique(f)
    labels = labels[labels != 0]
    if labels.size == 0:
        return {"labels": [], "dice": [], "jaccard": [],
                "dice_mean": float("nan"), "jaccard_mean": float("nan")}
    n = labels.size
    # Map every voxel's label to its index among the fixed labels (n = "other").
    fi = np.searchsorted(labels, f)
    fi[(fi >= n) | (labels[np.minimum(fi, n - 1)] != f)] = n
    wi = np.searchsorted(labels, w)
    wi[(wi >= n) | (labels[np.minimum(wi, n - 1)] != w)] = n
    size_f = np.bincount(fi, minlength=n + 1)[:n].astype(np.float64)
    size_w = np.bincount(wi, minlength=n + 1)[:n].astype(np.float64)
    same = fi == wi
    inter = np.bincount(fi[same], minlength=n + 1)[:n].astype(np.float64)
    dice = 2.0 * inter / (size_f + size_w)
    union = size_f + size_w - inter
    jaccard = inter / union
    return {
        "labels": [int(v) for v in labels],
        "dice": dice.tolist(),
        "jaccard": jaccard.tolist(),
        "dice_mean": float(dice.mean()),
        "jaccard_mean": float(jaccard.mean()),
    }


def _check_displacement(displacement, affine):
    d = _as_float_array("displacement", displacement)
    if d.ndim not in (3, 4) or d.shape[-1] != d.ndim - 1:
        raise ValueError(
            "displacement must have shape (X, Y, 2) or (X, Y, Z, 3), "
            f"got {d.shape}"
        )
    dim = d.ndim - 1
    if affine is None:
        affine = np.eye(dim + 1)
    affine = _as_float_array("affine", affine)
    if affine.shape != (dim + 1, dim + 1):
        raise ValueError(
            f"affine must be {dim + 1}x{dim + 1} for a {dim}D field, got {affine.shape}"
        )
    lin = affine[:dim, :dim]
    if abs(np.linalg.det(lin)) < 1e-12:
        raise ValueError("affine is not invertible")
    return d, lin


def jacobian_determinant(displacement, affine=None):
    """Determinant of the Jacobian of ``x -> x + u(x)``.

    Parameters
    ----------
    displacement : ndarray, shape (X, Y, Z, 3) or (X, Y, 2)
        Displacement ``u`` in world units, sampled on a grid whose
        grid-to-world matrix is ``affine``.
    affine : ndarray, optional
        Grid-to-world matrix of the displacement grid; identity when omitted.

    Returns
    -------
    ndarray
        The determinant at each grid point (central differences inside,
        one-sided at the borders).
    """
    from ..fields import jacobian_determinant as field_jacobian

    d, lin = _check_displacement(displacement, affine)
    dim = d.ndim - 1
    grid2world = np.eye(dim + 1)
    grid2world[:dim, :dim] = lin
    # the registration layer's slab-wise computation (same differences)
    return field_jacobian(d, grid2world)


def jacobian_stats(displacement, affine=None, mask=None):
    """Folding and regularity summary of a displacement.

    Parameters
    ----------
    displacement : ndarray
        See :func:`jacobian_determinant`.
    affine : ndarray, optional
        Grid-to-world matrix of the displacement grid.
    mask : ndarray of bool, optional
        Voxels to summarise (the fixed mask); all voxels when omitted.

    Returns
    -------
    dict
        ``folding_pct``: percentage of mask voxels with determinant ``<= 0``;
        ``logjac_sd``: standard deviation of ``log(det)`` over the mask voxels
        with a positive determinant (NaN when there are none).
    """
    det = jacobian_determinant(displacement, affine)
    m = _mask_for("mask", mask, det.shape)
    vals = det[m]
    pos = vals[vals > 0]
    return {
        "folding_pct": float(100.0 * np.count_nonzero(vals <= 0) / vals.size),
        "logjac_sd": float(np.std(np.log(pos))) if pos.size else float("nan"),
    }


def target_error(displacement, true_displacement, mask=None):
    """Distance between estimated and true correspondences.

    Parameters
    ----------
    displacement : ndarray, shape (..., dim)
        Estimated displacement (world mm) on the fixed grid; fixed point ``x``
        corresponds to ``x + displacement(x)`` in the moving space.
    true_displacement : ndarray, shape (..., dim)
        The true displacement in the same convention.
    mask : ndarray of bool, optional
        Voxels to summarise; all voxels when omitted.

    Returns
    -------
    dict
        ``tre_mean`` and ``tre_median`` in mm.
    """
    d = _as_float_array("displacement", displacement)
    t = _as_float_array("true_displacement", true_displacement)
    if d.shape != t.shape:
        raise ValueError(
            f"displacement has shape {d.shape} but true_displacement has shape {t.shape}"
        )
    m = _mask_for("mask", mask, d.shape[:-1])
    err = np.sqrt(np.sum((d[m] - t[m]) ** 2, axis=-1))
    return {"tre_mean": float(err.mean()), "tre_median": float(np.median(err))}


def _check_pair_shapes(expected, **arrays):
    """Each given array has shape ``expected`` (the fixed grid, or grid + vector)."""
    for name, value in arrays.items():
        if value is None:
            continue
        shape = np.shape(value)
        if shape != tuple(expected):
            raise ValueError(
                f"{name} has shape {shape}, expected {tuple(expected)} from the fixed image"
            )


def evaluate_pair(fixed, warped, fixed_labels, warped_labels, mask=None, *,
                  displacement=None, affine=None, true_displacement=None,
                  per_label=True):
    """All measures for one registered pair.

    Parameters
    ----------
    fixed, warped : ndarray
        Fixed image and the moving image warped onto the fixed grid.
    fixed_labels, warped_labels : ndarray of int
        Fixed label map and the warped moving labels.
    mask : ndarray of bool, optional
        Fixed mask; all voxels when omitted.
    displacement : ndarray, optional
        Estimated displacement (world mm, fixed grid). ``None`` means identity
        (the prealigned baseline): Jacobian measures are then exact (no
        folding, zero spread) and the target error uses a zero field.
    affine : ndarray, optional
        Grid-to-world matrix of the fixed grid.
    true_displacement : ndarray, optional
        Ground-truth displacement in the same convention, when known.
    per_label : bool, optional
        Include per-label Dice and Jaccard lists in the result.

    Returns
    -------
    dict
        ``ncc``, ``nmi``, ``dice_mean``, ``jaccard_mean``, ``folding_pct``,
        ``logjac_sd``, ``tre_mean``, ``tre_median`` (NaN when no ground truth)
        and, with ``per_label``, ``labels``, ``dice``, ``jaccard``.
    """
    fixed = np.asarray(fixed)
    _check_pair_shapes(fixed.shape, warped=warped, fixed_labels=fixed_labels,
                       warped_labels=warped_labels)
    _check_pair_shapes(fixed.shape + (fixed.ndim,), displacement=displacement,
                       true_displacement=true_displacement)
    m = _mask_for("mask", mask, fixed.shape)
    out = {"ncc": ncc(fixed, warped, m), "nmi": nmi(fixed, warped, m)}
    ov = label_overlap(fixed_labels, warped_labels)
    out["dice_mean"] = ov["dice_mean"]
    out["jaccard_mean"] = ov["jaccard_mean"]
    if displacement is None:
        out["folding_pct"] = 0.0
        out["logjac_sd"] = 0.0
    else:
        out.update(jacobian_stats(displacement, affine, m))
    if true_displacement is not None:
        est = (np.zeros_like(np.asarray(true_displacement, dtype=np.float64))
               if displacement is None else displacement)
        out.update(target_error(est, true_displacement, m))
    else:
        out["tre_mean"] = float("nan")
        out["tre_median"] = float("nan")
    if per_label:
        out["labels"] = ov["labels"]
        out["dice"] = ov["dice"]
        out["jaccard"] = ov["jaccard"]
    return out
