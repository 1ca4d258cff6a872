"""Run test cases in a child Python process so that a crash is a test failure.

Memory-safety tests call code that may read or write out of bounds, divide
by zero in C (SIGFPE) or abort.  Running them inside pytest would kill the
whole run; here a worker process runs them one after the other and reports
each outcome as a JSON line on stdout.  If the worker dies, the case it had
started is reported as crashed (with the signal), and a fresh worker goes on
with the remaining cases.

Protocol (one JSON object per line on the worker's stdout):

* ``{"start": case_id}`` before a case runs;
* ``{"id": case_id, "ok": bool, "observed": str}`` after it.

Anything else on stdout is ignored, so libraries that print do no harm.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager

#: Seconds one case may take before the worker is killed and the case counts
#: as hung (generous: the machine is shared and slow).
CASE_TIMEOUT = 240.0


def describe_returncode(rc):
    """'signal 11 (SIGSEGV)' for a negative return code, else 'exit status N'."""
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = "?"
        return f"killed by signal {-rc} ({name})"
    return f"exit status {rc}"


def _reader(stream, lines):
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def run_worker(argv, ids, *, case_timeout=CASE_TIMEOUT, env=None):
    """Run ``argv`` (a worker command reading case ids from stdin) until every
    case in ``ids`` has an outcome; returns ``{case_id: outcome}``.

    An outcome is the worker's dict (``ok``, ``observed``), or for a case
    whose worker died or hung, ``ok=False`` with what happened.
    """
    remaining = list(ids)
    outcomes = {}
    while remaining:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        proc.stdin.write(json.dumps(remaining))
        proc.stdin.close()
        lines = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        err_lines = []
        threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
        current = None
        hung = False
        deadline = time.monotonic() + case_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    hung = True
                    proc.kill()
                    break
                continue
            if line is None:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if "start" in msg:
                current = msg["start"]
                deadline = time.monotonic() + case_timeout
            elif "id" in msg:
                outcomes[msg["id"]] = msg
                if msg["id"] in remaining:
                    remaining.remove(msg["id"])
                current = None
        rc = proc.wait()
        stderr_tail = "".join(err_lines)[-2000:]
        if current is None:
            if remaining:  # died between cases: nothing to blame, give up
                for cid in remaining:
                    outcomes[cid] = {"id": cid, "ok": False, "observed":
                                     f"worker ended ({describe_returncode(rc)}) before "
                                     f"running this case; stderr: {stderr_tail}"}
                remaining = []
            break
        what = (f"hung for more than {case_timeout:.0f} s" if hung
                else f"crashed the process: {describe_returncode(rc)}")
        outcomes[current] = {"id": current, "ok": False,
                             "observed": f"{what}; stderr tail: {stderr_tail.strip()[-800:]}"}
        remaining.remove(current)
    return outcomes


@contextmanager
def real_threads():
    """Make the kernels split even tiny inputs over threads (results must not
    change, so this only makes the thread-count checks meaningful).

    ``parallel_grain`` lives in ``fastsyn.fields`` today and may move to
    ``fastsyn._threads``; without either, the kernels' default is used.
    """
    grain = None
    for module in ("fastsyn._threads", "fastsyn.fields"):
        try:
            grain = getattr(__import__(module, fromlist=["parallel_grain"]), "parallel_grain")
            break
        except (ImportError, AttributeError):
            continue
    if grain is None:
        yield
    else:
        with grain(1):
            yield


def worker_main(run_case):
    """Worker side: read the case ids (JSON list) from stdin, run each with
    ``run_case(case_id) -> (ok, observed)`` and report on stdout."""
    ids = json.loads(sys.stdin.read())
    out = sys.stdout
    with real_threads():
        for cid in ids:
            out.write(json.dumps({"start": cid}) + "\n")
            out.flush()
            try:
                ok, observed = run_case(cid)
            except BaseException as exc:  # a harness bug must not hide other cases
                ok, observed = False, ("the check itself failed: "
                                       + "".join(traceback.format_exception_only(exc)).strip())
            out.write(json.dumps({"id": cid, "ok": bool(ok), "observed": str(observed)}) + "\n")
            out.flush()
    out.flush()
    os._exit(0)  # skip interpreter teardown (OpenMP pools, dipy globals)
