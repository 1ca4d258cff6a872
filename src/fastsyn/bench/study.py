"""The MIMetric accuracy study: fastsyn MI settings against ANTs and greedy.

A study registers the same prealigned cross-modality pairs with a grid of
fastsyn MI settings and with two anchors, ANTs SyN Mattes (32 bins) and
greedy NMI, and summarises per setting: mean label Dice ± std, the mean of
every direction (``t1←t2``: T1 fixed, T2 moving), the smallest per-direction
gain over ANTs, TRE, SD log|J|, folding and time.

Steps (each a function, so the CLI and the report reuse them):

1. :func:`study_pairs` draws the pairs, balanced over the directions;
2. :func:`study_grid` lists the settings: the current defaults, one factor
   changed at a time (:data:`FACTORS`), fastsyn's ANTs mode, and the anchors;
3. :func:`run_study` runs every setting through :func:`run_benchmark`, so
   the records live in the harness's results store (a rerun skips them), and
   writes the plan (settings and record keys) to ``study-<data>-<levels>.json``;
   with ``combine=True`` it then runs the combinations of the factors whose
   best level beat the default (:func:`combine_winners`);
4. :func:`summarize` turns a plan and the store into rows and
   :func:`format_study` prints them; the HTML report reads the same plans.

Not studied: the Parzen window on the static side (cubic, as now, against
Mattes/ITK's box window) needs a change of the MI kernel.
"""

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "FACTORS",
    "GRIDS",
    "NOT_STUDIED",
    "Setting",
    "current_defaults",
    "parse_setting",
    "study_grid",
    "ANCHORS",
    "anchor_settings",
    "study_pairs",
    "split_halves",
    "HALVES",
    "run_study",
    "summarize",
    "combine_winners",
    "format_study",
    "not_run",
    "read_plans",
]

#: Levels of each studied factor; the sweep changes one factor at a time
#: away from the current default (which is one of its levels).
FACTORS = {
    "nbins": (16, 24, 32, 48),
    "masks": ("none", "nonzero", "brain"),
    "mask_rule": ("either", "both"),
    "mask_margin": (1, 0, 2),
    "auto_masks": (True, False),
    "clip": ((0.5, 99.5), (0.0, 100.0), (1.0, 99.0)),
    "sigma_diff": (1.0, 1.5, 2.0, 3.0),
    "step_length": (0.25, 0.4, 0.5),
    "sampling": (None, 0.3),
    "pyramid": ("dipy", "ants"),
    "ss_sigma_factor": (0.2, 0.5, 1.0),
    "total_sigma": (0.0, 0.3, 0.5),
    "inv_iter": (20, 5),
    "reinvert": (True, False, "coarse"),
    "inversion_sweeps": (0, 2, 1),
    "fused_inversion": (False, True),
    "repair_folds": (True, False),
    "step_percentile": (100.0, 99.5, 99.0),
    "moving_share": (0.5, 0.65, 0.75),
    # 0.65: the default moving_share on every level (one share throughout)
    "coarse_moving_share": (0.65, 1.0),
    "partial_volume": (False, True, "coarse"),
}
#: Factors the sweep changes, per grid name (``none``: the default only).
# (mask_rule and mask_margin matter only with masks, auto_masks only where a
# skull-stripped image meets a head: they are --settings, not sweeps)
_MASK_ONLY = ("mask_rule", "mask_margin", "auto_masks")
GRIDS = {"default": tuple(f for f in FACTORS if f not in _MASK_ONLY),
         "quick": ("nbins", "masks"), "none": (),
         "syn": ("sigma_diff", "step_length", "pyramid", "ss_sigma_factor", "total_sigma",
                 "reinvert", "inversion_sweeps", "fused_inversion", "repair_folds",
                 "step_percentile", "moving_share", "coarse_moving_share")}
#: The quick grid's levels (a first look: the two factors that moved most).
_QUICK_LEVELS = {"nbins": (16,), "masks": ("brain",)}
#: Factors a combination of winners may take (the MIMetric and SDR defaults;
#: masks are data, not a default).
_COMBINABLE = ("nbins", "clip", "sigma_diff", "step_length", "sampling", "pyramid",
               "ss_sigma_factor", "total_sigma", "inv_iter", "reinvert", "inversion_sweeps",
               "fused_inversion", "repair_folds", "step_percentile", "moving_share",
               "coarse_moving_share", "partial_volume")
NOT_STUDIED = ("Parzen window on the static side (cubic vs box as in Mattes/ITK): "
               "needs a change of the MI kernel (fastsyn/_kernels/mi.pyx)")
#: Harness option of a factor where the names differ (CC has its own sigma_diff).
_OPTION = {"sigma_diff": "mi_sigma_diff", "inversion_sweeps": "mi_inversion_sweeps",
           "fused_inversion": "mi_fused_inversion"}
#: Smallest mean-Dice gain over the default that makes a level a winner.
WIN_MARGIN = 0.001
#: Confidence of the paired intervals against the anchors.
CONFIDENCE = 0.95
_PLAN_VERSION = 1
#: The two halves of a study's pairs: settings are chosen on the first and
#: reported on the second.
HALVES = ("tune", "report")


