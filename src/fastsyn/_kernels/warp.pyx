# Image warping through a displacement field, as DiffeomorphicMap.transform
# and transform_inverse do it:
#
#     warped[i] = volume[ C * d[A i] + B i ]
#
# with trilinear (zero padded, DIPY's boundary rule) or nearest-neighbour
# sampling.  Threads split the output's outermost axis; every output voxel is
# written by exactly one thread, so results do not depend on thread count.

from cython cimport floating
from cython.parallel cimport prange

from fastsyn._kernels._interp cimport (chunk_threads, Affine2, Affine3, affine2_from,
                                       affine2_point, affine2_vector,
                                       affine3_from, affine3_point,
                                       affine3_vector, interp_scalar_2d,
                                       interp_scalar_3d, interp_scalar_3d_fast,
                                       interp_vector_2d,
                                       interp_vector_3d, nearest_2d, nearest_3d,
                                       number)


ctypedef fused image_real:
    float
    double


cdef inline void _target_3d(const floating* d, Py_ssize_t dns, Py_ssize_t dnr,
                            Py_ssize_t dnc, Py_ssize_t k, Py_ssize_t i,
                            Py_ssize_t j, const Affine3* idx_in,
                            const Affine3* idx_out, const Affine3* disp,
                            double* y) noexcept nogil:
    cdef:
        double x[3]
        double dv[3]
        double w[3]
        Py_ssize_t v
    if idx_in.none:
        v = ((k * dnr + i) * dnc + j) * 3
        dv[0] = d[v]
        dv[1] = d[v + 1]
        dv[2] = d[v + 2]
    else:
        affine3_point(idx_in, <double>k, <double>i, <double>j, x)
        interp_vector_3d(d, dns, dnr, dnc, x[0], x[1], x[2], dv)
    affine3_vector(disp, dv[0], dv[1], dv[2], w)
    affine3_point(idx_out, <double>k, <double>i, <double>j, x)
    y[0] = w[0] + x[0]
    y[1] = w[1] + x[1]
    y[2] = w[2] + x[2]


cdef void _warp_slice_3d(const image_real* vol, Py_ssize_t vns, Py_ssize_t vnr,
                         Py_ssize_t vnc, const floating* d, Py_ssize_t dns,
                         Py_ssize_t dnr, Py_ssize_t dnc, Py_ssize_t k,
                         Py_ssize_t onr, Py_ssize_t onc, const Affine3* idx_in,
                         const Affine3* idx_out, const Affine3* disp,
                         image_real* out) noexcept nogil:
    cdef:
        Py_ssize_t i, j
        double y[3]
        Affine3 ia = idx_in[0], oa = idx_out[0], da = disp[0]  # local copies: see Affine3
        double val
    for i in range(onr):
        for j in range(onc):
            _target_3d(d, dns, dnr, dnc, k, i, j, &ia, &oa, &da, y)
            interp_scalar_3d_fast(vol, vns, vnr, vnc, y[0], y[1], y[2], &val)
            out[(k * onr + i) * onc + j] = <image_real>val


def warp_3d(const image_real[:, :, ::1] volume, const floating[:, :, :, ::1] d,
            const double[::1] a_in, bint a_in_none,
            const double[::1] a_out, bint a_out_none,
            const double[::1] a_disp, bint a_disp_none,
            image_real[:, :, ::1] out, int num_threads):
    cdef:
        Py_ssize_t k
        Affine3 ia = affine3_from(a_in, a_in_none)
        Affine3 oa = affine3_from(a_out, a_out_none)
        Affine3 da = affine3_from(a_disp, a_disp_none)
    if a_in_none and (out.shape[0] != d.shape[0] or out.shape[1] != d.shape[1]
                      or out.shape[2] != d.shape[2]):
        # Without A the field is read at the output index: only in bounds on its own grid.
        raise ValueError("a_in_none needs the output grid to be the field's grid")
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1] * out.shape[2])
    with nogil:
        for k in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _warp_slice_3d(&volume[0, 0, 0], volume.shape[0], volume.shape[1],
                           volume.shape[2], &d[0, 0, 0, 0], d.shape[0],
                           d.shape[1], d.shape[2], k, out.shape[1], out.shape[2],
                           &ia, &oa, &da, &out[0, 0, 0])


cdef void _warp_nn_slice_3d(const number* vol, Py_ssize_t vns, Py_ssize_t vnr,
                            Py_ssize_t vnc, const floating* d, Py_ssize_t dns,
                            Py_ssize_t dnr, Py_ssize_t dnc, Py_ssize_t k,
                            Py_ssize_t onr, Py_ssize_t onc, const Affine3* idx_in,
                            const Affine3* idx_out, const Affine3* disp,
                            number* out) noexcept nogil:
    cdef:
        Py_ssize_t i, j
        double y[3]
        Affine3 ia = idx_in[0], oa = idx_out[0], da = disp[0]  # local copies: see Affine3
    for i in range(onr):
        for j in range(onc):
            _target_3d(d, dns, dnr, dnc, k, i, j, &ia, &oa, &da, y)
            out[(k * onr + i) * onc + j] = nearest_3d(vol, vns, vnr, vnc, y)


