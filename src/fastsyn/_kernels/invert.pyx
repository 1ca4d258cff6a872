# Fixed-point inversion of a displacement field (Chen et al., 2008), as DIPY
# does it, with the passes fused.
#
# DIPY runs, per iteration, a composition q = p + d(x + W p), a pass for the
# residual norms, and an update p -= step(|q|) q.  The composition reads p
# only at the voxel it writes, so the update of iteration t and the
# composition of iteration t + 1 are done in the same sweep: T iterations cost
# T + 1 sweeps instead of 2 T, and no norm array is kept.  Residual sums and
# maxima are kept per slice (per row in 2D) and merged in index order, so the
# iteration count and the result are the same for every thread count.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from fastsyn._kernels._interp cimport (chunk_threads, Affine2, Affine3, affine2_from,
                                       affine2_vector, affine3_from,
                                       affine3_vector, interp_vector_2d,
                                       interp_vector_3d_cell)


cdef inline double _step_factor(double mag, double maxlen,
                                double epsilon) noexcept nogil:
    if mag > maxlen:
        return epsilon * maxlen / mag
    return epsilon


cdef inline void _compose_voxel_3d(floating* p, floating* q, const floating* d,
                                   Py_ssize_t v, Py_ssize_t k, Py_ssize_t i,
                                   Py_ssize_t j, Py_ssize_t ns, Py_ssize_t nr,
                                   Py_ssize_t nc, const Affine3* w2g) noexcept nogil:
    cdef:
        double dv[3]
        double val[3]
    affine3_vector(w2g, p[v], p[v + 1], p[v + 2], dv)
    if interp_vector_3d_cell(d, ns, nr, nc, k + dv[0], i + dv[1], j + dv[2], val):
        q[v] = <floating>(val[0] + p[v])
        q[v + 1] = <floating>(val[1] + p[v + 1])
        q[v + 2] = <floating>(val[2] + p[v + 2])
    else:
        q[v] = 0
        q[v + 1] = 0
        q[v + 2] = 0


cdef inline double _norm(const floating* q, Py_ssize_t v, double inv_s0,
                         double inv_s1, double inv_s2) noexcept nogil:
    cdef double a = q[v] * inv_s0, b = q[v + 1] * inv_s1, c = q[v + 2] * inv_s2
    return sqrt(a * a + b * b + c * c)


cdef inline void _update_voxel_3d(floating* p, const floating* q, Py_ssize_t v,
                                  double inv_s0, double inv_s1, double inv_s2,
                                  double maxlen, double epsilon) noexcept nogil:
    cdef double f = _step_factor(_norm(q, v, inv_s0, inv_s1, inv_s2), maxlen, epsilon)
    p[v] = <floating>(p[v] - f * q[v])
    p[v + 1] = <floating>(p[v + 1] - f * q[v + 1])
    p[v + 2] = <floating>(p[v + 2] - f * q[v + 2])


cdef void _sweep_slice_3d(floating* p, floating* q, const floating* d,
                          Py_ssize_t k, Py_ssize_t ns, Py_ssize_t nr, Py_ssize_t nc,
                          const Affine3* w2g, double inv_s0, double inv_s1,
                          double inv_s2, int do_update, int do_compose,
                          double maxlen, double epsilon,
                          double* slice_sum, double* slice_max) noexcept nogil:
    cdef:
        Py_ssize_t i, j, v, base = k * nr * nc * 3
        double mag, total = 0, mx = 0
        Affine3 aff = w2g[0]  # a local copy: see Affine3
    # One composing loop, so that the composition has a single call site
    # per specialisation and is inlined (two call sites made GCC emit a call
    # per voxel); the update test in it is the same for the whole sweep.
    if do_compose:
        for i in range(nr):
            for j in range(nc):
                v = base + (i * nc + j) * 3
                if do_update:
                    _update_voxel_3d(p, q, v, inv_s0, inv_s1, inv_s2, maxlen, epsilon)
                _compose_voxel_3d(p, q, d, v, k, i, j, ns, nr, nc, &aff)
                mag = _norm(q, v, inv_s0, inv_s1, inv_s2)
                total += mag
                if mx < mag:
                    mx = mag
    else:
        for i in range(nr):
            for j in range(nc):
                v = base + (i * nc + j) * 3
                _update_voxel_3d(p, q, v, inv_s0, inv_s1, inv_s2, maxlen, epsilon)
    slice_sum[k] = total
    slice_max[k] = mx


