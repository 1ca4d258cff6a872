# Shared nogil helpers for the fastsyn kernels.
#
# Boundary semantics follow DIPY's dipy.core.interpolation exactly, because the
# registration depends on them: a trilinear sample reports "inside" only when
# all corners of its cell lie in the grid, and the value it writes is the
# zero-padded partial sum (used as such by the warps, discarded by the
# composition).  Accumulation is done in double and rounded once.

from cython cimport floating
from libc.math cimport floor


cdef inline Py_ssize_t ifloor(double x) noexcept nogil:
    # floor for x > -2: truncation, minus one for negative non-integers.
    cdef Py_ssize_t t = <Py_ssize_t>x
    return t - (x < t)

ctypedef fused number:
    float
    double
    signed char
    unsigned char
    short
    unsigned short
    int
    unsigned int
    long long
    unsigned long long

# An affine map in homogeneous coordinates with its rows flattened.  ``none``
# marks DIPY's ``None`` (the identity), so the hot loops can skip the product;
# ``diagonal`` a given matrix with no off-diagonal linear terms (an
# axis-aligned grid, the usual case), whose vectors map with one product per
# axis instead of a full row (the same values for every finite vector).  Hot
# loops work on a local copy of the struct: through the caller's pointer GCC
# reloads its fields for every voxel (an output array may alias them), with
# the copy it keeps them in registers (4 instructions a voxel fewer in the
# inversion's refine sweep, callgrind).
cdef struct Affine3:
    int none
    int diagonal
    double m[12]

cdef struct Affine2:
    int none
    int diagonal
    double m[6]


cdef inline void affine3_point(const Affine3* a, double x0, double x1, double x2,
                               double* y) noexcept nogil:
    if a.none:
        y[0] = x0
        y[1] = x1
        y[2] = x2
    else:
        y[0] = a.m[0] * x0 + a.m[1] * x1 + a.m[2] * x2 + a.m[3]
        y[1] = a.m[4] * x0 + a.m[5] * x1 + a.m[6] * x2 + a.m[7]
        y[2] = a.m[8] * x0 + a.m[9] * x1 + a.m[10] * x2 + a.m[11]


cdef inline void affine3_vector(const Affine3* a, double x0, double x1, double x2,
                                double* y) noexcept nogil:
    if a.none:
        y[0] = x0
        y[1] = x1
        y[2] = x2
    elif a.diagonal:
        y[0] = a.m[0] * x0
        y[1] = a.m[5] * x1
        y[2] = a.m[10] * x2
    else:
        y[0] = a.m[0] * x0 + a.m[1] * x1 + a.m[2] * x2
        y[1] = a.m[4] * x0 + a.m[5] * x1 + a.m[6] * x2
        y[2] = a.m[8] * x0 + a.m[9] * x1 + a.m[10] * x2


cdef inline void affine2_point(const Affine2* a, double x0, double x1,
                               double* y) noexcept nogil:
    if a.none:
        y[0] = x0
        y[1] = x1
    else:
        y[0] = a.m[0] * x0 + a.m[1] * x1 + a.m[2]
        y[1] = a.m[3] * x0 + a.m[4] * x1 + a.m[5]


cdef inline void affine2_vector(const Affine2* a, double x0, double x1,
                                double* y) noexcept nogil:
    if a.none:
        y[0] = x0
        y[1] = x1
    elif a.diagonal:
        y[0] = a.m[0] * x0
        y[1] = a.m[4] * x1
    else:
        y[0] = a.m[0] * x0 + a.m[1] * x1
        y[1] = a.m[3] * x0 + a.m[4] * x1


