# Mutual information with cubic B-spline Parzen windows (Mattes et al. 2003),
# symmetric: both the static and the moving intensity are spread over four
# bins by the cubic B-spline, so the MI is differentiable with respect to
# either image (SyN moves both).
#
# Intensities are mapped to bin coordinates on the fly,
#     c = 1 + (v - lo) * scale,  clamped to [1, nbins - 2],
# so a sample reaches bins floor(c) - 1 .. floor(c) + 2, all inside the table
# (at c = nbins - 2 the base bin is taken one lower with fraction 1, which
# gives the same weights).  A clamped voxel still counts in the histogram but
# its intensity derivative is zero.
#
# Histogram: the voxels are cut in fixed chunks (a slice in 3D, a few rows in
# 2D, chosen from the shape only); each chunk fills its own partial table and
# the partials are summed in chunk order, so the result does not depend on the
# number of threads.
#
# Derivative: with p = h / N and the per-bin weights
#     W(i, j) = log(p(i, j) / (p_s(i) p_m(j)))   (0 where p(i, j) = 0),
# the derivative of MI with respect to the bin coordinate of one voxel is
# (1 / N) sum_ij W(i, j) dB(i - c_s) B(j - c_m) for the static side and
# (1 / N) sum_ij W(i, j) B(i - c_s) dB(j - c_m) for the moving side, a sum over
# the 16 bins the voxel reaches.  The kernel multiplies it by the caller's
# factor and by the physical gradient of the image on that side; where that
# gradient is zero the sum is not computed (the step is zero either way, up to
# the sign of a zero).

from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

from fastsyn._kernels._interp cimport (chunk_threads, Affine2, Affine3, affine2_from,
                                       affine2_vector, affine3_from,
                                       affine3_vector, central_diff, sum_partial_tables)


cdef inline int _coord(floating v, floating lo, floating scale,
                       Py_ssize_t nbins, Py_ssize_t* first,
                       floating* frac) noexcept nogil:
    """Lowest bin reached by a sample and its fractional offset.

    Returns 0 when the intensity was clamped (its derivative is then zero),
    1 otherwise.
    """
    cdef:
        floating c = <floating>1 + (v - lo) * scale
        floating cmax = <floating>(nbins - 2)
        Py_ssize_t i0
        int inside = 1
    if not (c >= 1):          # also catches NaN
        c = 1
        inside = 0
    elif c > cmax:
        c = cmax
        inside = 0
    i0 = <Py_ssize_t>c           # c >= 1: truncation is floor, without a libm call
    if i0 > nbins - 3:
        i0 = nbins - 3
    first[0] = i0 - 1
    frac[0] = c - i0
    return inside


cdef inline void _bspline(floating f, floating* w) noexcept nogil:
    """Cubic B-spline weights of the 4 bins reached at fraction ``f``."""
    cdef:
        floating g = 1 - f, f2 = f * f, g2 = g * g
        floating sixth = <floating>(1.0 / 6.0), two3 = <floating>(2.0 / 3.0)
        floating half = <floating>0.5
    w[0] = g2 * g * sixth
    w[1] = two3 - f2 + f2 * f * half
    w[2] = two3 - g2 + g2 * g * half
    w[3] = f2 * f * sixth


cdef inline void _bspline_deriv(floating f, floating* d) noexcept nogil:
    """Derivatives of the weights of ``_bspline`` with respect to ``f``."""
    cdef:
        floating g = 1 - f
        floating half = <floating>0.5, three2 = <floating>1.5, two = <floating>2
    d[0] = -(g * g * half)
    d[1] = three2 * f * f - two * f
    d[2] = two * g - three2 * g * g
    d[3] = f * f * half


cdef inline void _flush(double* part, Py_ssize_t nbins, Py_ssize_t fs,
                        Py_ssize_t fm, double* acc) noexcept nogil:
    cdef:
        Py_ssize_t k, l
        double* row
    for k in range(4):
        row = part + (fs + k) * nbins + fm
        for l in range(4):
            row[l] += acc[4 * k + l]
            acc[4 * k + l] = 0