def invert_3d(floating[:, :, :, ::1] p, const floating[:, :, :, ::1] d,
              const double[::1] w2g_aff, bint w2g_none,
              double s0, double s1, double s2, int max_iter, double tol,
              floating[:, :, :, ::1] q, double[::1] slice_sum,
              double[::1] slice_max, int num_threads):
    """Invert ``d`` in place into ``p`` (holding the warm start on entry).

    Returns (iterations, final error) with DIPY's stopping rule:
    ``while 0.1 < max residual and it < max_iter and tol < mean residual``.
    """
    cdef:
        Py_ssize_t k, ns = d.shape[0], nr = d.shape[1], nc = d.shape[2]
        Affine3 w2g = affine3_from(w2g_aff, w2g_none)
        double inv0 = 1.0 / s0, inv1 = 1.0 / s1, inv2 = 1.0 / s2
        double difmag = 1, error = 1 + tol, epsilon = 0.75, maxlen = 0
        int it = 0, do_update = 0, do_compose
    if max_iter <= 0 or not (tol < error):
        return 0, error
    num_threads = chunk_threads(num_threads, d.shape[0] * d.shape[1] * d.shape[2])
    with nogil:
        while True:
            # Will DIPY's loop run iteration ``it``?  (It always runs it = 0.)
            do_compose = (0.1 < difmag) and (it < max_iter) and (tol < error)
            if not do_update and not do_compose:
                break
            for k in prange(ns, schedule="static", num_threads=num_threads):
                _sweep_slice_3d(&p[0, 0, 0, 0], &q[0, 0, 0, 0], &d[0, 0, 0, 0],
                                k, ns, nr, nc, &w2g, inv0, inv1, inv2,
                                do_update, do_compose, maxlen, epsilon,
                                &slice_sum[0], &slice_max[0])
            if not do_compose:
                break
            difmag = 0
            error = 0
            for k in range(ns):
                error += slice_sum[k]
                if difmag < slice_max[k]:
                    difmag = slice_max[k]
            error /= (ns * nr * nc)
            epsilon = 0.75 if it == 0 else 0.5
            maxlen = difmag * epsilon
            do_update = 1
            it += 1
    return it, error


cdef void _sweep_row_2d(floating* p, floating* q, const floating* d,
                        Py_ssize_t i, Py_ssize_t nr, Py_ssize_t nc,
                        const Affine2* w2g, double inv_s0, double inv_s1,
                        int do_update, int do_compose,
                        double maxlen, double epsilon,
                        double* row_sum, double* row_max) noexcept nogil:
    cdef:
        Py_ssize_t j, v
        double dv[2]
        double val[2]
        double a, b, mag, f, total = 0, mx = 0
    for j in range(nc):
        v = (i * nc + j) * 2
        if do_update:
            a = q[v] * inv_s0
            b = q[v + 1] * inv_s1
            f = _step_factor(sqrt(a * a + b * b), maxlen, epsilon)
            p[v] = <floating>(p[v] - f * q[v])
            p[v + 1] = <floating>(p[v + 1] - f * q[v + 1])
        if do_compose:
            affine2_vector(w2g, p[v], p[v + 1], dv)
            if interp_vector_2d(d, nr, nc, i + dv[0], j + dv[1], val):
                q[v] = <floating>(val[0] + p[v])
                q[v + 1] = <floating>(val[1] + p[v + 1])
            else:
                q[v] = 0
                q[v + 1] = 0
            a = q[v] * inv_s0
            b = q[v + 1] * inv_s1
            mag = sqrt(a * a + b * b)
            total += mag
            if mx < mag:
                mx = mag
    row_sum[i] = total
    row_max[i] = mx


def invert_2d(floating[:, :, ::1] p, const floating[:, :, ::1] d,
              const double[::1] w2g_aff, bint w2g_none,
              double s0, double s1, int max_iter, double tol,
              floating[:, :, ::1] q, double[::1] row_sum,
              double[::1] row_max, int num_threads):
    """2D twin of :func:`invert_3d`; DIPY's 2D loop has no max-residual test."""
    cdef:
        Py_ssize_t i, nr = d.shape[0], nc = d.shape[1]
        Affine2 w2g = affine2_from(w2g_aff, w2g_none)
        double inv0 = 1.0 / s0, inv1 = 1.0 / s1
        double difmag = 0, error = 1 + tol, epsilon = 0.75, maxlen = 0
        int it = 0, do_update = 0, do_compose
    if max_iter <= 0 or not (tol < error):
        return 0, error
    num_threads = chunk_threads(num_threads, d.shape[0] * d.shape[1])
    with nogil:
        while True:
            do_compose = (it < max_iter) and (tol < error)
            if not do_update and not do_compose:
                break
            for i in prange(nr, schedule="static", num_threads=num_threads):
                _sweep_row_2d(&p[0, 0, 0], &q[0, 0, 0], &d[0, 0, 0], i, nr, nc,
                              &w2g, inv0, inv1, do_update, do_compose,
                              maxlen, epsilon, &row_sum[0], &row_max[0])
            if not do_compose:
                break
            difmag = 0
            error = 0
            for i in range(nr):
                error += row_sum[i]
                if difmag < row_max[i]:
                    difmag = row_max[i]
            error /= (nr * nc)
            epsilon = 0.75 if it == 0 else 0.5
            maxlen = difmag * epsilon
            do_update = 1
            it += 1
    return it, error