cdef inline int interp_vector_3d_cell(const floating* f, Py_ssize_t ns,
                                      Py_ssize_t nr, Py_ssize_t nc, double dk,
                                      double di, double dj,
                                      double* out) noexcept nogil:
    """Trilinear sample of a (ns, nr, nc, 3) field inside one whole cell:
    1 and the sample where the whole cell is inside the grid, else 0 with
    ``out`` untouched.  interp_vector_3d's whole-cell case; callers that
    discard the zero-padded partial sum (compositions, inversions) call it
    directly.

    The cell is inside exactly when 0 <= coordinate < n - 1 on every axis
    (NaN fails the test), so no corner test and no floor is needed, and the
    helper is small enough to be inlined into the callers' loops.
    """
    cdef:
        Py_ssize_t k, i, j, base, sr = nc * 3, ss = nr * nc * 3
        double ck, ci, cj, ak, ai, aj, w, o0, o1, o2
    if not (0 <= dk < ns - 1 and 0 <= di < nr - 1 and 0 <= dj < nc - 1):
        return 0
    k = <Py_ssize_t>dk
    i = <Py_ssize_t>di
    j = <Py_ssize_t>dj
    ck = dk - k
    ci = di - i
    cj = dj - j
    ak = 1 - ck
    ai = 1 - ci
    aj = 1 - cj
    base = k * ss + i * sr + j * 3
    w = ak * ai * aj
    o0 = w * f[base]
    o1 = w * f[base + 1]
    o2 = w * f[base + 2]
    w = ak * ai * cj
    o0 += w * f[base + 3]
    o1 += w * f[base + 4]
    o2 += w * f[base + 5]
    w = ak * ci * aj
    o0 += w * f[base + sr]
    o1 += w * f[base + sr + 1]
    o2 += w * f[base + sr + 2]
    w = ak * ci * cj
    o0 += w * f[base + sr + 3]
    o1 += w * f[base + sr + 4]
    o2 += w * f[base + sr + 5]
    base = base + ss
    w = ck * ai * aj
    o0 += w * f[base]
    o1 += w * f[base + 1]
    o2 += w * f[base + 2]
    w = ck * ai * cj
    o0 += w * f[base + 3]
    o1 += w * f[base + 4]
    o2 += w * f[base + 5]
    w = ck * ci * aj
    o0 += w * f[base + sr]
    o1 += w * f[base + sr + 1]
    o2 += w * f[base + sr + 2]
    w = ck * ci * cj
    o0 += w * f[base + sr + 3]
    o1 += w * f[base + sr + 4]
    o2 += w * f[base + sr + 5]
    out[0] = o0
    out[1] = o1
    out[2] = o2
    return 1


cdef inline int interp_vector_3d(const floating* f, Py_ssize_t ns, Py_ssize_t nr,
                                 Py_ssize_t nc, double dk, double di, double dj,
                                 double* out) noexcept nogil:
    """Trilinear sample of a (ns, nr, nc, 3) C-contiguous field."""
    cdef:
        Py_ssize_t k, i, j, base, sr = nc * 3, ss = nr * nc * 3
        double ck, ci, cj, ak, ai, aj, w
        int kin0, kin1, iin0, iin1, jin0, jin1
    out[0] = 0
    out[1] = 0
    out[2] = 0
    if not (-1 < dk < ns and -1 < di < nr and -1 < dj < nc):
        return 0
    # Whole cell inside: the common case, no per-corner tests.
    if interp_vector_3d_cell(f, ns, nr, nc, dk, di, dj, out):
        return 1
    k = ifloor(dk)
    i = ifloor(di)
    j = ifloor(dj)
    ck = dk - k
    ci = di - i
    cj = dj - j
    ak = 1 - ck
    ai = 1 - ci
    aj = 1 - cj
    kin0 = k >= 0
    kin1 = k + 1 < ns
    iin0 = i >= 0
    iin1 = i + 1 < nr
    jin0 = j >= 0
    jin1 = j + 1 < nc
    base = k * ss + i * sr + j * 3
    if kin0 and iin0 and jin0:
        w = ak * ai * aj
        out[0] += w * f[base]
        out[1] += w * f[base + 1]
        out[2] += w * f[base + 2]
    if kin0 and iin0 and jin1:
        w = ak * ai * cj
        out[0] += w * f[base + 3]
        out[1] += w * f[base + 4]
        out[2] += w * f[base + 5]
    if kin0 and iin1 and jin0:
        w = ak * ci * aj
        out[0] += w * f[base + sr]
        out[1] += w * f[base + sr + 1]
        out[2] += w * f[base + sr + 2]
    if kin0 and iin1 and jin1:
        w = ak * ci * cj
        out[0] += w * f[base + sr + 3]
        out[1] += w * f[base + sr + 4]
        out[2] += w * f[base + sr + 5]
    base = base + ss
    if kin1 and iin0 and jin0:
        w = ck * ai * aj
        out[0] += w * f[base]
        out[1] += w * f[base + 1]
        out[2] += w * f[base + 2]
    if kin1 and iin0 and jin1:
        w = ck * ai * cj
        out[0] += w * f[base + 3]
        out[1] += w * f[base + 4]
        out[2] += w * f[base + 5]
    if kin1 and iin1 and jin0:
        w = ck * ci * aj
        out[0] += w * f[base + sr]
        out[1] += w * f[base + sr + 1]
        out[2] += w * f[base + sr + 2]
    if kin1 and iin1 and jin1:
        w = ck * ci * cj
        out[0] += w * f[base + sr + 3]
        out[1] += w * f[base + sr + 4]
        out[2] += w * f[base + sr + 5]
    # A partial cell (the whole cells returned above): the zero-padded sum.
    return 0


