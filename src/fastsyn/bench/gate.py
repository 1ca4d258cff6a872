"""A regression gate between two builds: instructions, wall time, correctness.

Three gates, each with a rule for what counts as a change:

instructions
    :mod:`fastsyn.bench.costs` counts each case's kernel instructions on both
    builds; a case regresses when the head needs more than
    :data:`INSTRUCTION_THRESHOLD` (0.5 %) more instructions.  Counts of one
    build repeat to the instruction, so the threshold is far above their noise
    and far below any change worth a look.
wall time
    Both builds run in two persistent worker processes, started together and
    asked in turn for one sample of one case (base, head, then head, base in
    the next round), so a change in the machine's load hits both alike.  A
    sample is the fastest of ``repeat`` calls.  The samples are paired by
    round: a case regresses when the per-round log ratios differ from zero by
    Wilcoxon's signed-rank test at ``p < ALPHA`` (0.002, asv's level; asv's
    Mann-Whitney test ignores the pairing, which on a machine whose load
    swings by tens of per cent within a minute throws away most of the
    power) *and* the median per-round ratio exceeds ``1 + threshold``, where
    the threshold comes from measured same-build noise (:func:`calibrate`):
    rustc-perf's rule, ``Q3 + 3 IQR`` of the absolute relative changes seen
    between two runs of one build, never below :data:`MIN_WALL_THRESHOLD`.

    Beside each wall time the worker records the calling thread's share of
    the process's CPU time.  When every core is busy with other work, a
    kernel that lost its threads is not slower in wall time (its threads had
    no core to run on anyway), but its work has moved onto the calling
    thread: a rise of the share by more than the same-build noise (at least
    :data:`MIN_SHARE_RISE`), significant by the same paired test, is
    flagged ``serialised``.
correctness
    :mod:`fastsyn.bench.workload`'s tracks on both builds: a head whose SyN
    output hash differs between 1, 2 and 3 threads, or whose label Dice on a
    fixture falls more than :data:`DICE_TOLERANCE` below the base's, fails
    whatever its speed.  Metric values on the fixed pair are shown, and marked
    when they move.
"""

import json
import math
import subprocess
from pathlib import Path

from . import workload

__all__ = [
    "ALPHA",
    "ROUNDS",
    "DICE_TOLERANCE",
    "INSTRUCTION_THRESHOLD",
    "MIN_WALL_THRESHOLD",
    "calibrate",
    "compare_instructions",
    "compare_tracks",
    "compare_shares",
    "compare_wall",
    "build_refs",
    "format_gate",
    "gate_failed",
    "load_noise",
    "paired_p",
    "paired_ratio",
    "noise_thresholds",
    "run_gate",
    "run_tracks",
    "time_sides",
]

#: Significance level of the wall-time test (asv's).
ALPHA = 0.002
#: Interleaved rounds (paired samples per side).  With 12 rounds the exact
#: signed-rank test reaches p < ALPHA only if no more than the one smallest
#: per-round change disagrees in sign; with 20, the six smallest may, so a
#: few rounds hit by a burst of load do not hide a change (about 12 s per
#: comparison at 48^3 on a quiet machine).
ROUNDS = 20
#: Smallest wall-time threshold, whatever the measured noise.
MIN_WALL_THRESHOLD = 0.02
#: Smallest rise of the calling thread's CPU share that marks a serialised kernel.
MIN_SHARE_RISE = 0.15
#: Relative instruction increase that fails the instruction gate.
INSTRUCTION_THRESHOLD = 0.005
#: Largest allowed drop of mean label Dice on a fixture.
DICE_TOLERANCE = 0.005
#: Relative change of a metric value on the fixed pair that is marked.
ENERGY_TOLERANCE = 1e-6


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def paired_p(base, head):
    """Two-sided p-value that paired samples differ (Wilcoxon signed-rank test).

    The samples are paired by round: ``base[i]`` and ``head[i]`` were taken
    a fraction of a second apart, under the same load, so the test is on the
    per-round log ratios (exact for the small samples used here).

    Parameters
    ----------
    base, head : sequence of float

    Returns
    -------
    float
    """
    from scipy.stats import wilcoxon

    logs = [math.log(h / b) for b, h in zip(base, head)]
    if len(logs) < 2 or not any(logs):
        return 1.0
    return float(wilcoxon(logs, alternative="two-sided").pvalue)