# ------------------------------------------------------------------ settings
@dataclass
class Setting:
    """One row of the study.

    Attributes
    ----------
    name : str
        ``default``, ``nbins=16``, ``nbins=16+clip=1:99``, ``ANTs mode``,
        ``ANTs Mattes``, ...
    factor : str
        The factor it varies (``default``, a key of :data:`FACTORS`,
        ``combination``, ``mode``) or ``anchor``.
    method : str
        Harness method (``fastsyn``, ``fastsyn-ants``, ``ants``, ``greedy``).
    options : dict
        Method options that differ from the method's defaults.
    masks : str
        The harness's ``masks`` switch for this row.
    """

    name: str
    factor: str
    method: str
    options: dict = field(default_factory=dict)
    masks: str = "none"

    @property
    def anchor(self):
        """Whether this is a reference method rather than a fastsyn setting."""
        return self.factor == "anchor"

    def to_dict(self):
        return {"name": self.name, "factor": self.factor, "method": self.method,
                "options": dict(self.options), "masks": self.masks}


def current_defaults():
    """The current value of every factor (the harness's ``fastsyn`` defaults)."""
    from .methods import FastsynMethod, syn_default

    d = dict(FastsynMethod.defaults)
    for name in FastsynMethod.resolved_options:
        if d[name] is None:  # the registration's own default for MI
            d[name] = syn_default("mi", name)
    return {"nbins": int(d["nbins"]), "masks": "none", "mask_rule": str(d["mask_rule"]),
            "mask_margin": int(d["mask_margin"]), "auto_masks": bool(d["auto_masks"]),
            "clip": tuple(float(v) for v in d["clip"]),
            "sigma_diff": float(d["mi_sigma_diff"]), "step_length": float(d["step_length"]),
            "sampling": None if d["sampling"] is None else float(d["sampling"]),
            "pyramid": str(d["pyramid"]), "ss_sigma_factor": float(d["ss_sigma_factor"]),
            "total_sigma": float(d["total_sigma"]),
            "inv_iter": int(d["inv_iter"]), "reinvert": _normal("reinvert", d["reinvert"]),
            "inversion_sweeps": int(d["mi_inversion_sweeps"]),
            "fused_inversion": bool(d["mi_fused_inversion"]),
            "repair_folds": bool(d["repair_folds"]),
            "step_percentile": float(d["step_percentile"]),
            "moving_share": float(d["moving_share"]),
            "coarse_moving_share": _normal("coarse_moving_share", d["coarse_moving_share"]),
            "partial_volume": _normal("partial_volume", d["partial_volume"])}


def _normal(factor, value):
    """A factor's value in its canonical type (so equal settings share a key)."""
    if factor in ("nbins", "inv_iter"):
        return int(value)
    if factor == "mask_margin":
        from fastsyn._validation import check_integer
        return check_integer("mask_margin", value, low=0)
    if factor in ("reinvert", "partial_volume") and value == "coarse":
        return value
    if factor in ("reinvert", "fused_inversion", "repair_folds", "auto_masks", "partial_volume"):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{factor} must be True or False, got {value!r}")
        return bool(value)
    if factor == "pyramid":
        if value not in FACTORS["pyramid"]:
            raise ValueError(f"pyramid must be one of {FACTORS['pyramid']}, got {value!r}")
        return value
    if factor == "mask_rule":
        from fastsyn.metrics.mi import MASK_RULES
        if value not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {value!r}")
        return value
    if factor == "masks":
        from .run import MASK_MODES
        if value not in MASK_MODES:
            raise ValueError(f"masks must be one of {MASK_MODES}, got {value!r}")
        return value
    if factor == "clip":
        lo, hi = (float(v) for v in value)
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"clip must be percentiles 0 <= lo < hi <= 100, got {value!r}")
        return (lo, hi)
    if factor == "sampling":
        return None if value is None else float(value)
    if factor == "coarse_moving_share":
        if value is None:  # the registration's own default for MI
            from .methods import syn_default

            value = syn_default("mi", factor)
        return None if value is None else float(value)
    if factor == "inversion_sweeps":
        return 0 if value is None else int(value)
    if factor in ("sigma_diff", "step_length", "ss_sigma_factor", "total_sigma", "step_percentile",
                  "moving_share"):
        return float(value)
    raise ValueError(f"unknown factor {factor!r}; known: {sorted(FACTORS)}")


def _text(factor, value):
    if factor == "clip":
        return ":".join(f"{v:g}" for v in value)
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fastsyn_setting(changes, factor):
    """A fastsyn setting from factor values (those equal to the default dropped)."""
    defaults = current_defaults()
    changes = {k: _normal(k, v) for k, v in changes.items()}
    changes = {k: v for k, v in changes.items() if v != defaults[k]}
    if not changes:
        return Setting("default", "default", "fastsyn")
    order = [k for k in FACTORS if k in changes]
    name = "+".join(f"{k}={_text(k, changes[k])}" for k in order)
    options = {_OPTION.get(k, k): (list(v) if k == "clip" else v)
               for k, v in changes.items() if k != "masks"}
    return Setting(name, factor if len(changes) == 1 else "combination", "fastsyn",
                   options, changes.get("masks", "none"))


def ants_mode_setting():
    """fastsyn's ANTs-faithful configuration (:func:`fastsyn.ants_like`, 32 bins)."""
    return Setting("ANTs mode", "mode", "fastsyn-ants")


