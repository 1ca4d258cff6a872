# Dense Parzen mutual information for affine registration (DIPY's
# imaffine.MutualInformationMetric with dense sampling), fused in one pass:
# for every static voxel the moving image is sampled at the affinely mapped
# point (trilinear / bilinear, DIPY's zero-padded boundary rule), its
# physical-space gradient is taken there by central differences half a voxel
# away along each world axis (DIPY's vector_fields.gradient, including what it
# does at the edge of the moving grid), the voxel enters the joint Parzen
# histogram (cubic B-spline along the moving axis only, as DIPY does) and,
# through the chain rule with the transform's parameter Jacobian, the
# derivative of that histogram with respect to every parameter.
#
# The Jacobian of every DIPY transform, d T(theta) x / d theta, is linear in
# x, so the wrapper passes it as coefficients over the static grid index:
#     J[d, p] = E[d, p, 0] k + E[d, p, 1] i + E[d, p, 2] j + E[d, p, 3]
# (E already holds the map from the static grid to the pre-aligned space).
#
# Where the time goes, and what is cut (3D; the finest level dominates):
# * the static voxels' bins are fixed per level (static_bins), not per call;
# * a voxel whose seven samples read only zeros of the moving image adds
#   precomputed weights (the zero-block table);
# * where the sampled point and its six gradient taps all lie inside the
#   moving grid (one box test), they are sampled without DIPY's edge tests and
#   the taps are taken as fixed offsets from the point, w2g (x +- h e_p) =
#   y +- h w2g[:, p] (DIPY forms the product per tap: the tap coordinates
#   differ by rounding, the gradient by ~1e-14 relative); elsewhere DIPY's
#   sampling and edge rules are followed exactly;
# * a moving value inside its bin (all but clamped values) gets its four
#   nonzero spline weights and derivatives as polynomials of its offset in the
#   bin, without branches or divisions (the same numbers up to rounding).
#
# Determinism: the static grid is cut in blocks of consecutive slices (rows in
# 2D) chosen from the shape only; each block fills its own partial tables,
# which are then summed in block order.  The result does not depend on the
# number of threads.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport fabs, floor
from libc.stdlib cimport free, malloc

from fastsyn._kernels._interp cimport (chunk_threads, ifloor, interp_scalar_2d,
                                       interp_scalar_3d, nearest_2d, nearest_3d,
                                       nearest_index, number)

cdef enum:
    MAXP = 12  # parameters of the largest DIPY transform (3D affine)



cdef struct MIParams:
    double to_moving[12]   # static grid -> moving grid (the sampled point)
    double to_world[12]    # static grid -> world, at the moved point
    double w2g[12]         # moving world -> moving grid
    double h[3]            # half the moving spacing (the difference step)
    double spacing[3]
    double off[3][3]       # off[p]: the gradient tap along world axis p, in moving grid units
    double rad[3]          # max over p of |off[p][a]| (0 without the gradient)
    double mmin, mdelta
    Py_ssize_t nbins, padding, nparams
    int want_grad


cdef inline double _normalize(double x, double mval, double delta) noexcept nogil:
    if delta == 0:
        return 0
    return x / delta - mval


cdef inline Py_ssize_t _bin(double xn, Py_ssize_t nbins, Py_ssize_t padding) noexcept nogil:
    cdef Py_ssize_t b = <Py_ssize_t>xn
    if b < padding:
        return padding
    if b > nbins - 1 - padding:
        return nbins - 1 - padding
    return b


cdef inline double _spline(double x) noexcept nogil:
    # Cubic B-spline (Mattes et al. 2003, eq. 3).
    cdef double a = -x if x < 0.0 else x
    cdef double s = x * x
    if a < 1.0:
        return (4.0 - 6.0 * s + 3.0 * s * a) / 6.0
    if a < 2.0:
        return (8.0 - 12 * a + 6.0 * s - s * a) / 6.0
    return 0.0


cdef inline double _spline_deriv(double x) noexcept nogil:
    cdef double a = -x if x < 0.0 else x
    if a < 1.0:
        if x >= 0.0:
            return -2.0 * x + 1.5 * x * x
        return -2.0 * x - 1.5 * x * x
    if a < 2.0:
        if x >= 0:
            return -2.0 + 2.0 * x - 0.5 * x * x
        return 2.0 + 2.0 * x + 0.5 * x * x
    return 0.0


cdef inline void _apply3(const double* m, double x0, double x1, double x2,
                         double* y) noexcept nogil:
    y[0] = m[0] * x0 + m[1] * x1 + m[2] * x2 + m[3]
    y[1] = m[4] * x0 + m[5] * x1 + m[6] * x2 + m[7]
    y[2] = m[8] * x0 + m[9] * x1 + m[10] * x2 + m[11]


cdef inline void _apply2(const double* m, double x0, double x1, double* y) noexcept nogil:
    y[0] = m[0] * x0 + m[1] * x1 + m[2]
    y[1] = m[3] * x0 + m[4] * x1 + m[5]


