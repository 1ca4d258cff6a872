"""Agreement with ANTs: how far fastsyn's displacement fields are from ANTs'.

For one prealigned pair, ANTs ``SyNOnly`` (the harness's ``ants`` method: CC
radius 4 or Mattes 32 bins, step 0.2, flow variance 3), fastsyn in DIPY's
configuration (``fastsyn``) and fastsyn in its ANTs-faithful configuration
(``fastsyn-ants``) register the same arrays with the same metric parameters
and the same iterations per level.  Each fastsyn forward displacement is then
compared with ANTs' inside the fixed brain mask:

``rms_mm``
    root mean square of ``|u_fastsyn(x) - u_ants(x)|`` over the mask (mm);
``p95_mm``, ``max_mm``
    95th percentile and maximum of the same distance.

Both fields are on the fixed grid in world (RAS) millimetres and pull the
moving image: fixed point ``x`` corresponds to the moving point ``x + u(x)``
(ANTs' file is read by :func:`fastsyn.bench.methods._itk_displacement_to_ras`;
``tests/test_agreement.py`` checks that both conventions warp an image
identically).  A configuration that reproduces what ANTs does gives a smaller
distance; label Dice, target error (when the truth is known) and time are
kept for every method so that agreement and accuracy can be read together.

Inputs: the pairs shipped with fastsyn (``pair3d``, ``pair3d_multimodal``: one
grid, no prealignment needed) and pairs of the embedded cohorts prealigned by
the harness (:func:`fastsyn.bench.run.prealign_task`, cached).
"""

import logging
import time
from pathlib import Path

import numpy as np

from fastsyn.bench.store import write_json

__all__ = ["CONFIGS", "REFERENCE", "field_distance", "agreement_pair", "package_pair",
           "cohort_pairs", "run_agreement", "format_agreement", "agreement_command",
           "summarize"]

#: The fastsyn configurations compared with ANTs (harness method names).
CONFIGS = ("fastsyn", "fastsyn-ants")
#: The reference method.
REFERENCE = "ants"
#: Levels of the agreement runs unless given (those of ``fastsyn bench run``).
DEFAULT_LEVELS = (20, 20, 10)