def _parse_value(factor, text):
    text = text.strip()
    if factor in ("masks", "mask_rule", "pyramid"):
        return _normal(factor, text)
    if factor in ("reinvert", "partial_volume") and text.lower() == "coarse":
        return "coarse"
    if factor in ("reinvert", "fused_inversion", "repair_folds", "auto_masks", "partial_volume"):
        flag = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
        if flag is None:
            raise ValueError(f"bad value {text!r} for {factor} (true or false)")
        return flag
    if factor in ("sampling", "coarse_moving_share") and text.lower() == "none":
        return None
    try:
        if factor == "clip":
            lo, hi = text.replace(",", ":").split(":")
            value = (float(lo), float(hi))
        else:
            value = (int(text) if factor in ("nbins", "inv_iter", "inversion_sweeps",
                                             "mask_margin")
                     else float(text))
    except ValueError:
        raise ValueError(f"bad value {text!r} for {factor}") from None
    return _normal(factor, value)


def parse_setting(text):
    """A setting from its name.

    Parameters
    ----------
    text : str
        ``default``, ``ants-mode`` (or ``ANTs mode``) or factor values joined
        by ``+``: ``nbins=16``, ``masks=brain+nbins=24``, ``clip=1:99``,
        ``sigma_diff=3``, ``step_length=0.35``, ``sampling=0.3``.

    Returns
    -------
    Setting
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a setting must be a non-empty string, got {text!r}")
    t = text.strip()
    if t == "default":
        return _fastsyn_setting({}, "default")
    if t.lower().replace(" ", "-") == "ants-mode":
        return ants_mode_setting()
    changes = {}
    for item in t.split("+"):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in FACTORS:
            raise ValueError(f"bad setting item {item!r} in {text!r}: expected "
                             f"FACTOR=VALUE with FACTOR one of {sorted(FACTORS)}")
        if key in changes:
            raise ValueError(f"factor {key!r} given twice in {text!r}")
        changes[key] = _parse_value(key, value)
    return _fastsyn_setting(changes, next(iter(changes)))


def study_grid(grid="default"):
    """The fastsyn settings of a grid: the default, then one factor at a time.

    Parameters
    ----------
    grid : {"default", "quick", "none"}
        ``default``: every level of :data:`FACTORS` and the ANTs mode;
        ``quick``: 16 bins and brain masks; ``none``: the default alone.

    Returns
    -------
    list of Setting
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
    defaults = current_defaults()
    out = [_fastsyn_setting({}, "default")]
    for factor in GRIDS[grid]:
        levels = _QUICK_LEVELS[factor] if grid == "quick" else FACTORS[factor]
        for level in levels:
            if _normal(factor, level) != defaults[factor]:
                out.append(_fastsyn_setting({factor: level}, factor))
    if grid == "default":
        out.append(ants_mode_setting())
    return out


#: Anchor method -> its rows' name.
ANCHORS = {"ants": "ANTs Mattes", "greedy": "greedy NMI"}


def anchor_settings(masks=("none",), methods=tuple(ANCHORS)):
    """ANTs SyN Mattes (32 bins) and greedy NMI (or those of ``methods``),
    once per masks value."""
    unknown = [m for m in methods if m not in ANCHORS]
    if unknown or not methods:
        raise ValueError(f"anchors must name some of {', '.join(ANCHORS)}, got "
                         f"{', '.join(map(str, methods)) or 'none'}")
    out = []
    for m in masks:
        tag = "" if m == "none" else f" [{m}]"
        out += [Setting(f"{ANCHORS[a]}{tag}", "anchor", a, {}, m)
                for a in ANCHORS if a in methods]
    return out


# --------------------------------------------------------------------- pairs
def _direction(pair):
    return f"{pair.fixed_modality}←{pair.moving_modality}"


def study_pairs(dataset, sample=None, seed=0, half=None, pairs_with=None):
    """Cross-modality pairs, balanced over the directions.

    On a dataset whose subjects all have every modality (the embedded
    cohorts), the harness's random sample of ordered pairs leaves directions
    out (seed 0, 6 pairs of embedded-multi: 3 of its 6 directions), so the
    study takes the subject pairs of :func:`~fastsyn.bench.pairs.make_pairs`
    in a seeded order and gives them the directions in turn (``t1←t2``,
    ``t1←flair``, ...); after one round over the subject pairs the next
    round shifts the directions by one.  ``sample`` = 6 covers the 6
    directions of three modalities once, 12 twice, each pair a different
    subject pair; a smaller sample is a prefix of a larger one.

    On a sparse dataset (subjects with different modalities, e.g. ``real``)
    every pair :func:`~fastsyn.bench.pairs.make_pairs` allows is a
    candidate; they are taken one direction after the other in turn, in a
    seeded order within each direction.

    Parameters
    ----------
    dataset : Dataset
        A dataset with at least two modalities.
    sample : int, optional
        Number of pairs; every candidate pair when omitted.
    seed : int
        Seed of the order of the pairs.
    half : {None, "tune", "report"}, optional
        One half of the pairs (:func:`split_halves`): settings are chosen on
        ``tune`` and reported on ``report``.
    pairs_with : sequence of str, optional
        Keep only the candidate pairs with one of these subjects on either
        side (before the sample and the split): the pairs a subject added to
        a set brings, without rerunning the others.

    Returns
    -------
    list of Pair
    """
    from .pairs import check_sample_seed

    check_sample_seed(sample, seed)
    keep = _check_pairs_with(dataset, pairs_with)
    if half not in (None, *HALVES):
        raise ValueError(f"half must be one of {HALVES} or None, got {half!r}")
    mods = list(dataset.modalities)
    if len(mods) < 2:
        raise ValueError(f"dataset {dataset.name!r} has one modality; the MI study "
                         "needs cross-modality pairs")
    if _sparse(dataset):
        out = _sparse_pairs(dataset, sample, seed, keep)
    else:
        out = _rotated_pairs(dataset, mods, sample, seed, keep)
    return out if half is None else split_halves(out)[half]


