# Displacement-field composition: comp[x] = d1[x] + t * d2[A x + B d1[x]].
#
# Threads split the outermost axis.  Norm statistics are accumulated per
# slice (3D) or per row (2D) into ``partial`` and merged in index order by the
# caller, so they do not depend on the number of threads.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport NAN, sqrt

from fastsyn._kernels._interp cimport (chunk_threads, Affine2, Affine3, affine2_from,
                                       affine2_point, affine2_vector,
                                       affine3_from, affine3_point,
                                       affine3_vector, interp_vector_2d,
                                       interp_vector_3d, interp_vector_3d_cell)


cdef void _compose_slice_3d(const floating* d1, const floating* d2,
                            Py_ssize_t k, Py_ssize_t nr1, Py_ssize_t nc1,
                            Py_ssize_t ns2, Py_ssize_t nr2, Py_ssize_t nc2,
                            const Affine3* index_aff, const Affine3* disp_aff,
                            double t, floating* comp,
                            double* partial) noexcept nogil:
    cdef:
        Py_ssize_t i, j, v
        double x[3]
        double dv[3]
        double val[3]
        double d0, d1v, d2v, nn, cnt = 0, s1 = 0, s2 = 0, mx = 0
        Affine3 ia = index_aff[0], da = disp_aff[0]  # local copies: see Affine3
    for i in range(nr1):
        for j in range(nc1):
            v = ((k * nr1 + i) * nc1 + j) * 3
            d0 = d1[v]
            d1v = d1[v + 1]
            d2v = d1[v + 2]
            affine3_vector(&da, d0, d1v, d2v, dv)
            affine3_point(&ia, <double>k, <double>i, <double>j, x)
            # The composition is zero wherever the cell leaves the grid, so
            # the whole-cell helper (inlined, no corner tests) is enough.
            if interp_vector_3d_cell(d2, ns2, nr2, nc2, x[0] + dv[0], x[1] + dv[1],
                                     x[2] + dv[2], val):
                comp[v] = <floating>(t * val[0] + d0)
                comp[v + 1] = <floating>(t * val[1] + d1v)
                comp[v + 2] = <floating>(t * val[2] + d2v)
                nn = (<double>comp[v]) * comp[v] + (<double>comp[v + 1]) * comp[v + 1] \
                    + (<double>comp[v + 2]) * comp[v + 2]
                cnt += 1
                s1 += nn
                s2 += nn * nn
                if mx < nn:
                    mx = nn
            else:
                comp[v] = 0
                comp[v + 1] = 0
                comp[v + 2] = 0
    partial[0] = cnt
    partial[1] = s1
    partial[2] = s2
    partial[3] = mx


def compose_3d(const floating[:, :, :, ::1] d1, const floating[:, :, :, ::1] d2,
               const double[::1] index_aff, bint index_none,
               const double[::1] disp_aff, bint disp_none, double t,
               floating[:, :, :, ::1] comp, double[:, ::1] partial,
               int num_threads):
    """Compose 3D fields into ``comp`` (may alias ``d1``); stats per slice."""
    cdef:
        Py_ssize_t k, ns1 = d1.shape[0]
        Affine3 ia = affine3_from(index_aff, index_none)
        Affine3 da = affine3_from(disp_aff, disp_none)
    num_threads = chunk_threads(num_threads, d1.shape[0] * d1.shape[1] * d1.shape[2])
    with nogil:
        for k in prange(ns1, schedule="static", num_threads=num_threads):
            _compose_slice_3d(&d1[0, 0, 0, 0], &d2[0, 0, 0, 0], k,
                              d1.shape[1], d1.shape[2],
                              d2.shape[0], d2.shape[1], d2.shape[2],
                              &ia, &da, t, &comp[0, 0, 0, 0], &partial[k, 0])


cdef void _compose_row_2d(const floating* d1, const floating* d2,
                          Py_ssize_t i, Py_ssize_t nc1,
                          Py_ssize_t nr2, Py_ssize_t nc2,
                          const Affine2* index_aff, const Affine2* disp_aff,
                          double t, floating* comp,
                          double* partial) noexcept nogil:
    cdef:
        Py_ssize_t j, v
        double x[2]
        double dv[2]
        double val[2]
        double d0, d1v, nn, cnt = 0, s1 = 0, s2 = 0, mx = 0
    for j in range(nc1):
        v = (i * nc1 + j) * 2
        d0 = d1[v]
        d1v = d1[v + 1]
        affine2_vector(disp_aff, d0, d1v, dv)
        affine2_point(index_aff, <double>i, <double>j, x)
        if interp_vector_2d(d2, nr2, nc2, x[0] + dv[0], x[1] + dv[1], val):
            comp[v] = <floating>(t * val[0] + d0)
            comp[v + 1] = <floating>(t * val[1] + d1v)
            nn = (<double>comp[v]) * comp[v] + (<double>comp[v + 1]) * comp[v + 1]
            cnt += 1
            s1 += nn
            s2 += nn * nn
            if mx < nn:
                mx = nn
        else:
            comp[v] = 0
            comp[v + 1] = 0
    partial[0] = cnt
    partial[1] = s1
    partial[2] = s2
    partial[3] = mx


