# Mutual information with partial-volume (PV) interpolation (Maes et al.
# 1997; greedy's histogram), one side at a time.
#
# The side whose step is wanted (the "source") is not interpolated: each
# voxel i of the common grid looks at the source's own level image around
# the point p(i) at which the warp would have sampled it, and each of the
# 2^dim voxels of that cell adds its own intensity's bins with its bilinear /
# trilinear weight.  So no intensity the image does not hold enters the
# histogram, and the warp does not average the image's noise (with an
# interpolated value, a half-voxel shift of a noisy image sharpens the
# histogram and pulls the map towards it).  The other side's warped value
# is spread over its two nearest bins (a linear window).
#
# Bins: the caller gives each voxel of the source its bin coordinate c in
# [0, nbins - 1] (whole numbers for integer bins); a corner's own intensity
# is spread over the two bins around its c (a linear window, exact for a
# whole number), as is the other side's warped value.  A point outside
# [0, n - 1] on any axis (or NaN) leaves its voxel out of that side's
# histogram and step.  A cell whose 2^dim voxels hold one value (a stripped
# brain's background) adds that value's bins once and has a zero step.
#
# Histogram: as in mi.pyx, fixed chunks of the common grid (a slice in 3D, a
# few rows in 2D) fill partial tables that are summed in chunk order, so the
# result does not depend on the number of threads.  Rows are static bins,
# columns moving bins, whichever side is the source.
#
# Derivative: with the per-bin weights W (see mi.pyx) and F(b) = W at the
# source bin b and the other side's window, the derivative of MI with
# respect to the point is (1 / N) times the gradient of the cell's
# multilinear interpolant of F at p(i); the chain to the common grid goes
# through a Jacobian the caller gives (the map's affine part: the field's own
# Jacobian left out, as in greedy), then to physical units and orientation
# as in mi.pyx, all folded into one matrix per call (_step_matrix).

from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

from fastsyn._kernels._interp cimport chunk_threads, sum_partial_tables


cdef inline int _cell(double p, Py_ssize_t n, Py_ssize_t* i0, Py_ssize_t* i1,
                      double* f) noexcept nogil:
    """The cell of a point on one axis of n voxels: its two voxels and the
    fraction; 0 when the point is outside [0, n - 1] or NaN."""
    cdef Py_ssize_t i
    if not (p >= 0 and p <= n - 1):
        return 0
    i = <Py_ssize_t>p  # p >= 0: truncation is floor
    if i > n - 2:
        i = n - 2 if n >= 2 else 0
    i0[0] = i
    i1[0] = i + 1 if i + 1 < n else i
    f[0] = p - i
    return 1


cdef inline Py_ssize_t _window(double v, double lo, double scale, Py_ssize_t nbins,
                               double* t) noexcept nogil:
    """Lower of the two bins of the other side's value and the upper one's
    weight (nbins >= 2)."""
    cdef:
        double c = (v - lo) * scale
        Py_ssize_t o
    if not (c >= 0):  # also catches NaN
        c = 0
    elif c > nbins - 1:
        c = nbins - 1
    o = <Py_ssize_t>c
    if o > nbins - 2:
        o = nbins - 2
    t[0] = c - o
    return o


cdef inline Py_ssize_t _bin(const floating* C, Py_ssize_t v, Py_ssize_t nbins,
                            double* tau) noexcept nogil:
    # The caller clamps the coordinates to [0, nbins - 1]; _window clamps
    # again, so that every table index is in bounds whatever the array holds.
    return _window(<double>C[v], 0.0, 1.0, nbins, tau)


cdef inline void _add4(double* part, Py_ssize_t q, Py_ssize_t rs, Py_ssize_t os,
                       double w, double tau, double t) noexcept nogil:
    """Add weight w at source bins (q's, next) x other bins (q's, next) with
    the linear windows tau (source) and t (other)."""
    cdef double lo = w * (1 - tau), hi = w * tau
    part[q] += lo * (1 - t)
    part[q + os] += lo * t
    if tau != 0:  # (integer bins: the upper bin gets nothing)
        part[q + rs] += hi * (1 - t)
        part[q + rs + os] += hi * t