def paired_ratio(base, head):
    """Median over the rounds of ``head / base`` (the per-round ratios)."""
    return _median([h / b for b, h in zip(base, head)])


def _quantile(values, q):
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def noise_thresholds(changes, *, floor=MIN_WALL_THRESHOLD):
    """Per-case wall-time thresholds from same-build changes (rustc-perf's rule).

    Parameters
    ----------
    changes : dict
        Case -> list of relative changes (``ratio - 1``) between two runs of one build.
    floor : float, optional
        Smallest threshold returned.

    Returns
    -------
    dict
        Case -> ``max(floor, Q3 + 3 IQR)`` of the absolute changes.
    """
    out = {}
    for case, values in changes.items():
        mags = [abs(v) for v in values]
        if len(mags) < 4:
            raise ValueError(f"{case}: at least 4 same-build comparisons are needed, "
                             f"got {len(mags)}")
        q1, q3 = _quantile(mags, 0.25), _quantile(mags, 0.75)
        out[case] = max(floor, q3 + 3 * (q3 - q1))
    return out


# --------------------------------------------------------------------------
# Wall time
# --------------------------------------------------------------------------


class _Worker:
    """A persistent timing worker (``workload.py time``) on one side."""

    def __init__(self, side, *, size, threads, repeat, cases):
        import os

        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        cmd = side.command(workload.__file__, "time", "--size", size, "--threads", threads,
                           "--repeat", repeat, "--cases", ",".join(cases))
        self.side = side
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)

    def _line(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()[-15:]
            raise RuntimeError(f"timing worker of {self.side.label} stopped:\n" + "\n".join(err))
        return line

    def ready(self):
        if self._line().strip() != "ready":
            raise RuntimeError(f"timing worker of {self.side.label} did not start")

    def run(self, case):
        self.proc.stdin.write(f"run {case}\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def time_sides(sides, *, size=48, threads=2, rounds=ROUNDS, repeat=3,
               cases=workload.TIMED_CASES):
    """Timings of each case on each side, the sides interleaved call by call.

    Every round visits the cases in turn and, for each, asks every side for
    one sample (the fastest of ``repeat`` calls), in an order that alternates
    from one round to the next; the samples of two sides for one case are
    thus taken a fraction of a second apart, under the same load.

    Parameters
    ----------
    sides : sequence of Side
        Two (or more) builds; the same build may appear twice (same-build noise).
    size, threads, repeat : int
        Grid side, threads per call, calls per sample.
    rounds : int
        Samples per side and case.
    cases : sequence of str

    Returns
    -------
    list of dict
        Per side: ``wall`` (case -> ``rounds`` seconds) and ``share`` (case
        -> the calling thread's share of the CPU time, per round).
    """
    workers = [_Worker(s, size=size, threads=threads, repeat=repeat, cases=cases)
               for s in sides]
    samples = [{"wall": {c: [] for c in cases}, "share": {c: [] for c in cases}}
               for _ in sides]
    try:
        for w in workers:
            w.ready()
        for r in range(rounds):
            for case in cases:
                order = list(range(len(workers)))
                for i in (order if r % 2 == 0 else order[::-1]):
                    answer = workers[i].run(case)
                    samples[i]["wall"][case].append(answer["wall"])
                    samples[i]["share"][case].append(answer["share"])
    finally:
        for w in workers:
            w.close()
    return samples


def compare_wall(base, head, thresholds):
    """Flag each case of two :func:`time_sides` wall-time results.

    Parameters
    ----------
    base, head : dict
        Case -> samples (seconds), paired by round.
    thresholds : dict
        Case -> relative threshold (from :func:`noise_thresholds`).

    Returns
    -------
    list of dict
        ``case``, ``base_s``, ``head_s`` (medians), ``ratio`` (median of the
        per-round ratios), ``p`` (:func:`paired_p`),
        ``threshold``, ``status`` (``regression``, ``improvement`` or ``same``).
    """
    rows = []
    for case, a in base.items():
        b = head[case]
        ratio = paired_ratio(a, b)
        p = paired_p(a, b)
        limit = thresholds.get(case, MIN_WALL_THRESHOLD)
        status = "same"
        if p < ALPHA and ratio > 1 + limit:
            status = "regression"
        elif p < ALPHA and ratio < 1 / (1 + limit):
            status = "improvement"
        rows.append({"case": case, "base_s": _median(a), "head_s": _median(b),
                     "ratio": ratio, "p": p, "threshold": limit, "status": status})
    return rows


def compare_shares(base, head, thresholds=None):
    """Flag a case whose work moved onto the calling thread (serialised).

    Parameters
    ----------
    base, head : dict
        Case -> the calling thread's CPU share per round (:func:`time_sides`).
    thresholds : dict, optional
        Case -> largest same-build rise of the median share; at least
        :data:`MIN_SHARE_RISE`.

    Returns
    -------
    list of dict
        ``case``, ``base_share``, ``head_share`` (medians), ``p`` (paired
        signed-rank test on the per-round differences), ``threshold``,
        ``status`` (``serialised`` or ``same``).
    """
    from scipy.stats import wilcoxon

    rows = []
    for case, a in base.items():
        b = head[case]
        diffs = [y - x for x, y in zip(a, b)]
        p = (float(wilcoxon(diffs, alternative="two-sided").pvalue)
             if len(diffs) > 1 and any(diffs) else 1.0)
        rise = _median(b) - _median(a)
        limit = max(MIN_SHARE_RISE, (thresholds or {}).get(case, 0.0))
        status = "serialised" if p < ALPHA and rise > limit else "same"
        rows.append({"case": case, "base_share": _median(a), "head_share": _median(b),
                     "p": p, "threshold": limit, "status": status})
    return rows


def calibrate(side, runs, *, size=48, threads=2, rounds=ROUNDS, repeat=3,
              cases=workload.TIMED_CASES, progress=None):
    """Same-build wall-time noise: ``runs`` comparisons of a build with itself.

    Returns
    -------
    dict
        ``changes`` (case -> relative changes of the wall time), ``thresholds``,
        ``share_changes`` and ``share_thresholds`` (the same for the calling
        thread's CPU share, absolute), ``p_min`` (smallest p-value seen per
        case) and the settings.
    """
    changes = {c: [] for c in cases}
    share_changes = {c: [] for c in cases}
    p_min = {c: 1.0 for c in cases}
    for i in range(runs):
        if progress is not None:
            progress(f"calibration {i + 1}/{runs}")
        a, b = time_sides([side, side], size=size, threads=threads, rounds=rounds,
                          repeat=repeat, cases=cases)
        for row in compare_wall(a["wall"], b["wall"], {}):
            changes[row["case"]].append(row["ratio"] - 1)
            p_min[row["case"]] = min(p_min[row["case"]], row["p"])
        for row in compare_shares(a["share"], b["share"]):
            share_changes[row["case"]].append(row["head_share"] - row["base_share"])
    return {"size": size, "threads": threads, "rounds": rounds, "repeat": repeat,
            "runs": runs, "changes": changes, "p_min": p_min,
            "thresholds": noise_thresholds(changes),
            "share_changes": share_changes,
            "share_thresholds": noise_thresholds(share_changes, floor=MIN_SHARE_RISE)}


def load_noise(path):
    """Read a noise file written from :func:`calibrate`.

    Raises
    ------
    ValueError
        If the file is not a noise file.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "thresholds" not in data:
        raise ValueError(f"{path} is not a gate noise file (no 'thresholds')")
    return data


# --------------------------------------------------------------------------
# Instructions and correctness
# --------------------------------------------------------------------------


def compare_instructions(base_rows, head_rows, threshold=INSTRUCTION_THRESHOLD):
    """Flag each case of two :func:`fastsyn.bench.costs.cost_table` results.

    Returns
    -------
    list of dict
        ``case``, ``base``, ``head`` (instructions), ``ratio``, ``status``.
    """
    head = {r["case"]: r for r in head_rows}
    rows = []
    for r in base_rows:
        h = head[r["case"]]["instructions"]
        ratio = h / r["instructions"]
        status = ("regression" if ratio > 1 + threshold
                  else "improvement" if ratio < 1 - threshold else "same")
        rows.append({"case": r["case"], "base": r["instructions"], "head": h,
                     "ratio": ratio, "status": status})
    return rows


def run_tracks(side, fixtures):
    """The correctness tracks of one build (see :func:`workload.tracks_mode`)."""
    cmd = side.command(workload.__file__, "tracks", "--fixtures", Path(fixtures).resolve())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-15:]
        raise RuntimeError(f"correctness tracks of {side.label} failed:\n" + "\n".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_tracks(base, head, dice_tolerance=DICE_TOLERANCE):
    """Flag each track of two :func:`run_tracks` results.

    Returns
    -------
    list of dict
        ``track``, ``deterministic`` (head), ``base_dice``, ``head_dice``,
        ``energy_change`` (largest relative change of a metric value),
        ``status`` (``nondeterministic``, ``accuracy``, ``values changed`` or ``same``).
    """
    rows = []
    for name, h in head["tracks"].items():
        b = base["tracks"][name]
        energy = max(abs(h["energy"][k] - b["energy"][k]) / max(abs(b["energy"][k]), 1e-300)
                     for k in b["energy"])
        status = "same"
        if not h["deterministic"]:
            status = "nondeterministic"
        elif h["dice"] < b["dice"] - dice_tolerance:
            status = "accuracy"
        elif energy > ENERGY_TOLERANCE:
            status = "values changed"
        rows.append({"track": name, "deterministic": h["deterministic"],
                     "base_dice": b["dice"], "head_dice": h["dice"],
                     "energy_change": energy, "hashes": h["hashes"], "status": status})
    return rows


def gate_failed(result):
    """Whether a gate result holds a regression (instructions, wall time or correctness)."""
    bad = {"regression", "nondeterministic", "accuracy", "serialised"}
    return any(r["status"] in bad for key in ("instructions", "wall", "shares", "tracks")
               for r in result.get(key) or [])


def format_gate(result):
    """Readable tables of a gate result (``instructions``, ``wall``, ``tracks``).

    Returns
    -------
    str
    """
    out = [f"gate: {result['base']} -> {result['head']}"]
    if result.get("instructions"):
        out += ["", f"instructions (1 thread, {result['instructions_size']}^3; "
                f"fails above +{INSTRUCTION_THRESHOLD:.1%})",
                f"  {'case':<11} {'base':>14} {'head':>14} {'change':>9}  status"]
        for r in result["instructions"]:
            out.append(f"  {r['case']:<11} {r['base']:>14,} {r['head']:>14,} "
                       f"{r['ratio'] - 1:>+9.3%}  {r['status']}")
    if result.get("wall"):
        s = result["wall_settings"]
        out += ["", f"wall time ({s['threads']} threads, {s['size']}^3, {s['rounds']} "
                f"interleaved rounds x fastest of {s['repeat']}; fails when p < {ALPHA} and "
                "change > threshold)",
                "  thresholds: " + (f"Q3 + 3 IQR of {result['noise']['runs']} same-build runs"
                                    if result.get("noise") else
                                    f"the {MIN_WALL_THRESHOLD:.0%} floor (no noise measured)"),
                f"  {'case':<11} {'base ms':>9} {'head ms':>9} {'change':>8} {'p':>8} "
                f"{'thresh.':>8}  status"]
        for r in result["wall"]:
            out.append(f"  {r['case']:<11} {r['base_s'] * 1e3:>9.2f} {r['head_s'] * 1e3:>9.2f} "
                       f"{r['ratio'] - 1:>+8.1%} {r['p']:>8.1g} {r['threshold']:>8.1%}  "
                       f"{r['status']}")
    if result.get("shares"):
        out += ["", "work on the calling thread (share of the process's CPU time; a kernel "
                "whose threads stopped working rises towards 1)",
                f"  {'case':<11} {'base':>6} {'head':>6} {'p':>8} {'thresh.':>8}  status"]
        for r in result["shares"]:
            out.append(f"  {r['case']:<11} {r['base_share']:>6.2f} {r['head_share']:>6.2f} "
                       f"{r['p']:>8.1g} {r['threshold']:>+8.2f}  {r['status']}")
    if result.get("tracks"):
        out += ["", f"correctness (hashes at 1/2/3 threads; Dice may drop by "
                f"{DICE_TOLERANCE} at most)",
                f"  {'track':<8} {'determ.':>7} {'base Dice':>9} {'head Dice':>9} "
                f"{'value chg':>10}  status"]
        for r in result["tracks"]:
            out.append(f"  {r['track']:<8} {r['deterministic']:>7} {r['base_dice']:>9.4f} "
                       f"{r['head_dice']:>9.4f} {r['energy_change']:>10.2g}  {r['status']}")
    out += ["", "result: " + ("REGRESSION" if gate_failed(result) else "no regression")]
    return "\n".join(out)


# --------------------------------------------------------------------------
# Building two commits and running every gate
# --------------------------------------------------------------------------


def build_refs(repo, refs, workdir, *, log=None):
    """Check out each git ref into ``workdir`` and install it there.

    Parameters
    ----------
    repo : str or Path
        A fastsyn git checkout.
    refs : sequence of str
        Commits, branches or tags.
    workdir : str or Path
        Scratch folder (worktrees ``src-<i>``, builds ``site-<i>``).
    log : file, optional
        Where git's and pip's output go.

    Returns
    -------
    list of Side
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sides = []
    for i, ref in enumerate(refs):
        src = workdir / f"src-{i}"
        if src.exists():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                            str(src)], capture_output=True)
        proc = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach",
                               str(src), ref], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ValueError(f"cannot check out {ref!r}: {proc.stderr.strip()}")
        from .sides import build_side

        sides.append(build_side(ref, src, workdir / f"site-{i}",
                                build_dir=workdir / f"build-{i}", log=log))
    return sides