def compose_2d(const floating[:, :, ::1] d1, const floating[:, :, ::1] d2,
               const double[::1] index_aff, bint index_none,
               const double[::1] disp_aff, bint disp_none, double t,
               floating[:, :, ::1] comp, double[:, ::1] partial,
               int num_threads):
    """Compose 2D fields into ``comp`` (may alias ``d1``); stats per row."""
    cdef:
        Py_ssize_t i, nr1 = d1.shape[0]
        Affine2 ia = affine2_from(index_aff, index_none)
        Affine2 da = affine2_from(disp_aff, disp_none)
    num_threads = chunk_threads(num_threads, d1.shape[0] * d1.shape[1])
    with nogil:
        for i in prange(nr1, schedule="static", num_threads=num_threads):
            _compose_row_2d(&d1[0, 0, 0], &d2[0, 0, 0], i, d1.shape[1],
                            d2.shape[0], d2.shape[1],
                            &ia, &da, t, &comp[0, 0, 0], &partial[i, 0])


def merge_stats(const double[:, ::1] partial):
    """Merge per-slice (count, sum n², sum n⁴, max n²) in index order.

    Returns (max norm, mean norm, std) exactly as DIPY defines them: the
    "mean" is the root of the mean squared norm and the "std" is the spread
    of the squared norms.
    """
    cdef:
        Py_ssize_t p
        double cnt = 0, s1 = 0, s2 = 0, mx = 0, mean_sq, var
    for p in range(partial.shape[0]):
        cnt += partial[p, 0]
        s1 += partial[p, 1]
        s2 += partial[p, 2]
        if mx < partial[p, 3]:
            mx = partial[p, 3]
    if cnt == 0:
        return 0.0, 0.0, 0.0
    mean_sq = s1 / cnt
    var = s2 / cnt - mean_sq * mean_sq
    return sqrt(mx), sqrt(mean_sq), sqrt(var if var > 0 else 0.0)


cdef void _prepare_step_slice_3d(const floating* step, floating* out, Py_ssize_t k,
                                 Py_ssize_t ns, Py_ssize_t nr, Py_ssize_t nc,
                                 const double* inv_spacing,
                                 double* slice_max) noexcept nogil:
    cdef:
        Py_ssize_t i, j, v
        double a, b, c, nn, mx = 0
        int bad = 0
        int edge_slice = k == 0 or k == ns - 1
    for i in range(nr):
        for j in range(nc):
            v = ((k * nr + i) * nc + j) * 3
            if edge_slice or i == 0 or i == nr - 1 or j == 0 or j == nc - 1:
                out[v] = 0
                out[v + 1] = 0
                out[v + 2] = 0
                continue
            out[v] = step[v]
            out[v + 1] = step[v + 1]
            out[v + 2] = step[v + 2]
            a = step[v] * inv_spacing[0]
            b = step[v + 1] * inv_spacing[1]
            c = step[v + 2] * inv_spacing[2]
            nn = a * a + b * b + c * c
            if mx < nn:
                mx = nn
            elif not (nn <= mx):
                bad = 1
    # A NaN never wins a comparison: flag it so the caller sees a diverged step.
    slice_max[k] = NAN if bad else mx


def prepare_step_3d(const floating[:, :, :, ::1] step, floating[:, :, :, ::1] out,
                    const double[::1] inv_spacing, double[::1] slice_max, int num_threads):
    """Copy a SyN step into ``out`` with a zero boundary and return its
    largest norm (voxels), NaN if an interior value is not finite."""
    cdef:
        Py_ssize_t k, ns = step.shape[0]
        double mx = 0
    if (out.shape[0] != ns or out.shape[1] != step.shape[1] or out.shape[2] != step.shape[2]
            or slice_max.shape[0] < ns):
        raise ValueError("prepare_step_3d: out and slice_max must match step")
    num_threads = chunk_threads(num_threads, step.shape[0] * step.shape[1] * step.shape[2])
    with nogil:
        for k in prange(ns, schedule="static", num_threads=num_threads):
            _prepare_step_slice_3d(&step[0, 0, 0, 0], &out[0, 0, 0, 0], k, ns,
                                   step.shape[1], step.shape[2], &inv_spacing[0],
                                   &slice_max[0])
    for k in range(ns):
        if not (slice_max[k] <= mx):
            mx = slice_max[k]
            if mx != mx:
                break
    return sqrt(mx)