cdef inline double _weight4(const double* W, Py_ssize_t rs, Py_ssize_t os, double tau,
                            double t) noexcept nogil:
    """W under the same two windows (the corner's F)."""
    cdef double low = W[0] * (1 - t) + W[os] * t
    if tau == 0:
        return low
    return low * (1 - tau) + (W[rs] * (1 - t) + W[rs + os] * t) * tau


# ------------------------------------------------------------------ 3D
cdef inline int _corners_3d(const floating* B, Py_ssize_t bs, Py_ssize_t br,
                            Py_ssize_t bc, Py_ssize_t nbins, const floating* P,
                            Py_ssize_t v, Py_ssize_t* bins, double* tau,
                            double* f) noexcept nogil:
    """The lower bins (and upper bins' weights) of the 8 source voxels
    around the point of voxel v (index c0 * 4 + c1 * 2 + c2) and the point's
    fractions; 0 when the point is outside, 2 when the 8 voxels hold one
    value (a flat cell: only bins[0] and tau[0] are set), else 1."""
    cdef:
        Py_ssize_t a0, a1, b0, b1, c0, c1, i000, i001, i010, i011, i100, i101, i110, i111
        floating x
    if not (_cell(P[3 * v], bs, &a0, &a1, &f[0])
            and _cell(P[3 * v + 1], br, &b0, &b1, &f[1])
            and _cell(P[3 * v + 2], bc, &c0, &c1, &f[2])):
        return 0
    i000 = (a0 * br + b0) * bc + c0
    i001 = (a0 * br + b0) * bc + c1
    i010 = (a0 * br + b1) * bc + c0
    i011 = (a0 * br + b1) * bc + c1
    i100 = (a1 * br + b0) * bc + c0
    i101 = (a1 * br + b0) * bc + c1
    i110 = (a1 * br + b1) * bc + c0
    i111 = (a1 * br + b1) * bc + c1
    x = B[i000]
    if (B[i001] == x and B[i010] == x and B[i011] == x and B[i100] == x
            and B[i101] == x and B[i110] == x and B[i111] == x):
        # (a skull-stripped image's background: most of the grid)
        bins[0] = _bin(B, i000, nbins, &tau[0])
        return 2
    bins[0] = _bin(B, i000, nbins, &tau[0])
    bins[1] = _bin(B, i001, nbins, &tau[1])
    bins[2] = _bin(B, i010, nbins, &tau[2])
    bins[3] = _bin(B, i011, nbins, &tau[3])
    bins[4] = _bin(B, i100, nbins, &tau[4])
    bins[5] = _bin(B, i101, nbins, &tau[5])
    bins[6] = _bin(B, i110, nbins, &tau[6])
    bins[7] = _bin(B, i111, nbins, &tau[7])
    return 1


cdef inline void _trilinear_gradient(const double* F, const double* f,
                                     double* gp) noexcept nogil:
    """Gradient of the trilinear interpolant of the 8 corner values F (index
    c0 * 4 + c1 * 2 + c2) at fractions f."""
    cdef:
        double e0 = 1 - f[0], e1 = 1 - f[1], e2 = 1 - f[2]
        double F00 = F[0] * e2 + F[1] * f[2], F01 = F[2] * e2 + F[3] * f[2]
        double F10 = F[4] * e2 + F[5] * f[2], F11 = F[6] * e2 + F[7] * f[2]
    gp[0] = (F10 * e1 + F11 * f[1]) - (F00 * e1 + F01 * f[1])
    gp[1] = (F01 - F00) * e0 + (F11 - F10) * f[0]
    gp[2] = (((F[1] - F[0]) * e1 + (F[3] - F[2]) * f[1]) * e0
             + ((F[5] - F[4]) * e1 + (F[7] - F[6]) * f[1]) * f[0])


cdef inline void _add_cell(double* part, const Py_ssize_t* bins, const double* tau,
                           const double* w, Py_ssize_t ncorners, int cell, Py_ssize_t o,
                           double t, Py_ssize_t rs, Py_ssize_t os) noexcept nogil:
    """Add one voxel to the histogram: each corner's bins with its weight w
    (a flat cell: bins[0] with the whole weight)."""
    cdef Py_ssize_t k
    if cell == 2:
        _add4(part, bins[0] * rs + o * os, rs, os, 1.0, tau[0], t)
        return
    for k in range(ncorners):
        _add4(part, bins[k] * rs + o * os, rs, os, w[k], tau[k], t)