cdef inline void _gradient_3d(const floating* M, Py_ssize_t ns, Py_ssize_t nr,
                              Py_ssize_t nc, const MIParams* P, double k,
                              double i, double j, double* g) noexcept nogil:
    """Physical gradient of the moving image at the moved point of (k, i, j).

    As DIPY's ``vector_fields.gradient``: a component whose difference leaves
    the grid is zero, and its displaced coordinate is left displaced for the
    components after it (this only touches the edge of the moving grid).
    """
    cdef:
        double x[3]
        double dx[3]
        double q[3]
        double a, b
        int p
    _apply3(P.to_world, k, i, j, x)
    dx[0] = x[0]
    dx[1] = x[1]
    dx[2] = x[2]
    for p in range(3):
        dx[p] = x[p] - P.h[p]
        _apply3(P.w2g, dx[0], dx[1], dx[2], q)
        if not interp_scalar_3d(M, ns, nr, nc, q[0], q[1], q[2], &a):
            g[p] = 0
            continue
        dx[p] = x[p] + P.h[p]
        _apply3(P.w2g, dx[0], dx[1], dx[2], q)
        if not interp_scalar_3d(M, ns, nr, nc, q[0], q[1], q[2], &b):
            g[p] = 0
            continue
        g[p] = (b - a) / P.spacing[p]
        dx[p] = x[p]


cdef inline void _gradient_2d(const floating* M, Py_ssize_t nr, Py_ssize_t nc,
                              const MIParams* P, double i, double j,
                              double* g) noexcept nogil:
    cdef:
        double x[2]
        double dx[2]
        double q[2]
        double a, b
        int p
    _apply2(P.to_world, i, j, x)
    dx[0] = x[0]
    dx[1] = x[1]
    for p in range(2):
        dx[p] = x[p] - P.h[p]
        _apply2(P.w2g, dx[0], dx[1], q)
        if not interp_scalar_2d(M, nr, nc, q[0], q[1], &a):
            g[p] = 0
            continue
        dx[p] = x[p] + P.h[p]
        _apply2(P.w2g, dx[0], dx[1], q)
        if not interp_scalar_2d(M, nr, nc, q[0], q[1], &b):
            g[p] = 0
            continue
        g[p] = (b - a) / P.spacing[p]
        dx[p] = x[p]


cdef inline int _zero_block(const unsigned char* zb, double y, Py_ssize_t n,
                            Py_ssize_t* idx) noexcept nogil:
    """Index of the 4-voxel window floor(y) - 1 .. floor(y) + 2 in the
    zero-block table (``n + 3`` entries for floor(y) in -2 .. n), or -1 when
    the window lies wholly outside the grid (it then holds only zeros)."""
    if not (y >= -2.0 and y < n + 1.0):
        idx[0] = -1
        return 1
    idx[0] = ifloor(y) + 2
    return 0


cdef inline int _spline_weights(double t, double* w) noexcept nogil:
    """The four nonzero Parzen weights of a value at t in [0, 1] past its bin
    c: bins c - 1 .. c + 2 (bin c - 2 has weight exactly 0); the pieces of
    the cubic spline are known there, so no branches and no divisions."""
    cdef double u = 1.0 - t, t2 = t * t, u2 = u * u
    w[0] = u2 * u * (1.0 / 6.0)
    w[1] = (2.0 / 3.0) - t2 + 0.5 * t2 * t
    w[2] = (2.0 / 3.0) - u2 + 0.5 * u2 * u
    w[3] = t2 * t * (1.0 / 6.0)
    return 0


cdef inline void _sub_scaled(double* out, double w, const double* x,
                             Py_ssize_t n) noexcept nogil:
    """out[p] -= w * x[p]; fixed trip counts for DIPY's transforms so that
    the compiler unrolls them (the same operations, the same bits)."""
    cdef Py_ssize_t p
    if n == 6:
        for p in range(6):
            out[p] -= w * x[p]
    elif n == 12:
        for p in range(12):
            out[p] -= w * x[p]
    elif n == 3:
        for p in range(3):
            out[p] -= w * x[p]
    else:
        for p in range(n):
            out[p] -= w * x[p]


cdef inline void _add_weights(Py_ssize_t base, const double* w, double* joint,
                              double* stats) noexcept nogil:
    cdef int o
    for o in range(4):
        joint[base + o] += w[o]
        stats[0] += w[o]


cdef inline void _accumulate(const MIParams* P, Py_ssize_t r, double mval,
                             int with_grad, const double* prod, double* joint,
                             double* smarg, double* grad, double* stats) noexcept nogil:
    """One voxel, of static bin ``r``, into the partial tables of its block
    (``with_grad`` false where the moving gradient is zero: its terms would
    all be zero).

    ``stats`` (spline mass, voxel count) should point to the caller's locals,
    not to memory the tables may alias, so that they stay in registers.
    """
    cdef:
        Py_ssize_t nb = P.nbins, n = P.nparams, c, o, base
        double cn, arg, val, t, u, t2, u2
        double w[4]
    cn = _normalize(mval, P.mmin, P.mdelta)
    c = _bin(cn, nb, P.padding)
    stats[1] += 1
    smarg[r] += 1
    t = cn - c
    if 0.0 <= t <= 1.0:
        # The usual case: cn in its bin, c <= cn <= c + 1.
        _spline_weights(t, w)
        base = r * nb + c - 1
        _add_weights(base, w, joint, stats)
        if with_grad:
            u = 1.0 - t
            t2 = t * t
            u2 = u * u
            base = base * n
            _sub_scaled(grad + base, 0.5 * u2, prod, n)
            _sub_scaled(grad + base + n, 2.0 * t - 1.5 * t2, prod, n)
            _sub_scaled(grad + base + 2 * n, 1.5 * u2 - 2.0 * u, prod, n)
            _sub_scaled(grad + base + 3 * n, -0.5 * t2, prod, n)
        return
    # cn clamped into the first or last bin: the general form.
    arg = (c - 2) - cn
    for o in range(5):
        val = _spline(arg)
        joint[r * nb + c - 2 + o] += val
        stats[0] += val
        arg += 1.0
    if with_grad:
        arg = (c - 2) - cn
        for o in range(5):
            val = _spline_deriv(arg)
            _sub_scaled(grad + (r * nb + c - 2 + o) * n, val, prod, n)
            arg += 1.0