def _check_pairs_with(dataset, pairs_with):
    """The subjects of ``pairs_with`` as a set (None: every pair), checked; a
    name with ``*``, ``?`` or ``[`` is a shell-style pattern (``sub-*``)
    standing for the subjects it matches."""
    import fnmatch

    if pairs_with is None:
        return None
    names = [pairs_with] if isinstance(pairs_with, str) else list(pairs_with)
    known = [s.name for s in dataset.subjects]
    chosen, unknown = set(), []
    for name in names:
        matched = fnmatch.filter(known, str(name)) if any(c in str(name) for c in "*?[") \
            else [name] if name in known else []
        chosen.update(matched)
        if not matched:
            unknown.append(name)
    if not names or unknown:
        raise ValueError(f"pairs_with must name subjects of {dataset.name!r} "
                         f"({', '.join(known)}), got {', '.join(map(str, names)) or 'none'}")
    return chosen


def _involves(pair, keep):
    return keep is None or pair.fixed in keep or pair.moving in keep


def _sparse(dataset):
    return any(set(getattr(s, "images", dataset.modalities)) != set(dataset.modalities)
               for s in dataset.subjects)


def _sparse_pairs(dataset, sample, seed, keep=None):
    from .pairs import make_pairs

    by_dir = {}
    for p in make_pairs(dataset):
        if _involves(p, keep):
            by_dir.setdefault(_direction(p), []).append(p)
    rng = np.random.default_rng(int(seed))
    queues = [[ps[i] for i in rng.permutation(len(ps))] for ps in by_dir.values()]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out if sample is None else out[:int(sample)]


def _rotated_pairs(dataset, mods, sample, seed, keep=None):
    from .pairs import Pair, make_pairs

    directions = list(itertools.permutations(mods, 2))
    subject_pairs = [p for p in make_pairs([s.name for s in dataset.subjects])
                     if _involves(p, keep)]
    order = np.random.default_rng(int(seed)).permutation(len(subject_pairs))
    total = len(subject_pairs) * len(directions)
    n = total if sample is None else min(int(sample), total)
    out = []
    for rnd in range(len(directions)):
        for j, idx in enumerate(order):
            if len(out) == n:
                return out
            sp = subject_pairs[idx]
            fm, mm = directions[(j + rnd) % len(directions)]
            out.append(Pair(sp.fixed, sp.moving, fm, mm))
    return out


def split_halves(pairs):
    """The tune and report halves of a list of pairs.

    Within each direction, in list order, pairs alternate between the two
    halves (the first to ``tune``), so both halves cover every direction
    that has two or more pairs.

    Returns
    -------
    dict
        ``{"tune": [...], "report": [...]}``, each in list order.
    """
    seen, out = {}, {h: [] for h in HALVES}
    for p in pairs:
        d = _direction(p)
        k = seen.get(d, 0)
        seen[d] = k + 1
        out[HALVES[k % 2]].append(p)
    return out


# ---------------------------------------------------------------------- plan
#: Longest list of subject names a study file's name spells out; a longer
#: one (a cohort's) is named by its count and a digest.
_PLAN_NAMES_MAX = 60


def _plan_path(results_dir, data_tag, levels, half=None, pairs_with=None):
    tail = "" if half is None else f"-{half}"
    if pairs_with:
        names = "-".join(sorted(pairs_with))
        if len(names) > _PLAN_NAMES_MAX:   # a file name has at most 255 bytes
            digest = hashlib.sha1(names.encode()).hexdigest()[:10]
            names = f"{len(pairs_with)}-subjects-{digest}"
        tail = f"-with-{names}{tail}"
    return (Path(results_dir)
            / f"study-{data_tag}-{'x'.join(str(v) for v in levels)}{tail}.json")


def _setting_keys(setting, dataset, pairs, *, levels, threads, data_tag, pre_opts, warn):
    """Record key of every pair for one setting, or None if the method cannot run."""
    from .methods import get_method
    from .run import method_specs
    from .store import make_key

    method = get_method(setting.method, **setting.options)
    specs, unavailable = method_specs([method], "mi", levels, threads, data_tag, pre_opts,
                                      warn, setting.masks)
    if not specs:
        return None, unavailable.get(method.name, "unavailable")
    cfg = specs[0]["config"]
    return {p.id: make_key(dataset.name, p.id, method.name, cfg) for p in pairs}, None


def _baseline_keys(dataset, pairs, data_tag, pre_opts):
    from .run import BASELINE, _baseline_config
    from .store import make_key

    cfg = _baseline_config({"data": data_tag, "prealign": pre_opts})
    return {p.id: make_key(dataset.name, p.id, BASELINE, cfg) for p in pairs}


