"""Cohort runs: prealign, register with each method, evaluate, store.

:func:`run_benchmark` turns a dataset into pairs, and each pair into one task:
prealign it (cached, see :mod:`fastsyn.bench.prealign`), evaluate the
prealigned pair as the pseudo-method ``Baseline``, then run and evaluate every
requested method, writing one record per (dataset, pair, method,
configuration) to a :class:`~fastsyn.bench.store.ResultStore`. Finished records
are skipped on a rerun; a failure is recorded with its error and the run goes
on.

Tasks run in this process (one worker), in a local process pool (several
workers, with ``workers * threads <= cores``) or on a Dask cluster
(``dask="local"`` starts a ``LocalCluster``; any other string is a scheduler
address; a ``distributed.Client`` is used as is). Tasks are plain dictionaries
of file paths and options, so they travel to any worker that sees the same
files.
"""

import logging
import os
import socket
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from .store import ResultStore, make_key

__all__ = ["run_benchmark", "run_pair", "available_cores", "BASELINE", "MASK_MODES",
           "method_masks"]

# run_benchmark is an outline of named steps (pyperf/asv style): check the
# arguments, plan the pairs and the method configurations, turn them into
# tasks, dispatch the tasks (here, a process pool or Dask) and collect the
# records.  run_pair does the same for one task: prealign, then one record
# per method.

BASELINE = "baseline"
#: Values of the ``masks`` switch: no mask, the nonzero voxels of each image,
#: or the dataset's brain mask (``mask.nii.gz``; nonzero voxels where a subject
#: has none).
MASK_MODES = ("none", "nonzero", "brain")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _subject_files(dataset, name, truth_field):
    subjects = dataset.subjects
    subj = None
    if isinstance(subjects, dict):
        subj = subjects.get(name)
    else:
        subj = next((s for s in subjects if s.name == name), None)
    if subj is None:
        raise KeyError(f"dataset {dataset.name!r} has no subject {name!r}")
    truth = getattr(subj, truth_field, None)
    return {
        "images": {k: str(v) for k, v in subj.images.items()},
        "labels": str(subj.labels),
        "mask": str(subj.mask) if getattr(subj, "mask", None) else None,
        "truth": str(truth) if truth else None,
    }


def _pair_dict(pair):
    return {"id": pair.id, "fixed": pair.fixed, "moving": pair.moving,
            "fixed_modality": pair.fixed_modality,
            "moving_modality": pair.moving_modality}


def _baseline_config(task):
    return {"method": BASELINE, "data": task["data"], "prealign": dict(task["prealign"])}


def _task_keys(task):
    keys = [(BASELINE, make_key(task["dataset"], task["pair"]["id"], BASELINE,
                                _baseline_config(task)))]
    for m in task["methods"]:
        keys.append((m["name"], make_key(task["dataset"], task["pair"]["id"],
                                         m["name"], m["config"])))
    return keys


def _base_record(task, method, label, config):
    p = task["pair"]
    return {"dataset": task["dataset"], "pair": p["id"], "method": method,
            "label": label, "config": config, "fixed": p["fixed"],
            "moving": p["moving"], "fixed_modality": p["fixed_modality"],
            "moving_modality": p["moving_modality"], "host": socket.gethostname()}


def _error_text(exc):
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {exc}\n" + "".join(tb[-6:])


def _error_record(task, name, text):
    """An ``error`` record of ``name`` (a method or the baseline) for ``task``'s pair."""
    if name == BASELINE:
        rec = _base_record(task, BASELINE, "Baseline", _baseline_config(task))
    else:
        m = next(m for m in task["methods"] if m["name"] == name)
        rec = _base_record(task, name, m["label"], m["config"])
    rec.update(status="error", error=text)
    return rec


def prealign_task(task):
    """Prealign a task's pair (or read it from the cache) and load its arrays.

    Returns
    -------
    pre : Prealigned
    data : dict
        See :meth:`~fastsyn.bench.prealign.Prealigned.load`.
    """
    from .prealign import prealign_pair

    fx, mv, p = task["fixed_files"], task["moving_files"], task["pair"]
    pre = prealign_pair(
        fx["images"][p["fixed_modality"]], mv["images"][p["moving_modality"]],
        mv["labels"], task["cache_dir"], fixed_labels=fx["labels"],
        pair_id=p["id"], fixed_mask=fx["mask"], moving_mask=mv["mask"],
        fixed_truth_to_template=fx["truth"],
        moving_truth_from_template=mv["truth"], threads=task.get("threads", 1),
        **task["prealign"])
    return pre, pre.load()