def warp_3d_nn(const number[:, :, ::1] volume, const floating[:, :, :, ::1] d,
               const double[::1] a_in, bint a_in_none,
               const double[::1] a_out, bint a_out_none,
               const double[::1] a_disp, bint a_disp_none,
               number[:, :, ::1] out, int num_threads):
    cdef:
        Py_ssize_t k
        Affine3 ia = affine3_from(a_in, a_in_none)
        Affine3 oa = affine3_from(a_out, a_out_none)
        Affine3 da = affine3_from(a_disp, a_disp_none)
    if a_in_none and (out.shape[0] != d.shape[0] or out.shape[1] != d.shape[1]
                      or out.shape[2] != d.shape[2]):
        # Without A the field is read at the output index: only in bounds on its own grid.
        raise ValueError("a_in_none needs the output grid to be the field's grid")
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1] * out.shape[2])
    with nogil:
        for k in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _warp_nn_slice_3d(&volume[0, 0, 0], volume.shape[0], volume.shape[1],
                              volume.shape[2], &d[0, 0, 0, 0], d.shape[0],
                              d.shape[1], d.shape[2], k, out.shape[1],
                              out.shape[2], &ia, &oa, &da, &out[0, 0, 0])


cdef inline void _target_2d(const floating* d, Py_ssize_t dnr, Py_ssize_t dnc,
                            Py_ssize_t i, Py_ssize_t j, const Affine2* idx_in,
                            const Affine2* idx_out, const Affine2* disp,
                            double* y) noexcept nogil:
    cdef:
        double x[2]
        double dv[2]
        double w[2]
        Py_ssize_t v
    if idx_in.none:
        v = (i * dnc + j) * 2
        dv[0] = d[v]
        dv[1] = d[v + 1]
    else:
        affine2_point(idx_in, <double>i, <double>j, x)
        interp_vector_2d(d, dnr, dnc, x[0], x[1], dv)
    affine2_vector(disp, dv[0], dv[1], w)
    affine2_point(idx_out, <double>i, <double>j, x)
    y[0] = w[0] + x[0]
    y[1] = w[1] + x[1]


cdef void _warp_row_2d(const image_real* img, Py_ssize_t vnr, Py_ssize_t vnc,
                       const floating* d, Py_ssize_t dnr, Py_ssize_t dnc,
                       Py_ssize_t i, Py_ssize_t onc, const Affine2* idx_in,
                       const Affine2* idx_out, const Affine2* disp,
                       image_real* out) noexcept nogil:
    cdef:
        Py_ssize_t j
        double y[2]
        double val
    for j in range(onc):
        _target_2d(d, dnr, dnc, i, j, idx_in, idx_out, disp, y)
        interp_scalar_2d(img, vnr, vnc, y[0], y[1], &val)
        out[i * onc + j] = <image_real>val


def warp_2d(const image_real[:, ::1] image, const floating[:, :, ::1] d,
            const double[::1] a_in, bint a_in_none,
            const double[::1] a_out, bint a_out_none,
            const double[::1] a_disp, bint a_disp_none,
            image_real[:, ::1] out, int num_threads):
    cdef:
        Py_ssize_t i
        Affine2 ia = affine2_from(a_in, a_in_none)
        Affine2 oa = affine2_from(a_out, a_out_none)
        Affine2 da = affine2_from(a_disp, a_disp_none)
    if a_in_none and (out.shape[0] != d.shape[0] or out.shape[1] != d.shape[1]):
        # Without A the field is read at the output index: only in bounds on its own grid.
        raise ValueError("a_in_none needs the output grid to be the field's grid")
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1])
    with nogil:
        for i in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _warp_row_2d(&image[0, 0], image.shape[0], image.shape[1],
                         &d[0, 0, 0], d.shape[0], d.shape[1], i, out.shape[1],
                         &ia, &oa, &da, &out[0, 0])


cdef void _warp_nn_row_2d(const number* img, Py_ssize_t vnr, Py_ssize_t vnc,
                          const floating* d, Py_ssize_t dnr, Py_ssize_t dnc,
                          Py_ssize_t i, Py_ssize_t onc, const Affine2* idx_in,
                          const Affine2* idx_out, const Affine2* disp,
                          number* out) noexcept nogil:
    cdef:
        Py_ssize_t j
        double y[2]
    for j in range(onc):
        _target_2d(d, dnr, dnc, i, j, idx_in, idx_out, disp, y)
        out[i * onc + j] = nearest_2d(img, vnr, vnc, y)