def run_gate(base, head, *, noise=None, calibration=0, instructions=True, wall=True,
             tracks=True, cost_size=24, size=48, threads=2, rounds=ROUNDS, repeat=3,
             fixtures=None, progress=None):
    """Run the chosen gates on two builds.

    Parameters
    ----------
    base, head : Side
    noise : dict, optional
        A :func:`calibrate` result (stored noise); its thresholds are used.
    calibration : int
        Without ``noise``: same-build runs of ``base`` measured first, in this
        job, for the thresholds (at least 4); 0 gives every case
        :data:`MIN_WALL_THRESHOLD`.
    instructions, wall, tracks : bool
        Which gates run.
    cost_size : int
        Grid of the instruction counts.
    size, threads, rounds, repeat : int
        Wall-time settings.
    fixtures : str or Path, optional
        Folder of the fixture pairs (the correctness tracks).
    progress : callable, optional
        Called with a short message before each gate.

    Returns
    -------
    dict
        ``base``, ``head``, ``instructions``, ``wall``, ``tracks`` (row lists,
        ``None`` when not run), ``wall_settings``, ``noise`` (the thresholds'
        source), ``failed``.
    """
    if calibration and calibration < 4:
        raise ValueError(f"calibration needs at least 4 runs (quartiles), got {calibration}")
    say = progress or (lambda msg: None)
    result = {"base": base.label, "head": head.label, "instructions": None, "wall": None,
              "shares": None, "tracks": None, "instructions_size": cost_size}
    if instructions:
        from .costs import cost_table

        say("instructions")
        result["instructions"] = compare_instructions(cost_table(size=cost_size, side=base),
                                                      cost_table(size=cost_size, side=head))
    if wall:
        if noise is None and calibration:
            noise = calibrate(base, calibration, size=size, threads=threads, rounds=rounds,
                              repeat=repeat, progress=say)
        result["noise"] = noise
        say("wall time")
        thresholds = noise["thresholds"] if noise else {}
        a, b = time_sides([base, head], size=size, threads=threads, rounds=rounds,
                          repeat=repeat)
        result["wall"] = compare_wall(a["wall"], b["wall"], thresholds)
        result["shares"] = compare_shares(a["share"], b["share"],
                                          (noise or {}).get("share_thresholds"))
        result["wall_settings"] = {"size": size, "threads": threads, "rounds": rounds,
                                   "repeat": repeat, "calibrated": bool(noise)}
    if tracks:
        if fixtures is None:
            raise ValueError("the correctness tracks need the fixtures folder")
        say("correctness")
        result["tracks"] = compare_tracks(run_tracks(base, fixtures), run_tracks(head, fixtures))
    result["failed"] = gate_failed(result)
    return result
