"""``fastsyn bench costs|noise|gate``: instruction counts and the regression gate.

Kept apart from :mod:`fastsyn.cli.bench` (which registers these subcommands)
so that the cohort and study commands there stay short.
"""

import json
from pathlib import Path

from ..bench.gate import ROUNDS
from ._common import CommandError, positive_int

__all__ = ["add_costs", "add_gate", "add_noise", "add_tracks"]


def _cases(text):
    from fastsyn.bench.workload import CASES

    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if not cases or unknown:
        raise CommandError(f"--cases must list cases among {', '.join(CASES)}; "
                           f"got {text!r}")
    return cases


def _write(path, data):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {path}")


def _say(message):
    print(f"... {message}", flush=True)


# ------------------------------------------------------------------- costs
def add_costs(bsub):
    p = bsub.add_parser("costs", help="instruction counts of the kernels under valgrind "
                                      "(one thread, deterministic)")
    p.add_argument("--size", type=positive_int, default=24, metavar="N",
                   help="cube side of the grid (default 24)")
    p.add_argument("--cases", default=None, metavar="LIST",
                   help="comma-separated cases (default: all)")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.set_defaults(func=run_costs)


def run_costs(args):
    """Handler of ``fastsyn bench costs``."""
    from fastsyn.bench import costs

    cases = None if args.cases is None else _cases(args.cases)
    try:
        rows = costs.cost_table(cases, args.size)
    except costs.ValgrindMissing as exc:
        raise CommandError(str(exc)) from None
    print(costs.format_table(rows))
    _write(args.out, {"size": args.size, "rows": rows})
    return 0


# ------------------------------------------------------------------ tracks
def add_tracks(bsub):
    p = bsub.add_parser("tracks", help="correctness tracks of this build: SyN output hashes "
                                       "at 1/2/3 threads, label Dice, metric values; exit 1 "
                                       "when a result depends on the thread count")
    p.add_argument("--fixtures", default="fixtures", metavar="DIR",
                   help="fixture pairs (default fixtures)")
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.set_defaults(func=run_tracks)


def run_tracks(args):
    """Handler of ``fastsyn bench tracks``."""
    from fastsyn.bench.gate import run_tracks as tracks
    from fastsyn.bench.sides import Side
    from fastsyn.bench.workload import TRACK_PAIRS

    missing = [f for f, _ in TRACK_PAIRS.values()
               if not (Path(args.fixtures) / f"{f}.npz").is_file()]
    if missing:
        raise CommandError(f"fixture(s) {', '.join(missing)} not found in {args.fixtures}")
    result = tracks(Side("this"), args.fixtures)
    print(f"{'track':<8} {'fixture':<18} {'determ.':>7} {'Dice':>7} {'before':>7}  hashes "
          "(1/2/3 threads)")
    for name, t in result["tracks"].items():
        print(f"{name:<8} {t['fixture']:<18} {t['deterministic']:>7} {t['dice']:>7.4f} "
              f"{t['dice_before']:>7.4f}  " + " ".join(t["hashes"].values()))
    _write(args.out, result)
    return 0 if all(t["deterministic"] for t in result["tracks"].values()) else 1