cdef inline int interp_vector_2d(const floating* f, Py_ssize_t nr, Py_ssize_t nc,
                                 double di, double dj, double* out) noexcept nogil:
    """Bilinear sample of a (nr, nc, 2) C-contiguous field."""
    cdef:
        Py_ssize_t i, j, base, sr = nc * 2
        double ci, cj, ai, aj, w
        int inside = 0, iin0, iin1, jin0, jin1
    out[0] = 0
    out[1] = 0
    if not (-1 < di < nr and -1 < dj < nc):
        return 0
    i = ifloor(di)
    j = ifloor(dj)
    ci = di - i
    cj = dj - j
    ai = 1 - ci
    aj = 1 - cj
    iin0 = i >= 0
    iin1 = i + 1 < nr
    jin0 = j >= 0
    jin1 = j + 1 < nc
    base = i * sr + j * 2
    if iin0 and jin0:
        w = ai * aj
        out[0] += w * f[base]
        out[1] += w * f[base + 1]
        inside += 1
    if iin0 and jin1:
        w = ai * cj
        out[0] += w * f[base + 2]
        out[1] += w * f[base + 3]
        inside += 1
    if iin1 and jin0:
        w = ci * aj
        out[0] += w * f[base + sr]
        out[1] += w * f[base + sr + 1]
        inside += 1
    if iin1 and jin1:
        w = ci * cj
        out[0] += w * f[base + sr + 2]
        out[1] += w * f[base + sr + 3]
        inside += 1
    return 1 if inside == 4 else 0


cdef inline int interp_scalar_3d(const floating* f, Py_ssize_t ns, Py_ssize_t nr,
                                 Py_ssize_t nc, double dk, double di, double dj,
                                 double* out) noexcept nogil:
    """Trilinear sample of a (ns, nr, nc) C-contiguous volume (zero padded)."""
    cdef:
        Py_ssize_t k, i, j, base, sr = nc, ss = nr * nc
        double ck, ci, cj, ak, ai, aj, acc = 0
        int inside = 0, kin0, kin1, iin0, iin1, jin0, jin1
    out[0] = 0
    if not (-1 < dk < ns and -1 < di < nr and -1 < dj < nc):
        return 0
    k = ifloor(dk)
    i = ifloor(di)
    j = ifloor(dj)
    ck = dk - k
    ci = di - i
    cj = dj - j
    ak = 1 - ck
    ai = 1 - ci
    aj = 1 - cj
    kin0 = k >= 0
    kin1 = k + 1 < ns
    iin0 = i >= 0
    iin1 = i + 1 < nr
    jin0 = j >= 0
    jin1 = j + 1 < nc
    base = k * ss + i * sr + j
    if kin0 and kin1 and iin0 and iin1 and jin0 and jin1:
        out[0] = (ak * (ai * (aj * f[base] + cj * f[base + 1])
                        + ci * (aj * f[base + sr] + cj * f[base + sr + 1]))
                  + ck * (ai * (aj * f[base + ss] + cj * f[base + ss + 1])
                          + ci * (aj * f[base + ss + sr] + cj * f[base + ss + sr + 1])))
        return 1
    if kin0 and iin0 and jin0:
        acc += ak * ai * aj * f[base]
        inside += 1
    if kin0 and iin0 and jin1:
        acc += ak * ai * cj * f[base + 1]
        inside += 1
    if kin0 and iin1 and jin0:
        acc += ak * ci * aj * f[base + sr]
        inside += 1
    if kin0 and iin1 and jin1:
        acc += ak * ci * cj * f[base + sr + 1]
        inside += 1
    base = base + ss
    if kin1 and iin0 and jin0:
        acc += ck * ai * aj * f[base]
        inside += 1
    if kin1 and iin0 and jin1:
        acc += ck * ai * cj * f[base + 1]
        inside += 1
    if kin1 and iin1 and jin0:
        acc += ck * ci * aj * f[base + sr]
        inside += 1
    if kin1 and iin1 and jin1:
        acc += ck * ci * cj * f[base + sr + 1]
        inside += 1
    out[0] = acc
    return 1 if inside == 8 else 0