cdef void _pv_chunk_3d(const floating* B, Py_ssize_t bs, Py_ssize_t br, Py_ssize_t bc,
                       const floating* P, const floating* O, const unsigned char* use,
                       int use_none, Py_ssize_t v0, Py_ssize_t v1, double o_lo,
                       double o_scale, Py_ssize_t nbins, int source_static, double* part,
                       double* count, const double* W, const double* M,
                       floating* out) noexcept nogil:
    """Voxels [v0, v1) of the common grid in one pass: the histogram into
    ``part`` (unless NULL; count into ``count``) and the step with weights
    ``W`` turned by the 3 x 3 ``M`` into ``out`` (unless W is NULL)."""
    cdef:
        Py_ssize_t v, k, b, o = 0
        int cell, add, step
        Py_ssize_t bins[8]
        double tau[8]
        double f[3]
        double w[8]
        double F[8]
        double gp[3]
        double t = 0, g0, g1, h0, h1
        Py_ssize_t rs = nbins if source_static else 1   # stride of a source bin
        Py_ssize_t os = 1 if source_static else nbins   # stride of an other bin
        double n = 0
    if part != NULL:
        for b in range(nbins * nbins):
            part[b] = 0
    for v in range(v0, v1):
        add = part != NULL and (use_none or (use[v] & 2))
        step = W != NULL and (use_none or (use[v] & 1))
        cell = 0
        if add or step:
            cell = _corners_3d(B, bs, br, bc, nbins, P, v, bins, tau, f)
        if cell != 0:
            o = _window(<double>O[v], o_lo, o_scale, nbins, &t)
        if add and cell != 0:
            n += 1
            if cell == 1:
                g0 = 1 - f[0]
                g1 = 1 - f[1]
                h0 = g0 * g1
                h1 = g0 * f[1]
                w[0] = h0 * (1 - f[2])
                w[1] = h0 * f[2]
                w[2] = h1 * (1 - f[2])
                w[3] = h1 * f[2]
                h0 = f[0] * g1
                h1 = f[0] * f[1]
                w[4] = h0 * (1 - f[2])
                w[5] = h0 * f[2]
                w[6] = h1 * (1 - f[2])
                w[7] = h1 * f[2]
            _add_cell(part, bins, tau, w, 8, cell, o, t, rs, os)
        if W == NULL:
            continue
        # outside the source, or a flat cell (every F the same): zero
        if not step or cell != 1:
            out[3 * v] = 0
            out[3 * v + 1] = 0
            out[3 * v + 2] = 0
            continue
        for k in range(8):
            F[k] = _weight4(W + bins[k] * rs + o * os, rs, os, tau[k], t)
        _trilinear_gradient(F, f, gp)
        out[3 * v] = <floating>(M[0] * gp[0] + M[1] * gp[1] + M[2] * gp[2])
        out[3 * v + 1] = <floating>(M[3] * gp[0] + M[4] * gp[1] + M[5] * gp[2])
        out[3 * v + 2] = <floating>(M[6] * gp[0] + M[7] * gp[1] + M[8] * gp[2])
    if count != NULL:
        count[0] = n


# ------------------------------------------------------------------ 2D
cdef inline int _corners_2d(const floating* B, Py_ssize_t br, Py_ssize_t bc,
                            Py_ssize_t nbins, const floating* P, Py_ssize_t v,
                            Py_ssize_t* bins, double* tau, double* f) noexcept nogil:
    cdef Py_ssize_t b0, b1, c0, c1
    if not (_cell(P[2 * v], br, &b0, &b1, &f[0])
            and _cell(P[2 * v + 1], bc, &c0, &c1, &f[1])):
        return 0
    bins[0] = _bin(B, b0 * bc + c0, nbins, &tau[0])
    bins[1] = _bin(B, b0 * bc + c1, nbins, &tau[1])
    bins[2] = _bin(B, b1 * bc + c0, nbins, &tau[2])
    bins[3] = _bin(B, b1 * bc + c1, nbins, &tau[3])
    return 1


