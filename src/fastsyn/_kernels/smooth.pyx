# Separable Gaussian smoothing of images and vector fields, matching
# scipy.ndimage.gaussian_filter(mode="reflect") applied per component.
#
# Every line (along one axis) is copied with its reflected margins into a
# per-thread buffer, filtered as a sum of shifted axpys over contiguous
# memory (so the compiler vectorises it; a symmetric kernel adds each pair of
# mirrored taps first, and four pairs share one pass over the sums), and
# written back.  Sums are kept in the data's own type (float32 fields filter
# at twice the SIMD width; scipy accumulates in double, so float32 results
# differ by a few ulp).  Lines are processed in tiles of neighbouring lines;
# each tile is owned by one thread and each output value is a fixed-order
# sum, so results do not depend on threads.
# Components are filtered together, which saves the per-component copies
# DIPY's metrics make.

from cython cimport floating
from cython.parallel cimport parallel, prange

from fastsyn._kernels._interp cimport chunk_threads
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy


cdef enum:
    TILE = 64


cdef inline Py_ssize_t _reflect(Py_ssize_t x, Py_ssize_t n) noexcept nogil:
    # scipy's "reflect" (d c b a | a b c d | d c b a), periodic in 2 n.
    cdef Py_ssize_t period = 2 * n
    x = x % period
    if x < 0:
        x += period
    if x >= n:
        x = period - 1 - x
    return x


cdef void _set_flag(int* flag) noexcept nogil:
    # Through a pointer: a variable assigned in a parallel block is private.
    flag[0] = 1


cdef inline void _four_pairs(floating* out, const floating* centre, floating wc,
                             const floating* pad, Py_ssize_t width, const double* w,
                             Py_ssize_t radius, Py_ssize_t t, Py_ssize_t total) noexcept nogil:
    """Add the mirrored tap pairs t .. t + 3 to the sums in one pass, to
    ``out`` or, with ``centre``, to the centre tap wc * centre.

    The additions keep the one-pair-per-pass order, so the sums are the same
    values, for a quarter of the loads and stores of the sums (the hot part
    of the filter).
    """
    cdef:
        Py_ssize_t m
        floating w0 = <floating>w[t], w1 = <floating>w[t + 1]
        floating w2 = <floating>w[t + 2], w3 = <floating>w[t + 3]
        const floating* s0 = pad + t * width
        const floating* s1 = s0 + width
        const floating* s2 = s1 + width
        const floating* s3 = s2 + width
        const floating* r0 = pad + (2 * radius - t) * width
        const floating* r1 = r0 - width
        const floating* r2 = r1 - width
        const floating* r3 = r2 - width
    if centre != NULL:
        for m in range(total):
            out[m] = ((((wc * centre[m]) + w0 * (s0[m] + r0[m])) + w1 * (s1[m] + r1[m]))
                      + w2 * (s2[m] + r2[m])) + w3 * (s3[m] + r3[m])
    else:
        for m in range(total):
            out[m] = (((out[m] + w0 * (s0[m] + r0[m])) + w1 * (s1[m] + r1[m]))
                      + w2 * (s2[m] + r2[m])) + w3 * (s3[m] + r3[m])