cdef inline int interp_scalar_3d_fast(const floating* f, Py_ssize_t ns,
                                      Py_ssize_t nr, Py_ssize_t nc, double dk,
                                      double di, double dj,
                                      double* out) noexcept nogil:
    """interp_scalar_3d with its whole-cell branch small enough to inline
    (0 <= coordinate < n - 1 on every axis, same products in the same order,
    so the same bits); other points go through interp_scalar_3d."""
    cdef:
        Py_ssize_t k, i, j, base, sr = nc, ss = nr * nc
        double ck, ci, cj, ak, ai, aj
    if not (0 <= dk < ns - 1 and 0 <= di < nr - 1 and 0 <= dj < nc - 1):
        return interp_scalar_3d(f, ns, nr, nc, dk, di, dj, out)
    k = <Py_ssize_t>dk
    i = <Py_ssize_t>di
    j = <Py_ssize_t>dj
    ck = dk - k
    ci = di - i
    cj = dj - j
    ak = 1 - ck
    ai = 1 - ci
    aj = 1 - cj
    base = k * ss + i * sr + j
    out[0] = (ak * (ai * (aj * f[base] + cj * f[base + 1])
                    + ci * (aj * f[base + sr] + cj * f[base + sr + 1]))
              + ck * (ai * (aj * f[base + ss] + cj * f[base + ss + 1])
                      + ci * (aj * f[base + ss + sr] + cj * f[base + ss + sr + 1])))
    return 1


cdef inline int interp_scalar_2d(const floating* f, Py_ssize_t nr, Py_ssize_t nc,
                                 double di, double dj, double* out) noexcept nogil:
    """Bilinear sample of a (nr, nc) C-contiguous image (zero padded)."""
    cdef:
        Py_ssize_t i, j, base
        double ci, cj, ai, aj, acc = 0
        int inside = 0, iin0, iin1, jin0, jin1
    out[0] = 0
    if not (-1 < di < nr and -1 < dj < nc):
        return 0
    i = ifloor(di)
    j = ifloor(dj)
    ci = di - i
    cj = dj - j
    ai = 1 - ci
    aj = 1 - cj
    iin0 = i >= 0
    iin1 = i + 1 < nr
    jin0 = j >= 0
    jin1 = j + 1 < nc
    base = i * nc + j
    if iin0 and jin0:
        acc += ai * aj * f[base]
        inside += 1
    if iin0 and jin1:
        acc += ai * cj * f[base + 1]
        inside += 1
    if iin1 and jin0:
        acc += ci * aj * f[base + nc]
        inside += 1
    if iin1 and jin1:
        acc += ci * cj * f[base + nc + 1]
        inside += 1
    out[0] = acc
    return 1 if inside == 4 else 0


cdef inline Py_ssize_t nearest_index(double x, Py_ssize_t n) noexcept nogil:
    """DIPY's nearest-neighbour rule: -1 when x is outside [0, n - 1]."""
    cdef Py_ssize_t i
    if not (0 <= x <= n - 1):
        return -1
    i = <Py_ssize_t>floor(x)
    if 1 - (x - i) < (x - i):
        i += 1
    if i >= n:
        return -1
    return i


cdef inline number nearest_3d(const number* vol, Py_ssize_t ns, Py_ssize_t nr,
                              Py_ssize_t nc, const double* y) noexcept nogil:
    """DIPY's nearest-neighbour sample of a (ns, nr, nc) volume at y (0 outside)."""
    cdef Py_ssize_t k = nearest_index(y[0], ns), i = nearest_index(y[1], nr)
    cdef Py_ssize_t j = nearest_index(y[2], nc)
    if k < 0 or i < 0 or j < 0:
        return 0
    return vol[(k * nr + i) * nc + j]


