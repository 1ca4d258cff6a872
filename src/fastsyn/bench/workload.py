"""The measured work of the regression gates, runnable against any build.

This module is both imported (for :data:`CASES` and the track settings) and
run as a script by path (``python workload.py MODE ...``) inside a child
process whose ``sys.path`` leads to the build under test (see
:mod:`fastsyn.bench.sides`).  At module level it imports the standard library
only, and it reaches fastsyn through its public API, so one copy of this file
measures the base and the head of a comparison alike.

Modes
-----
``count CASES SIZE``
    Run each case's call once on one thread, with an ``os.getppid()`` marker
    before and after each call (valgrind dumps its counters at each marker,
    :mod:`fastsyn.bench.costs`).
``time --size N --threads T --repeat R --cases a,b``
    A persistent timing worker (:mod:`fastsyn.bench.gate`): it warms every
    case up, prints ``ready``, then answers each ``run CASE`` line on stdin
    with the seconds of the fastest of ``R`` calls and the calling thread's
    share of the CPU time, until ``quit``.
``tracks --fixtures DIR``
    The correctness tracks: one JSON document on stdout (output hashes at
    1, 2 and 3 threads, label Dice on the fixtures, metric values).
"""

import json
import math
import sys
import time

#: Case name -> what one call does.
CASES = {
    "compose": "compose two displacement fields (float32)",
    "invert": "fixed-point inversion, 20 iterations at most, tol 1e-3 (float32)",
    "warp": "trilinear warp of an image by a field (float32)",
    "gradient": "central-difference image gradient (float32)",
    "smooth": "Gaussian smoothing (sigma 2) of a vector field (float32)",
    "cc_factors": "CC metric: local correlation factors, radius 4",
    "cc_step": "CC metric: forward + backward step (factors in the set-up)",
    "mi_step": "MI metric: forward + backward step (histogram in the set-up)",
    "mi_hist": "MI metric: joint histogram and MI (initialize_iteration)",
    "affine_mi": "affine MI (dense, 32 bins): one value-and-gradient evaluation",
    "syn_cc": "SyN with CC: one level, one iteration (pyramid set-up included)",
    "syn_mi": "SyN with MI: one level, one iteration (pyramid set-up included)",
}

#: The kernels the wall-time gate times (the SyN iterations are left to the
#: instruction tracks: at the gate's grid they are dominated by set-up).
TIMED_CASES = ("compose", "invert", "warp", "gradient", "smooth", "cc_factors", "cc_step",
               "mi_hist", "mi_step")

#: Correctness tracks: name -> (fixture, metric).  Iterations per level are
#: :data:`TRACK_LEVELS`; thread counts :data:`TRACK_THREADS`.
TRACK_PAIRS = {"syn_cc": ("pair3d", "cc"), "syn_mi": ("pair3d_multimodal", "mi")}
TRACK_LEVELS = (20, 10, 5)
TRACK_THREADS = (1, 2, 3)


# --------------------------------------------------------------------------
# Inputs and calls
# --------------------------------------------------------------------------


def make_inputs(size):
    """Seeded float32 inputs on a ``size``-cube grid.

    Returns
    -------
    dict
        ``field``, ``field2`` (displacements, voxels), ``image``, ``moving``
        (``image`` warped by ``field``).
    """
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(19)
    shape = (size, size, size)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), size / 8)
                      for _ in range(3)], axis=-1)
    field *= 2.0 / np.abs(field).max()
    image = ndimage.gaussian_filter(rng.random(shape), 2.0) * 100
    grid = np.indices(shape, dtype=np.float64) + np.moveaxis(field, -1, 0)
    moving = ndimage.map_coordinates(image, grid, order=1, mode="nearest")
    f32 = np.float32
    return {"field": np.ascontiguousarray(field, dtype=f32),
            "field2": np.ascontiguousarray(field[::-1, ::-1] * 0.5, dtype=f32),
            "image": np.ascontiguousarray(image, dtype=f32),
            "moving": np.ascontiguousarray(moving, dtype=f32)}