cdef void _hist_chunk(const floating* S, const floating* M,
                      const unsigned char* use, int use_none, Py_ssize_t v0,
                      Py_ssize_t v1, double s_lo, double s_scale, double m_lo,
                      double m_scale, Py_ssize_t nbins, double* part,
                      double* count) noexcept nogil:
    """Partial histogram of voxels [v0, v1).

    Neighbouring voxels of a smooth image mostly reach the same 4 x 4 block
    of bins: their products are summed in a local block that is added to the
    table only when the block moves, which saves most of the table traffic.
    """
    cdef:
        Py_ssize_t v, k, l, fs, fm, b, cur_s = -1, cur_m = -1
        double ws[4]
        double wm[4]
        floating sl = <floating>s_lo, ss = <floating>s_scale
        floating ml = <floating>m_lo, ms = <floating>m_scale
        floating f
        double acc[16]
        double n = 0
    for b in range(nbins * nbins):
        part[b] = 0
    for b in range(16):
        acc[b] = 0
    for v in range(v0, v1):
        if not use_none and not (use[v] & 2):
            continue
        # Coordinates in the images' precision (as the step computes them),
        # windows and products in double (fewer conversions, exact sums).
        _coord(S[v], sl, ss, nbins, &fs, &f)
        _bspline(<double>f, ws)
        _coord(M[v], ml, ms, nbins, &fm, &f)
        _bspline(<double>f, wm)
        if fs != cur_s or fm != cur_m:
            if cur_s >= 0:
                _flush(part, nbins, cur_s, cur_m, acc)
            cur_s = fs
            cur_m = fm
        for k in range(4):
            for l in range(4):
                acc[4 * k + l] += ws[k] * wm[l]
        n += 1
    if cur_s >= 0:
        _flush(part, nbins, cur_s, cur_m, acc)
    count[0] = n