cdef inline number nearest_2d(const number* img, Py_ssize_t nr, Py_ssize_t nc,
                              const double* y) noexcept nogil:
    """DIPY's nearest-neighbour sample of an (nr, nc) image at y (0 outside)."""
    cdef Py_ssize_t i = nearest_index(y[0], nr), j = nearest_index(y[1], nc)
    if i < 0 or j < 0:
        return 0
    return img[i * nc + j]


cdef inline Affine3 affine3_from(const double[::1] m, bint none) noexcept nogil:
    cdef Affine3 a
    cdef int t
    a.none = none
    for t in range(12):
        a.m[t] = 0 if none else m[t]
    a.diagonal = (not none and a.m[1] == 0 and a.m[2] == 0 and a.m[4] == 0
                  and a.m[6] == 0 and a.m[8] == 0 and a.m[9] == 0)
    return a


cdef inline Affine2 affine2_from(const double[::1] m, bint none) noexcept nogil:
    cdef Affine2 a
    cdef int t
    a.none = none
    for t in range(6):
        a.m[t] = 0 if none else m[t]
    a.diagonal = not none and a.m[1] == 0 and a.m[3] == 0
    return a


cdef inline floating central_diff(const floating* f, Py_ssize_t v, Py_ssize_t x,
                                  Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """numpy.gradient along one axis (unit spacing, first-order edges)."""
    if n < 2:
        return 0
    if x == 0:
        return <floating>(f[v + stride] - f[v])
    if x == n - 1:
        return <floating>(f[v] - f[v - stride])
    return <floating>(<floating>(f[v + stride] - f[v - stride]) * <floating>0.5)


cdef inline void physical_gradient_3d(const floating* img, Py_ssize_t ns,
                                      Py_ssize_t nr, Py_ssize_t nc, Py_ssize_t k,
                                      Py_ssize_t i, Py_ssize_t j,
                                      const double* spacing,
                                      const Affine3* direction,
                                      floating* g) noexcept nogil:
    """DIPY's CC/SSD image gradient at one voxel: numpy.gradient, divided by
    the spacing (rounded as the in-place float32 division rounds), then
    re-oriented by the grid direction."""
    cdef:
        Py_ssize_t v = (k * nr + i) * nc + j
        double y[3]
    g[0] = <floating>(central_diff(img, v, k, ns, nr * nc) / spacing[0])
    g[1] = <floating>(central_diff(img, v, i, nr, nc) / spacing[1])
    g[2] = <floating>(central_diff(img, v, j, nc, 1) / spacing[2])
    if not direction.none:
        affine3_vector(direction, g[0], g[1], g[2], y)
        g[0] = <floating>y[0]
        g[1] = <floating>y[1]
        g[2] = <floating>y[2]


cdef inline void physical_gradient_2d(const floating* img, Py_ssize_t nr,
                                      Py_ssize_t nc, Py_ssize_t i, Py_ssize_t j,
                                      const double* spacing,
                                      const Affine2* direction,
                                      floating* g) noexcept nogil:
    cdef:
        Py_ssize_t v = i * nc + j
        double y[2]
    g[0] = <floating>(central_diff(img, v, i, nr, nc) / spacing[0])
    g[1] = <floating>(central_diff(img, v, j, nc, 1) / spacing[1])
    if not direction.none:
        affine2_vector(direction, g[0], g[1], y)
        g[0] = <floating>y[0]
        g[1] = <floating>y[1]


cdef inline int chunk_threads(int requested, Py_ssize_t chunks) noexcept nogil:
    """Never more threads than pieces of work (the wrapper decides the count;
    results do not depend on it)."""
    if chunks < 1:
        return 1
    if requested > chunks:
        return <int>chunks
    return requested


cdef inline double sum_partial_tables(const double* part, const double* counts,
                                      Py_ssize_t nchunks, Py_ssize_t size,
                                      double* table) noexcept nogil:
    """Sum the chunks' partial tables (``size`` values each) into ``table``
    in chunk order, so that the result does not depend on which thread filled
    which chunk, and return the sum of the chunks' counts."""
    cdef:
        Py_ssize_t b, c
        double acc, total = 0
    for b in range(size):
        acc = 0
        for c in range(nchunks):
            acc = acc + part[c * size + b]
        table[b] = acc
    for c in range(nchunks):
        total = total + counts[c]
    return total