def method_masks(pre, data, mode):
    """The fixed and moving masks handed to the methods under the ``masks`` switch.

    Parameters
    ----------
    pre : Prealigned
        The prealigned pair (its ``fixed_mask`` and prealigned ``moving_mask``).
    data : dict
        Its arrays (:meth:`~fastsyn.bench.prealign.Prealigned.load`).
    mode : {"none", "nonzero", "brain"}
        See :data:`MASK_MODES`.

    Returns
    -------
    (ndarray or None, ndarray or None)
        Boolean masks on the fixed grid, or ``(None, None)`` for ``"none"``.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"masks must be one of {MASK_MODES}, got {mode!r}")
    if mode == "none":
        return None, None
    from .layout import read_image_data, read_image_header

    def brain(path, image):
        if mode == "brain" and path is not None:
            data = read_image_data(read_image_header(path, "mask"), path, "mask")
            return np.asarray(data).reshape(image.shape) > 0
        return image != 0

    fixed = brain(pre.fixed_mask, data["fixed"])
    moving = brain(pre.moving_mask, data["moving"])
    # an empty mask (a blank image) would stop the metric: use the whole grid
    return tuple(m if m.any() else np.ones_like(m) for m in (fixed, moving))


def qc_tile_writer(store):
    """A callable ``(record, warped, displacement)`` that keeps the record's QC
    tiles (:func:`fastsyn.bench.qc.extract_tiles`) beside it in ``store``, so
    that ``fastsyn report`` draws the registration without running it again.

    The tiles are written before the record: a finished record has them.  A
    failure to draw them is noted in the record (``qc_error``), never fatal.
    """
    def keep(record, data, warped, displacement):
        from .qc import extract_tiles, save_tiles

        key = make_key(record["dataset"], record["pair"], record["method"], record["config"])
        try:
            tiles = extract_tiles(data["fixed"], warped, data["affine"],
                                  fixed_labels=data["fixed_labels"], mask=data["mask"],
                                  displacement=displacement)
            save_tiles(store.qc_path(key), tiles)
        except Exception as exc:  # the measures stand without the pictures
            record["qc_error"] = f"{type(exc).__name__}: {exc}"

    return keep


def baseline_record(task, data, common, keep_tiles=None):
    """The ``Baseline`` record: the measures of the prealigned pair itself
    (``keep_tiles``: see :func:`qc_tile_writer`)."""
    from .evaluate import evaluate_pair

    start = time.perf_counter()
    metrics = evaluate_pair(data["fixed"], data["moving"],
                            data["fixed_labels"], data["moving_labels"],
                            data["mask"], displacement=None,
                            affine=data["affine"],
                            true_displacement=data["truth"])
    rec = _base_record(task, BASELINE, "Baseline", _baseline_config(task))
    rec.update(status="ok", metrics=metrics, seconds=None,
               threads=None, peak_mem_mb=None,
               eval_seconds=time.perf_counter() - start, **common)
    if keep_tiles is not None:
        keep_tiles(rec, data, data["moving"], None)
    return rec


def method_record(task, spec, data, common, keep_tiles=None):
    """Register the prealigned pair with one method and measure the result
    (``keep_tiles``: see :func:`qc_tile_writer`)."""
    from .evaluate import evaluate_pair
    from .methods import get_method

    method = get_method(spec["name"], **spec["options"])
    fixed_mask, moving_mask = data.get("method_masks", (None, None))
    start = time.perf_counter()
    res = method.run(data["fixed"], data["moving"], data["affine"],
                     data["affine"], data["moving_labels"],
                     metric=task["metric"], levels=task["levels"],
                     threads=spec["config"]["threads"],
                     fixed_mask=fixed_mask, moving_mask=moving_mask)
    ran = time.perf_counter()
    metrics = evaluate_pair(data["fixed"], res.warped, data["fixed_labels"],
                            res.warped_labels, data["mask"],
                            displacement=res.displacement,
                            affine=data["affine"],
                            true_displacement=data["truth"])
    rec = _base_record(task, spec["name"], spec["label"], spec["config"])
    rec.update(status="ok", metrics=metrics, seconds=res.seconds,
               threads=res.threads, peak_mem_mb=res.peak_mem_mb,
               extra=res.extra, has_displacement=res.displacement is not None,
               run_seconds=ran - start, eval_seconds=time.perf_counter() - ran,
               **common)
    if keep_tiles is not None:
        keep_tiles(rec, data, res.warped, res.displacement)
    return rec


def run_pair(task):
    """Run one task: prealign, Baseline, every method; store each record.

    Parameters
    ----------
    task : dict
        Built by :func:`run_benchmark`: dataset name, pair, subject files,
        methods (name, options, config, label), metric, levels, threads,
        results and cache folders, prealignment options.

    Returns
    -------
    list of dict
        The records written by this call (finished records already in the
        store are not rerun and not returned).
    """
    logging.getLogger("dipy").setLevel(logging.WARNING)
    store = ResultStore(task["results_dir"])
    pending = [name for name, key in _task_keys(task) if not store.has(key)]
    if not pending:
        return []
    written = []

    def put(record):
        store.put(record)
        written.append(record)

    start = time.perf_counter()
    try:
        pre, data = prealign_task(task)
        data["method_masks"] = method_masks(pre, data, task.get("masks", "none"))
    except Exception as exc:  # recorded, the run goes on
        text = "prealignment failed: " + _error_text(exc)
        for name in pending:
            put(_error_record(task, name, text))
        return written

    # the prealignment's cost is its measured time, also when read from the
    # cache (what a fresh run of the pair costs); load_seconds is this run's
    common = {"prealign_dir": str(pre.cache_dir), "rigid": pre.rigid.tolist(),
              "prealign_seconds": pre.seconds,
              "prealign_load_seconds": time.perf_counter() - start}
    by_name = {m["name"]: m for m in task["methods"]}
    keep_tiles = qc_tile_writer(store)
    for name in pending:
        try:
            if name == BASELINE:
                put(baseline_record(task, data, common, keep_tiles))
            else:
                put(method_record(task, by_name[name], data, common, keep_tiles))
        except Exception as exc:  # recorded, the run goes on
            put(_error_record(task, name, _error_text(exc)))
    return written


def _resolve_methods(methods, metric, warn):
    from .methods import get_method

    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("methods must name at least one method")
    specs, unavailable, seen = [], {}, set()
    for m in methods:
        method = get_method(m)
        if method.name in seen:
            continue
        seen.add(method.name)
        ok, reason = method.available(metric)
        if not ok:
            unavailable[method.name] = reason
            warn(f"method {method.name!r} skipped: {reason}")
            continue
        specs.append({"name": method.name, "options": dict(method.options),
                      "label": method.label, "config": None, "_method": method})
    return specs, unavailable


def _parse_levels(levels):
    if isinstance(levels, str):
        try:
            levels = [int(v) for v in levels.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"levels must be comma-separated integers, got {levels!r}")
    levels = list(levels)
    if not levels or any(not isinstance(v, int) or v < 0 for v in levels):
        raise ValueError(f"levels must be a non-empty list of integers >= 0, got {levels!r}")
    return levels


class _ThreadEnv:
    """Set thread-count variables while worker processes are started."""

    def __init__(self, threads):
        self.values = {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1",
                       "MKL_NUM_THREADS": "1",
                       "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def _check_run_args(metric, threads, workers, results_dir, levels, modalities, sample, seed,
                    dask, masks="none"):
    """Checked ``levels`` and ``modalities``; every bad argument is named."""
    from .pairs import check_sample_seed

    if metric not in ("cc", "mi"):
        raise ValueError(f"metric must be 'cc' or 'mi', got {metric!r}")
    if not isinstance(masks, str) or masks not in MASK_MODES:
        raise ValueError(f"masks must be one of {MASK_MODES}, got {masks!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if results_dir is None:
        raise ValueError("results_dir is required")
    check_sample_seed(sample, seed)
    if dask is not None and (dask == "" or isinstance(dask, (bool, int, float, list, tuple))):
        raise ValueError(
            f"dask must be 'local', a scheduler address or a Client, got {dask!r}")
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",") if m.strip()]
    return _parse_levels(levels), modalities


def _warner(progress):
    from tqdm.auto import tqdm

    def warn(msg):
        if progress:
            tqdm.write(f"warning: {msg}")
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    return warn


def _prealign_options(options, prealign="fastsyn"):
    """The prealignment settings: defaults updated by ``options``, and the prealigner."""
    from .prealign import DEFAULT_FACTORS, DEFAULT_LEVEL_ITERS, DEFAULT_SIGMAS, PREALIGNERS

    pre_opts = {"level_iters": list(DEFAULT_LEVEL_ITERS), "sigmas": list(DEFAULT_SIGMAS),
                "factors": list(DEFAULT_FACTORS), "nbins": 32, "prealigner": prealign}
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"prealign_options must be a dict, got {type(options).__name__}")
    unknown = set(options or {}) - set(pre_opts)
    if unknown:
        raise ValueError(f"unknown prealign_options {sorted(unknown)}; known: {sorted(pre_opts)}")
    pre_opts.update(options or {})
    if pre_opts["prealigner"] not in PREALIGNERS:
        raise ValueError(f"prealign must be one of {list(PREALIGNERS)}, "
                         f"got {pre_opts['prealigner']!r}")
    return pre_opts


def plan_pairs(dataset, modalities, *, sample, seed, cache_dir, resolution, pairs=None):
    """Load the dataset (a name or folder) and choose its pairs.

    ``pairs`` (a list of :class:`~fastsyn.bench.pairs.Pair`) replaces the
    choice of :func:`~fastsyn.bench.pairs.make_pairs`; each must name
    subjects and modalities of the dataset.

    Returns
    -------
    dataset : Dataset
    pairs : list of Pair
    """
    from .pairs import make_pairs

    if isinstance(dataset, (str, Path)):
        from .datasets import load_dataset
        dataset = load_dataset(str(dataset), cache_dir=cache_dir, resolution=resolution)
    if pairs is not None:
        return dataset, _check_given_pairs(dataset, pairs)
    pairs = make_pairs(dataset, modalities, sample=sample, seed=seed)
    if not pairs:
        raise ValueError(f"dataset {dataset.name!r} gives no pairs")
    return dataset, pairs


def _check_given_pairs(dataset, pairs):
    """Explicit pairs, each checked against the dataset's subjects and modalities."""
    from .pairs import Pair

    names = {s.name for s in dataset.subjects}
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs must name at least one pair")
    for p in pairs:
        if not isinstance(p, Pair):
            raise TypeError(f"pairs must be Pair objects, got {type(p).__name__}")
        if p.fixed not in names or p.moving not in names:
            raise ValueError(f"pair {p.id} names a subject that dataset "
                             f"{dataset.name!r} does not have")
        if {p.fixed_modality, p.moving_modality} - set(dataset.modalities):
            raise ValueError(f"pair {p.id} names a modality that dataset "
                             f"{dataset.name!r} does not have")
    return pairs