cdef inline void _chain_3d(const double* jrow, const double* ej, Py_ssize_t j,
                           const double* g, Py_ssize_t n, double* prod) noexcept nogil:
    """prod[p] = sum over d of J[d, p] g[d], J[d, p] = jrow[d, p] + ej[d, p] j;
    fixed trip counts for DIPY's transforms so that the compiler unrolls."""
    cdef Py_ssize_t p
    if n == 6:
        for p in range(6):
            prod[p] = ((jrow[p] + ej[p] * j) * g[0] + (jrow[6 + p] + ej[6 + p] * j) * g[1]
                       + (jrow[12 + p] + ej[12 + p] * j) * g[2])
    elif n == 12:
        for p in range(12):
            prod[p] = ((jrow[p] + ej[p] * j) * g[0] + (jrow[12 + p] + ej[12 + p] * j) * g[1]
                       + (jrow[24 + p] + ej[24 + p] * j) * g[2])
    else:
        for p in range(n):
            prod[p] = ((jrow[p] + ej[p] * j) * g[0]
                       + (jrow[n + p] + ej[n + p] * j) * g[1]
                       + (jrow[2 * n + p] + ej[2 * n + p] * j) * g[2])


cdef struct ZeroVoxel:
    # What _accumulate adds for a moving value of 0 (when in its bin): the
    # voxels whose samples read only zeros add these same numbers.
    int usable
    Py_ssize_t c
    double w[4]


cdef inline void _zero_voxel(const MIParams* P, ZeroVoxel* z) noexcept nogil:
    cdef double cn = _normalize(0.0, P.mmin, P.mdelta), t
    z.c = _bin(cn, P.nbins, P.padding)
    t = cn - z.c
    z.usable = 0.0 <= t <= 1.0
    if z.usable:
        _spline_weights(t, z.w)


cdef inline bint _interior_3d(const double* q, Py_ssize_t ns, Py_ssize_t nr,
                              Py_ssize_t nc) noexcept nogil:
    """Whether the trilinear cell of ``q`` lies wholly in the grid, the case
    where ``interp_scalar_3d`` reports "inside" (false for NaN)."""
    return (0 <= q[0] < ns - 1) and (0 <= q[1] < nr - 1) and (0 <= q[2] < nc - 1)


cdef inline bint _box_interior_3d(const double* y, const double* rad, Py_ssize_t ns,
                                 Py_ssize_t nr, Py_ssize_t nc) noexcept nogil:
    """Whether every point y + o with |o[a]| <= rad[a] has its trilinear cell
    inside the grid, for points computed as fl(y[a] + o[a]): rounding is
    monotone, so fl(y - rad) <= fl(y + o) <= fl(y + rad) on every axis."""
    return ((0 <= y[0] - rad[0]) and (y[0] + rad[0] < ns - 1)
            and (0 <= y[1] - rad[1]) and (y[1] + rad[1] < nr - 1)
            and (0 <= y[2] - rad[2]) and (y[2] + rad[2] < nc - 1))


cdef inline double _trilinear_in(const floating* f, Py_ssize_t nr, Py_ssize_t nc,
                                 const double* q) noexcept nogil:
    """``interp_scalar_3d`` at a point whose cell is inside the grid (checked
    by ``_interior_3d``): the same formula, in the same order, without the
    edge tests; truncation is the floor of these non-negative coordinates."""
    cdef:
        Py_ssize_t k = <Py_ssize_t>q[0], i = <Py_ssize_t>q[1], j = <Py_ssize_t>q[2]
        Py_ssize_t sr = nc, ss = nr * nc, base = k * ss + i * sr + j
        double ck = q[0] - k, ci = q[1] - i, cj = q[2] - j
        double ak = 1 - ck, ai = 1 - ci, aj = 1 - cj
    return (ak * (ai * (aj * f[base] + cj * f[base + 1])
                  + ci * (aj * f[base + sr] + cj * f[base + sr + 1]))
            + ck * (ai * (aj * f[base + ss] + cj * f[base + ss + 1])
                    + ci * (aj * f[base + ss + sr] + cj * f[base + ss + sr + 1])))