def _metric(kind, data, threads):
    import numpy as np

    import fastsyn

    metric = (fastsyn.CCMetric(3, num_threads=threads) if kind == "cc"
              else fastsyn.MIMetric(3, num_threads=threads))
    eye = np.eye(4)
    metric.set_static_image(data["image"], eye, np.ones(3), eye)
    metric.set_moving_image(data["moving"], eye, np.ones(3), eye)
    metric.initialize_iteration()
    return metric


def _affine_mi(data, threads):
    import numpy as np
    from dipy.align.transforms import regtransforms

    import fastsyn

    metric = fastsyn.MutualInformationMetric(nbins=32, num_threads=threads)
    transform = regtransforms[("AFFINE", 3)]
    metric.setup(transform, data["image"].astype(np.float64),
                 data["moving"].astype(np.float64))
    params = transform.get_identity_parameters().copy()
    params[3] = 0.5  # a small translation, so the sample points fall off-grid
    return lambda: metric.distance_and_gradient(params)


def _syn(kind, data, threads):
    import numpy as np

    import fastsyn

    metric = (fastsyn.CCMetric(3, num_threads=threads) if kind == "cc"
              else fastsyn.MIMetric(3, num_threads=threads))
    reg = fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=[1],
                                                     num_threads=threads)
    eye = np.eye(4)
    return lambda: reg.optimize(data["image"], data["moving"], static_grid2world=eye,
                                moving_grid2world=eye)


def prepare(case, data, threads=1):
    """The call of ``case`` on ``data`` with ``threads`` threads (set-up done here).

    Returns
    -------
    callable
        A function of no argument.
    """
    import numpy as np

    from fastsyn import fields

    f, f2, img = data["field"], data["field2"], data["image"]
    out = np.empty_like(f)
    simple = {
        "compose": lambda: fields.compose_vector_fields_3d(
            f, f2, None, None, 1.0, out, num_threads=threads),
        "invert": lambda: fields.invert_vector_field_fixed_point_3d(
            f, None, np.ones(3), 20, 1e-3, num_threads=threads),
        "warp": lambda: fields.warp_3d(img, f, num_threads=threads),
        "gradient": lambda: fields.image_gradient(img, num_threads=threads),
        "smooth": lambda: fields.gaussian_smooth(f, 2.0, vector=True, out=out,
                                                 num_threads=threads),
    }
    if case in simple:
        return simple[case]
    if case in ("cc_factors", "mi_hist"):
        return _metric(case[:2], data, threads).initialize_iteration
    if case in ("cc_step", "mi_step"):
        metric = _metric(case[:2], data, threads)
        return lambda: (metric.compute_forward(), metric.compute_backward())
    if case == "affine_mi":
        return _affine_mi(data, threads)
    if case in ("syn_cc", "syn_mi"):
        return _syn(case[4:], data, threads)
    raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")


# --------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------


def count_mode(cases, size):
    """Run each case once on one thread between two valgrind dump markers."""
    import os

    data = make_inputs(size)
    for case in cases:
        call = prepare(case, data, threads=1)
        os.getppid()  # marker: valgrind dumps the start-up/set-up counters here
        call()
        os.getppid()  # marker: this dump holds the call alone