# ------------------------------------------------------------------ refine
# One fixed-point sweep that updates the warm start in the same pass as its
# residual: p <- p - f(|q|) q with q = d(x + p) + p, f = epsilon, clipped to
# epsilon * maxlen / |q| above maxlen.  DIPY's loop takes maxlen from the
# residual of the same sweep, which needs a second pass over the field;
# here it comes from the caller (the previous sweep's largest residual), so
# each voxel reads p and d once and writes p once.  A voxel's composition
# reads p at that voxel only, so updating p in place is safe.
cdef void _refine_slice_3d(floating* p, const floating* d, Py_ssize_t k,
                           Py_ssize_t ns, Py_ssize_t nr, Py_ssize_t nc,
                           const Affine3* w2g, double inv_s0, double inv_s1,
                           double inv_s2, double maxlen, double epsilon,
                           double* slice_max) noexcept nogil:
    cdef:
        Py_ssize_t i, j, v, base = k * nr * nc * 3
        double dv[3]
        double val[3]
        double q0, q1, q2, a, b, c, mag, f, mx = 0
        Affine3 aff = w2g[0]  # a local copy: see Affine3
    for i in range(nr):
        for j in range(nc):
            v = base + (i * nc + j) * 3
            affine3_vector(&aff, p[v], p[v + 1], p[v + 2], dv)
            if interp_vector_3d_cell(d, ns, nr, nc, k + dv[0], i + dv[1], j + dv[2], val):
                q0 = <floating>(val[0] + p[v])
                q1 = <floating>(val[1] + p[v + 1])
                q2 = <floating>(val[2] + p[v + 2])
            else:
                q0 = 0
                q1 = 0
                q2 = 0
            a = q0 * inv_s0
            b = q1 * inv_s1
            c = q2 * inv_s2
            mag = sqrt(a * a + b * b + c * c)
            if mx < mag:
                mx = mag
            f = _step_factor(mag, maxlen, epsilon)
            p[v] = <floating>(p[v] - f * q0)
            p[v + 1] = <floating>(p[v + 1] - f * q1)
            p[v + 2] = <floating>(p[v + 2] - f * q2)
    slice_max[k] = mx


def refine_3d(floating[:, :, :, ::1] p, const floating[:, :, :, ::1] d,
              const double[::1] w2g_aff, bint w2g_none,
              double s0, double s1, double s2, double maxlen, double epsilon,
              double[::1] slice_max, int num_threads):
    """One fused fixed-point sweep of the inverse ``p`` of ``d`` (in place).

    Returns the largest residual norm (voxels) before the update, to be the
    next sweep's ``maxlen``.
    """
    cdef:
        Py_ssize_t k, ns = d.shape[0], nr = d.shape[1], nc = d.shape[2]
        Affine3 w2g = affine3_from(w2g_aff, w2g_none)
        double mx = 0
    num_threads = chunk_threads(num_threads, ns * nr * nc)
    with nogil:
        for k in prange(ns, schedule="static", num_threads=num_threads):
            _refine_slice_3d(&p[0, 0, 0, 0], &d[0, 0, 0, 0], k, ns, nr, nc, &w2g,
                             1.0 / s0, 1.0 / s1, 1.0 / s2, maxlen, epsilon,
                             &slice_max[0])
        for k in range(ns):
            if mx < slice_max[k]:
                mx = slice_max[k]
    return mx


cdef void _refine_row_2d(floating* p, const floating* d, Py_ssize_t i,
                         Py_ssize_t nr, Py_ssize_t nc, const Affine2* w2g,
                         double inv_s0, double inv_s1, double maxlen,
                         double epsilon, double* row_max) noexcept nogil:
    cdef:
        Py_ssize_t j, v
        double dv[2]
        double val[2]
        double q0, q1, a, b, mag, f, mx = 0
    for j in range(nc):
        v = (i * nc + j) * 2
        affine2_vector(w2g, p[v], p[v + 1], dv)
        if interp_vector_2d(d, nr, nc, i + dv[0], j + dv[1], val):
            q0 = <floating>(val[0] + p[v])
            q1 = <floating>(val[1] + p[v + 1])
        else:
            q0 = 0
            q1 = 0
        a = q0 * inv_s0
        b = q1 * inv_s1
        mag = sqrt(a * a + b * b)
        if mx < mag:
            mx = mag
        f = _step_factor(mag, maxlen, epsilon)
        p[v] = <floating>(p[v] - f * q0)
        p[v + 1] = <floating>(p[v + 1] - f * q1)
    row_max[i] = mx


def refine_2d(floating[:, :, ::1] p, const floating[:, :, ::1] d,
              const double[::1] w2g_aff, bint w2g_none, double s0, double s1,
              double maxlen, double epsilon, double[::1] row_max, int num_threads):
    """2D twin of :func:`refine_3d`."""
    cdef:
        Py_ssize_t i, nr = d.shape[0], nc = d.shape[1]
        Affine2 w2g = affine2_from(w2g_aff, w2g_none)
        double mx = 0
    num_threads = chunk_threads(num_threads, nr * nc)
    with nogil:
        for i in prange(nr, schedule="static", num_threads=num_threads):
            _refine_row_2d(&p[0, 0, 0], &d[0, 0, 0], i, nr, nc, &w2g, 1.0 / s0,
                           1.0 / s1, maxlen, epsilon, &row_max[0])
        for i in range(nr):
            if mx < row_max[i]:
                mx = row_max[i]
    return mx