cdef void _prepare_step_row_2d(const floating* step, floating* out, Py_ssize_t i,
                               Py_ssize_t nr, Py_ssize_t nc, const double* inv_spacing,
                               double* row_max) noexcept nogil:
    cdef:
        Py_ssize_t j, v
        double a, b, nn, mx = 0
        int bad = 0
        int edge_row = i == 0 or i == nr - 1
    for j in range(nc):
        v = (i * nc + j) * 2
        if edge_row or j == 0 or j == nc - 1:
            out[v] = 0
            out[v + 1] = 0
            continue
        out[v] = step[v]
        out[v + 1] = step[v + 1]
        a = step[v] * inv_spacing[0]
        b = step[v + 1] * inv_spacing[1]
        nn = a * a + b * b
        if mx < nn:
            mx = nn
        elif not (nn <= mx):
            bad = 1
    row_max[i] = NAN if bad else mx


def prepare_step_2d(const floating[:, :, ::1] step, floating[:, :, ::1] out,
                    const double[::1] inv_spacing, double[::1] row_max, int num_threads):
    cdef:
        Py_ssize_t i, nr = step.shape[0]
        double mx = 0
    if out.shape[0] != nr or out.shape[1] != step.shape[1] or row_max.shape[0] < nr:
        raise ValueError("prepare_step_2d: out and row_max must match step")
    num_threads = chunk_threads(num_threads, step.shape[0] * step.shape[1])
    with nogil:
        for i in prange(nr, schedule="static", num_threads=num_threads):
            _prepare_step_row_2d(&step[0, 0, 0], &out[0, 0, 0], i, nr, step.shape[1],
                                 &inv_spacing[0], &row_max[0])
    for i in range(nr):
        if not (row_max[i] <= mx):
            mx = row_max[i]
            if mx != mx:
                break
    return sqrt(mx)


cdef void _resample_slice_3d(const floating* field, Py_ssize_t ns, Py_ssize_t nr,
                             Py_ssize_t nc, Py_ssize_t k, Py_ssize_t onr,
                             Py_ssize_t onc, const double* factors,
                             floating* out) noexcept nogil:
    cdef:
        Py_ssize_t i, j, v
        double val[3]
    for i in range(onr):
        for j in range(onc):
            # Whole cells take the inlined sample (same bits); near the border
            # DIPY keeps the zero-padded partial sum.
            if not interp_vector_3d_cell(field, ns, nr, nc, k * factors[0],
                                         i * factors[1], j * factors[2], val):
                interp_vector_3d(field, ns, nr, nc, k * factors[0], i * factors[1],
                                 j * factors[2], val)
            v = ((k * onr + i) * onc + j) * 3
            out[v] = <floating>val[0]
            out[v + 1] = <floating>val[1]
            out[v + 2] = <floating>val[2]


def resample_3d(const floating[:, :, :, ::1] field, const double[::1] factors,
                floating[:, :, :, ::1] out, int num_threads):
    """out[x] = field[diag(factors) x] (a pyramid level change)."""
    cdef Py_ssize_t k
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1] * out.shape[2])
    with nogil:
        for k in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _resample_slice_3d(&field[0, 0, 0, 0], field.shape[0], field.shape[1],
                               field.shape[2], k, out.shape[1], out.shape[2],
                               &factors[0], &out[0, 0, 0, 0])


cdef void _resample_row_2d(const floating* field, Py_ssize_t nr, Py_ssize_t nc,
                           Py_ssize_t i, Py_ssize_t onc, const double* factors,
                           floating* out) noexcept nogil:
    cdef:
        Py_ssize_t j, v
        double val[2]
    for j in range(onc):
        interp_vector_2d(field, nr, nc, i * factors[0], j * factors[1], val)
        v = (i * onc + j) * 2
        out[v] = <floating>val[0]
        out[v + 1] = <floating>val[1]


def resample_2d(const floating[:, :, ::1] field, const double[::1] factors,
                floating[:, :, ::1] out, int num_threads):
    cdef Py_ssize_t i
    num_threads = chunk_threads(num_threads, out.shape[0] * out.shape[1])
    with nogil:
        for i in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _resample_row_2d(&field[0, 0, 0], field.shape[0], field.shape[1], i,
                             out.shape[1], &factors[0], &out[0, 0, 0])