def _merge_plan(path, plan):
    """The plan to write: ``plan``, after the settings of an older plan of the
    same pairs and the same defaults (a confirmation run adds rows to its
    study).  A setting is named by what it changes from the defaults, so an
    older plan made under other defaults is replaced, not merged: its names
    would mislabel its rows (its records stay in the store)."""
    if not path.is_file():
        return plan
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return plan
    if (old.get("version") != _PLAN_VERSION or old.get("pairs") != plan["pairs"]
            or old.get("threads") != plan["threads"]
            or old.get("defaults") != plan["defaults"]):
        return plan
    new = {s["name"]: s for s in plan["settings"]}
    old_settings = [new.pop(s["name"], s) for s in old.get("settings", [])]
    return dict(plan, settings=old_settings + list(new.values()),
                unavailable={**old.get("unavailable", {}), **plan["unavailable"]})


def _write_plan(path, plan):
    plan = _merge_plan(path, plan)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1, ensure_ascii=False))
    os.replace(tmp, path)
    return plan


def read_plans(results_dir):
    """The study plans of a results folder (``study-*.json``), oldest first."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    plans = []
    for p in sorted(root.glob("study-*.json"), key=lambda q: q.stat().st_mtime):
        try:
            plan = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(plan, dict) and plan.get("version") == _PLAN_VERSION:
            plans.append(plan)
    return plans


# ----------------------------------------------------------------------- run
def _run_setting(setting, dataset, pairs, common):
    from .methods import get_method
    from .run import run_benchmark

    return run_benchmark(dataset, [get_method(setting.method, **setting.options)], "mi",
                         pairs=pairs, masks=setting.masks, **common)


def run_study(dataset="embedded-multi", *, results_dir, resolution=2.0, sample=12, seed=0,
              levels=(20, 20, 10), grid="default", settings=(), anchors=True,
              anchor_masks=("none",), combine=None, threads=1, workers=1, cache_dir=None,
              half=None, pairs_with=None, progress=True, log=print):
    """Run the MI study and return its summary rows.

    Parameters
    ----------
    dataset : str or Dataset
        A multimodal dataset (default the embedded cohort ``embedded-multi``).
    results_dir : str or Path
        The harness's results store; the plan goes to
        ``study-<data>-<levels>.json`` in it.
    resolution : float
        Voxel size (mm) of an embedded cohort.
    sample, seed : int
        Pairs of :func:`study_pairs`.
    levels : sequence of int
        Iterations per pyramid level, coarsest first, for every method.
    grid : {"default", "quick", "none"}
        Settings of :func:`study_grid`.
    settings : sequence of str or Setting
        More settings (:func:`parse_setting`), e.g. the winners of a coarser
        study to confirm.
    anchors : bool or sequence of str
        Run ANTs Mattes and greedy NMI (those installed), or only the
        anchors named (``("greedy",)``: at 1 mm ANTs takes minutes a pair).
    anchor_masks : sequence of str
        ``masks`` values the anchors run with.
    combine : bool, optional
        After the sweep, run the combinations of :func:`combine_winners`
        (default: for the ``default`` grid).
    threads, workers : int
        Threads per registration and concurrent pairs.
    cache_dir : str or Path, optional
        Cache of built cohorts and prealignments.
    half : {None, "tune", "report"}, optional
        Run one half of the pairs (:func:`split_halves`); its plan is
        ``study-<data>-<levels>-<half>.json``.
    pairs_with : sequence of str, optional
        Only the pairs with one of these subjects (:func:`study_pairs`); the
        plan's name gains ``-with-<subjects>``.
    progress : bool
        Progress bars of the harness.
    log : callable or None
        Receives one line per setting.

    Returns
    -------
    list of dict
        :func:`summarize` of the plan.
    """
    from .run import _check_run_args, _prealign_options, _warner, dataset_tag, plan_pairs
    from .store import ResultStore

    levels, _ = _check_run_args("mi", threads, workers, results_dir, levels, None, sample,
                                seed, None)
    log = log or (lambda msg: None)
    dataset, _ = plan_pairs(dataset, None, sample=None, seed=0, cache_dir=cache_dir,
                            resolution=resolution)
    pairs = study_pairs(dataset, sample, seed, half, pairs_with)
    rows = [parse_setting(s) if isinstance(s, str) else s for s in settings]
    todo = _unique(study_grid(grid) + rows)
    if anchors:
        methods = (tuple(ANCHORS) if anchors is True
                   else (anchors,) if isinstance(anchors, str) else tuple(anchors))
        todo = anchor_settings(anchor_masks, methods) + todo
    store = ResultStore(results_dir)
    ctx = {"dataset": dataset, "pairs": pairs, "levels": levels, "threads": threads,
           "data_tag": dataset_tag(dataset), "pre_opts": _prealign_options(None),
           "warn": _warner(progress), "half": half,
           "pairs_with": sorted(_check_pairs_with(dataset, pairs_with) or [])}
    path = _plan_path(store.root, ctx["data_tag"], levels, half, ctx["pairs_with"])
    plan = _plan(ctx, todo, grid, sample, seed, resolution)
    plan = _write_plan(path, plan)
    common = {"levels": levels, "threads": threads, "workers": workers,
              "results_dir": store.root, "cache_dir": cache_dir, "progress": progress}
    _run_all(todo, plan, ctx, common, log)
    if combine if combine is not None else grid in ("default", "syn"):
        extra = [s for s in combine_winners(summarize(plan, store))
                 if s.name not in {t.name for t in todo}]
        if extra:
            log("combinations of the winners: " + ", ".join(s.name for s in extra))
            plan = _write_plan(path, _plan(ctx, todo + extra, grid, sample, seed,
                                           resolution))
            _run_all(extra, plan, ctx, common, log)
    log(f"study plan: {path}")
    return summarize(plan, store)


def _unique(settings):
    seen, out = set(), []
    for s in settings:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


def _plan(ctx, settings, grid, sample, seed, resolution):
    """The study's plan: pairs, settings and the record key of every cell."""
    dataset, pairs = ctx["dataset"], ctx["pairs"]
    entries, unavailable = [], {}
    for s in settings:
        keys, reason = _setting_keys(s, dataset, pairs, levels=ctx["levels"],
                                     threads=ctx["threads"], data_tag=ctx["data_tag"],
                                     pre_opts=ctx["pre_opts"], warn=ctx["warn"])
        if keys is None:
            unavailable[s.name] = reason
            continue
        entries.append(dict(s.to_dict(), keys=keys))
    return {"version": _PLAN_VERSION, "dataset": dataset.name, "data": ctx["data_tag"],
            "resolution": resolution, "levels": list(ctx["levels"]),
            "threads": ctx["threads"], "grid": grid, "sample": sample, "seed": seed,
            "half": ctx.get("half"), "pairs_with": ctx.get("pairs_with") or None,
            "pairs": [{"id": p.id, "direction": _direction(p)} for p in pairs],
            "baseline_keys": _baseline_keys(dataset, pairs, ctx["data_tag"],
                                            ctx["pre_opts"]),
            "settings": entries, "unavailable": unavailable,
            "label_names": {str(k): v for k, v in getattr(dataset, "label_names", {}).items()},
            "defaults": {k: _text(k, v) for k, v in current_defaults().items()},
            "not_studied": [NOT_STUDIED]}