cdef void _filter_tile(const floating* data, floating* target, Py_ssize_t base,
                       Py_ssize_t n, Py_ssize_t stride, Py_ssize_t width,
                       const double* w, Py_ssize_t radius, bint symmetric,
                       const Py_ssize_t* src, floating* pad,
                       floating* acc, bint blend, floating keep,
                       floating rest) noexcept nogil:
    """Filter ``width`` neighbouring lines of length ``n`` of ``data`` into
    ``target`` (which may be ``data``).

    Line point x of channel b lives at data[base + x * stride + b]; ``pad``
    holds (n + 2 radius) * width values and ``acc`` n * width (the caller's
    per-thread buffers).  Where the lines are contiguous (stride == width:
    the last axis) the interior is copied in one block and the sums are
    written straight into ``target``.  With ``blend`` each sum s is written
    as keep * s + rest * target (target holding the unfiltered values), each
    product rounded to the data's type before the sum, as NumPy's
    ``s *= keep; s += rest * target`` rounds them.
    """
    cdef:
        Py_ssize_t x, b, t, m, i, total = n * width
        bint contiguous = stride == width
        floating wt
        floating* out = target + base if contiguous and not blend else acc
        const floating* shifted
        const floating* mirror
    if contiguous:
        memcpy(pad + radius * width, data + base, total * sizeof(floating))
        for x in range(radius):
            for b in range(width):
                pad[x * width + b] = data[base + src[x] * width + b]
                pad[(n + radius + x) * width + b] = data[base + src[n + radius + x] * width + b]
    else:
        for x in range(n + 2 * radius):
            for b in range(width):
                pad[x * width + b] = data[base + src[x] * stride + b]
    if symmetric:
        # w[t] == w[2 r - t]: one multiply for the two taps at the same
        # distance, half the passes over the sums; and four such pairs per
        # pass (the first pass with the centre tap).
        wt = <floating>w[radius]
        shifted = pad + radius * width
        t = 0
        if radius >= 4:
            _four_pairs(out, shifted, wt, pad, width, w, radius, 0, total)
            t = 4
        else:
            for m in range(total):
                out[m] = wt * shifted[m]
        while t + 4 <= radius:
            _four_pairs(out, NULL, 0, pad, width, w, radius, t, total)
            t += 4
        while t < radius:
            wt = <floating>w[t]
            shifted = pad + t * width
            mirror = pad + (2 * radius - t) * width
            for m in range(total):
                out[m] += wt * (shifted[m] + mirror[m])
            t += 1
    else:
        for m in range(total):
            out[m] = 0
        for t in range(2 * radius + 1):
            wt = <floating>w[t]
            shifted = pad + t * width
            for m in range(total):
                out[m] += wt * shifted[m]
    if blend and contiguous:
        out = target + base
        for m in range(total):
            out[m] = keep * acc[m] + rest * out[m]
    elif blend:
        for x in range(n):
            for b in range(width):
                i = base + x * stride + b
                target[i] = keep * acc[x * width + b] + rest * target[i]
    elif not contiguous:
        for x in range(n):
            for b in range(width):
                target[base + x * stride + b] = acc[x * width + b]


cdef Py_ssize_t* _border_table(Py_ssize_t n, Py_ssize_t radius,
                               bint nearest) noexcept nogil:
    """Source index of every padded line point: scipy's "reflect", or with
    ``nearest`` the edge value repeated (ITK's zero-flux Neumann)."""
    cdef Py_ssize_t* src = <Py_ssize_t*>malloc((n + 2 * radius) * sizeof(Py_ssize_t))
    cdef Py_ssize_t x, y
    if src != NULL:
        for x in range(n + 2 * radius):
            y = x - radius
            if nearest:
                src[x] = 0 if y < 0 else (n - 1 if y >= n else y)
            else:
                src[x] = _reflect(y, n)
    return src


cdef int _filter_axis(const floating* data, floating* target, Py_ssize_t n_outer,
                      Py_ssize_t n, Py_ssize_t inner, Py_ssize_t channels,
                      const double* w, Py_ssize_t radius, bint symmetric,
                      bint nearest, int num_threads, bint blend, floating keep,
                      floating rest) noexcept nogil:
    """Filter ``data`` along an axis into ``target`` (both viewed as
    (n_outer, n, inner); ``target`` may be ``data``), blending as
    :func:`_filter_tile` does.

    ``channels`` > 1 means the axis is the last spatial axis of a field whose
    ``channels`` components are contiguous (inner == channels).
    """
    cdef:
        Py_ssize_t* src = _border_table(n, radius, nearest)
        Py_ssize_t ntiles, tile, o, start, width, max_width
        floating* pad
        floating* acc
        int failed = 0
    if src == NULL:
        return -1
    if channels > 1 or inner <= TILE:
        ntiles = 1
        max_width = inner
    else:
        ntiles = (inner + TILE - 1) // TILE
        max_width = TILE
    # One pair of line buffers per thread, not per tile (tens of thousands
    # of tiles per pass on the last axis).
    with parallel(num_threads=num_threads):
        pad = <floating*>malloc((n + 2 * radius) * max_width * sizeof(floating))
        acc = <floating*>malloc(n * max_width * sizeof(floating))
        if pad == NULL or acc == NULL:
            _set_flag(&failed)
        # Every thread meets the loop (an OpenMP rule), even without buffers.
        for tile in prange(n_outer * ntiles, schedule="static"):
            if pad != NULL and acc != NULL:
                o = tile // ntiles
                start = (tile % ntiles) * TILE
                width = inner - start
                if ntiles > 1 and width > TILE:
                    width = TILE
                _filter_tile(data, target, o * n * inner + start, n, inner, width, w,
                             radius, symmetric, src, pad, acc, blend, keep, rest)
        free(pad)
        free(acc)
    free(src)
    return -failed