cdef inline bint _gradient_in_3d(const floating* M, Py_ssize_t ns, Py_ssize_t nr,
                                 Py_ssize_t nc, const MIParams* P, const double* x,
                                 double* g) noexcept nogil:
    """``_gradient_3d`` at the world point ``x`` when all six difference taps
    are inside the grid (then DIPY's edge rules play no part); false, with
    ``g`` unspecified, when one is not."""
    cdef:
        double dx[3]
        double qa[3]
        double qb[3]
        int p
    dx[0] = x[0]
    dx[1] = x[1]
    dx[2] = x[2]
    for p in range(3):
        dx[p] = x[p] - P.h[p]
        _apply3(P.w2g, dx[0], dx[1], dx[2], qa)
        dx[p] = x[p] + P.h[p]
        _apply3(P.w2g, dx[0], dx[1], dx[2], qb)
        dx[p] = x[p]
        if not (_interior_3d(qa, ns, nr, nc) and _interior_3d(qb, ns, nr, nc)):
            return 0
        g[p] = (_trilinear_in(M, nr, nc, qb) - _trilinear_in(M, nr, nc, qa)) / P.spacing[p]
    return 1


cdef void _block_3d(const short* SB, Py_ssize_t ns, Py_ssize_t nr, Py_ssize_t nc,
                    const floating* M, Py_ssize_t mns, Py_ssize_t mnr, Py_ssize_t mnc,
                    const int* mmask, const unsigned char* zb,
                    Py_ssize_t k0, Py_ssize_t k1,
                    const MIParams* P, const double* E, double* joint, double* smarg,
                    double* grad, double* stats) noexcept nogil:
    cdef:
        Py_ssize_t nb = P.nbins, n = P.nparams, k, i, j, r, t, d, p, kk, ii, jj
        Py_ssize_t zk, zi, zj
        ZeroVoxel zv
        int with_grad, zero, interior
        double y[3]
        double x[3]
        double g[3]
        double qa[3]
        double qb[3]
        double ybase[3]
        double xbase[3]
        double prod[MAXP]
        double jrow[3 * MAXP]
        double ej[3 * MAXP]
        double local[2]
        double mval
        const double* A = P.to_moving
        const double* W = P.to_world
    for t in range(nb * nb):
        joint[t] = 0
    for t in range(nb):
        smarg[t] = 0
    if P.want_grad:
        for t in range(nb * nb * n):
            grad[t] = 0
        for d in range(3):
            for p in range(n):
                ej[d * n + p] = E[(d * n + p) * 4 + 2]
    local[0] = 0
    local[1] = 0
    _zero_voxel(P, &zv)
    for k in range(k0, k1):
        for i in range(nr):
            # The first two terms of _apply3 along a row: adding m[2] * j and
            # then m[3] gives _apply3's bits with a third of its products.
            for d in range(3):
                ybase[d] = A[4 * d] * k + A[4 * d + 1] * i
                xbase[d] = W[4 * d] * k + W[4 * d + 1] * i
            if P.want_grad:
                # The Jacobian along a row: jrow + E[d, p, 2] * j.
                for d in range(3):
                    for p in range(n):
                        t = (d * n + p) * 4
                        jrow[d * n + p] = E[t] * k + E[t + 1] * i + E[t + 3]
            for j in range(nc):
                r = SB[(k * nr + i) * nc + j]
                if r < 0:
                    continue
                y[0] = ybase[0] + A[2] * j + A[3]
                y[1] = ybase[1] + A[6] * j + A[7]
                y[2] = ybase[2] + A[10] * j + A[11]
                if mmask != NULL:
                    kk = nearest_index(y[0], mns)
                    ii = nearest_index(y[1], mnr)
                    jj = nearest_index(y[2], mnc)
                    if kk < 0 or ii < 0 or jj < 0 or mmask[(kk * mnr + ii) * mnc + jj] == 0:
                        continue
                interior = _box_interior_3d(y, P.rad, mns, mnr, mnc)
                if zb != NULL:
                    # Every sample of this voxel (value and the six gradient
                    # taps) reads only zeros: value 0, gradient 0, exactly.
                    if interior:
                        # floor(y) >= 0 here: truncation, no range tests
                        zero = zb[((<Py_ssize_t>y[0] + 2) * (mnr + 3)
                                   + <Py_ssize_t>y[1] + 2) * (mnc + 3) + <Py_ssize_t>y[2] + 2]
                    else:
                        zero = (_zero_block(zb, y[0], mns, &zk)
                                | _zero_block(zb, y[1], mnr, &zi)
                                | _zero_block(zb, y[2], mnc, &zj))
                        if not zero:
                            zero = zb[(zk * (mnr + 3) + zi) * (mnc + 3) + zj]
                    if zero and zv.usable:
                        # _accumulate(P, r, 0.0, 0, ...), its numbers known
                        local[1] += 1
                        smarg[r] += 1
                        _add_weights(r * nb + zv.c - 1, zv.w, joint, local)
                        continue
                    if zero:
                        _accumulate(P, r, 0.0, 0, prod, joint, smarg, grad, local)
                        continue
                with_grad = 0
                if interior:
                    # The value and all six taps inside the grid: sample
                    # them without edge tests, the taps as offsets from y.
                    mval = _trilinear_in(M, mnr, mnc, y)
                    if P.want_grad:
                        for d in range(3):
                            qa[0] = y[0] - P.off[d][0]
                            qa[1] = y[1] - P.off[d][1]
                            qa[2] = y[2] - P.off[d][2]
                            qb[0] = y[0] + P.off[d][0]
                            qb[1] = y[1] + P.off[d][1]
                            qb[2] = y[2] + P.off[d][2]
                            g[d] = ((_trilinear_in(M, mnr, mnc, qb)
                                     - _trilinear_in(M, mnr, mnc, qa)) / P.spacing[d])
                        with_grad = g[0] != 0 or g[1] != 0 or g[2] != 0
                elif P.want_grad:
                    # Near the edge: DIPY's sampling and edge rules exactly.
                    interp_scalar_3d(M, mns, mnr, mnc, y[0], y[1], y[2], &mval)
                    x[0] = xbase[0] + W[2] * j + W[3]
                    x[1] = xbase[1] + W[6] * j + W[7]
                    x[2] = xbase[2] + W[10] * j + W[11]
                    if not _gradient_in_3d(M, mns, mnr, mnc, P, x, g):
                        _gradient_3d(M, mns, mnr, mnc, P, <double>k, <double>i,
                                     <double>j, g)
                    with_grad = g[0] != 0 or g[1] != 0 or g[2] != 0
                else:
                    interp_scalar_3d(M, mns, mnr, mnc, y[0], y[1], y[2], &mval)
                if with_grad:
                    _chain_3d(jrow, ej, j, g, n, prod)
                _accumulate(P, r, mval, with_grad, prod, joint, smarg, grad, local)
    stats[0] = local[0]
    stats[1] = local[1]