def time_mode(size, threads, repeat, cases, stdin=sys.stdin, stdout=sys.stdout):
    """The persistent timing worker: ``run CASE`` -> wall time and work share.

    Each answer is one JSON object: ``wall``, the fastest of ``repeat`` calls
    (on a shared machine the slow calls are the ones another process
    interrupted; the fastest is the closest to the code's own cost), and
    ``share``, the median over the calls of the calling thread's CPU time
    divided by the whole process's: about ``1 / threads`` when a kernel's
    work is spread over its threads, 1 when it runs serially.  Unlike wall
    time, the share does not depend on how busy the machine is.
    """
    data = make_inputs(size)
    calls = {case: prepare(case, data, threads) for case in cases}
    for call in calls.values():
        call()  # warm up: first-touch of buffers, lazy imports
    print("ready", file=stdout, flush=True)
    for line in stdin:
        words = line.split()
        if len(words) != 2 or words[0] != "run" or words[1] not in calls:
            break
        call, best, shares = calls[words[1]], math.inf, []
        for _ in range(repeat):
            cpu0, own0 = time.process_time(), time.thread_time()
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
            cpu, own = time.process_time() - cpu0, time.thread_time() - own0
            shares.append(own / cpu if cpu > 0 else 1.0)
        shares.sort()
        print(json.dumps({"wall": best, "share": shares[len(shares) // 2]}), file=stdout,
              flush=True)


def _dice(fixed, warped):
    import numpy as np

    scores = []
    for label in np.unique(fixed):
        if label == 0:
            continue
        f, w = fixed == label, warped == label
        denom = f.sum() + w.sum()
        scores.append(2.0 * np.logical_and(f, w).sum() / denom if denom else 1.0)
    return float(np.mean(scores))


def _register(pair, kind, threads):
    import logging

    import fastsyn

    logging.getLogger("dipy").setLevel(logging.WARNING)
    metric = fastsyn.CCMetric(3) if kind == "cc" else fastsyn.MIMetric(3)
    reg = fastsyn.SymmetricDiffeomorphicRegistration(metric, level_iters=list(TRACK_LEVELS),
                                                     num_threads=threads)
    return reg.optimize(pair["static"], pair["moving"],
                        static_grid2world=pair["static_affine"],
                        moving_grid2world=pair["moving_affine"])


def _digest(*arrays):
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _metric_values(pair):
    """MI and CC of a fixed pair as given (no registration), one thread."""
    import numpy as np

    import fastsyn

    eye = np.eye(4)
    values = {}
    for kind, metric in (("cc", fastsyn.CCMetric(3, num_threads=1)),
                         ("mi", fastsyn.MIMetric(3, num_threads=1))):
        metric.set_static_image(pair["static"], eye, np.ones(3), eye)
        metric.set_moving_image(pair["moving"], eye, np.ones(3), eye)
        metric.initialize_iteration()
        metric.compute_forward()
        values[kind] = float(metric.get_energy())
        metric.free_iteration()
    return values


def tracks_mode(fixtures, stdout=sys.stdout):
    """Hashes at 1/2/3 threads, Dice and metric values; one JSON document."""
    from pathlib import Path

    import numpy as np

    from fastsyn.fields import parallel_grain

    result = {"levels": list(TRACK_LEVELS), "threads": list(TRACK_THREADS), "tracks": {}}
    for name, (fixture, kind) in TRACK_PAIRS.items():
        with np.load(Path(fixtures) / f"{fixture}.npz") as npz:
            pair = {key: npz[key] for key in npz.files}
        hashes, dice = {}, None
        for threads in TRACK_THREADS:
            with parallel_grain(1):  # the fixtures are small: make every thread work
                mapping = _register(pair, kind, threads)
            hashes[str(threads)] = _digest(mapping.forward, mapping.backward)
            if dice is None:
                warped = mapping.transform(pair["moving_labels"], interpolation="nearest")
                dice = _dice(pair["static_labels"], warped)
        result["tracks"][name] = {
            "fixture": fixture, "metric": kind, "hashes": hashes,
            "deterministic": int(len(set(hashes.values())) == 1), "dice": dice,
            "dice_before": _dice(pair["static_labels"], pair["moving_labels"]),
            "energy": _metric_values(pair)}
    json.dump(result, stdout)
    stdout.write("\n")


def _main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="fastsyn gate workload (run by path)")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("count")
    p.add_argument("cases")
    p.add_argument("size", type=int)
    p = sub.add_parser("time")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeat", type=int, required=True)
    p.add_argument("--cases", required=True)
    p = sub.add_parser("tracks")
    p.add_argument("--fixtures", required=True)
    args = parser.parse_args(argv)
    if args.mode == "count":
        count_mode(args.cases.split(","), args.size)
    elif args.mode == "time":
        time_mode(args.size, args.threads, args.repeat, args.cases.split(","))
    else:
        tracks_mode(args.fixtures)


if __name__ == "__main__":
    _main()