def dataset_tag(dataset):
    """The data version that goes into every record key.

    The folder name (e.g. ``embedded-mono-2mm`` vs ``-1mm``), followed by
    ``-v<N>`` when the folder's stamp names a generator version (the
    embedded cohorts), so that records and prealignments of an older
    generator's images are never taken for the current ones.
    """
    root = getattr(dataset, "root", None)
    if not root:
        return dataset.name
    version = _generator_version(dataset)
    return Path(root).name + (f"-v{version}" if version is not None else "")


def _generator_version(dataset):
    """The generator version in a dataset folder's stamp, or None."""
    root = getattr(dataset, "root", None)
    if not root:
        return None
    from .layout import read_stamp
    try:
        version = read_stamp(Path(root)).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _prealign_folder(dataset):
    """Prealignment cache folder of a dataset: its name, versioned like the keys."""
    version = _generator_version(dataset)
    return dataset.name + (f"-v{version}" if version is not None else "")


def method_specs(methods, metric, levels, threads, data_tag, pre_opts, warn, masks="none"):
    """Available methods as task entries, each with its full configuration.

    The configuration records ``masks``: the switch's value for a method that
    uses masks with ``metric``, ``"none"`` for one that cannot (its records
    are then shared by every value of the switch).

    Returns
    -------
    specs : list of dict
        ``name``, ``options``, ``label``, ``config``.
    unavailable : dict
        Method name -> reason it is skipped.
    """
    specs, unavailable = _resolve_methods(methods, metric, warn)
    for s in specs:
        method = s.pop("_method")
        cfg = method.configuration(metric, levels, threads)
        cfg.update(data=data_tag, prealign=pre_opts,
                   masks=masks if method.accepts_masks(metric) else "none")
        s["config"] = cfg
    return specs, unavailable