cdef void _block_2d(const short* SB, Py_ssize_t nr, Py_ssize_t nc,
                    const floating* M, Py_ssize_t mnr, Py_ssize_t mnc,
                    const int* mmask, const unsigned char* zb,
                    Py_ssize_t i0, Py_ssize_t i1,
                    const MIParams* P, const double* E, double* joint, double* smarg,
                    double* grad, double* stats) noexcept nogil:
    cdef:
        Py_ssize_t nb = P.nbins, n = P.nparams, i, j, r, t, d, p, ii, jj, zi, zj
        int with_grad, zero
        double y[2]
        double g[2]
        double prod[MAXP]
        double jrow[2 * MAXP]
        double local[2]
        double mval
    for t in range(nb * nb):
        joint[t] = 0
    for t in range(nb):
        smarg[t] = 0
    if P.want_grad:
        for t in range(nb * nb * n):
            grad[t] = 0
    local[0] = 0
    local[1] = 0
    for i in range(i0, i1):
        if P.want_grad:
            for d in range(2):
                for p in range(n):
                    t = (d * n + p) * 3
                    jrow[d * n + p] = E[t] * i + E[t + 2]
        for j in range(nc):
            r = SB[i * nc + j]
            if r < 0:
                continue
            _apply2(P.to_moving, <double>i, <double>j, y)
            if mmask != NULL:
                ii = nearest_index(y[0], mnr)
                jj = nearest_index(y[1], mnc)
                if ii < 0 or jj < 0 or mmask[ii * mnc + jj] == 0:
                    continue
            if zb != NULL:
                zero = _zero_block(zb, y[0], mnr, &zi) | _zero_block(zb, y[1], mnc, &zj)
                if not zero:
                    zero = zb[zi * (mnc + 3) + zj]
                if zero:
                    _accumulate(P, r, 0.0, 0, prod, joint, smarg, grad, local)
                    continue
            interp_scalar_2d(M, mnr, mnc, y[0], y[1], &mval)
            with_grad = 0
            if P.want_grad:
                _gradient_2d(M, mnr, mnc, P, <double>i, <double>j, g)
                with_grad = g[0] != 0 or g[1] != 0
            if with_grad:
                for p in range(n):
                    prod[p] = ((jrow[p] + E[(0 * n + p) * 3 + 1] * j) * g[0]
                               + (jrow[n + p] + E[(1 * n + p) * 3 + 1] * j) * g[1])
            _accumulate(P, r, mval, with_grad, prod, joint, smarg, grad, local)
    stats[0] = local[0]
    stats[1] = local[1]


cdef void _merge(const double* part, Py_ssize_t nblocks, Py_ssize_t stride,
                 Py_ssize_t size, double* out) noexcept nogil:
    """out[t] = sum over blocks, in block order, of part[b * stride + t].

    Serial: the tables are small next to the blocks' work, and another
    parallel region would wake (and leave spinning) the pool once more per
    evaluation.
    """
    cdef Py_ssize_t t, b
    for t in range(size):
        out[t] = 0
    for b in range(nblocks):
        for t in range(size):
            out[t] = out[t] + part[b * stride + t]


cdef int _check_sizes(Py_ssize_t nstatic, Py_ssize_t static_voxels, Py_ssize_t nmoving,
                      Py_ssize_t moving_voxels, Py_ssize_t nmmask, Py_ssize_t nzero,
                      Py_ssize_t zero_entries, const Py_ssize_t[::1] bounds,
                      Py_ssize_t nslices, Py_ssize_t nb, Py_ssize_t padding,
                      Py_ssize_t nsmarg, Py_ssize_t nmmarg, Py_ssize_t ncols) except -1:
    """Every index the blocks form stays inside the arrays they read."""
    cdef Py_ssize_t b
    if nstatic != static_voxels or nmoving != moving_voxels or moving_voxels == 0:
        raise ValueError("parzen_mi_dense: image sizes do not match their shapes")
    if nmmask not in (0, moving_voxels) or nzero not in (0, zero_entries):
        raise ValueError("parzen_mi_dense: mmask or zero_blocks does not match the moving grid")
    if padding < 2 or nb <= 2 * padding or nsmarg != nb or nmmarg != nb or ncols != nb:
        raise ValueError("parzen_mi_dense: the histogram needs padding >= 2 and "
                         "nbins > 2 * padding, square")
    if bounds.shape[0] < 1 or bounds[0] != 0 or bounds[bounds.shape[0] - 1] != nslices:
        raise ValueError("parzen_mi_dense: bounds must run from 0 to the slice count")
    for b in range(bounds.shape[0] - 1):
        if bounds[b] > bounds[b + 1]:
            raise ValueError("parzen_mi_dense: bounds must not decrease")
    return 0