def _run_all(settings, plan, ctx, common, log):
    planned = {s["name"] for s in plan["settings"]}
    for i, s in enumerate(settings, 1):
        if s.name not in planned:
            log(f"[{i}/{len(settings)}] {s.name}: skipped "
                f"({plan['unavailable'].get(s.name, 'unavailable')})")
            continue
        summary = _run_setting(s, ctx["dataset"], ctx["pairs"], common)
        log(f"[{i}/{len(settings)}] {s.name}: {summary['ok']} new record(s), "
            f"{summary['skipped']} pair(s) already done, {summary['errors']} error(s)")


# ------------------------------------------------------------------- summary
def _stat(values):
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    a = np.asarray(vals)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def _metric(rec, name):
    if name == "seconds":
        return rec.get("seconds")
    return (rec.get("metrics") or {}).get(name)


def _label_dice(rec, label_names):
    """``{label name: Dice}`` of one record (unnamed values: ``"label N"``)."""
    metrics = rec.get("metrics") or {}
    return {label_names.get(int(v), f"label {int(v)}"): float(d)
            for v, d in zip(metrics.get("labels") or [], metrics.get("dice") or [])
            if d is not None}


def _row(name, factor, method, masks, recs, errors, directions, pair_dir, label_names):
    """One summary row from the finished records (``{pair id: record}``)."""
    dice = {p: _metric(r, "dice_mean") for p, r in recs.items()}
    by_dir = {d: _stat(v for p, v in dice.items() if pair_dir[p] == d) for d in directions}
    by_label = {p: _label_dice(r, label_names) for p, r in recs.items()}
    labels = list(dict.fromkeys(k for d in by_label.values() for k in d))
    return {"name": name, "factor": factor, "method": method, "masks": masks,
            "n": len(recs), "errors": errors, "dice": _stat(dice.values()),
            "directions": {d: (s["mean"] if s else None) for d, s in by_dir.items()},
            "labels": {k: _stat(d.get(k) for d in by_label.values()) for k in labels},
            "_labels": by_label,
            "tre": _stat(_metric(r, "tre_mean") for r in recs.values()),
            "logjac_sd": _stat(_metric(r, "logjac_sd") for r in recs.values()),
            "folding": _stat(_metric(r, "folding_pct") for r in recs.values()),
            "seconds": _stat(_metric(r, "seconds") for r in recs.values()),
            "_dice": dice}


def default_row(rows):
    """The ``default`` setting's row of :func:`summarize`, or None."""
    return next((r for r in rows if r["name"] == "default"), None)


def _paired_diffs(row, ref):
    """Dice of ``row`` minus ``ref`` on the pairs where both finished
    (``{pair id: difference}``): a partial row is compared on its own pairs."""
    return {p: v - ref["_dice"][p] for p, v in row["_dice"].items()
            if v is not None and ref["_dice"].get(p) is not None}


def _gains(row, ref, directions, pair_dir):
    """Mean paired Dice gain of ``row`` over ``ref`` per direction."""
    diffs = _paired_diffs(row, ref)
    out = {}
    for d in directions:
        vals = [x for p, x in diffs.items() if pair_dir[p] == d]
        out[d] = float(np.mean(vals)) if vals else None
    return out


def _paired_stat(diffs, confidence=CONFIDENCE):
    """Mean paired difference, its Student-t confidence interval (None for
    fewer than two pairs) and the number of pairs won (difference > 0)."""
    if not diffs:
        return None
    a = np.asarray(diffs, dtype=np.float64)
    out = {"n": int(a.size), "mean": float(a.mean()), "low": None, "high": None,
           "wins": int(np.sum(a > 0))}
    if a.size >= 2:
        from scipy.stats import t

        half = float(t.ppf(0.5 + confidence / 2, a.size - 1) * a.std(ddof=1)
                     / math.sqrt(a.size))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def _vs_anchors(row, anchors, directions, pair_dir):
    """Paired Dice differences of ``row`` against each anchor row: per
    direction and over every pair (``"all"``)."""
    out = {}
    for ref in anchors:
        diffs = _paired_diffs(row, ref)
        per = {d: _paired_stat([x for p, x in diffs.items() if pair_dir[p] == d])
               for d in directions}
        out[ref["name"]] = dict(per, all=_paired_stat(list(diffs.values())))
    return out


