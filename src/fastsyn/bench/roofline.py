"""Where each SyN stage stands against the memory bandwidth, and how it scales.

:func:`roofline` times every threaded kernel on one ``size``\\ :sup:`3`
float32 case and sets its time per voxel beside the time the bytes it must
move would take at the copy bandwidth measured in the same run: a kernel near
1.0 is bandwidth bound (only fewer bytes can make it faster), one far below
is compute or latency bound (SIMD, fewer operations or better locality can).

:func:`scaling` times the kernels and end-to-end SyN (CC and MI) at a list of
thread counts and reports the speed-up over one thread and the parallel
efficiency.  Both run unchanged on any number of cores: thread counts above
the machine's are reported as not measured.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fastsyn._threads import cpu_count

__all__ = ["KERNELS", "copy_bandwidth", "format_roofline", "format_scaling", "roofline",
           "scaling"]

# Bytes a kernel must read and write per voxel (float32, 3D), counting each
# array once: the compulsory traffic, the floor of any implementation.
#   compose   d1 (12) + d2 (12, interpolated, cached neighbours) + out (12)
#   invert    per fixed-point sweep: inverse (12) + d at the target (12) + out (12)
#   warp      field (12) + image (4, interpolated) + out (4)
#   gradient  image (4) + gradient (12)
#   smooth    3 components, one read + one write per axis: 3 * 24
#   cc step   image (4) + 5 factors (20) + step (12)
#   mi step   two images (8) + step (12)
KERNELS = {
    "compose": 36,
    "invert": 36,
    "warp linear": 20,
    "gradient": 16,
    "smooth field (sigma 2)": 72,
    "cc step": 36,
    "mi step": 20,
}


def copy_bandwidth(threads=1, *, mebibytes=256, repeat=5):
    """Measured copy bandwidth in bytes per second (read + write counted).

    ``threads`` Python threads each copy their own slice with NumPy (which
    releases the GIL), so the figure is what that many cores can stream.
    """
    n = mebibytes * 2**20 // 8
    src = np.ones(n)
    dst = np.empty_like(src)
    chunks = np.array_split(np.arange(n), threads)
    bounds = [(c[0], c[-1] + 1) for c in chunks if c.size]

    def part(bound):
        a, b = bound
        np.copyto(dst[a:b], src[a:b])

    best = np.inf
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeat):
            start = time.perf_counter()
            list(pool.map(part, bounds))
            best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def _kernel_calls(grid):
    """One callable per kernel (taking a thread count) on the grid's shape."""
    import fastsyn
    from fastsyn import fields
    from fastsyn.bench.speed import grid_shape, make_field

    shape = grid_shape(grid)
    field = make_field(shape, amplitude=4.0, seed=1)
    other = make_field(shape, amplitude=4.0, seed=2)
    image = np.ascontiguousarray(field[..., 0] * 10 + 50)
    moving = np.ascontiguousarray(other[..., 1] * 10 + 50)
    eye, spacing = np.eye(4), np.ones(3)
    sweeps = {}

    def invert(t):
        result = fields.invert_displacement_field(field, eye, spacing, 20, 1e-3,
                                                  num_threads=t)
        # the fused sweep composes once more than it counts iterations
        sweeps["invert"] = result.iterations + 1

    def metric_step(cls, t):
        metric = cls(3, num_threads=t)
        metric.set_static_image(image, eye, spacing, eye)
        metric.set_moving_image(moving, eye, spacing, eye)
        metric.initialize_iteration()
        return metric

    cc = {}
    mi = {}

    def prepared(cache, cls, t):
        # Set up once per thread count, outside the timed call (the step
        # alone is the kernel; its setup is the metric's iteration start).
        if t not in cache:
            cache[t] = metric_step(cls, t)
            cache[t].sigma_diff = 0.0
        return cache[t]

    def cc_step(t):
        prepared(cc, fastsyn.CCMetric, t).compute_forward()

    def mi_step(t):
        prepared(mi, fastsyn.MIMetric, t).compute_forward()

    calls = {
        "compose": lambda t: fields.compose_vector_fields_3d(field, other, None, eye, 1.0,
                                                             num_threads=t),
        "invert": invert,
        "warp linear": lambda t: fields.warp_3d(image, field, eye, eye, eye, shape,
                                                num_threads=t),
        "gradient": lambda t: fields.image_gradient(image, num_threads=t),
        "smooth field (sigma 2)": lambda t: fields.gaussian_smooth(field, 2.0, vector=True,
                                                                   num_threads=t),
        "cc step": cc_step,
        "mi step": mi_step,
    }
    return calls, sweeps


