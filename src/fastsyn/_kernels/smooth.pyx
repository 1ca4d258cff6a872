# Separable Gaussian smoothing of images and vector fields, matching
# scipy.ndimage.gaussian_filter(mode="reflect") applied per component.
#
# Every line (along one axis) is copied with its reflected margins into a
# private buffer, filtered as a sum of shifted axpys over contiguous memory
# (so the compiler vectorises it; a symmetric kernel adds each pair of
# mirrored taps first, which halves the passes over the sum), and written
# back.  Sums are kept in the data's own type (float32 fields filter at twice
# the SIMD width; scipy accumulates in double, so float32 results differ by a
# few ulp).  Lines are processed in tiles of neighbouring lines; each tile is
# owned by one thread and each output value is a fixed-order sum, so results
# do not depend on threads.
# Components are filtered together, which saves the per-component copies
# DIPY's metrics make.

from cython cimport floating
from cython.parallel cimport prange

from fastsyn._kernels._interp cimport chunk_threads
from libc.stdlib cimport free, malloc


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


cdef void _filter_tile(floating* data, Py_ssize_t base, Py_ssize_t n,
                       Py_ssize_t stride, Py_ssize_t width,
                       const double* w, Py_ssize_t radius, bint symmetric,
                       const Py_ssize_t* src, int* failed) noexcept nogil:
    """Filter ``width`` neighbouring lines of length ``n``.

    Line point x of channel b lives at data[base + x * stride + b].
    """
    cdef:
        Py_ssize_t npad = n + 2 * radius, x, b, t, m, total = n * width
        floating* pad = <floating*>malloc(npad * width * sizeof(floating))
        floating* acc = <floating*>malloc(total * sizeof(floating))
        floating wt
        const floating* shifted
        const floating* mirror
    if pad == NULL or acc == NULL:
        free(pad)
        free(acc)
        failed[0] = 1
        return
    for x in range(npad):
        for b in range(width):
            pad[x * width + b] = data[base + src[x] * stride + b]
    if symmetric:
        # w[t] == w[2 r - t]: one multiply for the two taps at the same
        # distance, half the passes over the accumulator.
        wt = <floating>w[radius]
        shifted = pad + radius * width
        for m in range(total):
            acc[m] = wt * shifted[m]
        for t in range(radius):
            wt = <floating>w[t]
            shifted = pad + t * width
            mirror = pad + (2 * radius - t) * width
            for m in range(total):
                acc[m] += wt * (shifted[m] + mirror[m])
    else:
        for m in range(total):
            acc[m] = 0
        for t in range(2 * radius + 1):
            wt = <floating>w[t]
            shifted = pad + t * width
            for m in range(total):
                acc[m] += wt * shifted[m]
    for x in range(n):
        for b in range(width):
            data[base + x * stride + b] = acc[x * width + b]
    free(pad)
    free(acc)


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


cdef int _filter_axis(floating* data, Py_ssize_t n_outer, Py_ssize_t n,
                      Py_ssize_t inner, Py_ssize_t channels,
                      const double* w, Py_ssize_t radius, bint symmetric,
                      bint nearest, int num_threads) noexcept nogil:
    """Filter along an axis of an array viewed as (n_outer, n, inner).

    ``channels`` > 1 means the axis is the last spatial axis of a field whose
    ``channels`` components are contiguous (inner == channels).
    """
    cdef:
        Py_ssize_t* src = _border_table(n, radius, nearest)
        Py_ssize_t ntiles, tile, o, start, width
        int failed = 0
    if src == NULL:
        return -1
    if channels > 1 or inner <= TILE:
        ntiles = 1
    else:
        ntiles = (inner + TILE - 1) // TILE
    for tile in prange(n_outer * ntiles, schedule="static", num_threads=num_threads):
        o = tile // ntiles
        start = (tile % ntiles) * TILE
        width = inner - start
        if ntiles > 1 and width > TILE:
            width = TILE
        _filter_tile(data, o * n * inner + start, n, inner, width, w, radius,
                     symmetric, src, &failed)
    free(src)
    return -failed


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
        Py_ssize_t ndim = len(shape), ax, outer, inner, n, a, size = channels
        Py_ssize_t radius = (weights.shape[0] - 1) // 2
        Py_ssize_t dims[3]
        int status = 0
        bint symmetric = True
    if ndim < 1 or ndim > 3 or channels < 1 or weights.shape[0] % 2 != 1:
        raise ValueError("gaussian_filter_: bad shape, channels or kernel length")
    for a in range(ndim):
        dims[a] = shape[a]
        if dims[a] < 1:
            raise ValueError("gaussian_filter_: empty axis")
        size *= dims[a]
    if size != data.shape[0] or axis < -1 or axis >= ndim:
        raise ValueError("gaussian_filter_: shape does not match the data")
    for a in range(radius):
        if weights[a] != weights[2 * radius - a]:
            symmetric = False
    num_threads = chunk_threads(num_threads, data.shape[0] // channels)
    for ax in range(ndim):
        if axis >= 0 and ax != axis:
            continue
        outer = 1
        for a in range(ax):
            outer *= dims[a]
        inner = channels
        for a in range(ax + 1, ndim):
            inner *= dims[a]
        n = dims[ax]
        with nogil:
            status = _filter_axis(&data[0], outer, n, inner,
                                  channels if ax == ndim - 1 else 1,
                                  &weights[0], radius, symmetric, nearest, num_threads)
        if status != 0:
            raise MemoryError("gaussian_filter: could not allocate the line buffer")