def _vs_anchors_by_label(row, anchors):
    """Paired Dice differences of ``row`` against each anchor row, label by
    label, over the pairs where both finished."""
    out = {}
    for ref in anchors:
        per = {}
        for label in row["labels"]:
            diffs = [d[label] - ref["_labels"][p][label] for p, d in row["_labels"].items()
                     if label in d and label in ref["_labels"].get(p, {})]
            per[label] = _paired_stat(diffs)
        out[ref["name"]] = per
    return out


def summarize(plan, store):
    """Summary rows of a study.

    Parameters
    ----------
    plan : dict
        A study plan (:func:`run_study` writes it; :func:`read_plans` reads it).
    store : ResultStore or str or Path
        The results store.

    Returns
    -------
    list of dict
        The ``Baseline`` row, then one row per setting in plan order.  Each
        row: ``name``, ``factor``, ``method``, ``masks``, ``n`` (finished
        pairs), ``errors``, ``dice`` / ``tre`` / ``logjac_sd`` / ``folding``
        / ``seconds`` (``{"mean", "std", "n"}`` or None), ``directions``
        (direction -> mean Dice), ``vs_ants`` (direction -> mean paired gain
        over ANTs with the same masks, else unmasked ANTs), ``min_vs_ants``
        (its smallest value), ``vs_default`` (mean paired Dice gain over
        the default) and, on fastsyn rows, ``vs_anchors``: anchor name ->
        direction (and ``"all"``) -> the paired Dice difference over that
        anchor (``{"n", "mean", "low", "high", "wins"}``, a 95 % Student-t
        interval, None below two pairs), so that a direction's gap can be
        told from the spread of its pairs.  ``labels`` (label name -> mean
        Dice of that label) and, on fastsyn rows, ``vs_anchors_by_label``
        (anchor name -> label name -> the same paired statistic) tell which
        labels a difference comes from; names are the plan's
        ``label_names``, else ``"label N"``.
    """
    from .store import ResultStore

    if not isinstance(store, ResultStore):
        store = ResultStore(store)
    pair_dir = {p["id"]: p["direction"] for p in plan["pairs"]}
    directions = list(dict.fromkeys(pair_dir.values()))
    label_names = {int(k): v for k, v in (plan.get("label_names") or {}).items()}

    def collect(keys):
        recs, errors = {}, 0
        for pid, key in keys.items():
            rec = store.get(key)
            if rec is None:
                continue
            if rec.get("status") == "ok":
                recs[pid] = rec
            else:
                errors += 1
        return recs, errors

    rows = [_row("Baseline", "baseline", "baseline", "none",
                 *collect(plan["baseline_keys"]), directions, pair_dir, label_names)]
    for s in sorted(plan["settings"], key=_rank):
        rows.append(_row(s["name"], s["factor"], s["method"], s["masks"],
                         *collect(s["keys"]), directions, pair_dir, label_names))
    ants = {r["masks"]: r for r in rows if r["method"] == "ants"}
    default = default_row(rows)
    for r in rows:
        ref = ants.get(r["masks"], ants.get("none"))
        gains = (_gains(r, ref, directions, pair_dir) if ref is not None and r is not ref
                 else {d: None for d in directions})
        r["vs_ants"] = gains
        vals = [g for g in gains.values() if g is not None]
        r["min_vs_ants"] = min(vals) if vals else None
        diffs = [] if default is None else list(_paired_diffs(r, default).values())
        r["vs_default"] = float(np.mean(diffs)) if diffs else None
    anchors = [r for r in rows if r["factor"] == "anchor"]
    for r in rows:
        if r["method"].startswith("fastsyn"):
            same_masks = [a for a in anchors if a["masks"] == r["masks"]]
            r["vs_anchors"] = _vs_anchors(r, same_masks, directions, pair_dir)
            r["vs_anchors_by_label"] = _vs_anchors_by_label(r, same_masks)
    for r in rows:
        r.pop("_dice")
        r.pop("_labels")
    return rows


def _rank(setting):
    """Table order: anchors, the default, the sweep (in :data:`FACTORS`
    order), the ANTs mode, the combinations; plan order within each."""
    factor = setting["factor"]
    if factor in FACTORS:
        return 2 + list(FACTORS).index(factor)
    return {"anchor": 0, "default": 1, "mode": 2 + len(FACTORS)}.get(factor,
                                                                    3 + len(FACTORS))


def combine_winners(rows, margin=WIN_MARGIN):
    """Combinations of the sweep's winners.

    A factor's winner is its level with the best mean Dice when that beats
    the default by more than ``margin``; only the factors of MIMetric and
    the optimizer combine (masks are data, not a default).  With two or more
    winners the result is their full combination and, with three or more,
    also the combination of the two largest gains.

    Parameters
    ----------
    rows : list of dict
        :func:`summarize` of a sweep.
    margin : float

    Returns
    -------
    list of Setting
    """
    winners = []
    for factor in _COMBINABLE:
        cands = [r for r in rows if r["factor"] == factor and r["vs_default"] is not None]
        if not cands:
            continue
        best = max(cands, key=lambda r: r["vs_default"])
        if best["vs_default"] > margin:
            winners.append((best["vs_default"], parse_setting(best["name"])))
    winners.sort(key=lambda w: -w[0])
    out = []
    picks = [len(winners)] + ([2] if len(winners) >= 3 else [])
    for k in picks:
        if k < 2:
            continue
        changes = {}
        for _, s in winners[:k]:
            changes.update(_changes_of(s))
        out.append(_fastsyn_setting(changes, "combination"))
    return out