def plan_tasks(dataset, pairs, specs, *, metric, levels, results_dir, cache, pre_opts,
               data_tag, threads=1, masks="none"):
    """One task (a plain dict of paths and options) per pair."""
    return [{
        "dataset": dataset.name, "pair": _pair_dict(pair),
        "fixed_files": _subject_files(dataset, pair.fixed, "truth_to_template"),
        "moving_files": _subject_files(dataset, pair.moving, "truth_from_template"),
        "methods": specs, "metric": metric, "levels": levels,
        "results_dir": str(results_dir), "cache_dir": str(cache),
        "prealign": pre_opts, "data": data_tag, "threads": threads, "masks": masks,
    } for pair in pairs]


class _Collector:
    """Counts the records that come back and records the tasks whose worker died."""

    def __init__(self, store, summary):
        self.store = store
        self.summary = summary

    def account(self, records):
        for rec in records:
            self.summary["ran"] += 1
            self.summary["ok" if rec["status"] == "ok" else "errors"] += 1

    def fail_task(self, task, exc):
        # the worker itself died: record every missing result of the pair
        text = "worker failed: " + _error_text(exc)
        recs = []
        for name, key in _task_keys(task):
            if self.store.has(key):
                continue
            rec = _error_record(task, name, text)
            self.store.put(rec)
            recs.append(rec)
        return recs


