"""Self-test of the regression gates: planted regressions and same-build reruns.

A regression suite is worth its power to catch real slowdowns and its silence
on unchanged code.  This module checks both on the machine it runs on:

1. a scratch ``git worktree`` of a commit is built once as the *base*;
2. each plant of :data:`PLANTS` (a small source edit, never applied to the
   real sources) is applied to the scratch tree, built into a folder of its
   own (the meson build folder is reused, so only the touched module is
   recompiled) and reverted;
3. the gates of :mod:`fastsyn.bench.gate` compare the base with each plant,
   and the base with itself ``reruns`` times (false alarms);
4. the wall-time thresholds come from ``calibration`` extra same-build runs
   made first, never from the reruns they are tested on.

The wall-time gate runs first and alone (on two cores anything running beside
it is the very noise it measures); then the instruction counts (two valgrind
processes at a time) and the tracks share the machine, as they measure no time.

Run ``python -m fastsyn.bench.selftest --out reports/selftest.json`` (or
``tox -e suite-selftest``); the table goes to stdout, the JSON to the report.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import gate
from .costs import cost_table
from .sides import build_side

__all__ = ["PLANTS", "apply_plant", "main", "run_selftest"]

#: Plant name -> the gate expected to catch it, the gates run on it (the
#: others are left out to keep the self-test within the hour: the MI-only
#: plants cannot move the kernels' speed), a description, the edits (file, old,
#: new).
PLANTS = {
    "a_arith": {
        "gate": "instructions",
        "gates": ("instructions", "wall", "tracks"),
        "what": "+2% arithmetic in the CC step (22 multiplications by a run-time 1.0 "
                "per voxel)",
        "edits": [("src/fastsyn/_kernels/cc.pyx",
                   "            temp = _cc_temp(factors + 5 * v, forward, &energy)\n"
                   "            if temp == 0:\n",
                   "            temp = _cc_temp(factors + 5 * v, forward, &energy)\n"
                   # two chains of 11: GCC unrolls each fully (one
                   # multiplication each); one loop of 22 it would not unroll
                   "            for q in range(11):\n"
                   "                temp = temp * one\n"
                   "            for q in range(11):\n"
                   "                temp = temp * one\n"
                   "            if temp == 0:\n"),
                  ("src/fastsyn/_kernels/cc.pyx",
                   "        int interior_slice = radius <= s < ns - radius\n",
                   "        int interior_slice = radius <= s < ns - radius\n"
                   "        int q\n"
                   "        double one = spacing[0] / spacing[0]\n")],
    },
    "b_serial": {
        "gate": "wall",
        "gates": ("instructions", "wall", "tracks"),
        "what": "the CC factors' prange turned into range (serial at any thread count)",
        "edits": [("src/fastsyn/_kernels/cc.pyx",
                   "        for c in prange(nchunks, schedule=\"static\", num_threads=num_threads):\n"
                   "            _factors_chunk_3d(",
                   "        for c in range(nchunks):\n"
                   "            _factors_chunk_3d(")],
    },
    "c_invert": {
        "gate": "instructions",
        "gates": ("instructions", "wall", "tracks"),
        "what": "the inversion ~10% slower (an extra division per voxel and sweep, "
                "result unchanged)",
        "edits": [("src/fastsyn/_kernels/invert.pyx",
                   "                mag = _norm(q, v, inv_s0, inv_s1, inv_s2)\n"
                   "                total += mag\n",
                   "                mag = _norm(q, v, inv_s0, inv_s1, inv_s2)\n"
                   "                total += mag\n"
                   # a division's latency, not its one instruction, is
                   # what costs: ~+1.4 % instructions for ~+10 % wall time
                   "                extra += mag / (mag + 1.0)\n"),
                  ("src/fastsyn/_kernels/invert.pyx",
                   "        double mag, total = 0, mx = 0\n",
                   "        double mag, total = 0, mx = 0, extra = 0\n"),
                  ("src/fastsyn/_kernels/invert.pyx",
                   "    slice_sum[k] = total\n",
                   "    slice_sum[k] = total + extra * 0.0\n")],
    },
    "d_bins": {
        "gate": "tracks",
        "gates": ("tracks",),
        "what": "MI with 12 histogram bins instead of 32 (the metric's default)",
        "edits": [("src/fastsyn/metrics/mi.py",
                   "    def __init__(self, dim, *, nbins=32,",
                   "    def __init__(self, dim, *, nbins=12,")],
    },
    "e_race": {
        "gate": "tracks",
        "gates": ("tracks",),
        "what": "a racy reduction: every chunk of the MI histogram adds into one shared "
                "table inside the prange",
        "edits": [("src/fastsyn/_kernels/mi.pyx",
                   "                        s_lo, s_scale, m_lo, m_scale, nbins, part + c * nb2,\n",
                   "                        s_lo, s_scale, m_lo, m_scale, nbins, part,\n"),
                  ("src/fastsyn/_kernels/mi.pyx",
                   "    for b in range(nbins * nbins):\n        part[b] = 0\n    for b in range(16):",
                   "    for b in range(16):"),
                  ("src/fastsyn/_kernels/mi.pyx",
                   "    part = <double*>malloc(nchunks * nb2 * sizeof(double))\n",
                   "    part = <double*>calloc(nchunks * nb2, sizeof(double))\n"),
                  ("src/fastsyn/_kernels/mi.pyx",
                   "from libc.stdlib cimport free, malloc\n",
                   "from libc.stdlib cimport calloc, free, malloc\n")],
    },
}


def apply_plant(tree, name):
    """Apply a plant's edits to a scratch tree; return the original texts.

    Raises
    ------
    ValueError
        If an edit's text is not found exactly once (the plant is stale).
    """
    originals = {}
    for rel, old, new in PLANTS[name]["edits"]:
        path = Path(tree) / rel
        text = path.read_text()
        originals.setdefault(rel, text)
        if text.count(old) != 1:
            raise ValueError(f"plant {name}: the text to replace in {rel} is not found "
                             "exactly once (stale plant)")
        path.write_text(text.replace(old, new))
    return originals


def _revert(tree, originals):
    for rel, text in originals.items():
        (Path(tree) / rel).write_text(text)


def _builds(repo, ref, workdir, plants, say):
    """Scratch worktree of ``ref``; base build, then one build per plant."""
    tree = Path(workdir) / "tree"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), ref],
                   check=True, capture_output=True)
    build = Path(workdir) / "build"
    sides = {}
    with open(Path(workdir) / "build.log", "w") as log:
        say("building base")
        sides["base"] = build_side("base", tree, Path(workdir) / "site-base",
                                   build_dir=build, log=log)
        for name in plants:
            say(f"building plant {name}")
            originals = apply_plant(tree, name)
            try:
                sides[name] = build_side(name, tree, Path(workdir) / f"site-{name}",
                                         build_dir=build, log=log)
            finally:
                _revert(tree, originals)
    return tree, sides


def _plan(plants, reruns, calibration, gates):
    """The steps of a run, most telling first: each plant against the gate
    expected to catch it, then the other gates on the plants, then the
    same-build reruns, one of each gate in turn (a run cut short by its
    deadline still holds a bit of everything)."""
    steps = []
    for key in ("tracks", "instructions", "wall"):
        if key not in gates:
            continue
        if key == "wall":
            steps += [("wall", f"calibration {i + 1}", "calibration")
                      for i in range(calibration)]
        else:
            steps.append((key, "base", "base"))
        steps += [(key, name, "plant") for name in plants if PLANTS[name]["gate"] == key]
    steps += [(key, name, "plant") for name in plants for key in PLANTS[name]["gates"]
              if key in gates and key != PLANTS[name]["gate"]]
    for i in range(reruns):
        steps += [(key, f"rerun {i + 1}", "rerun") for key in ("tracks", "wall", "instructions")
                  if key in gates]
    return steps


def run_steps(sides, steps, result, *, cost_size, fixtures, settings, deadline=None,
              save=None, say=print):
    """Run planned steps one at a time, filling ``result``; stop at ``deadline``.

    Returns
    -------
    list of tuple
        The steps left undone.
    """
    noise_changes = None
    for done, (key, label, kind) in enumerate(steps):
        if deadline is not None and time.time() > deadline:
            say(f"deadline reached: {len(steps) - done} step(s) left undone")
            return steps[done:]
        say(f"{key}: {label}")
        part = result.setdefault(key, {"plants": {}, "reruns": []})
        side = sides["base"] if kind in ("rerun", "calibration") or label == "base" \
            else sides[label]
        if key == "tracks":
            measured = gate.run_tracks(side, fixtures)
            if label == "base":
                part["base"] = measured
                continue
            rows = gate.compare_tracks(part["base"], measured)
        elif key == "instructions":
            measured = cost_table(size=cost_size, side=side)
            if label == "base":
                part["base"] = measured
                continue
            rows = gate.compare_instructions(part["base"], measured)
        else:
            a, b = gate.time_sides([sides["base"], side], **settings)
            if kind == "calibration":
                noise_changes = noise_changes or {"wall": [], "share": []}
                noise_changes["wall"].append(gate.compare_wall(a["wall"], b["wall"], {}))
                noise_changes["share"].append(gate.compare_shares(a["share"], b["share"]))
                if len(noise_changes["wall"]) >= 4:
                    part["noise"] = _noise(noise_changes, settings)
                if save is not None:
                    save()
                continue
            noise = part["noise"]
            rows = (gate.compare_wall(a["wall"], b["wall"], noise["thresholds"])
                    + gate.compare_shares(a["share"], b["share"], noise["share_thresholds"]))
        if kind == "plant":
            part["plants"][label] = rows
        else:
            part["reruns"].append(rows)
        if save is not None:
            save()
    return []


def _noise(changes, settings):
    wall = {r["case"]: [] for r in changes["wall"][0]}
    share = {r["case"]: [] for r in changes["share"][0]}
    p_min = {c: 1.0 for c in wall}
    for rows in changes["wall"]:
        for r in rows:
            wall[r["case"]].append(r["ratio"] - 1)
            p_min[r["case"]] = min(p_min[r["case"]], r["p"])
    for rows in changes["share"]:
        for r in rows:
            share[r["case"]].append(r["head_share"] - r["base_share"])
    return {**settings, "runs": len(changes["wall"]), "changes": wall, "p_min": p_min,
            "thresholds": gate.noise_thresholds(wall), "share_changes": share,
            "share_thresholds": gate.noise_thresholds(share, floor=gate.MIN_SHARE_RISE)}


def _for_gate(plants, key):
    return [name for name in plants if key in PLANTS[name]["gates"]]


def _instruction_runs(sides, plants, reruns, size, say):
    """Counts of the base, each plant and ``reruns`` more of the base, two
    valgrind processes at a time (counts do not depend on the load)."""
    jobs = [("base", "base")] + [(name, name) for name in _for_gate(plants, "instructions")]
    jobs += [(f"rerun {i + 1}", "base") for i in range(reruns)]

    def count(job):
        say(f"instructions: {job[0]}")
        return cost_table(size=size, side=sides[job[1]])

    with ThreadPoolExecutor(max_workers=2) as pool:
        tables = dict(zip((j[0] for j in jobs), pool.map(count, jobs)))
    base = tables["base"]
    return {"base": base,
            "plants": {name: gate.compare_instructions(base, tables[name])
                       for name in _for_gate(plants, "instructions")},
            "reruns": [gate.compare_instructions(base, tables[f"rerun {i + 1}"])
                       for i in range(reruns)]}


def _wall_runs(sides, plants, reruns, calibration, settings, say):
    noise = gate.calibrate(sides["base"], calibration, progress=say, **settings)
    out = {"noise": noise, "plants": {}, "reruns": [], "samples": {}}

    def compare(a, b):
        return (gate.compare_wall(a["wall"], b["wall"], noise["thresholds"])
                + gate.compare_shares(a["share"], b["share"], noise["share_thresholds"]))

    for name in _for_gate(plants, "wall"):
        say(f"wall time: {name}")
        a, b = gate.time_sides([sides["base"], sides[name]], **settings)
        out["plants"][name] = compare(a, b)
        out["samples"][name] = [a, b]
    for i in range(reruns):
        say(f"wall time: same-build rerun {i + 1}/{reruns}")
        a, b = gate.time_sides([sides["base"], sides["base"]], **settings)
        out["reruns"].append(compare(a, b))
    return out


def _track_runs(sides, plants, reruns, fixtures, say):
    say("correctness: base")
    base = gate.run_tracks(sides["base"], fixtures)
    out = {"base": base, "plants": {}, "reruns": []}
    for name in _for_gate(plants, "tracks"):
        say(f"correctness: {name}")
        out["plants"][name] = gate.compare_tracks(base, gate.run_tracks(sides[name], fixtures))
    for i in range(reruns):
        say(f"correctness: same-build rerun {i + 1}/{reruns}")
        out["reruns"].append(gate.compare_tracks(base, gate.run_tracks(sides["base"],
                                                                        fixtures)))
    return out


_BAD = {"regression", "nondeterministic", "accuracy", "serialised"}


def _alarms(rows):
    return [r for r in rows if r["status"] in _BAD]


def summary_rows(result):
    """One row per plant and gate run: caught?, and the evidence.

    Returns
    -------
    list of dict
        ``plant``, ``expected``, ``gate``, ``caught`` (bool), ``evidence``.
    """
    rows = []
    for name, plant in PLANTS.items():
        for key in ("instructions", "wall", "tracks"):
            part = (result.get(key) or {}).get("plants", {}).get(name)
            if part is None:
                continue
            alarms = _alarms(part)
            if key == "tracks":
                ev = "; ".join(f"{r['track']}: {r['status']}, determ. {r['deterministic']}, "
                               f"Dice {r['base_dice']:.4f} -> {r['head_dice']:.4f}"
                               for r in part)
            else:
                timed = [r for r in part if "ratio" in r]
                worst = max(timed, key=lambda r: abs(r["ratio"] - 1))
                ev = f"{worst['case']}: {worst['ratio'] - 1:+.2%}"
                if key == "wall":
                    ev += f", p = {worst['p']:.1g}, threshold {worst['threshold']:.1%}"
                    for r in part:
                        if r["status"] == "serialised":
                            ev += (f"; {r['case']} serialised: thread share "
                                   f"{r['base_share']:.2f} -> {r['head_share']:.2f}, "
                                   f"p = {r['p']:.1g}")
            rows.append({"plant": name, "what": plant["what"], "expected": plant["gate"],
                         "gate": key, "caught": bool(alarms),
                         "flagged": [r.get("case", r.get("track")) for r in alarms],
                         "evidence": ev})
    return rows


def rerun_alarms(result):
    """Gate -> (same-build reruns, reruns that raised an alarm)."""
    out = {}
    for key in ("instructions", "wall", "tracks"):
        runs = (result.get(key) or {}).get("reruns", [])
        out[key] = (len(runs), sum(1 for rows in runs if _alarms(rows)))
    return out


def format_summary(result):
    """The self-test table as text."""
    lines = [f"{'plant':<9} {'expected':<12} {'gate':<12} {'caught':<6}  evidence",
             f"{'-' * 9} {'-' * 12} {'-' * 12} {'-' * 6}  {'-' * 40}"]
    for r in summary_rows(result):
        lines.append(f"{r['plant']:<9} {r['expected']:<12} {r['gate']:<12} "
                     f"{'yes' if r['caught'] else 'no':<6}  {r['evidence']}")
    lines.append("")
    for key, (n, bad) in rerun_alarms(result).items():
        if n:
            lines.append(f"same-build reruns, {key}: {n} runs, {bad} with an alarm")
    noise = (result.get("wall") or {}).get("noise")
    if noise:
        lines.append("")
        lines.append(f"wall-time thresholds from {noise['runs']} same-build runs "
                     f"({noise['threads']} threads, {noise['size']}^3): "
                     + ", ".join(f"{c} {t:.1%}" for c, t in noise["thresholds"].items()))
    return "\n".join(lines)


def run_selftest(repo=".", ref="HEAD", *, plants=tuple(PLANTS), reruns=10, calibration=10,
                 gates=("instructions", "wall", "tracks"), cost_size=24, fixtures="fixtures",
                 wall_settings=None, workdir=None, out=None, say=print):
    """Build the base and the plants, run the gates, return everything measured.

    Returns
    -------
    dict
        ``instructions``, ``wall``, ``tracks`` (per gate: plants, reruns and,
        for wall time, the noise), ``summary`` rows, ``reruns`` alarms,
        ``seconds`` per phase, ``load`` (1-minute load averages seen).
        Written to ``out`` (JSON) after each phase when given.
    """
    import os

    settings = {"size": 48, "threads": 2, "rounds": gate.ROUNDS, "repeat": 3, **(wall_settings or {})}
    fixtures = Path(fixtures).resolve()
    scratch = tempfile.TemporaryDirectory(prefix="fastsyn-selftest-") if workdir is None else None
    workdir = Path(workdir or scratch.name)
    result = {"ref": ref, "plants": {k: PLANTS[k]["what"] for k in plants},
              "wall_settings": settings, "seconds": {}, "load": [os.getloadavg()[0]]}
    phases = {"instructions": lambda: _instruction_runs(sides, plants, reruns, cost_size, say),
              "tracks": lambda: _track_runs(sides, plants, reruns, fixtures, say),
              "wall": lambda: _wall_runs(sides, plants, reruns, calibration, settings, say)}
    tree = None
    try:
        start = time.time()
        tree, sides = _builds(repo, ref, workdir, plants, say)
        result["seconds"]["builds"] = time.time() - start
        result["load"].append(os.getloadavg()[0])
        # The wall-time phase runs alone: on a 2-core machine anything beside
        # it (valgrind above all) is the noise it would then measure.
        if "wall" in gates:
            result["wall"], result["seconds"]["wall"] = _timed(phases["wall"])
            result["load"].append(os.getloadavg()[0])
            _save(result, out)
        # The counts and the tracks measure no time: they share the cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {key: pool.submit(_timed, phases[key]) for key in gates if key != "wall"}
            for key in ("tracks", "instructions"):
                if key in futures:
                    result[key], result["seconds"][key] = futures[key].result()
                    result["load"].append(os.getloadavg()[0])
                    _save(result, out)
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                            str(tree)], capture_output=True)
        if scratch is not None:
            scratch.cleanup()
    result["summary"] = summary_rows(result)
    result["reruns"] = {k: {"runs": n, "alarms": bad}
                        for k, (n, bad) in rerun_alarms(result).items()}
    _save(result, out)
    return result


def _timed(func):
    start = time.time()
    return func(), time.time() - start


def _save(result, out):
    """Write what has been measured so far (a long run may be cut short)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None):
    """``python -m fastsyn.bench.selftest``; exit 1 when a plant is missed or a
    rerun raises an alarm."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=".")
    p.add_argument("--ref", default="HEAD")
    p.add_argument("--plants", default=",".join(PLANTS))
    p.add_argument("--gates", default="instructions,wall,tracks")
    p.add_argument("--reruns", type=int, default=10)
    p.add_argument("--calibration", type=int, default=10,
                   help="same-build runs the wall-time thresholds come from (default 10)")
    p.add_argument("--size", type=int, default=48, help="wall-time grid (default 48)")
    p.add_argument("--rounds", type=int, default=gate.ROUNDS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cost-size", type=int, default=24)
    p.add_argument("--fixtures", default="fixtures")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--sites", default=None, metavar="DIR",
                   help="reuse the builds of an earlier run (DIR/site-base, DIR/site-<plant>) "
                        "and run the steps one at a time, most telling first, saving after "
                        "each")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART.json",
                   help="merge the results of runs of different gates into --out and "
                        "print the table (runs nothing)")
    p.add_argument("--until", default=None, metavar="HH:MM",
                   help="with --sites: start no step after this time (UTC, today)")
    args = p.parse_args(argv)
    plants = [x for x in args.plants.split(",") if x]
    unknown = [x for x in plants if x not in PLANTS]
    if unknown:
        p.error(f"unknown plants {unknown}; choose from {', '.join(PLANTS)}")

    def say(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if args.merge:
        result = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        _save(result, args.out)
        print(format_summary(result))
        return 0
    if args.sites:
        result = _run_on_sites(args, plants, say)
        print(format_summary(result))
        return 0

    result = run_selftest(args.repo, args.ref, plants=plants, reruns=args.reruns,
                          calibration=args.calibration, gates=args.gates.split(","),
                          cost_size=args.cost_size, fixtures=args.fixtures,
                          wall_settings={"size": args.size, "rounds": args.rounds,
                                         "repeat": args.repeat},
                          workdir=args.workdir, out=args.out, say=say)
    print(format_summary(result))
    if args.out:
        print(f"wrote {args.out}")
    missed = [r for r in result["summary"] if r["expected"] == r["gate"] and not r["caught"]]
    false = any(v["alarms"] for v in result["reruns"].values())
    return 1 if missed or false else 0


def merge_results(parts):
    """One self-test result from runs of different gates (``--sites`` runs
    started side by side, one per gate).

    Parameters
    ----------
    parts : sequence of dict
        Results of :func:`run_selftest` or of ``--sites`` runs.

    Returns
    -------
    dict
    """
    merged = {"ref": parts[0].get("ref"), "plants": {}, "load": [], "steps_left": [],
              "wall_settings": parts[0].get("wall_settings")}
    for part in parts:
        merged["plants"].update(part.get("plants", {}))
        merged["load"] += part.get("load", [])
        merged["steps_left"] += part.get("steps_left", [])
        for key in ("instructions", "wall", "tracks"):
            if part.get(key):
                if merged.get(key):
                    raise ValueError(f"two parts hold the {key} gate")
                merged[key] = part[key]
                if key == "wall":
                    merged["wall_settings"] = part.get("wall_settings")
    merged["summary"] = summary_rows(merged)
    merged["reruns"] = {k: {"runs": n, "alarms": bad}
                        for k, (n, bad) in rerun_alarms(merged).items()}
    return merged


def _run_on_sites(args, plants, say):
    import datetime as dt
    import os

    from .sides import Side

    sides = {"base": Side("base", str(Path(args.sites) / "site-base"))}
    sides.update({n: Side(n, str(Path(args.sites) / f"site-{n}")) for n in plants})
    missing = [s.site for s in sides.values() if not Path(s.site, "fastsyn").is_dir()]
    if missing:
        raise SystemExit(f"no build in {', '.join(missing)}")
    deadline = None
    if args.until:
        hh, mm = (int(x) for x in args.until.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0).timestamp()
    settings = {"size": args.size, "threads": 2, "rounds": args.rounds, "repeat": args.repeat}
    result = {"ref": args.ref, "plants": {k: PLANTS[k]["what"] for k in plants},
              "wall_settings": settings, "load": [], "sequential": True}

    def save():
        result["load"].append(os.getloadavg()[0])
        result["summary"] = summary_rows(result)
        result["reruns"] = {k: {"runs": n, "alarms": bad}
                            for k, (n, bad) in rerun_alarms(result).items()}
        _save(result, args.out)

    steps = _plan(plants, args.reruns, args.calibration, args.gates.split(","))
    left = run_steps(sides, steps, result, cost_size=args.cost_size,
                     fixtures=Path(args.fixtures).resolve(), settings=settings,
                     deadline=deadline, save=save, say=say)
    result["steps_left"] = [list(s) for s in left]
    save()
    return result


if __name__ == "__main__":
    sys.exit(main())