def _changes_of(setting):
    """Factor values of a fastsyn setting (inverse of :func:`_fastsyn_setting`)."""
    if setting.name == "default":
        return {}
    return {k: _parse_value(k, v) for k, _, v in
            (item.partition("=") for item in setting.name.split("+"))}


def _cell(stat, digits=3):
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _num(value, digits=3, signed=False):
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_study(rows, fmt="markdown"):
    """The study table as markdown (or JSON).

    Columns: Setting | Factor | Dice | one column per direction | min Δ vs
    ANTs | Δ vs default | TRE (mm) | SD log|J| | Folding (%) | Time (s) | n.
    """
    if fmt == "json":
        return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"
    if fmt != "markdown":
        raise ValueError(f"fmt must be 'markdown' or 'json', got {fmt!r}")
    directions = list(rows[0]["directions"]) if rows else []
    head = (["Setting", "Factor", "Dice"] + directions
            + ["min Δ vs ANTs", "Δ vs default", "TRE (mm)", "SD log|J|", "Folding (%)",
               "Time (s)", "n"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    planned = not_run(rows)
    for r in rows:
        if r["name"] in planned:
            continue
        name = r["name"] + (f" [{r['masks']}]" if r["masks"] != "none"
                            and r["factor"] not in ("masks", "anchor") else "")
        cells = ([name, r["factor"], _cell(r["dice"])]
                 + [_num(r["directions"][d]) for d in directions]
                 + [_num(r["min_vs_ants"], signed=True), _num(r["vs_default"], signed=True),
                    _cell(r["tre"], 2), _cell(r["logjac_sd"]), _cell(r["folding"]),
                    _cell(r["seconds"], 2), f"{r['n']}" + (f" ({r['errors']} err)"
                                                         if r["errors"] else "")])
        lines.append("| " + " | ".join(cells) + " |")
    if planned:
        lines.append("")
        lines.append("Planned, not run (no record): " + ", ".join(planned))
    default = default_row(rows)
    for by in ("direction", "label"):
        table = format_anchor_comparison(default, by) if default is not None else ""
        if table:
            lines += ["", table.rstrip("\n")]
    return "\n".join(lines) + "\n"


def _interval(stat):
    if not stat:
        return "–"
    if stat["low"] is None:
        return f"{stat['mean']:+.3f}"
    return f"{stat['mean']:+.3f} [{stat['low']:+.3f}, {stat['high']:+.3f}]"


#: Most labels :func:`anchor_comparison` lists one by one (a regional atlas
#: has dozens, which a table of paired differences does not make readable).
MAX_LABELS_COMPARED = 12


def anchor_comparison(row, by="direction"):
    """Headers and rows of a fastsyn row's paired Dice differences against
    the anchors, or None without anchors.

    Parameters
    ----------
    row : dict
        A :func:`summarize` row.
    by : {"direction", "label"}
        One row per direction, then ``"all"`` (``vs_anchors``), or one per
        label (``vs_anchors_by_label``; None for more than
        :data:`MAX_LABELS_COMPARED` labels).

    Returns
    -------
    dict or None
        ``headers`` and ``rows``, each row ``{"group", "n", "stats"}`` with
        one :func:`summarize` paired statistic (or None) per anchor.
    """
    if by not in ("direction", "label"):
        raise ValueError(f"by must be 'direction' or 'label', got {by!r}")
    table = row.get("vs_anchors" if by == "direction" else "vs_anchors_by_label")
    if not table:
        return None
    anchors = list(table)
    groups = [g for g in table[anchors[0]] if g != "all"]
    if by == "label":
        if not groups or len(groups) > MAX_LABELS_COMPARED:
            return None
    else:
        groups.append("all")
    headers = ["Direction" if by == "direction" else "Label", "n"]
    for a in anchors:
        headers += [f"Δ vs {a} [95 % CI]", "won"]
    rows = []
    for g in groups:
        stats = [table[a].get(g) for a in anchors]
        rows.append({"group": g, "n": next((x["n"] for x in stats if x), 0),
                     "stats": stats})
    return {"headers": headers, "rows": rows}


def format_anchor_comparison(row, by="direction"):
    """Markdown table of :func:`anchor_comparison` (empty without one)."""
    table = anchor_comparison(row, by)
    if table is None:
        return ""
    head = table["headers"]
    what = "" if by == "direction" else ", label by label"
    lines = [f"Paired Dice difference of `{row['name']}` against the anchors{what} "
             "(mean [Student-t 95 % interval]; won: pairs where fastsyn's Dice is higher):",
             "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table["rows"]:
        cells = [r["group"], str(r["n"])]
        for st in r["stats"]:
            cells += [_interval(st), f"{st['wins']}/{st['n']}" if st else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def not_run(rows):
    """Names of the rows without any record (planned, never run)."""
    return [r["name"] for r in rows if r["n"] == 0 and not r["errors"]]
