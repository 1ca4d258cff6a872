"""Argument checks shared by the public wrappers.

Kernels assume checked input; everything a user can pass goes through here
first and fails with a message that names the argument.
"""

import numpy as np

__all__ = [
    "FLOAT_TYPES",
    "check_affine",
    "check_field",
    "check_image",
    "check_spacing",
    "flat_affine",
]

FLOAT_TYPES = (np.float32, np.float64)


def _check_finite(name, arr):
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_image(name, image, *, dim=None, dtype=None, finite=True, numeric=False):
    """Validate an image and return it C-contiguous.

    Parameters
    ----------
    name : str
        Argument name for error messages.
    image : array_like
        The image.
    dim : int or tuple of int, optional
        Allowed number of dimensions (2 or 3 if None).
    dtype : numpy dtype, optional
        Cast to this floating type; if None the image must already be
        float32 or float64 (or any numeric type if ``numeric``).
    finite : bool, optional
        Reject NaN and infinite values.
    numeric : bool, optional
        Accept integer images (label maps), kept in their own type.
    """
    if image is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = np.asarray(image)
    dims = (2, 3) if dim is None else ((dim,) if np.isscalar(dim) else tuple(dim))
    if arr.ndim not in dims:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}"
        )
    if min(arr.shape) < 2:
        raise ValueError(f"{name} must have at least 2 voxels along each axis, got {arr.shape}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    elif numeric:
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.uint8)
    elif arr.dtype.type not in FLOAT_TYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    if finite and arr.dtype.kind == "f":
        _check_finite(name, arr)
    return np.ascontiguousarray(arr)


def check_field(name, field, *, dim=None, dtype=None, finite=True):
    """Validate a displacement field of shape spatial + (dim,)."""
    if field is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = np.asarray(field)
    if arr.ndim not in (3, 4) or arr.shape[-1] != arr.ndim - 1:
        raise ValueError(
            f"{name} must be a displacement field of shape (R, C, 2) or (S, R, C, 3), "
            f"got {arr.shape}"
        )
    if dim is not None and arr.shape[-1] != dim:
        raise ValueError(f"{name} must be a {dim}D field, got shape {arr.shape}")
    if dtype is not None:
        if arr.dtype != dtype:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    elif arr.dtype.type not in FLOAT_TYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    if finite:
        _check_finite(name, arr)
    return np.ascontiguousarray(arr)


def check_affine(name, matrix, dim, *, invertible=False):
    """Validate an affine (or None); returns a float64 array or None."""
    if matrix is None:
        return None
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < dim or arr.shape[1] < dim + 1:
        raise ValueError(
            f"{name} must be a ({dim + 1}, {dim + 1}) affine matrix, got shape {arr.shape}"
        )
    _check_finite(name, arr)
    if invertible:
        lin = arr[:dim, :dim]
        if abs(np.linalg.det(lin)) < 1e-12 * max(1.0, np.abs(lin).max() ** dim):
            raise ValueError(f"{name} is singular (not invertible)")
    return arr


def check_spacing(name, spacing, dim):
    arr = np.asarray(spacing, dtype=np.float64).ravel()
    if arr.shape[0] < dim:
        raise ValueError(f"{name} must have {dim} entries, got {arr.shape[0]}")
    arr = np.ascontiguousarray(arr[:dim])
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{name} must be positive and finite, got {arr}")
    return arr


_IDENTITY_FLAT = {2: np.zeros(6), 3: np.zeros(12)}
_IDENTITY_ROWS = {d: np.eye(d + 1)[:d] for d in (2, 3)}


def flat_affine(matrix, dim):
    """Kernel form of an affine: (first ``dim`` rows flattened, is_none)."""
    if matrix is None:
        return _IDENTITY_FLAT[dim], True
    arr = np.ascontiguousarray(np.asarray(matrix, dtype=np.float64)[:dim, : dim + 1])
    # The identity is skipped in the kernels: exact, since 1*x + 0*y + 0 == x.
    if np.array_equal(arr, _IDENTITY_ROWS[dim]):
        return _IDENTITY_FLAT[dim], True
    return arr.ravel(), False