# --------------------------------------------------------- noise and gate
def _wall_options(p):
    p.add_argument("--size", type=positive_int, default=48, metavar="N",
                   help="cube side of the timed grid (default 48)")
    p.add_argument("--threads", type=positive_int, default=2, metavar="T",
                   help="threads per timed call (default 2)")
    p.add_argument("--rounds", type=positive_int, default=ROUNDS, metavar="R",
                   help=f"interleaved rounds = samples per side (default {ROUNDS})")
    p.add_argument("--repeat", type=positive_int, default=3, metavar="K",
                   help="calls per sample, the fastest kept (default 3)")
    p.add_argument("--repo", default=".", metavar="DIR", help="git checkout (default .)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="scratch folder for the worktrees and builds (default: a "
                        "temporary folder, removed)")


def add_noise(bsub):
    p = bsub.add_parser("noise", help="measure the wall-time noise of one build against "
                                      "itself; writes the gate's thresholds")
    p.add_argument("--ref", default="HEAD", metavar="REF", help="commit (default HEAD)")
    p.add_argument("--runs", type=positive_int, default=5, metavar="N",
                   help="same-build comparisons (default 5, at least 4)")
    p.add_argument("--out", required=True, metavar="NOISE.json")
    _wall_options(p)
    p.set_defaults(func=run_noise)


def add_gate(bsub):
    p = bsub.add_parser("gate", help="compare two commits: instruction counts, wall time "
                                     "and correctness; exit 1 on a regression")
    p.add_argument("--base", required=True, metavar="REF")
    p.add_argument("--head", default="HEAD", metavar="REF", help="default HEAD")
    p.add_argument("--gates", default="instructions,wall,tracks", metavar="LIST",
                   help="which gates (default instructions,wall,tracks)")
    p.add_argument("--noise", default=None, metavar="NOISE.json",
                   help="stored thresholds from 'fastsyn bench noise' on this machine "
                        "(default: measure them first, see --calibration)")
    p.add_argument("--calibration", type=int, default=10, metavar="N",
                   help="without --noise: same-build runs of the base timed first, in this "
                        "job, for the thresholds (default 10, about 2 minutes; 0: the 2%% "
                        "floor for every case)")
    p.add_argument("--cost-size", type=positive_int, default=24, metavar="N",
                   help="grid of the instruction counts (default 24)")
    p.add_argument("--fixtures", default="fixtures", metavar="DIR",
                   help="fixture pairs of the correctness tracks (default fixtures)")
    p.add_argument("--out", default=None, metavar="GATE.json",
                   help="the result as JSON (the report shows a gate.json beside the results)")
    _wall_options(p)
    p.set_defaults(func=run_gate)


def _gates(text):
    gates = {g.strip() for g in text.split(",") if g.strip()}
    if not gates or gates - {"instructions", "wall", "tracks"}:
        raise CommandError(f"--gates must list instructions, wall and/or tracks; got {text!r}")
    return gates


def _with_builds(args, refs, work):
    import contextlib
    import tempfile

    from fastsyn.bench.gate import build_refs

    if not (Path(args.repo) / ".git").exists():
        raise CommandError(f"--repo is not a git checkout: {args.repo}")
    stack = contextlib.ExitStack()
    folder = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(
        prefix="fastsyn-gate-"))
    with stack:
        _say(f"building {', '.join(refs)} in {folder}")
        try:
            sides = build_refs(args.repo, refs, folder)
            return work(sides)
        finally:
            for i in range(len(refs)):
                _remove_worktree(args.repo, Path(folder) / f"src-{i}")


def _remove_worktree(repo, path):
    import subprocess

    if path.exists():
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)],
                       capture_output=True)


def run_noise(args):
    """Handler of ``fastsyn bench noise``."""
    from fastsyn.bench.gate import calibrate

    if args.runs < 4:
        raise CommandError("--runs must be at least 4 (quartiles of the changes)")

    def work(sides):
        return calibrate(sides[0], args.runs, size=args.size, threads=args.threads,
                         rounds=args.rounds, repeat=args.repeat, progress=_say)

    noise = _with_builds(args, [args.ref], work)
    for case, limit in noise["thresholds"].items():
        print(f"{case:<11} threshold {limit:6.1%}   changes seen: "
              + " ".join(f"{c:+.1%}" for c in noise["changes"][case]))
    _write(args.out, noise)
    return 0


def run_gate(args):
    """Handler of ``fastsyn bench gate``; exit 1 on a regression."""
    from fastsyn.bench import costs
    from fastsyn.bench.gate import format_gate, load_noise
    from fastsyn.bench.gate import run_gate as gate

    gates = _gates(args.gates)
    noise = load_noise(args.noise) if args.noise else None
    mismatch = [f"{k} {noise[k]} (this run: {getattr(args, k)})" for k in
                ("size", "threads", "rounds", "repeat")
                if noise and k in noise and noise[k] != getattr(args, k)]
    if mismatch:
        raise CommandError(f"--noise {args.noise} was measured with other settings: "
                           + ", ".join(mismatch))
    if args.calibration != 0 and args.calibration < 4:
        raise CommandError("--calibration must be 0 or at least 4 (quartiles of the changes)")
    if "instructions" in gates:
        try:
            costs.valgrind_path()
        except costs.ValgrindMissing as exc:
            raise CommandError(f"{exc} (or leave it out: --gates wall,tracks)") from None
    if "tracks" in gates and not Path(args.fixtures).is_dir():
        raise CommandError(f"--fixtures folder not found: {args.fixtures}")

    def work(sides):
        return gate(*sides, noise=noise, calibration=args.calibration,
                    instructions="instructions" in gates,
                    wall="wall" in gates, tracks="tracks" in gates, cost_size=args.cost_size,
                    size=args.size, threads=args.threads, rounds=args.rounds,
                    repeat=args.repeat, fixtures=args.fixtures, progress=_say)

    result = _with_builds(args, [args.base, args.head], work)
    print(format_gate(result))
    _write(args.out, result)
    return 1 if result["failed"] else 0