cdef int _fill_params(MIParams* P, const double[::1] to_moving,
                      const double[::1] to_world, const double[::1] w2g,
                      const double[::1] spacing, int dim, double mmin,
                      double mdelta, Py_ssize_t nbins,
                      Py_ssize_t padding, Py_ssize_t nparams, bint want_grad) except -1:
    cdef int t, a, p
    if nparams > MAXP:
        raise ValueError(f"at most {MAXP} transform parameters, got {nparams}")
    for t in range(dim * (dim + 1)):
        P.to_moving[t] = to_moving[t]
        P.to_world[t] = to_world[t]
        P.w2g[t] = w2g[t]
    for t in range(dim):
        P.spacing[t] = spacing[t]
        P.h[t] = 0.5 * spacing[t]
    for a in range(3):
        P.rad[a] = 0
        for p in range(3):
            P.off[p][a] = 0
    if want_grad:
        # The taps w2g (x +- h[p] e_p) are w2g x +- h[p] w2g[:, p]: offsets
        # from the sampled point, the same for every voxel.
        for p in range(dim):
            for a in range(dim):
                P.off[p][a] = P.h[p] * w2g[a * (dim + 1) + p]
                P.rad[a] = max(P.rad[a], fabs(P.off[p][a]))
    P.mmin = mmin
    P.mdelta = mdelta
    P.nbins = nbins
    P.padding = padding
    P.nparams = nparams
    P.want_grad = want_grad
    return 0


