# Local normalised cross-correlation (Avants et al.), DIPY's CCMetric terms.
#
# Factors: window sums of I, I², J, J², IJ over a (2r+1)^dim box clipped at
# the border, then DIPY's five per-voxel factors.  The box sums are exact
# explicit sums (no running add/subtract), so a window of zeros sums to exactly
# zero as in DIPY and the result does not depend on where a thread starts.
# Each thread owns a contiguous run of output slices; for each, it sums the
# quantities over the window's slices first (ascending, a block of in-plane
# voxels at a time, so the partial sums stay in L1 while the images stream
# from L2), then in-plane along j and i.  Summing across slices first reads
# 8 bytes of image per voxel and slice instead of 40 bytes of summed planes.
#
# Steps: the forward/backward CC gradient with the image gradient computed on
# the fly (DIPY stores two gradient volumes), energy kept per slice/row and
# merged in index order.

from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

from fastsyn._kernels._interp cimport (chunk_threads, Affine2, Affine3, affine2_from,
                                       affine3_from, physical_gradient_2d,
                                       physical_gradient_3d)


cdef enum:
    NQ = 5        # I, I*I, J, J*J, I*J
    KBLOCK = 512  # in-plane voxels whose slice sums are kept together


cdef inline Py_ssize_t _imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef void _quantities(const floating* I, const floating* J, Py_ssize_t n,
                      double* q) noexcept nogil:
    """The five quantities of n voxels, laid out [q][v] with stride n."""
    cdef:
        Py_ssize_t v
        double a, b
    for v in range(n):
        a = I[v]
        b = J[v]
        q[v] = a
        q[n + v] = a * a
        q[2 * n + v] = b
        q[3 * n + v] = b * b
        q[4 * n + v] = a * b


cdef void _inplane_sums(const double* src, Py_ssize_t nr, Py_ssize_t nc,
                        Py_ssize_t radius, double* hsum, double* out) noexcept nogil:
    """Clipped in-plane box sums of the five planes of ``src`` ([q][i][j]):
    along j into ``hsum``, then along i into ``out``, each an explicit sum
    in ascending offset order."""
    cdef:
        Py_ssize_t i, j, t, q, lo, hi, ii, npl = nr * nc
        const double* a
        double* dst
    for q in range(NQ):
        for i in range(nr):
            a = src + q * npl + i * nc
            dst = hsum + q * npl + i * nc
            for j in range(nc):
                dst[j] = 0
            for t in range(-radius, radius + 1):
                lo = _imax(0, -t)
                hi = _imin(nc, nc - t)
                for j in range(lo, hi):
                    dst[j] += a[j + t]
        for i in range(nr):
            dst = out + q * npl + i * nc
            for j in range(nc):
                dst[j] = 0
            lo = _imax(0, i - radius)
            hi = _imin(nr - 1, i + radius)
            for ii in range(lo, hi + 1):
                a = hsum + q * npl + ii * nc
                for j in range(nc):
                    dst[j] += a[j]


cdef inline void _write_factors(floating* f, double Ival, double Jval,
                                double* s, double cnt) noexcept nogil:
    cdef double Imean = s[0] / cnt, Jmean = s[2] / cnt
    f[0] = <floating>(Ival - Imean)
    f[1] = <floating>(Jval - Jmean)
    f[2] = <floating>(s[4] - Jmean * s[0] - Imean * s[2] + cnt * Jmean * Imean)
    f[3] = <floating>(s[1] - Imean * s[0] - Imean * s[0] + cnt * Imean * Imean)
    f[4] = <floating>(s[3] - Jmean * s[2] - Jmean * s[2] + cnt * Jmean * Jmean)


cdef void _slice_sums(const floating* I, const floating* J, Py_ssize_t npl,
                      Py_ssize_t lo, Py_ssize_t hi, double* col) noexcept nogil:
    """Sums over slices lo..hi (ascending) of the five quantities of every
    in-plane voxel, a block of voxels at a time so that the sums stay in
    the L1 cache while the slices stream through."""
    cdef:
        Py_ssize_t k, v, v0, v1
        double a, b
        const floating* Ik
        const floating* Jk
    v0 = 0
    while v0 < npl:
        v1 = _imin(npl, v0 + KBLOCK)
        for v in range(v0, v1):
            col[v] = 0
            col[npl + v] = 0
            col[2 * npl + v] = 0
            col[3 * npl + v] = 0
            col[4 * npl + v] = 0
        for k in range(lo, hi + 1):
            Ik = I + k * npl
            Jk = J + k * npl
            for v in range(v0, v1):
                a = Ik[v]
                b = Jk[v]
                col[v] += a
                col[npl + v] += a * a
                col[2 * npl + v] += b
                col[3 * npl + v] += b * b
                col[4 * npl + v] += a * b
        v0 = v1