def local_workers(workers, threads, n_tasks, warn, cores=None):
    """Worker processes for a local run: ``workers * threads`` within the cores."""
    cores = available_cores() if cores is None else cores
    if workers is None:
        workers = max(1, cores // threads)
    if workers * threads > cores:
        capped = max(1, cores // threads)
        if capped != workers:
            warn(f"workers x threads = {workers * threads} exceeds the "
                 f"{cores} available cores; using {capped} worker(s)")
        workers = capped
    return min(workers, n_tasks)


def _dispatch(todo, *, dask, workers, threads, store, collector, bar, warn):
    """Run the tasks here, in a local process pool or on Dask."""
    if dask is not None:
        _run_dask(todo, dask, workers, store, collector.account, collector.fail_task, bar)
        return
    workers = local_workers(workers, threads, len(todo), warn)
    if workers == 1:
        for task in todo:
            collector.account(run_pair(task))
            bar.update(1)
    else:
        _run_pool(todo, workers, threads, collector.account, collector.fail_task, bar)


def run_benchmark(dataset, methods, metric, *, modalities=None, sample=None, seed=0,
                  threads=1, levels=(20, 20, 10), results_dir, workers=None, dask=None,
                  progress=True, resolution=2.0, cache_dir=None, prealign_options=None,
                  prealign="fastsyn", masks="none", pairs=None):
    """Run a cohort benchmark and store its records.

    Parameters
    ----------
    dataset : str, Path or Dataset
        A dataset name (``embedded-mono``, ``embedded-multi``), a folder in the
        layout of :mod:`fastsyn.bench.datasets`, or a loaded ``Dataset``.
    methods : str or sequence
        Method names (``fastsyn``, ``dipy``, ``ants``, ``greedy``) or
        :class:`~fastsyn.bench.methods.Method` objects; a comma-separated
        string is accepted. Unavailable methods are skipped with a warning and
        listed in the result.
    metric : {"cc", "mi"}
        Similarity metric for every method.
    modalities : sequence of str, optional
        Modalities to pair (multimodal datasets).
    sample : int, optional
        Number of pairs drawn reproducibly with ``seed``; all pairs when omitted.
    seed : int
        Seed of the pair sample.
    threads : int
        Threads per registration.
    levels : sequence of int
        Iterations per pyramid level, coarsest first.
    results_dir : str or Path
        Folder of the results store; the prealignment cache goes to
        ``results_dir/prealign/<dataset>`` unless ``cache_dir`` is given.
    workers : int, optional
        Concurrent pairs. Default: ``cores // threads``. ``workers * threads``
        is capped at the available cores for local pools.
    dask : None, "local", str or distributed.Client
        Run tasks on Dask instead of a local pool.
    progress : bool
        Show a tqdm progress bar.
    resolution : float
        Voxel size (mm) for the embedded cohorts when ``dataset`` is a name.
    cache_dir : str or Path, optional
        Folder for dataset building and prealignment caches.
    prealign_options : dict, optional
        ``level_iters``, ``sigmas``, ``factors``, ``nbins`` of the rigid
        prealignment.
    prealign : {"fastsyn", "dipy", "ants", "greedy"}
        Who prealigns each pair (see :mod:`fastsyn.bench.prealign`); recorded
        in every record's configuration, so the Baseline row and the caches
        of different prealigners stay apart.
    masks : {"none", "nonzero", "brain"}
        Masks handed to every method that accepts them (see
        :data:`MASK_MODES` and :func:`method_masks`); recorded as ``masks``
        in each method's configuration, so in its record key.  ``"none"``
        (the default) leaves every metric on the whole grid, as the methods
        run out of the box.
    pairs : list of Pair, optional
        Run these pairs instead of the ones ``modalities``, ``sample`` and
        ``seed`` choose (the MI study balances its cross-modality directions
        this way, see :func:`fastsyn.bench.study.study_pairs`).

    Returns
    -------
    dict
        ``dataset``, ``pairs`` (number of pairs), ``ran`` (records written),
        ``ok``, ``errors``, ``skipped`` (pairs already finished),
        ``unavailable`` (method -> reason), ``results_dir``.
    """
    levels, modalities = _check_run_args(metric, threads, workers, results_dir, levels,
                                         modalities, sample, seed, dask, masks)
    pre_opts = _prealign_options(prealign_options, prealign)
    warn = _warner(progress)
    store = ResultStore(results_dir)
    results_dir = store.root.resolve()
    dataset, pairs = plan_pairs(dataset, modalities, sample=sample, seed=seed,
                                cache_dir=cache_dir, resolution=resolution,
                                pairs=pairs)
    data_tag = dataset_tag(dataset)
    specs, unavailable = method_specs(methods, metric, levels, threads, data_tag, pre_opts,
                                      warn, masks)
    cache = Path(cache_dir) / "prealign" if cache_dir else results_dir / "prealign"
    tasks = plan_tasks(dataset, pairs, specs, metric=metric, levels=levels,
                       results_dir=results_dir,
                       cache=(cache / _prealign_folder(dataset)).resolve(),
                       pre_opts=pre_opts, data_tag=data_tag, threads=threads, masks=masks)
    todo = [t for t in tasks if not all(store.has(k) for _, k in _task_keys(t))]
    summary = {"dataset": dataset.name, "pairs": len(tasks),
               "skipped": len(tasks) - len(todo), "ran": 0, "ok": 0, "errors": 0,
               "unavailable": unavailable, "results_dir": str(results_dir)}
    if todo:
        _run_with_progress(todo, summary, desc=f"{dataset.name} [{metric}]",
                           progress=progress, dask=dask, workers=workers, threads=threads,
                           store=store, warn=warn)
    return summary


def _run_with_progress(todo, summary, *, desc, progress, dask, workers, threads, store, warn):
    """Dispatch ``todo`` behind a tqdm bar, counting outcomes into ``summary``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not progress, unit="pair", desc=desc)
    try:
        _dispatch(todo, dask=dask, workers=workers, threads=threads, store=store,
                  collector=_Collector(store, summary), bar=bar, warn=warn)
    finally:
        bar.close()


def _run_pool(todo, workers, threads, account, fail_task, bar):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # OpenMP runtimes are not fork-safe
    with _ThreadEnv(threads):
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        futures = {pool.submit(run_pair, t): t for t in todo}
    try:
        for fut in as_completed(futures):
            try:
                account(fut.result())
            except Exception as exc:
                account(fail_task(futures[fut], exc))
            bar.update(1)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_dask(todo, dask, workers, store, account, fail_task, bar):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise RuntimeError(
            "Dask execution needs the 'distributed' package "
            "(pip install dask distributed)") from exc
    own = []
    if isinstance(dask, Client):
        client = dask
    elif isinstance(dask, LocalCluster):
        client = Client(dask)
        own.append(client)
    elif dask == "local":
        n = workers or max(1, available_cores())
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        own += [client, cluster]
    elif isinstance(dask, str) and dask:
        client = Client(dask)
        own.append(client)
    else:
        raise ValueError(
            f"dask must be 'local', a scheduler address or a Client, got {dask!r}")
    try:
        futures = client.map(run_pair, todo, pure=False)
        index = {f.key: t for f, t in zip(futures, todo)}
        try:
            for fut in as_completed(futures):
                try:
                    records = fut.result()
                    # workers may not share our file system: keep a local copy,
                    # but never replace a finished local record
                    for rec in records:
                        key = make_key(rec["dataset"], rec["pair"], rec["method"],
                                       rec["config"])
                        local = store.get(key)
                        if not store.has(key) and (
                                local is None or local.get("status") != rec["status"]):
                            store.put(rec)
                    account(records)
                except Exception as exc:
                    account(fail_task(index[fut.key], exc))
                bar.update(1)
        except KeyboardInterrupt:
            client.cancel(futures)
            raise
    finally:
        for obj in own:
            obj.close()