def static_bins(const double[::1] static, const int[::1] smask, double smin,
                double sdelta, Py_ssize_t nbins, Py_ssize_t padding, short[::1] out,
                int num_threads):
    """The Parzen bin of every static voxel, once per level.

    The static image and its histogram settings do not change while the
    optimiser runs, so :func:`parzen_mi_dense` reads these bins instead of
    normalising and binning the static value at every evaluation (DIPY's
    rule: ``clamp(int(x / sdelta - smin), padding, nbins - 1 - padding)``).

    Parameters
    ----------
    static : array, shape (N,)
        The flattened static image.
    smask : int32 array, shape (N,) or (0,)
        Static mask (voxels with 0 get bin -1: left out); empty for none.
    smin, sdelta : float
        DIPY's histogram settings (``ParzenJointHistogram.setup``).
    nbins, padding : int
        Number of bins (at most 32767) and bins of padding at each side.
    out : int16 array, shape (N,)
        The bins.
    num_threads : int
        Number of OpenMP threads.
    """
    cdef Py_ssize_t n = static.shape[0], v
    cdef const int* sm = &smask[0] if smask.shape[0] > 0 else NULL
    if out.shape[0] != n or (smask.shape[0] != 0 and smask.shape[0] != n):
        raise ValueError("static_bins: static, smask and out must have one entry per voxel")
    if not (0 <= padding and 2 * padding < nbins <= 32767):
        raise ValueError(f"static_bins: bad nbins {nbins} or padding {padding}")
    if n == 0:
        return
    num_threads = chunk_threads(num_threads, (n + 65535) // 65536)
    with nogil:
        for v in prange(n, schedule="static", num_threads=num_threads):
            if sm != NULL and sm[v] == 0:
                out[v] = -1
            else:
                out[v] = <short>_bin(_normalize(static[v], smin, sdelta), nbins, padding)


def parzen_mi_dense(const short[::1] static_bins, tuple static_shape,
                    const floating[::1] moving, tuple moving_shape,
                    const int[::1] mmask, const unsigned char[::1] zero_blocks,
                    const double[::1] to_moving, const double[::1] to_world,
                    const double[::1] moving_world2grid,
                    const double[::1] moving_spacing, const double[::1] jac,
                    Py_ssize_t nparams, double mmin, double mdelta, Py_ssize_t padding,
                    const Py_ssize_t[::1] bounds, bint want_grad, double[:, ::1] joint,
                    double[::1] smarginal, double[::1] mmarginal,
                    double[:, :, ::1] joint_grad, int num_threads):
    """Joint Parzen histogram and its parameter gradient, DIPY-normalised.

    Parameters
    ----------
    static_bins : int16 array, shape (N,)
        The static image's bins from :func:`static_bins` (with the same
        ``nbins`` and ``padding``; -1 for voxels outside the static mask),
        flattened; its grid shape (2 or 3 sizes) is ``static_shape``.
    moving : array, shape (M,)
        Flattened C-contiguous moving image (float64, or float32 when its
        values are float32 numbers: the samples are then bitwise the same and
        the memory traffic half); its grid shape is ``moving_shape``.
    mmask : int32 array, shape (M,) or (0,)
        Moving mask on the moving grid (sampled nearest-neighbour); empty for
        no mask.
    zero_blocks : uint8 array, shape (prod(moving_shape + 3),) or (0,)
        Entry ``f + 2`` (per axis) is 1 when the moving voxels ``f - 1 ..
        f + 2`` (outside the grid counting as zero) are all zero; a voxel
        whose sampled point has ``floor = f`` then has value and gradient 0
        and skips its samples.  Only valid when the gradient taps lie within
        one voxel of the point along every grid axis; empty to disable.
    to_moving, to_world, moving_world2grid : array, shape (dim * (dim + 1),)
        First ``dim`` rows of: static grid to moving grid, static grid to
        world at the moved point, moving world to moving grid.
    moving_spacing : array, shape (dim,)
        Voxel sizes of the moving image.
    jac : array, shape (dim * nparams * (dim + 1),)
        Jacobian coefficients over the static grid index (see the module
        comment); ignored unless ``want_grad``.
    nparams : int
        Number of transform parameters (at most 12).
    mmin, mdelta : float
        DIPY's moving histogram settings (``ParzenJointHistogram.setup``).
    padding : int
        Bins of padding at each side (at least 2, for the cubic spline).
    bounds : array of intp, shape (nblocks + 1,)
        First slice (row in 2D) of each block, then the number of slices;
        chosen from the shape only.
    want_grad : bool
        Also compute ``joint_grad``.
    joint, smarginal, mmarginal, joint_grad :
        Outputs, DIPY's ``ParzenJointHistogram`` buffers (``mmarginal`` is
        left as it is when no voxel contributes, as in DIPY).
    num_threads : int
        Number of OpenMP threads.

    Returns
    -------
    valid_points : float
        Number of voxels that entered the histogram.
    """
    cdef:
        int dim = len(static_shape)
        MIParams P
        Py_ssize_t nb = joint.shape[0], nblocks = bounds.shape[0] - 1
        Py_ssize_t ns = 1, nr, nc, mns = 1, mnr, mnc, b, i, j, t
        Py_ssize_t sj = nb * nb, sg = nb * nb * nparams, size
        double* pj
        double* ps
        double* pg
        double* pst
        double total = 0, valid = 0, norm
        const int* mm = &mmask[0] if mmask.shape[0] > 0 else NULL
        const unsigned char* zb = &zero_blocks[0] if zero_blocks.shape[0] > 0 else NULL
        const double* E = &jac[0] if want_grad else NULL
    _fill_params(&P, to_moving, to_world, moving_world2grid, moving_spacing, dim,
                 mmin, mdelta, nb, padding, nparams, want_grad)
    if dim == 3:
        ns, nr, nc = static_shape
        mns, mnr, mnc = moving_shape
    else:
        nr, nc = static_shape
        mnr, mnc = moving_shape
    _check_sizes(static_bins.shape[0], ns * nr * nc, moving.shape[0], mns * mnr * mnc,
                 mmask.shape[0], zero_blocks.shape[0], (mns + 3) * (mnr + 3) * (mnc + 3)
                 if dim == 3 else (mnr + 3) * (mnc + 3), bounds, ns if dim == 3 else nr,
                 nb, padding, smarginal.shape[0], mmarginal.shape[0], joint.shape[1])
    if want_grad and (joint_grad.shape[0] != nb or joint_grad.shape[1] != nb
                      or joint_grad.shape[2] != nparams
                      or jac.shape[0] != dim * nparams * (dim + 1)):
        raise ValueError("parzen_mi_dense: joint_grad or jac does not match nbins, nparams")
    if not want_grad:
        sg = 0
    pj = <double*>malloc(nblocks * sj * sizeof(double))
    ps = <double*>malloc(nblocks * nb * sizeof(double))
    pg = <double*>malloc((nblocks * sg + 1) * sizeof(double))
    pst = <double*>malloc(nblocks * 2 * sizeof(double))
    if pj == NULL or ps == NULL or pg == NULL or pst == NULL:
        free(pj)
        free(ps)
        free(pg)
        free(pst)
        raise MemoryError("parzen_mi_dense: could not allocate the partial tables")
    num_threads = chunk_threads(num_threads, nblocks)
    with nogil:
        for b in prange(nblocks, schedule="dynamic", num_threads=num_threads):
            if dim == 3:
                _block_3d(&static_bins[0], ns, nr, nc, &moving[0], mns, mnr, mnc, mm, zb,
                          bounds[b], bounds[b + 1], &P, E, pj + b * sj, ps + b * nb,
                          pg + b * sg, pst + 2 * b)
            else:
                _block_2d(&static_bins[0], nr, nc, &moving[0], mnr, mnc, mm, zb,
                          bounds[b], bounds[b + 1], &P, E, pj + b * sj, ps + b * nb,
                          pg + b * sg, pst + 2 * b)
        _merge(pj, nblocks, sj, sj, &joint[0, 0])
        _merge(ps, nblocks, nb, nb, &smarginal[0])
        if want_grad:
            _merge(pg, nblocks, sg, sg, &joint_grad[0, 0, 0])
        for b in range(nblocks):
            total = total + pst[2 * b]
            valid = valid + pst[2 * b + 1]
        # DIPY's normalisation: the 3D joint by the spline mass, the 2D one by
        # the voxel count; the gradient by the voxel count times the bin width.
        if total > 0:
            norm = total if dim == 3 else valid
            for i in range(nb):
                for j in range(nb):
                    joint[i, j] = joint[i, j] / norm
            for i in range(nb):
                smarginal[i] = smarginal[i] / valid
            for j in range(nb):
                mmarginal[j] = 0
                for i in range(nb):
                    mmarginal[j] += joint[i, j]
        if want_grad:
            norm = valid * mdelta
            if norm > 0:
                size = sg
                for t in range(size):
                    (&joint_grad[0, 0, 0])[t] = (&joint_grad[0, 0, 0])[t] / norm
    free(pj)
    free(ps)
    free(pg)
    free(pst)
    return valid


# ----------------------------------------------------------------- resampling
cdef void _resample_slice_3d(const double* vol, Py_ssize_t vns, Py_ssize_t vnr,
                             Py_ssize_t vnc, const double* m, Py_ssize_t k,
                             Py_ssize_t onr, Py_ssize_t onc, double* out) noexcept nogil:
    cdef:
        Py_ssize_t i, j
        double y[3]
    for i in range(onr):
        for j in range(onc):
            _apply3(m, <double>k, <double>i, <double>j, y)
            interp_scalar_3d(vol, vns, vnr, vnc, y[0], y[1], y[2],
                             &out[(k * onr + i) * onc + j])


cdef void _resample_nn_slice_3d(const number* vol, Py_ssize_t vns, Py_ssize_t vnr,
                                Py_ssize_t vnc, const double* m, Py_ssize_t k,
                                Py_ssize_t onr, Py_ssize_t onc, number* out) noexcept nogil:
    cdef:
        Py_ssize_t i, j
        double y[3]
    for i in range(onr):
        for j in range(onc):
            _apply3(m, <double>k, <double>i, <double>j, y)
            out[(k * onr + i) * onc + j] = nearest_3d(vol, vns, vnr, vnc, y)


def transform_affine_3d(const double[:, :, ::1] volume, const double[::1] comp,
                        double[:, :, ::1] out, int num_threads):
    """Trilinear resampling: out[k, i, j] = volume(comp @ (k, i, j, 1)),
    zero-padded partial sums at the edge (DIPY's ``transform_3d_affine``)."""
    cdef:
        Py_ssize_t k
        double m[12]
    for k in range(12):
        m[k] = comp[k]
    num_threads = chunk_threads(num_threads, out.shape[0])
    with nogil:
        for k in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _resample_slice_3d(&volume[0, 0, 0], volume.shape[0], volume.shape[1],
                               volume.shape[2], m, k, out.shape[1], out.shape[2],
                               &out[0, 0, 0])


def transform_affine_nn_3d(const number[:, :, ::1] volume, const double[::1] comp,
                           number[:, :, ::1] out, int num_threads):
    """Nearest-neighbour resampling (DIPY's ``transform_3d_affine_nn``)."""
    cdef:
        Py_ssize_t k
        double m[12]
    for k in range(12):
        m[k] = comp[k]
    num_threads = chunk_threads(num_threads, out.shape[0])
    with nogil:
        for k in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _resample_nn_slice_3d(&volume[0, 0, 0], volume.shape[0], volume.shape[1],
                                  volume.shape[2], m, k, out.shape[1], out.shape[2],
                                  &out[0, 0, 0])


cdef void _resample_row_2d(const double* img, Py_ssize_t vnr, Py_ssize_t vnc,
                           const double* m, Py_ssize_t i, Py_ssize_t onc,
                           double* out) noexcept nogil:
    cdef:
        Py_ssize_t j
        double y[2]
    for j in range(onc):
        _apply2(m, <double>i, <double>j, y)
        interp_scalar_2d(img, vnr, vnc, y[0], y[1], &out[i * onc + j])


cdef void _resample_nn_row_2d(const number* img, Py_ssize_t vnr, Py_ssize_t vnc,
                              const double* m, Py_ssize_t i, Py_ssize_t onc,
                              number* out) noexcept nogil:
    cdef:
        Py_ssize_t j
        double y[2]
    for j in range(onc):
        _apply2(m, <double>i, <double>j, y)
        out[i * onc + j] = nearest_2d(img, vnr, vnc, y)


def transform_affine_2d(const double[:, ::1] image, const double[::1] comp,
                        double[:, ::1] out, int num_threads):
    """Bilinear resampling (DIPY's ``transform_2d_affine``)."""
    cdef:
        Py_ssize_t i
        double m[6]
    for i in range(6):
        m[i] = comp[i]
    num_threads = chunk_threads(num_threads, out.shape[0])
    with nogil:
        for i in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _resample_row_2d(&image[0, 0], image.shape[0], image.shape[1], m, i,
                             out.shape[1], &out[0, 0])


def transform_affine_nn_2d(const number[:, ::1] image, const double[::1] comp,
                           number[:, ::1] out, int num_threads):
    """Nearest-neighbour resampling (DIPY's ``transform_2d_affine_nn``)."""
    cdef:
        Py_ssize_t i
        double m[6]
    for i in range(6):
        m[i] = comp[i]
    num_threads = chunk_threads(num_threads, out.shape[0])
    with nogil:
        for i in prange(out.shape[0], schedule="static", num_threads=num_threads):
            _resample_nn_row_2d(&image[0, 0], image.shape[0], image.shape[1], m, i,
                                out.shape[1], &out[0, 0])