cdef void _factors_chunk_3d(const floating* I, const floating* J, Py_ssize_t ns,
                            Py_ssize_t nr, Py_ssize_t nc, Py_ssize_t radius,
                            Py_ssize_t s0, Py_ssize_t s1, floating* factors,
                            int* failed) noexcept nogil:
    cdef:
        Py_ssize_t npl = nr * nc
        Py_ssize_t s, i, j, q, v, lo, hi, ci, cj
        double* col = <double*>malloc(NQ * npl * sizeof(double))
        double* hsum = <double*>malloc(NQ * npl * sizeof(double))
        double* acc = <double*>malloc(NQ * npl * sizeof(double))
        double sums[NQ]
        double ck
    if col == NULL or hsum == NULL or acc == NULL:
        failed[0] = 1
        free(col)
        free(hsum)
        free(acc)
        return
    for s in range(s0, s1):
        lo = _imax(0, s - radius)
        hi = _imin(ns - 1, s + radius)
        _slice_sums(I, J, npl, lo, hi, col)
        _inplane_sums(col, nr, nc, radius, hsum, acc)
        ck = hi - lo + 1
        for i in range(nr):
            ci = _imin(nr - 1, i + radius) - _imax(0, i - radius) + 1
            for j in range(nc):
                cj = _imin(nc - 1, j + radius) - _imax(0, j - radius) + 1
                v = i * nc + j
                for q in range(NQ):
                    sums[q] = acc[q * npl + v]
                _write_factors(factors + (s * npl + v) * 5, I[s * npl + v],
                               J[s * npl + v], sums, ck * ci * cj)
    free(col)
    free(hsum)
    free(acc)


def cc_factors_3d(const floating[:, :, ::1] static, const floating[:, :, ::1] moving,
                  Py_ssize_t radius, floating[:, :, :, ::1] factors,
                  int num_threads):
    cdef:
        Py_ssize_t ns = static.shape[0], c, nchunks
        int failed = 0
    num_threads = chunk_threads(num_threads, static.shape[0] * static.shape[1] * static.shape[2])
    nchunks = num_threads if num_threads < ns else ns
    with nogil:
        for c in prange(nchunks, schedule="static", num_threads=num_threads):
            _factors_chunk_3d(&static[0, 0, 0], &moving[0, 0, 0], ns,
                              static.shape[1], static.shape[2], radius,
                              c * ns // nchunks, (c + 1) * ns // nchunks,
                              &factors[0, 0, 0, 0], &failed)
    if failed:
        raise MemoryError("cc_factors_3d: could not allocate the window buffers")


def cc_factors_2d(const floating[:, ::1] static, const floating[:, ::1] moving,
                  Py_ssize_t radius, floating[:, :, ::1] factors, int num_threads):
    # A 2D image is one slice; its rows are cheap, so one in-plane pass does.
    cdef:
        Py_ssize_t nr = static.shape[0], nc = static.shape[1], npl = nr * nc
        Py_ssize_t i, j, q, v, ci, cj
        double* hsum = <double*>malloc(NQ * npl * sizeof(double))
        double* quantities = <double*>malloc(NQ * npl * sizeof(double))
        double* plane = <double*>malloc(NQ * npl * sizeof(double))
        double sums[NQ]
    if hsum == NULL or quantities == NULL or plane == NULL:
        free(hsum)
        free(quantities)
        free(plane)
        raise MemoryError("cc_factors_2d: could not allocate the window buffers")
    with nogil:
        _quantities(&static[0, 0], &moving[0, 0], npl, quantities)
        _inplane_sums(quantities, nr, nc, radius, hsum, plane)
        for i in range(nr):
            ci = _imin(nr - 1, i + radius) - _imax(0, i - radius) + 1
            for j in range(nc):
                cj = _imin(nc - 1, j + radius) - _imax(0, j - radius) + 1
                v = i * nc + j
                for q in range(NQ):
                    sums[q] = plane[q * npl + v]
                _write_factors(&factors[i, j, 0], static[i, j], moving[i, j],
                               sums, <double>(ci * cj))
    free(hsum)
    free(quantities)
    free(plane)