def warp_2d_nn(const number[:, ::1] image, const floating[:, :, ::1] d,
               const double[::1] a_in, bint a_in_none,
               const double[::1] a_out, bint a_out_none,
               const double[::1] a_disp, bint a_disp_none,
               number[:, ::1] out, int num_threads):
    cdef:
        Py_ssize_t i
        Affine2 ia = affine2_from(a_in, a_in_none)
        Affine2 oa = affine2_from(a_out, a_out_none)
        Affine2 da = affine2_from(a_disp, a_disp_none)
    if a_in_none and (out.shape[0] != d.shape[0] or out.shape[1] != d.shape[1]):
        # Without A the field is read at the output index: only in bounds on its own grid.
        raise ValueError("a_in_none needs the output grid to be the field's grid")
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1])
    with nogil:
        for i in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _warp_nn_row_2d(&image[0, 0], image.shape[0], image.shape[1],
                            &d[0, 0, 0], d.shape[0], d.shape[1], i, out.shape[1],
                            &ia, &oa, &da, &out[0, 0])


# ------------------------------------------------------------ sample points
# The points themselves, ``out[i] = C * d[A i] + B i`` in the image's grid
# coordinates: where the warps above would sample (partial-volume MI reads an
# image's own voxels around them instead of an interpolated value).

cdef void _points_slice_3d(const floating* d, Py_ssize_t dns, Py_ssize_t dnr,
                           Py_ssize_t dnc, Py_ssize_t k, Py_ssize_t onr,
                           Py_ssize_t onc, const Affine3* idx_in,
                           const Affine3* idx_out, const Affine3* disp,
                           floating* out) noexcept nogil:
    cdef:
        Py_ssize_t i, j, v
        double y[3]
        Affine3 ia = idx_in[0], oa = idx_out[0], da = disp[0]  # local copies: see Affine3
    for i in range(onr):
        for j in range(onc):
            _target_3d(d, dns, dnr, dnc, k, i, j, &ia, &oa, &da, y)
            v = ((k * onr + i) * onc + j) * 3
            out[v] = <floating>y[0]
            out[v + 1] = <floating>y[1]
            out[v + 2] = <floating>y[2]


def sample_points_3d(const floating[:, :, :, ::1] d,
                     const double[::1] a_in, bint a_in_none,
                     const double[::1] a_out, bint a_out_none,
                     const double[::1] a_disp, bint a_disp_none,
                     floating[:, :, :, ::1] out, int num_threads):
    """Grid coordinates ``C d[A i] + B i`` at which ``warp_3d`` samples each
    output voxel ``i`` (``out`` has the output grid's shape plus 3)."""
    cdef:
        Py_ssize_t k
        Affine3 ia = affine3_from(a_in, a_in_none)
        Affine3 oa = affine3_from(a_out, a_out_none)
        Affine3 da = affine3_from(a_disp, a_disp_none)
    if out.shape[3] != 3:
        raise ValueError("out must have 3 components")
    if a_in_none and (out.shape[0] != d.shape[0] or out.shape[1] != d.shape[1]
                      or out.shape[2] != d.shape[2]):
        # Without A the field is read at the output index: only in bounds on its own grid.
        raise ValueError("a_in_none needs the output grid to be the field's grid")
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1] * out.shape[2])
    with nogil:
        for k in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _points_slice_3d(&d[0, 0, 0, 0], d.shape[0], d.shape[1], d.shape[2], k,
                             out.shape[1], out.shape[2], &ia, &oa, &da,
                             &out[0, 0, 0, 0])


cdef void _points_row_2d(const floating* d, Py_ssize_t dnr, Py_ssize_t dnc,
                         Py_ssize_t i, Py_ssize_t onc, const Affine2* idx_in,
                         const Affine2* idx_out, const Affine2* disp,
                         floating* out) noexcept nogil:
    cdef:
        Py_ssize_t j
        double y[2]
    for j in range(onc):
        _target_2d(d, dnr, dnc, i, j, idx_in, idx_out, disp, y)
        out[(i * onc + j) * 2] = <floating>y[0]
        out[(i * onc + j) * 2 + 1] = <floating>y[1]


def sample_points_2d(const floating[:, :, ::1] d,
                     const double[::1] a_in, bint a_in_none,
                     const double[::1] a_out, bint a_out_none,
                     const double[::1] a_disp, bint a_disp_none,
                     floating[:, :, ::1] out, int num_threads):
    """Grid coordinates ``C d[A i] + B i`` at which ``warp_2d`` samples each
    output pixel ``i`` (``out`` has the output grid's shape plus 2)."""
    cdef:
        Py_ssize_t i
        Affine2 ia = affine2_from(a_in, a_in_none)
        Affine2 oa = affine2_from(a_out, a_out_none)
        Affine2 da = affine2_from(a_disp, a_disp_none)
    if out.shape[2] != 2:
        raise ValueError("out must have 2 components")
    if a_in_none and (out.shape[0] != d.shape[0] or out.shape[1] != d.shape[1]):
        # Without A the field is read at the output index: only in bounds on its own grid.
        raise ValueError("a_in_none needs the output grid to be the field's grid")
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1])
    with nogil:
        for i in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _points_row_2d(&d[0, 0, 0], d.shape[0], d.shape[1], i, out.shape[1],
                           &ia, &oa, &da, &out[0, 0, 0])
