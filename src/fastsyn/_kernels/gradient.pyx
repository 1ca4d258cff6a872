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