def _median_time(fn, repeat):
    fn()  # warm-up (and the metric's setup)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def roofline(size=128, *, threads=None, repeat=3):
    """Time per voxel of every kernel against its bandwidth bound.

    Parameters
    ----------
    size : int or str
        The float32 test grid (:func:`fastsyn.bench.speed.parse_grid`): an
        edge (cubic case) or a resolution such as ``"1mm"``.
    threads : int, optional
        Threads for the kernels and the bandwidth (default: all CPUs).
    repeat : int
        Timed runs per kernel (the median is kept).

    Returns
    -------
    dict
        ``bandwidth_gbs`` and ``rows``: kernel, bytes per voxel, measured and
        bound nanoseconds per voxel, and their ratio (1.0: at the bound).
    """
    threads = cpu_count() if threads is None else int(threads)
    bandwidth = copy_bandwidth(threads)
    from fastsyn.bench.speed import grid_label, grid_shape

    calls, sweeps = _kernel_calls(size)
    voxels = int(np.prod(grid_shape(size)))
    rows = []
    for name, fn in calls.items():
        seconds = _median_time(lambda fn=fn: fn(threads), repeat)
        seconds /= sweeps.get(name, 1)
        measured = seconds / voxels * 1e9
        bound = KERNELS[name] / bandwidth * 1e9
        label = f"{name} (per sweep)" if name in sweeps else name
        rows.append({"kernel": label, "bytes_per_voxel": KERNELS[name],
                     "ns_per_voxel": measured, "bound_ns_per_voxel": bound,
                     "fraction_of_bound": bound / measured})
    return {"size": size, "grid": grid_label(size), "threads": threads,
            "bandwidth_gbs": bandwidth / 1e9, "rows": rows}


def _syn_seconds(pair, metric, threads, levels):
    import fastsyn

    static, moving, affine = pair
    m = fastsyn.CCMetric(3, radius=4) if metric == "cc" else fastsyn.MIMetric(3)
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(m, level_iters=list(levels),
                                                     num_threads=threads)
    sdr.verbosity = 0
    start = time.perf_counter()
    sdr.optimize(static, moving, static_grid2world=affine, moving_grid2world=affine)
    return time.perf_counter() - start


def scaling(size=128, *, threads=(1, 2, 4, 8, 16), repeat=3, syn=True,
            levels=(20, 20, 10)):
    """Speed-up and parallel efficiency over thread counts.

    Parameters
    ----------
    size : int or str
        The grid of the kernels and SyN (:func:`fastsyn.bench.speed.parse_grid`):
        an edge or a resolution such as ``"1mm"``.
    threads : sequence of int
        Thread counts; 1 is always measured (the reference), counts above the
        machine's CPUs are listed as not measured.
    repeat : int
        Timed runs per kernel (median kept); SyN runs once per count.
    syn : bool
        Also time end-to-end SyN, CC and MI.
    levels : sequence of int
        SyN iterations per level.

    Returns
    -------
    dict
        ``cpus``, ``threads`` (measured), ``skipped`` and ``rows``: case,
        seconds per thread count, speed-up and efficiency per count.
    """
    from fastsyn.bench.speed import grid_label

    ncpu = cpu_count()
    wanted = sorted({1, *(int(t) for t in threads)})
    measured = [t for t in wanted if t <= ncpu]
    skipped = [t for t in wanted if t > ncpu]
    calls, _ = _kernel_calls(size)
    cases = {name: (lambda t, fn=fn: _median_time(lambda: fn(t), repeat))
             for name, fn in calls.items()}
    if syn:
        from fastsyn.bench.speed import grid_pair

        pair = grid_pair(size)  # built once: at 1 mm it takes seconds
        for metric in ("cc", "mi"):
            cases[f"SyN {metric.upper()} {'/'.join(map(str, levels))}"] = (
                lambda t, metric=metric: _syn_seconds(pair, metric, t, levels))
    rows = []
    for name, timer in cases.items():
        seconds = {t: timer(t) for t in measured}
        rows.append({"case": name, "seconds": seconds,
                     "speedup": {t: seconds[1] / seconds[t] for t in measured},
                     "efficiency": {t: seconds[1] / seconds[t] / t for t in measured}})
    return {"size": size, "grid": grid_label(size), "cpus": ncpu, "threads": measured,
            "skipped": skipped, "rows": rows}


def _grid_of(result):
    """The grid label of a result (older results: a cubic ``size``)."""
    return result.get("grid") or f"{result['size']}^3"


def format_roofline(result):
    """The roofline table as text."""
    lines = [f"roofline, {_grid_of(result)} float32, {result['threads']} thread(s), "
             f"copy bandwidth {result['bandwidth_gbs']:.1f} GB/s",
             f"{'kernel':<24}{'B/voxel':>8}{'ns/voxel':>10}{'bound':>8}{'of bound':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['kernel']:<24}{r['bytes_per_voxel']:>8}{r['ns_per_voxel']:>10.2f}"
                     f"{r['bound_ns_per_voxel']:>8.2f}{r['fraction_of_bound']:>10.0%}")
    return "\n".join(lines)


def format_scaling(result):
    """The scaling table as text (seconds, speed-up, efficiency per count)."""
    counts = result["threads"]
    head = "".join(f"{t:>18}" for t in counts)
    lines = [f"thread scaling, {_grid_of(result)}, {result['cpus']} CPUs"
             + (f"; {result['note']}" if result.get("note") else "")
             + (f" (not measured: {result['skipped']})" if result["skipped"] else ""),
             f"{'case':<28}{head}",
             f"{'':<28}" + "".join(f"{'s  x  eff':>18}" for _ in counts)]
    for r in result["rows"]:
        cells = "".join(f"{r['seconds'][t]:>8.3f}{r['speedup'][t]:>5.1f}"
                        f"{r['efficiency'][t]:>5.0%}" for t in counts)
        lines.append(f"{r['case']:<28}{cells}")
    return "\n".join(lines)