cdef void _pv_chunk_2d(const floating* B, Py_ssize_t br, Py_ssize_t bc, const floating* P,
                       const floating* O, const unsigned char* use, int use_none,
                       Py_ssize_t v0, Py_ssize_t v1, double o_lo, double o_scale,
                       Py_ssize_t nbins, int source_static, double* part, double* count,
                       const double* W, const double* M, floating* out) noexcept nogil:
    """:func:`_pv_chunk_3d` in 2D (4 corners, M 2 x 2; no flat-cell test)."""
    cdef:
        Py_ssize_t v, k, b, o = 0
        int cell, add, step
        Py_ssize_t bins[4]
        double tau[4]
        double f[2]
        double w[4]
        double F[4]
        double gp[2]
        double t = 0
        Py_ssize_t rs = nbins if source_static else 1
        Py_ssize_t os = 1 if source_static else nbins
        double n = 0
    if part != NULL:
        for b in range(nbins * nbins):
            part[b] = 0
    for v in range(v0, v1):
        add = part != NULL and (use_none or (use[v] & 2))
        step = W != NULL and (use_none or (use[v] & 1))
        cell = 0
        if add or step:
            cell = _corners_2d(B, br, bc, nbins, P, v, bins, tau, f)
        if cell != 0:
            o = _window(<double>O[v], o_lo, o_scale, nbins, &t)
        if add and cell != 0:
            n += 1
            w[0] = (1 - f[0]) * (1 - f[1])
            w[1] = (1 - f[0]) * f[1]
            w[2] = f[0] * (1 - f[1])
            w[3] = f[0] * f[1]
            _add_cell(part, bins, tau, w, 4, cell, o, t, rs, os)
        if W == NULL:
            continue
        if not step or cell == 0:
            out[2 * v] = 0
            out[2 * v + 1] = 0
            continue
        for k in range(4):
            F[k] = _weight4(W + bins[k] * rs + o * os, rs, os, tau[k], t)
        gp[0] = (F[2] - F[0]) * (1 - f[1]) + (F[3] - F[1]) * f[1]
        gp[1] = (F[1] - F[0]) * (1 - f[0]) + (F[3] - F[2]) * f[0]
        out[2 * v] = <floating>(M[0] * gp[0] + M[1] * gp[1])
        out[2 * v + 1] = <floating>(M[2] * gp[0] + M[3] * gp[1])
    if count != NULL:
        count[0] = n


# ------------------------------------------------------------- wrappers
cdef double _pv_run(const floating* B, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t s2,
                    int dim, const floating* P, const floating* O, Py_ssize_t n,
                    const unsigned char* use, int use_none, double o_lo, double o_scale,
                    Py_ssize_t nbins, int source_static, Py_ssize_t chunk, double* hist,
                    const double* W, const double* M, floating* out,
                    int num_threads) except -1:
    """Fixed chunks of the common grid in parallel: the histogram (unless
    hist is NULL; partial tables summed in chunk order, so the same for any
    number of threads) and the step (unless W is NULL).  Returns the count."""
    cdef:
        Py_ssize_t nb2 = nbins * nbins, nchunks, c, v1
        double* part = NULL
        double* counts = NULL
        double total = 0
    if chunk < 1:
        chunk = 1
    nchunks = (n + chunk - 1) // chunk
    if nchunks == 0:
        if hist != NULL:
            for c in range(nb2):
                hist[c] = 0
        return 0.0
    if hist != NULL:
        part = <double*>malloc(nchunks * nb2 * sizeof(double))
        counts = <double*>malloc(nchunks * sizeof(double))
        if part == NULL or counts == NULL:
            free(part)
            free(counts)
            raise MemoryError("partial volume: could not allocate the partial histograms")
    num_threads = chunk_threads(num_threads, nchunks)
    with nogil:
        for c in prange(nchunks, schedule="static", num_threads=num_threads):
            v1 = (c + 1) * chunk
            if v1 > n:
                v1 = n
            if dim == 3:
                _pv_chunk_3d(B, s0, s1, s2, P, O, use, use_none, c * chunk, v1, o_lo,
                             o_scale, nbins, source_static,
                             part + c * nb2 if part != NULL else NULL,
                             counts + c if counts != NULL else NULL, W, M, out)
            else:
                _pv_chunk_2d(B, s0, s1, P, O, use, use_none, c * chunk, v1, o_lo, o_scale,
                             nbins, source_static,
                             part + c * nb2 if part != NULL else NULL,
                             counts + c if counts != NULL else NULL, W, M, out)
        if hist != NULL:
            total = sum_partial_tables(part, counts, nchunks, nb2, hist)
    free(part)
    free(counts)
    return total