def mi_histogram(const floating[::1] static, const floating[::1] moving,
                 const unsigned char[::1] use, bint use_none, double s_lo,
                 double s_scale, double m_lo, double m_scale, Py_ssize_t chunk,
                 double[:, ::1] hist, int num_threads):
    """Joint Parzen histogram of two flattened images.

    Parameters
    ----------
    static, moving : array, shape (n,)
        C-contiguous flattened images of the same dtype.
    use : array of uint8, shape (n,)
        Voxel flags; a voxel enters the histogram when bit 2 is set.  Ignored
        when ``use_none`` is true (every voxel enters).
    use_none : bool
        True to ignore ``use``.
    s_lo, s_scale, m_lo, m_scale : float
        Intensity to bin coordinate maps, ``c = 1 + (v - lo) * scale``.
    chunk : int
        Number of consecutive voxels per partial histogram; must depend on
        the image shape only, never on the number of threads.
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
        Py_ssize_t n = static.shape[0], nbins = hist.shape[0]
        Py_ssize_t nb2 = nbins * nbins, nchunks, c, v1
        double* part
        double* counts
        double total = 0
        const unsigned char* use_p = &use[0] if use.shape[0] > 0 else NULL
    if chunk < 1:
        chunk = 1
    nchunks = (n + chunk - 1) // chunk
    part = <double*>malloc(nchunks * nb2 * sizeof(double))
    counts = <double*>malloc(nchunks * sizeof(double))
    if part == NULL or counts == NULL:
        free(part)
        free(counts)
        raise MemoryError("mi_histogram: could not allocate the partial histograms")
    num_threads = chunk_threads(num_threads, static.shape[0])
    with nogil:
        for c in prange(nchunks, schedule="static", num_threads=num_threads):
            v1 = (c + 1) * chunk
            if v1 > n:
                v1 = n
            _hist_chunk(&static[0], &moving[0], use_p, use_none, c * chunk, v1,
                        s_lo, s_scale, m_lo, m_scale, nbins, part + c * nb2,
                        counts + c)
        total = sum_partial_tables(part, counts, nchunks, nb2, &hist[0, 0])
    free(part)
    free(counts)
    return total


cdef inline floating _dmi(const floating* W, Py_ssize_t nbins, floating vs,
                          floating vm, floating sl, floating ss, floating ml,
                          floating ms, int forward) noexcept nogil:
    """Sum of W over the 16 reached bins times the windows' product, with the
    derivative window on the static side (forward) or the moving side."""
    cdef:
        floating ra[4]    # static-side (row) coefficients
        floating cb[4]    # moving-side (column) coefficients
        floating f, t0, t1, t2, t3
        const floating* r0
        const floating* r1
        const floating* r2
        const floating* r3
        Py_ssize_t fs, fm
    if forward:
        if not _coord(vs, sl, ss, nbins, &fs, &f):
            return 0
        _bspline_deriv(f, ra)
        _coord(vm, ml, ms, nbins, &fm, &f)
        _bspline(f, cb)
    else:
        if not _coord(vm, ml, ms, nbins, &fm, &f):
            return 0
        _bspline_deriv(f, cb)
        _coord(vs, sl, ss, nbins, &fs, &f)
        _bspline(f, ra)
    # Combine the 4 rows column-wise first (4 independent, vectorisable
    # sums), then the columns.
    r0 = W + fs * nbins + fm
    r1 = r0 + nbins
    r2 = r1 + nbins
    r3 = r2 + nbins
    t0 = ra[0] * r0[0] + ra[1] * r1[0] + ra[2] * r2[0] + ra[3] * r3[0]
    t1 = ra[0] * r0[1] + ra[1] * r1[1] + ra[2] * r2[1] + ra[3] * r3[1]
    t2 = ra[0] * r0[2] + ra[1] * r1[2] + ra[2] * r2[2] + ra[3] * r3[2]
    t3 = ra[0] * r0[3] + ra[1] * r1[3] + ra[2] * r2[3] + ra[3] * r3[3]
    return (cb[0] * t0 + cb[1] * t1) + (cb[2] * t2 + cb[3] * t3)


cdef void _step_slice_3d(const floating* S, const floating* M,
                         const unsigned char* use, int use_none, Py_ssize_t ns,
                         Py_ssize_t nr, Py_ssize_t nc, Py_ssize_t s,
                         double s_lo, double s_scale, double m_lo,
                         double m_scale, Py_ssize_t nbins, const floating* W,
                         double factor, int forward, const double* spacing,
                         const Affine3* direction, floating* out) noexcept nogil:
    cdef:
        Py_ssize_t r, c, v
        floating sl = <floating>s_lo, ss = <floating>s_scale
        floating ml = <floating>m_lo, ms = <floating>m_scale
        floating fac = <floating>factor, t
        floating g[3]
        double y[3]
        const floating* img = S if forward else M
        # numpy.gradient times the inverse spacing (a product instead of
        # DIPY's division: MI has no stock twin to match to the last bit).
        floating inv0 = <floating>(1.0 / spacing[0])
        floating inv1 = <floating>(1.0 / spacing[1])
        floating inv2 = <floating>(1.0 / spacing[2])
        Affine3 dirn = direction[0]  # a local copy: see Affine3
    for r in range(nr):
        for c in range(nc):
            v = (s * nr + r) * nc + c
            t = 0
            if use_none or (use[v] & 1):
                # The gradient first: where the image is flat (the background
                # of a skull-stripped brain) the step is zero whatever dMI/dc
                # is, so the 16-bin sum is skipped.
                g[0] = central_diff(img, v, s, ns, nr * nc) * inv0
                g[1] = central_diff(img, v, r, nr, nc) * inv1
                g[2] = central_diff(img, v, c, nc, 1) * inv2
                if g[0] != 0 or g[1] != 0 or g[2] != 0:
                    t = fac * _dmi(W, nbins, S[v], M[v], sl, ss, ml, ms, forward)
            if t == 0:
                out[3 * v] = 0
                out[3 * v + 1] = 0
                out[3 * v + 2] = 0
                continue
            if not dirn.none:
                affine3_vector(&dirn, g[0], g[1], g[2], y)
                g[0] = <floating>y[0]
                g[1] = <floating>y[1]
                g[2] = <floating>y[2]
            out[3 * v] = t * g[0]
            out[3 * v + 1] = t * g[1]
            out[3 * v + 2] = t * g[2]


def mi_step_3d(const floating[:, :, ::1] static, const floating[:, :, ::1] moving,
               const unsigned char[::1] use, bint use_none, double s_lo,
               double s_scale, double m_lo, double m_scale,
               const floating[:, ::1] weights, double factor, bint forward,
               const double[::1] spacing, const double[::1] direction,
               bint direction_none, floating[:, :, :, ::1] out, int num_threads):
    """Dense MI step of a 3D pair.

    ``out[x] = factor * dMI/dc(x) * grad(x)`` where ``c`` is the bin
    coordinate of the static image (forward, ``grad`` = physical gradient of
    the static image) or of the moving image (backward, gradient of the moving
    image); ``dMI/dc`` is computed without the ``1/N`` factor, which the
    caller folds into ``factor``.  Voxels whose ``use`` flag lacks bit 1 get
    zero (ignored when ``use_none``).
    """
    cdef:
        Py_ssize_t s, ns = static.shape[0]
        Affine3 da = affine3_from(direction, direction_none)
        const unsigned char* use_p = &use[0] if use.shape[0] > 0 else NULL
    num_threads = chunk_threads(num_threads, static.shape[0] * static.shape[1] * static.shape[2])
    with nogil:
        for s in prange(ns, schedule="static", num_threads=num_threads):
            _step_slice_3d(&static[0, 0, 0], &moving[0, 0, 0], use_p, use_none,
                           ns, static.shape[1], static.shape[2], s, s_lo,
                           s_scale, m_lo, m_scale, weights.shape[0],
                           &weights[0, 0], factor, forward, &spacing[0], &da,
                           &out[0, 0, 0, 0])


cdef void _step_row_2d(const floating* S, const floating* M,
                       const unsigned char* use, int use_none, Py_ssize_t nr,
                       Py_ssize_t nc, Py_ssize_t r, double s_lo, double s_scale,
                       double m_lo, double m_scale, Py_ssize_t nbins,
                       const floating* W, double factor, int forward,
                       const double* spacing, const Affine2* direction,
                       floating* out) noexcept nogil:
    cdef:
        Py_ssize_t c, v
        floating sl = <floating>s_lo, ss = <floating>s_scale
        floating ml = <floating>m_lo, ms = <floating>m_scale
        floating fac = <floating>factor, t
        floating g[2]
        double y[2]
        const floating* img = S if forward else M
        floating inv0 = <floating>(1.0 / spacing[0])
        floating inv1 = <floating>(1.0 / spacing[1])
    for c in range(nc):
        v = r * nc + c
        t = 0
        if use_none or (use[v] & 1):
            # The gradient first, as in _step_slice_3d.
            g[0] = central_diff(img, v, r, nr, nc) * inv0
            g[1] = central_diff(img, v, c, nc, 1) * inv1
            if g[0] != 0 or g[1] != 0:
                t = fac * _dmi(W, nbins, S[v], M[v], sl, ss, ml, ms, forward)
        if t == 0:
            out[2 * v] = 0
            out[2 * v + 1] = 0
            continue
        if not direction.none:
            affine2_vector(direction, g[0], g[1], y)
            g[0] = <floating>y[0]
            g[1] = <floating>y[1]
        out[2 * v] = t * g[0]
        out[2 * v + 1] = t * g[1]


def mi_step_2d(const floating[:, ::1] static, const floating[:, ::1] moving,
               const unsigned char[::1] use, bint use_none, double s_lo,
               double s_scale, double m_lo, double m_scale,
               const floating[:, ::1] weights, double factor, bint forward,
               const double[::1] spacing, const double[::1] direction,
               bint direction_none, floating[:, :, ::1] out, int num_threads):
    """Dense MI step of a 2D pair (see ``mi_step_3d``)."""
    cdef:
        Py_ssize_t r, nr = static.shape[0]
        Affine2 da = affine2_from(direction, direction_none)
        const unsigned char* use_p = &use[0] if use.shape[0] > 0 else NULL
    num_threads = chunk_threads(num_threads, static.shape[0] * static.shape[1])
    with nogil:
        for r in prange(nr, schedule="static", num_threads=num_threads):
            _step_row_2d(&static[0, 0], &moving[0, 0], use_p, use_none, nr,
                         static.shape[1], r, s_lo, s_scale, m_lo, m_scale,
                         weights.shape[0], &weights[0, 0], factor, forward,
                         &spacing[0], &da, &out[0, 0, 0])
