"""Argument checks shared by the public wrappers.

Kernels assume checked input; everything a user can pass goes through here
first and fails with a message that names the argument.
"""

import numbers

import numpy as np

__all__ = [
    "FLOAT_TYPES",
    "check_affine",
    "check_bool",
    "check_contrast",
    "check_direction",
    "check_field",
    "check_image",
    "check_integer",
    "check_out",
    "check_real",
    "check_shape",
    "check_spacing",
    "direction_rows",
    "flat_affine",
]

FLOAT_TYPES = (np.float32, np.float64)


def _check_finite(name, arr):
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_array(name, value, convert_to=None):
    """``np.asarray`` that refuses what no kernel can read and makes the byte
    order native (the kernels' typed memoryviews read native order only).
    With ``convert_to``, an object array of numbers is converted (as DIPY's
    ``np.asarray(..., dtype=...)`` would) instead of refused."""
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = np.asarray(value)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(f"{name} is not a regular array: {err}") from None
    if arr.dtype.kind == "O" and convert_to is not None:
        try:
            arr = arr.astype(convert_to)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must hold numbers, got objects that are not") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def check_real(name, value, *, low=None, low_inclusive=True, high=None, allow_none=False):
    """A finite real number (``bool`` refused) within optional bounds."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                        f"({value!r})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {bound} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_bool(name, value):
    """``True`` or ``False`` (NumPy's booleans too; 0, 1 and strings refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_bool_or_coarse(name, value):
    """``True``, ``False`` or ``"coarse"`` (on every pyramid level but the
    finest): the switches that may apply to the coarse levels only."""
    if isinstance(value, str) and value == "coarse":
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True, False or 'coarse', got {value!r}")
    return bool(value)


def check_integer(name, value, *, low=None, high=None):
    """An integer (``bool`` and floats refused) within optional bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} "
                        f"({value!r})")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


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
    arr = _as_array(name, image, convert_to=dtype)
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


def check_contrast(name, image, mask=None):
    """Refuse an image that is constant (inside ``mask``, when given).

    A constant image has no gradient and a one-bin histogram: every metric is
    flat, so an optimiser would "converge" on whatever it starts from (DIPY's
    affine stage stops with ``AffineInvalidValuesError`` instead).

    Parameters
    ----------
    name : str
        What to call the image in the message (an argument or a file).
    image : ndarray
        The image, already checked numeric and finite.
    mask : ndarray, optional
        Voxels that count (nonzero); all when omitted or empty.
    """
    values = np.asarray(image)
    where = ""
    if mask is not None:
        inside = np.asarray(mask) != 0
        if inside.any():
            values, where = values[inside], " inside its mask"
    if values.size and not values.max() > values.min():
        raise ValueError(f"{name} has no contrast: every voxel{where} is "
                         f"{values.flat[0]:g}, so there is nothing to register")


def check_field(name, field, *, dim=None, dtype=None, finite=True):
    """Validate a displacement field of shape spatial + (dim,)."""
    arr = _as_array(name, field)
    if arr.ndim not in (3, 4) or arr.shape[-1] != arr.ndim - 1:
        raise ValueError(
            f"{name} must be a displacement field of shape (R, C, 2) or (S, R, C, 3), "
            f"got {arr.shape}"
        )
    if min(arr.shape[:-1]) < 2:
        raise ValueError(
            f"{name} must have at least 2 voxels along each spatial axis, got {arr.shape}"
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
    arr = _as_array(name, matrix).astype(np.float64)
    if arr.shape != (dim + 1, dim + 1):
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
    """Voxel sizes: ``dim`` positive finite numbers, as float64."""
    arr = _as_array(name, spacing)
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, got booleans")
    arr = arr.astype(np.float64).ravel()
    if arr.shape[0] != dim:
        raise ValueError(f"{name} must have {dim} entries, got {arr.shape[0]}")
    arr = np.ascontiguousarray(arr)
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{name} must be positive and finite, got {arr}")
    return arr


def check_out(name, out, like, like_name):
    """An output buffer: a writeable C-contiguous array shaped and typed like
    ``like`` (the kernels write through its raw pointer)."""
    if (not isinstance(out, np.ndarray) or out.shape != like.shape or out.dtype != like.dtype
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous array with the shape and "
                         f"dtype of {like_name} ({like.shape}, {like.dtype})")
    return out


def check_shape(name, shape, dim):
    """A grid shape: ``dim`` positive integers (integral floats, as DIPY
    passes them, are accepted)."""
    arr = _as_array(name, shape)
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold integers, got booleans")
    arr = arr.ravel()
    if arr.shape[0] != dim:
        raise ValueError(f"{name} must hold {dim} sizes, got {arr.shape[0]}")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"{name} must hold integers, got {arr.tolist()}")
    if (arr < 1).any():
        raise ValueError(f"{name} must hold positive sizes, got {arr.tolist()}")
    if (arr > 2**31 - 1).any():
        raise ValueError(f"{name} is too large, got {arr.tolist()}")
    return tuple(int(v) for v in arr)


def check_direction(name, direction, dim):
    """Direction cosines: None, ``(dim, dim)`` (DIPY's metrics document this)
    or ``(dim + 1, dim + 1)`` (DIPY's SyN passes this); returned as the
    ``(dim + 1, dim + 1)`` matrix with no translation."""
    if direction is None:
        return None
    arr = _as_array(name, direction).astype(np.float64)
    if arr.shape not in ((dim, dim), (dim + 1, dim + 1)):
        raise ValueError(f"{name} must be a ({dim}, {dim}) or ({dim + 1}, {dim + 1}) "
                         f"matrix, got shape {arr.shape}")
    _check_finite(name, arr)
    full = np.eye(dim + 1)
    full[:dim, :dim] = arr[:dim, :dim]
    return full


def direction_rows(direction, dim):
    """Kernel form of a direction matrix of either accepted shape (only its
    rotation part counts): ``(flat rows, is_none)``."""
    if direction is None:
        return flat_affine(None, dim)
    arr = np.asarray(direction, dtype=np.float64)
    full = np.zeros((dim, dim + 1))
    full[:, :dim] = arr[:dim, :dim]
    return flat_affine(full, dim)


_IDENTITY_FLAT = {2: np.zeros(6), 3: np.zeros(12)}
_IDENTITY_ROWS = {d: np.eye(d + 1)[:d] for d in (2, 3)}


def flat_affine(matrix, dim, *, skip_identity=True):
    """Kernel form of an affine: (first ``dim`` rows flattened, is_none).

    With ``skip_identity`` an exact identity becomes "no affine", which lets
    the kernels skip the product; pass False where "no affine" means
    something else (the warp kernels then read the field at the output
    index, only valid on the field's own grid).
    """
    if matrix is None:
        return _IDENTITY_FLAT[dim], True
    arr = np.ascontiguousarray(np.asarray(matrix, dtype=np.float64)[:dim, : dim + 1])
    if arr.shape != (dim, dim + 1):
        # A kernel reads dim * (dim + 1) values: never hand it fewer.
        raise ValueError(f"affine must be ({dim + 1}, {dim + 1}), got {np.shape(matrix)}")
    # The identity is skipped in the kernels: exact, since 1*x + 0*y + 0 == x.
    if skip_identity and np.array_equal(arr, _IDENTITY_ROWS[dim]):
        return _IDENTITY_FLAT[dim], True
    return arr.ravel(), False