cdef Py_ssize_t _spatial_dims(tuple shape, Py_ssize_t channels, Py_ssize_t length,
                              Py_ssize_t* dims) except -1:
    """Check the spatial ``shape`` of ``length`` values of ``channels``
    components, copy it into ``dims`` and return its number of axes."""
    cdef Py_ssize_t ndim = len(shape), a, size = channels
    if ndim < 1 or ndim > 3 or channels < 1:
        raise ValueError("gaussian smoothing: bad shape or channels")
    for a in range(ndim):
        dims[a] = shape[a]
        if dims[a] < 1:
            raise ValueError("gaussian smoothing: empty axis")
        size *= dims[a]
    if size != length:
        raise ValueError("gaussian smoothing: shape does not match the data")
    return ndim


cdef int _pass(const floating* data, floating* target, const Py_ssize_t* dims,
               Py_ssize_t ndim, Py_ssize_t channels, Py_ssize_t ax,
               const double[::1] weights, bint nearest, int num_threads, bint blend,
               double weight) except -1:
    """One pass of the filter along axis ``ax``, from ``data`` into ``target``
    (which may be ``data``), blended with ``target`` where ``blend``."""
    cdef:
        Py_ssize_t outer = 1, inner = channels, a, status
        Py_ssize_t radius = (weights.shape[0] - 1) // 2
        bint symmetric = True
        floating keep = <floating>weight
        floating rest = <floating>(1.0 - weight)
    if weights.shape[0] % 2 != 1:
        raise ValueError("gaussian smoothing: the kernel's length is even")
    for a in range(radius):
        if weights[a] != weights[2 * radius - a]:
            symmetric = False
    for a in range(ax):
        outer *= dims[a]
    for a in range(ax + 1, ndim):
        inner *= dims[a]
    with nogil:
        status = _filter_axis(data, target, outer, dims[ax], inner,
                              channels if ax == ndim - 1 else 1, &weights[0], radius,
                              symmetric, nearest, num_threads, blend, keep, rest)
    if status != 0:
        raise MemoryError("gaussian smoothing: could not allocate the line buffer")
    return 0


def gaussian_filter_(floating[::1] data, tuple shape, Py_ssize_t channels,
                     const double[::1] weights, int num_threads, Py_ssize_t axis=-1,
                     bint nearest=False):
    """Filter ``data`` (C order, spatial ``shape`` + (channels,)) in place.

    ``weights`` is the normalised kernel of odd length 2 r + 1, applied along
    every spatial axis in order, as scipy does, or along ``axis`` only.
    Borders follow scipy's "reflect", or repeat the edge with ``nearest``.
    A symmetric kernel (every Gaussian) sums each pair of mirrored taps
    before its one multiplication.
    """
    cdef:
        Py_ssize_t dims[3]
        Py_ssize_t ndim = _spatial_dims(shape, channels, data.shape[0], dims), ax
    if axis < -1 or axis >= ndim:
        raise ValueError("gaussian_filter_: axis out of range")
    num_threads = chunk_threads(num_threads, data.shape[0] // channels)
    for ax in range(ndim):
        if axis < 0 or ax == axis:
            _pass(&data[0], &data[0], dims, ndim, channels, ax, weights, nearest,
                  num_threads, False, 0.0)


def gaussian_blend_(floating[::1] data, floating[::1] scratch, tuple shape,
                    Py_ssize_t channels, tuple kernels, double weight, int num_threads):
    """``data = weight * filtered + (1 - weight) * data``, in place, where
    ``filtered`` is ``data`` filtered along every spatial axis in order,
    axis a by ``kernels[a]``, the edge value repeated at the borders.

    The values are those of :func:`gaussian_filter_` (with ``nearest``) on a
    copy followed by NumPy's ``filtered *= weight; filtered += (1 - weight) *
    data``, in two fewer passes over the data: the first axis's pass
    writes into ``scratch`` (same length, its values overwritten) and the
    last one blends its sums straight into ``data``, whose unfiltered values
    no earlier pass has touched.
    """
    cdef:
        Py_ssize_t dims[3]
        Py_ssize_t ndim = _spatial_dims(shape, channels, data.shape[0], dims), ax
        const floating* source
        floating* target
        const double[::1] weights
    if scratch.shape[0] != data.shape[0]:
        raise ValueError("gaussian_blend_: data and scratch differ in length")
    if len(kernels) != ndim:
        raise ValueError("gaussian_blend_: one kernel per spatial axis is needed")
    num_threads = chunk_threads(num_threads, data.shape[0] // channels)
    for ax in range(ndim):
        source = &data[0] if ax == 0 else &scratch[0]
        target = &data[0] if ax == ndim - 1 else &scratch[0]
        weights = kernels[ax]
        _pass(source, target, dims, ndim, channels, ax, weights, True, num_threads,
              ax == ndim - 1, weight)