# ----------------------------------------------------------------- measures
def field_distance(field, reference, mask=None):
    """Distance between two displacement fields on one grid.

    Parameters
    ----------
    field, reference : ndarray, shape (X, Y, Z, 3)
        Displacements in world millimetres.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels compared (all when omitted).

    Returns
    -------
    dict
        ``rms_mm``, ``mean_mm``, ``p95_mm``, ``max_mm`` of the pointwise
        Euclidean distance, and ``n_voxels``.
    """
    a = np.asarray(field, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2 or a.shape[-1] != a.ndim - 1:
        raise ValueError(f"field has shape {a.shape} and reference {b.shape}; expected "
                         "the same (..., dim) displacement shape")
    m = np.ones(a.shape[:-1], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != a.shape[:-1]:
        raise ValueError(f"mask has shape {m.shape}, expected {a.shape[:-1]}")
    if not m.any():
        raise ValueError("mask selects no voxel")
    d = np.sqrt(((a[m] - b[m]) ** 2).sum(axis=-1))
    return {"rms_mm": float(np.sqrt((d * d).mean())), "mean_mm": float(d.mean()),
            "p95_mm": float(np.percentile(d, 95)), "max_mm": float(d.max()),
            "n_voxels": int(m.sum())}


def _method_summary(result, pair, metrics):
    """The per-method entry of an agreement record (no arrays)."""
    out = {"seconds": float(result.seconds), "threads": int(result.threads),
           "dice": metrics["dice_mean"], "ncc": metrics["ncc"], "nmi": metrics["nmi"],
           "folding_pct": metrics.get("folding_pct"),
           "tre_mean": metrics.get("tre_mean")}
    if result.displacement is not None:
        mag = np.sqrt((np.asarray(result.displacement) ** 2).sum(-1))[pair["mask"]]
        out["rms_displacement_mm"] = float(np.sqrt((mag * mag).mean()))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in out.items()}


def _evaluate(pair, result):
    from .evaluate import evaluate_pair

    return evaluate_pair(pair["fixed"], result.warped, pair["fixed_labels"],
                         result.warped_labels, pair["mask"], displacement=result.displacement,
                         affine=pair["affine"], true_displacement=pair.get("truth"),
                         per_label=False)


def agreement_pair(pair, *, metric, levels=DEFAULT_LEVELS, threads=1, configs=CONFIGS,
                   reference=REFERENCE, log=None):
    """Register one prealigned pair with ANTs and each fastsyn configuration.

    Parameters
    ----------
    pair : dict
        ``fixed``, ``moving`` (3D arrays on one grid), ``affine`` (its 4x4
        grid-to-world matrix), ``fixed_labels``, ``moving_labels``, ``mask``
        (bool brain mask of the fixed image) and optionally ``truth`` (true
        displacement, world mm) and ``name``.
    metric : {"cc", "mi"}
        CC (radius 4) or mutual information (32 bins) for every method.
    levels : sequence of int, optional
        Iterations per pyramid level, coarsest first, for every method.
    threads : int, optional
        Threads of every method.
    configs : sequence of str, optional
        Harness methods compared with the reference.
    reference : str, optional
        Harness method whose field is the reference (``ants``).
    log : callable, optional
        Progress messages.

    Returns
    -------
    dict
        ``pair``, ``metric``, ``levels``, ``threads``, ``reference`` (the
        reference method's ``seconds``, ``dice``, ... and
        ``rms_displacement_mm``) and ``configs`` (per configuration: the same
        measures plus ``distance``, see :func:`field_distance`; ``None`` when
        a field is missing).
    """
    from .methods import get_method

    logging.getLogger("dipy").setLevel(logging.WARNING)
    log = log or (lambda msg: None)
    levels = [int(v) for v in levels]
    fields, summaries = {}, {}
    for name in (reference, *configs):
        method = get_method(name)
        ok, reason = method.available(metric)
        if not ok:
            raise RuntimeError(f"method {name!r} is unavailable: {reason}")
        log(f"  {pair.get('name', 'pair')} {metric}: {name} ...")
        res = method.run(pair["fixed"], pair["moving"], pair["affine"], pair["affine"],
                         pair["moving_labels"], metric=metric, levels=levels,
                         threads=threads)
        summaries[name] = _method_summary(res, pair, _evaluate(pair, res))
        summaries[name]["config"] = method.configuration(metric, levels, threads)
        fields[name] = res.displacement
    if fields[reference] is None:
        raise RuntimeError(f"{reference} returned no displacement field on the fixed grid")
    for name in configs:
        summaries[name]["distance"] = (None if fields[name] is None else
                                       field_distance(fields[name], fields[reference],
                                                      pair["mask"]))
    # how far the two fastsyn configurations are from each other: the size of
    # what the ANTs options change, to read the distances to ANTs against
    if len(configs) == 2 and all(fields[c] is not None for c in configs):
        between = field_distance(fields[configs[0]], fields[configs[1]], pair["mask"])
    else:
        between = None
    return {"pair": pair.get("name", "pair"), "direction": pair.get("direction"),
            "dataset": pair.get("dataset"), "shape": list(pair["fixed"].shape),
            "spacing": [float(v) for v in np.sqrt((pair["affine"][:3, :3] ** 2).sum(0))],
            "metric": metric, "levels": levels, "threads": int(threads),
            "reference": {"method": reference, **summaries[reference]},
            "configs": {c: summaries[c] for c in configs}, "between_configs": between}


# ------------------------------------------------------------------- inputs
def package_pair(name):
    """A pair shipped with fastsyn as the input of :func:`agreement_pair`.

    Parameters
    ----------
    name : str
        ``pair3d`` or ``pair3d_multimodal`` (:data:`fastsyn.data.PAIRS`).

    Returns
    -------
    dict
    """
    from fastsyn.data import PAIRS, pair_file

    res = pair_file(name)
    if res is None:
        raise ValueError(f"unknown pair {name!r}; shipped pairs: {', '.join(PAIRS)}")
    with res.open("rb") as fh, np.load(fh) as z:
        d = {k: z[k] for k in z.files}
    if not np.allclose(d["static_affine"], d["moving_affine"]):
        raise ValueError(f"pair {name!r} has two grids; expected a prealigned pair")
    return {"name": name, "dataset": "fastsyn.data", "direction": name,
            "fixed": d["static"].astype(np.float64), "moving": d["moving"].astype(np.float64),
            "affine": np.asarray(d["static_affine"], dtype=np.float64),
            "fixed_labels": d["static_labels"].astype(np.int32),
            "moving_labels": d["moving_labels"].astype(np.int32),
            "mask": d["static_mask"].astype(bool),
            "truth": d["true_disp"].astype(np.float64) if "true_disp" in d else None}


def cohort_pairs(dataset="embedded-multi", *, sample=2, seed=0, resolution=3.0,
                 cache_dir=None, modalities=None):
    """Prealigned pairs of a cohort, as inputs of :func:`agreement_pair`.

    The pairs and their rigid prealignment are the harness's
    (:func:`fastsyn.bench.run.plan_pairs`, :func:`~fastsyn.bench.run.prealign_task`),
    so the inputs are those of ``fastsyn bench run``.

    Parameters
    ----------
    dataset : str
        ``embedded-mono``, ``embedded-multi`` or a dataset folder.
    sample : int or None, optional
        Pairs drawn with ``seed`` (all when None).
    seed : int, optional
    resolution : float, optional
        Voxel size (mm) of the embedded cohorts.
    cache_dir : str or Path, optional
        Cohort and prealignment cache (default: fastsyn's cache folder).
    modalities : sequence of str, optional
        Modalities to pair.

    Yields
    ------
    dict
    """
    from .datasets import default_cache_root
    from .run import _prealign_options, plan_pairs, plan_tasks, prealign_task

    root = Path(cache_dir) if cache_dir else default_cache_root()
    ds, pairs = plan_pairs(dataset, modalities, sample=sample, seed=seed, cache_dir=cache_dir,
                           resolution=resolution)
    tag = Path(ds.root).name if getattr(ds, "root", None) else ds.name
    tasks = plan_tasks(ds, pairs, [], metric=None, levels=None, results_dir=root,
                       cache=(root / "prealign" / ds.name).resolve(),
                       pre_opts=_prealign_options(None), data_tag=tag)
    for pair, task in zip(pairs, tasks):
        data = prealign_task(task)[1]
        yield {"name": pair.id, "dataset": tag,
               "direction": f"{pair.fixed_modality}<-{pair.moving_modality}",
               "fixed": data["fixed"], "moving": data["moving"], "affine": data["affine"],
               "fixed_labels": data["fixed_labels"], "moving_labels": data["moving_labels"],
               "mask": data["mask"], "truth": data["truth"]}


# --------------------------------------------------------------------- runs
def run_agreement(pairs, *, metrics=("cc", "mi"), levels=DEFAULT_LEVELS, threads=1,
                  configs=CONFIGS, reference=REFERENCE, log=None):
    """:func:`agreement_pair` for every pair and metric.

    Parameters
    ----------
    pairs : iterable of dict
        Inputs (see :func:`package_pair`, :func:`cohort_pairs`).
    metrics : sequence of {"cc", "mi"}, optional
    levels, threads, configs, reference, log
        As in :func:`agreement_pair`.

    Returns
    -------
    dict
        ``records`` (one per pair and metric; a failed one holds ``error``),
        ``summary`` (:func:`summarize`) and ``environment``.
    """
    from .speed import _environment

    bad = [m for m in metrics if m not in ("cc", "mi")]
    if not metrics or bad:
        raise ValueError(f"metrics must list 'cc' and/or 'mi', got {metrics!r}")
    records = []
    for pair in pairs:
        for metric in metrics:
            start = time.perf_counter()
            try:
                rec = agreement_pair(pair, metric=metric, levels=levels, threads=threads,
                                     configs=configs, reference=reference, log=log)
            except Exception as exc:  # recorded; the other pairs still run
                rec = {"pair": pair.get("name"), "direction": pair.get("direction"),
                       "dataset": pair.get("dataset"), "metric": metric,
                       "error": f"{type(exc).__name__}: {exc}"}
            rec["wall_s"] = time.perf_counter() - start
            records.append(rec)
    return {"records": records, "summary": summarize(records, configs),
            "levels": [int(v) for v in levels], "threads": int(threads),
            "configs": list(configs), "reference": reference,
            "environment": _environment(int(threads))}


def _finite(values):
    return [v for v in values if v is not None and np.isfinite(v)]


def _mean(values):
    values = _finite(values)
    return float(np.mean(values)) if values else None


def _median(values):
    values = _finite(values)
    return float(np.median(values)) if values else None


def summarize(records, configs=CONFIGS):
    """Means over the successful records, per metric and over all.

    Returns
    -------
    list of dict
        One row per (metric, method): ``metric`` (``"all"`` for the overall
        rows), ``method``, ``n``, ``rms_mm`` (mean; None for the reference),
        ``rms_median_mm`` (a diverged registration dominates the mean, not
        the median), ``dice``, ``seconds``, ``closer`` (how many records have this
        configuration nearer to ANTs than the other one).
    """
    ok = [r for r in records if "error" not in r]
    rows = []
    for metric in [*sorted({r["metric"] for r in ok}), "all"]:
        recs = [r for r in ok if metric in ("all", r["metric"])]
        if not recs:
            continue
        ref = [r["reference"] for r in recs]
        rows.append({"metric": metric, "method": ref[0]["method"], "n": len(recs),
                     "rms_mm": None, "rms_median_mm": None,
                     "dice": _mean([x["dice"] for x in ref]),
                     "seconds": _mean([x["seconds"] for x in ref]), "closer": None})
        for c in configs:
            entries = [r["configs"][c] for r in recs if c in r["configs"]]
            rms = [(e.get("distance") or {}).get("rms_mm") for e in entries]
            closer = 0
            for r in recs:
                mine = (r["configs"][c].get("distance") or {}).get("rms_mm")
                others = [(r["configs"][o].get("distance") or {}).get("rms_mm")
                          for o in configs if o != c]
                if mine is not None and all(o is not None and mine < o for o in others):
                    closer += 1
            rows.append({"metric": metric, "method": c, "n": len(entries),
                         "rms_mm": _mean(rms), "rms_median_mm": _median(rms),
                         "dice": _mean([e["dice"] for e in entries]),
                         "seconds": _mean([e["seconds"] for e in entries]),
                         "closer": closer})
    return rows


def _cell(value, fmt):
    if value is None:
        width = fmt.split(".")[0]
        return format("-", f">{width}" if width else "")
    return format(value, fmt)


def format_agreement(result):
    """The agreement as a text table (one row per record and method)."""
    head = (f"{'pair':<30} {'direction':<12} {'metric':<6} {'method':<13} "
            f"{'RMS to ANTs mm':>14} {'p95 mm':>7} {'Dice':>6} {'TRE mm':>7} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in result["records"]:
        key = f"{str(r.get('pair'))[:30]:<30} {str(r.get('direction'))[:12]:<12} {r['metric']:<6}"
        if "error" in r:
            lines.append(f"{key} error: {r['error'][:80]}")
            continue
        entries = [(r["reference"]["method"], r["reference"])]
        entries += list(r["configs"].items())
        for name, e in entries:
            dist = e.get("distance") or {}
            lines.append(f"{key} {name:<13} {_cell(dist.get('rms_mm'), '14.3f')} "
                         f"{_cell(dist.get('p95_mm'), '7.3f')} {_cell(e.get('dice'), '6.4f')} "
                         f"{_cell(e.get('tre_mean'), '7.3f')} {_cell(e.get('seconds'), '7.2f')}")
    lines += ["", "means (RMS: mean and median over records; closer: records where this "
              "configuration is nearer to ANTs):",
              f"{'metric':<6} {'method':<13} {'n':>3} {'RMS to ANTs mm':>14} {'median':>7} "
              f"{'Dice':>6} {'time s':>7} {'closer':>6}"]
    for s in result["summary"]:
        lines.append(f"{s['metric']:<6} {s['method']:<13} {s['n']:>3} "
                     f"{_cell(s['rms_mm'], '14.3f')} {_cell(s.get('rms_median_mm'), '7.3f')} "
                     f"{_cell(s['dice'], '6.4f')} "
                     f"{_cell(s['seconds'], '7.2f')} "
                     f"{'-' if s['closer'] is None else s['closer']:>6}")
    return "\n".join(lines)


def agreement_command(*, pairs=("pair3d", "pair3d_multimodal"), dataset=None, sample=2,
                      seed=0, resolution=3.0, cache_dir=None, metrics=("cc", "mi"),
                      levels=DEFAULT_LEVELS, threads=1, out=None, log=None):
    """Run, print and optionally save the agreement (``fastsyn bench agreement``).

    Parameters
    ----------
    pairs : sequence of str, optional
        Shipped pairs to use (may be empty).
    dataset : str, optional
        Also use ``sample`` prealigned pairs of this cohort.
    sample, seed, resolution, cache_dir
        See :func:`cohort_pairs`.
    metrics : sequence of {"cc", "mi"}, optional
    levels : sequence of int, optional
    threads : int, optional
    out : str or Path, optional
        JSON file to write.
    log : callable, optional
        Progress messages (default: print and flush).

    Returns
    -------
    dict
        See :func:`run_agreement`.
    """
    if log is None:
        def log(msg):
            print(msg, flush=True)
    inputs = [package_pair(p) for p in pairs]
    if not inputs and dataset is None:
        raise ValueError("give at least one pair or a dataset")

    def every_pair():
        yield from inputs
        if dataset is not None:
            yield from cohort_pairs(dataset, sample=sample, seed=seed, resolution=resolution,
                                    cache_dir=cache_dir)

    log(f"fastsyn bench agreement: {', '.join(CONFIGS)} against {REFERENCE}, metrics "
        f"{', '.join(metrics)}, levels {tuple(levels)}, {threads} thread(s)")
    result = run_agreement(every_pair(), metrics=tuple(metrics), levels=levels,
                           threads=threads, log=log)
    print(format_agreement(result))
    if out:
        print(f"wrote {write_json(out, result)}")
    return result