def pv_histogram(const floating[::1] bins, tuple source_shape,
                 const floating[::1] points, const floating[::1] other,
                 const unsigned char[::1] use, bint use_none, double o_lo,
                 double o_scale, bint source_static, Py_ssize_t chunk,
                 double[:, ::1] hist, int num_threads):
    """Joint histogram of one side by partial volume.

    Parameters
    ----------
    bins : array, shape (m,)
        The source side's level image as bin coordinates in ``[0, nbins -
        1]`` (flattened, C order, of ``source_shape``; same dtype as
        ``points``).
    source_shape : tuple of int
        Shape of the source image (2 or 3 axes).
    points : array, shape (n * dim,)
        For every voxel of the common grid, the point in the source's grid
        coordinates where the warp samples it (flattened ``(..., dim)``).
    other : array, shape (n,)
        The other side's warped image on the common grid (flattened).
    use, use_none : see :func:`fastsyn._kernels.mi.mi_histogram`.
    o_lo, o_scale : float
        The other side's bin coordinate ``(v - o_lo) * o_scale``.
    source_static : bool
        True when the source is the static image (its bins index the rows).
    chunk : int
        Voxels of the common grid per partial table (shape-dependent only).
    hist : array, shape (nbins, nbins)
        Output, static bins along the first axis.
    num_threads : int
        Number of OpenMP threads.

    Returns
    -------
    count : float
        Number of voxels that entered the histogram.
    """
    cdef:
        Py_ssize_t dim = len(source_shape)
        Py_ssize_t n = other.shape[0], nbins = hist.shape[0]
        Py_ssize_t s0, s1, s2
        const unsigned char* use_p = &use[0] if use.shape[0] > 0 else NULL
    if dim not in (2, 3):
        raise ValueError("source_shape must have 2 or 3 axes")
    s0 = source_shape[0]
    s1 = source_shape[1]
    s2 = source_shape[2] if dim == 3 else 1
    if s0 < 1 or s1 < 1 or s2 < 1 or bins.shape[0] != s0 * s1 * s2:
        raise ValueError("bins does not hold an image of source_shape")
    if points.shape[0] != n * dim or hist.shape[1] != nbins or nbins < 2:
        raise ValueError("points, other and hist do not match")
    if not use_none and use.shape[0] != n:
        raise ValueError("use must have one flag per voxel")
    return _pv_run(&bins[0], s0, s1, s2, dim, &points[0] if n > 0 else NULL,
                   &other[0] if n > 0 else NULL, n, use_p, use_none, o_lo, o_scale, nbins,
                   source_static, chunk, &hist[0, 0], NULL, NULL, <floating*>NULL,
                   num_threads)


cdef void _step_matrix(const double[::1] jacobian, const double[::1] spacing,
                       const double[::1] direction, bint direction_none, double factor,
                       int dim, double* M) except *:
    """``M = factor * D diag(1 / spacing) J^T`` (D the direction's linear
    part, J the points' Jacobian): the step from the gradient in the
    source's grid coordinates, one product per voxel."""
    cdef int i, k, l
    cdef double acc, d
    if jacobian is None or jacobian.shape[0] != dim * dim:
        raise ValueError(f"jacobian must hold {dim * dim} values")
    if spacing.shape[0] != dim:
        raise ValueError(f"spacing must hold {dim} values")
    if not direction_none and direction.shape[0] != dim * (dim + 1):
        raise ValueError(f"direction must hold the {dim * (dim + 1)} values of a "
                         f"{dim} x {dim + 1} matrix")
    for i in range(dim):
        for k in range(dim):
            acc = 0
            for l in range(dim):
                if direction_none:
                    d = 1.0 if i == l else 0.0
                else:
                    d = direction[i * (dim + 1) + l]
                acc = acc + d * (jacobian[k * dim + l] / spacing[l])
            M[i * dim + k] = factor * acc


