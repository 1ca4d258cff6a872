# Image gradient in physical space, as DIPY's metrics compute it
# (numpy.gradient, divided by the voxel spacing, re-oriented by the grid
# direction), in one threaded pass instead of dim + 2 NumPy passes.

from cython cimport floating
from cython.parallel cimport prange

from fastsyn._kernels._interp cimport (chunk_threads, Affine2, Affine3, affine2_from,
                                       affine3_from, physical_gradient_2d,
                                       physical_gradient_3d)


cdef void _gradient_slice_3d(const floating* img, Py_ssize_t ns, Py_ssize_t nr,
                             Py_ssize_t nc, Py_ssize_t k, const double* spacing,
                             const Affine3* direction,
                             floating* out) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(nr):
        for j in range(nc):
            physical_gradient_3d(img, ns, nr, nc, k, i, j, spacing, direction,
                                 &out[((k * nr + i) * nc + j) * 3])


def gradient_3d(const floating[:, :, ::1] img, const double[::1] spacing,
                const double[::1] direction, bint direction_none,
                floating[:, :, :, ::1] out, int num_threads):
    cdef:
        Py_ssize_t k
        Affine3 da = affine3_from(direction, direction_none)
    num_threads = chunk_threads(num_threads, img.shape[0] * img.shape[1] * img.shape[2])
    with nogil:
        for k in prange(img.shape[0], schedule="static", num_threads=num_threads):
            _gradient_slice_3d(&img[0, 0, 0], img.shape[0], img.shape[1],
                               img.shape[2], k, &spacing[0], &da,
                               &out[0, 0, 0, 0])


cdef void _gradient_row_2d(const floating* img, Py_ssize_t nr, Py_ssize_t nc,
                           Py_ssize_t i, const double* spacing,
                           const Affine2* direction,
                           floating* out) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(nc):
        physical_gradient_2d(img, nr, nc, i, j, spacing, direction,
                             &out[(i * nc + j) * 2])


def gradient_2d(const floating[:, ::1] img, const double[::1] spacing,
                const double[::1] direction, bint direction_none,
                floating[:, :, ::1] out, int num_threads):
    cdef:
        Py_ssize_t i
        Affine2 da = affine2_from(direction, direction_none)
    num_threads = chunk_threads(num_threads, img.shape[0] * img.shape[1])
    with nogil:
        for i in prange(img.shape[0], schedule="static", num_threads=num_threads):
            _gradient_row_2d(&img[0, 0], img.shape[0], img.shape[1], i,
                             &spacing[0], &da, &out[0, 0, 0])


# Jacobian determinant of x -> x + u(x) for a displacement u in world units:
# the values of fastsyn.fields' former NumPy formula (numpy.gradient of a
# float64 copy, the chain rule through the inverse of the grid's linear part,
# then the cofactor expansion), bit for bit, in one threaded pass with no
# float64 copy of the field.

cdef inline double _diff64(const floating* f, Py_ssize_t v, Py_ssize_t x,
                           Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """numpy.gradient of the float64 values along one axis (unit spacing,
    one-sided at the edges); the wrapper guarantees n >= 2."""
    if x == 0:
        return <double>f[v + stride] - <double>f[v]
    if x == n - 1:
        return <double>f[v] - <double>f[v - stride]
    return (<double>f[v + stride] - <double>f[v - stride]) / 2.0


cdef void _jacobian_row(const floating* field, Py_ssize_t dim, const Py_ssize_t* dims,
                        const Py_ssize_t* strides, Py_ssize_t row,
                        const double* inv_linear, double* out) noexcept nogil:
    cdef:
        Py_ssize_t pos[3]
        double d[3][3]
        double jac[3][3]
        double acc, w
        Py_ssize_t j, c, k, m, v, nc = dims[dim - 1]
    # the row's coordinates on the axes before the last
    if dim == 3:
        pos[0] = row // dims[1]
        pos[1] = row % dims[1]
    else:
        pos[0] = row
    for j in range(nc):
        pos[dim - 1] = j
        v = row * nc + j
        for c in range(dim):
            for m in range(dim):
                d[c][m] = _diff64(field, v * dim + c, pos[m], dims[m], strides[m] * dim)
        for c in range(dim):
            for k in range(dim):
                # the sum in axis order, skipping the zero entries (as the
                # NumPy formula did), then the identity
                acc = 0.0
                for m in range(dim):
                    w = inv_linear[m * dim + k]
                    if w != 0.0:
                        acc = acc + d[c][m] * w
                jac[c][k] = acc + (1.0 if c == k else 0.0)
        if dim == 2:
            out[v] = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
        else:
            out[v] = (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
                      - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
                      + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))


def jacobian_determinant_(const floating[::1] field, tuple shape,
                          const double[:, ::1] inv_linear, double[::1] out,
                          int num_threads):
    """det(I + J) at every grid point of a flat (..., dim) displacement field.

    ``shape`` is the spatial shape (2 or 3 axes, each at least 2 long),
    ``inv_linear`` the inverse of the grid-to-world linear part (dim x dim)
    and ``out`` the flat float64 result, one value per grid point.
    """
    cdef:
        Py_ssize_t dims[3]
        Py_ssize_t strides[3]
        Py_ssize_t dim = len(shape), n = 1, rows, row, a
    if dim not in (2, 3):
        raise ValueError("jacobian_determinant_: shape must have 2 or 3 axes")
    for a in range(dim):
        dims[a] = shape[a]
        if dims[a] < 2:
            raise ValueError("jacobian_determinant_: every axis needs at least 2 points")
        n *= dims[a]
    if field.shape[0] != n * dim or out.shape[0] != n:
        raise ValueError("jacobian_determinant_: field or out does not match the shape")
    if inv_linear.shape[0] != dim or inv_linear.shape[1] != dim:
        raise ValueError("jacobian_determinant_: inv_linear must be dim x dim")
    strides[dim - 1] = 1
    for a in range(dim - 2, -1, -1):
        strides[a] = strides[a + 1] * dims[a + 1]
    rows = n // dims[dim - 1]
    num_threads = chunk_threads(num_threads, rows)
    with nogil:
        for row in prange(rows, schedule="static", num_threads=num_threads):
            _jacobian_row(&field[0], dim, dims, strides, row, &inv_linear[0, 0], &out[0])
