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
# factor and by the physical gradient of the image on that side.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport floor
from libc.stdlib cimport free, malloc

from fastsyn._kernels._interp cimport (Affine2, Affine3, affine2_from,
                                       affine3_from, physical_gradient_2d,
                                       physical_gradient_3d)


cdef inline int _window(floating v, floating lo, floating scale,
                        Py_ssize_t nbins, floating* w, floating* d,
                        Py_ssize_t* first) noexcept nogil:
    """Cubic B-spline weights (w) and their derivatives (d) of one sample.

    ``first`` receives the lowest bin reached.  Returns 0 when the intensity
    was clamped (its derivative is then zero), 1 otherwise.
    """
    cdef:
        floating c = <floating>1 + (v - lo) * scale
        floating cmax = <floating>(nbins - 2)
        floating f, g, f2, g2
        Py_ssize_t i0
        int inside = 1
    if not (c >= 1):          # also catches NaN
        c = 1
        inside = 0
    elif c > cmax:
        c = cmax
        inside = 0
    i0 = <Py_ssize_t>floor(c)
    if i0 > nbins - 3:
        i0 = nbins - 3
    f = c - i0
    g = 1 - f
    f2 = f * f
    g2 = g * g
    first[0] = i0 - 1
    w[0] = g2 * g / 6
    w[1] = <floating>(2.0 / 3.0) - f2 + f2 * f / 2
    w[2] = <floating>(2.0 / 3.0) - g2 + g2 * g / 2
    w[3] = f2 * f / 6
    d[0] = -g2 / 2
    d[1] = <floating>1.5 * f2 - 2 * f
    d[2] = 2 * g - <floating>1.5 * g2
    d[3] = f2 / 2
    return inside


cdef void _hist_chunk(const floating* S, const floating* M,
                      const unsigned char* use, int use_none, Py_ssize_t v0,
                      Py_ssize_t v1, double s_lo, double s_scale, double m_lo,
                      double m_scale, Py_ssize_t nbins, double* part,
                      double* count) noexcept nogil:
    cdef:
        Py_ssize_t v, k, l, fs, fm, b
        floating ws[4]
        floating wm[4]
        floating dummy[4]
        floating sl = <floating>s_lo, ss = <floating>s_scale
        floating ml = <floating>m_lo, ms = <floating>m_scale
        floating a
        double n = 0
        double* row
    for b in range(nbins * nbins):
        part[b] = 0
    for v in range(v0, v1):
        if not use_none and not (use[v] & 2):
            continue
        _window(S[v], sl, ss, nbins, ws, dummy, &fs)
        _window(M[v], ml, ms, nbins, wm, dummy, &fm)
        for k in range(4):
            row = part + (fs + k) * nbins + fm
            a = ws[k]
            for l in range(4):
                row[l] += a * wm[l]
        n += 1
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
        Py_ssize_t nb2 = nbins * nbins, nchunks, c, b, v1
        double* part
        double* counts
        double total = 0, acc
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
    with nogil:
        for c in prange(nchunks, schedule="static", num_threads=num_threads):
            v1 = (c + 1) * chunk
            if v1 > n:
                v1 = n
            _hist_chunk(&static[0], &moving[0], use_p, use_none, c * chunk, v1,
                        s_lo, s_scale, m_lo, m_scale, nbins, part + c * nb2,
                        counts + c)
        for b in range(nb2):
            acc = 0
            for c in range(nchunks):
                acc = acc + part[c * nb2 + b]
            hist[b // nbins, b % nbins] = acc
        for c in range(nchunks):
            total = total + counts[c]
    free(part)
    free(counts)
    return total


cdef inline floating _dmi(const floating* W, Py_ssize_t nbins, floating vs,
                          floating vm, floating sl, floating ss, floating ml,
                          floating ms, int forward) noexcept nogil:
    """Sum of W over the 16 reached bins times the windows' product, with the
    derivative window on the static side (forward) or the moving side."""
    cdef:
        floating ws[4]
        floating ds[4]
        floating wm[4]
        floating dm[4]
        floating acc = 0, r
        const floating* row
        Py_ssize_t fs, fm, k
    if forward:
        if not _window(vs, sl, ss, nbins, ws, ds, &fs):
            return 0
        _window(vm, ml, ms, nbins, wm, dm, &fm)
        for k in range(4):
            row = W + (fs + k) * nbins + fm
            r = row[0] * wm[0] + row[1] * wm[1] + row[2] * wm[2] + row[3] * wm[3]
            acc = acc + ds[k] * r
    else:
        if not _window(vm, ml, ms, nbins, wm, dm, &fm):
            return 0
        _window(vs, sl, ss, nbins, ws, ds, &fs)
        for k in range(4):
            row = W + (fs + k) * nbins + fm
            r = row[0] * dm[0] + row[1] * dm[1] + row[2] * dm[2] + row[3] * dm[3]
            acc = acc + ws[k] * r
    return acc


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
        const floating* img = S if forward else M
    for r in range(nr):
        for c in range(nc):
            v = (s * nr + r) * nc + c
            t = 0
            if use_none or (use[v] & 1):
                t = fac * _dmi(W, nbins, S[v], M[v], sl, ss, ml, ms, forward)
            if t == 0:
                out[3 * v] = 0
                out[3 * v + 1] = 0
                out[3 * v + 2] = 0
                continue
            physical_gradient_3d(img, ns, nr, nc, s, r, c, spacing, direction, g)
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
        const floating* img = S if forward else M
    for c in range(nc):
        v = r * nc + c
        t = 0
        if use_none or (use[v] & 1):
            t = fac * _dmi(W, nbins, S[v], M[v], sl, ss, ml, ms, forward)
        if t == 0:
            out[2 * v] = 0
            out[2 * v + 1] = 0
            continue
        physical_gradient_2d(img, nr, nc, r, c, spacing, direction, g)
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
    with nogil:
        for r in prange(nr, schedule="static", num_threads=num_threads):
            _step_row_2d(&static[0, 0], &moving[0, 0], use_p, use_none, nr,
                         static.shape[1], r, s_lo, s_scale, m_lo, m_scale,
                         weights.shape[0], &weights[0, 0], factor, forward,
                         &spacing[0], &da, &out[0, 0, 0])