cdef object _pv_step(const floating* B, tuple source_shape, const floating* P,
                     const floating* O, Py_ssize_t n, const unsigned char[::1] use,
                     bint use_none, double o_lo, double o_scale,
                     const double[:, ::1] weights, double factor, bint source_static,
                     const double[::1] spacing, const double[::1] direction,
                     bint direction_none, floating* out, int num_threads,
                     const double[::1] jacobian, Py_ssize_t chunk):
    """The checks and the run shared by pv_step_3d and pv_step_2d (which
    check their arrays' shapes, and that bins is not empty, before taking
    the pointers)."""
    cdef:
        int dim = len(source_shape)
        Py_ssize_t nbins = weights.shape[0]
        double M[9]
        const unsigned char* use_p = &use[0] if use.shape[0] > 0 else NULL
        Py_ssize_t s0 = source_shape[0], s1 = source_shape[1]
        Py_ssize_t s2 = source_shape[2] if dim == 3 else 1
    _step_matrix(jacobian, spacing, direction, direction_none, factor, dim, M)
    if weights.shape[1] != nbins or nbins < 2:
        raise ValueError("weights must be square (nbins >= 2)")
    if not use_none and use.shape[0] != n:
        raise ValueError("use must have one flag per voxel")
    # (no partial tables: any chunks give the same step)
    _pv_run(B, s0, s1, s2, dim, P, O, n, use_p, use_none, o_lo, o_scale, nbins,
            source_static, chunk, NULL, &weights[0, 0], M, out, num_threads)


def pv_step_3d(const floating[:, :, ::1] bins, const floating[:, :, :, ::1] points,
               const floating[:, :, ::1] other, const unsigned char[::1] use,
               bint use_none, double o_lo, double o_scale, const double[:, ::1] weights,
               double factor, bint source_static, const double[::1] spacing,
               const double[::1] direction, bint direction_none,
               floating[:, :, :, ::1] out, int num_threads, const double[::1] jacobian):
    """Dense partial-volume MI step of one side of a 3D pair.

    ``out[x] = factor * J^T grad F(p(x))``, physical and oriented: ``p``
    the points (``points``, the source's grid coordinates of each common-grid
    voxel), ``J`` the given ``jacobian`` (9 values, row k the derivatives of
    the points' component k: the map's affine part, as greedy's gradient,
    which leaves out the field's own Jacobian), ``F`` the cell's
    trilinear interpolant of ``weights`` at the source's bins and the other
    side's linear window.  Voxels whose ``use`` flag lacks bit 1, or whose
    point is outside the source, get zero.
    """
    cdef Py_ssize_t ns = other.shape[0], nr = other.shape[1], nc = other.shape[2]
    if (points.shape[0] != ns or points.shape[1] != nr or points.shape[2] != nc
            or points.shape[3] != 3 or out.shape[0] != ns or out.shape[1] != nr
            or out.shape[2] != nc or out.shape[3] != 3):
        raise ValueError("points, other and out must share the common grid")
    if bins.shape[0] < 1 or bins.shape[1] < 1 or bins.shape[2] < 1:
        raise ValueError("bins must not be empty")
    return _pv_step(&bins[0, 0, 0], (bins.shape[0], bins.shape[1], bins.shape[2]),
                    &points[0, 0, 0, 0], &other[0, 0, 0], ns * nr * nc, use, use_none, o_lo,
                    o_scale, weights, factor, source_static, spacing, direction,
                    direction_none, &out[0, 0, 0, 0], num_threads, jacobian, nr * nc)


def pv_step_2d(const floating[:, ::1] bins, const floating[:, :, ::1] points,
               const floating[:, ::1] other, const unsigned char[::1] use,
               bint use_none, double o_lo, double o_scale, const double[:, ::1] weights,
               double factor, bint source_static, const double[::1] spacing,
               const double[::1] direction, bint direction_none,
               floating[:, :, ::1] out, int num_threads, const double[::1] jacobian):
    """Dense partial-volume MI step of one side of a 2D pair (see
    :func:`pv_step_3d`; ``jacobian`` has 4 values)."""
    cdef Py_ssize_t nr = other.shape[0], nc = other.shape[1]
    if (points.shape[0] != nr or points.shape[1] != nc or points.shape[2] != 2
            or out.shape[0] != nr or out.shape[1] != nc or out.shape[2] != 2):
        raise ValueError("points, other and out must share the common grid")
    if bins.shape[0] < 1 or bins.shape[1] < 1:
        raise ValueError("bins must not be empty")
    return _pv_step(&bins[0, 0], (bins.shape[0], bins.shape[1]), &points[0, 0, 0],
                    &other[0, 0], nr * nc, use, use_none, o_lo, o_scale, weights, factor,
                    source_static, spacing, direction, direction_none, &out[0, 0, 0],
                    num_threads, jacobian, 8 * nc)