cdef inline double _cc_temp(const floating* f, int forward,
                            double* energy) noexcept nogil:
    """DIPY's per-voxel CC derivative factor; 0 where the window is flat."""
    cdef double Ii = f[0], Ji = f[1], sfm = f[2], sff = f[3], smm = f[4], lc
    if sff == 0.0 or smm == 0.0:
        return 0
    lc = 0
    if sff * smm > 1e-5:
        lc = sfm * sfm / (sff * smm)
    if lc < 1:
        energy[0] -= lc
    if forward:
        return 2.0 * sfm / (sff * smm) * (Ji - sfm / sff * Ii)
    return 2.0 * sfm / (sff * smm) * (Ii - sfm / smm * Ji)


cdef void _step_slice_3d(const floating* img, const floating* factors,
                         Py_ssize_t ns, Py_ssize_t nr, Py_ssize_t nc,
                         Py_ssize_t radius, Py_ssize_t s, const double* spacing,
                         const Affine3* direction, int forward, floating* out,
                         double* slice_energy) noexcept nogil:
    cdef:
        Py_ssize_t r, c, v
        double energy = 0, temp
        floating g[3]
        int interior_slice = radius <= s < ns - radius
    for r in range(nr):
        for c in range(nc):
            v = (s * nr + r) * nc + c
            out[3 * v] = 0
            out[3 * v + 1] = 0
            out[3 * v + 2] = 0
            if not (interior_slice and radius <= r < nr - radius
                    and radius <= c < nc - radius):
                continue
            temp = _cc_temp(factors + 5 * v, forward, &energy)
            if temp == 0:
                continue
            physical_gradient_3d(img, ns, nr, nc, s, r, c, spacing, direction, g)
            out[3 * v] = <floating>(-(temp * g[0]))
            out[3 * v + 1] = <floating>(-(temp * g[1]))
            out[3 * v + 2] = <floating>(-(temp * g[2]))
    slice_energy[s] = energy


def cc_step_3d(const floating[:, :, ::1] image, const floating[:, :, :, ::1] factors,
               Py_ssize_t radius, const double[::1] spacing,
               const double[::1] direction, bint direction_none, bint forward,
               floating[:, :, :, ::1] out, double[::1] slice_energy,
               int num_threads):
    """Forward (image = static) or backward (image = moving) CC step."""
    cdef:
        Py_ssize_t s, ns = image.shape[0]
        Affine3 da = affine3_from(direction, direction_none)
    num_threads = chunk_threads(num_threads, image.shape[0] * image.shape[1] * image.shape[2])
    with nogil:
        for s in prange(ns, schedule="static", num_threads=num_threads):
            _step_slice_3d(&image[0, 0, 0], &factors[0, 0, 0, 0], ns,
                           image.shape[1], image.shape[2], radius, s,
                           &spacing[0], &da, forward, &out[0, 0, 0, 0],
                           &slice_energy[0])


cdef void _step_row_2d(const floating* img, const floating* factors,
                       Py_ssize_t nr, Py_ssize_t nc, Py_ssize_t radius,
                       Py_ssize_t r, const double* spacing,
                       const Affine2* direction, int forward, floating* out,
                       double* row_energy) noexcept nogil:
    cdef:
        Py_ssize_t c, v
        double energy = 0, temp
        floating g[2]
        int interior_row = radius <= r < nr - radius
    for c in range(nc):
        v = r * nc + c
        out[2 * v] = 0
        out[2 * v + 1] = 0
        if not (interior_row and radius <= c < nc - radius):
            continue
        temp = _cc_temp(factors + 5 * v, forward, &energy)
        if temp == 0:
            continue
        physical_gradient_2d(img, nr, nc, r, c, spacing, direction, g)
        out[2 * v] = <floating>(-(temp * g[0]))
        out[2 * v + 1] = <floating>(-(temp * g[1]))
    row_energy[r] = energy


def cc_step_2d(const floating[:, ::1] image, const floating[:, :, ::1] factors,
               Py_ssize_t radius, const double[::1] spacing,
               const double[::1] direction, bint direction_none, bint forward,
               floating[:, :, ::1] out, double[::1] row_energy, int num_threads):
    cdef:
        Py_ssize_t r, nr = image.shape[0]
        Affine2 da = affine2_from(direction, direction_none)
    num_threads = chunk_threads(num_threads, image.shape[0] * image.shape[1])
    with nogil:
        for r in prange(nr, schedule="static", num_threads=num_threads):
            _step_row_2d(&image[0, 0], &factors[0, 0, 0], nr, image.shape[1],
                         radius, r, &spacing[0], &da, forward, &out[0, 0, 0],
                         &row_energy[0])
