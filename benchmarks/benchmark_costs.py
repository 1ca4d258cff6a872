"""Instruction counts of the kernels, tracked across commits (asv ``track_*``).

Each case of :mod:`fastsyn.bench.workload` runs once on one thread under
valgrind (see :mod:`fastsyn.bench.costs`); the tracked value is the number of
instructions executed in fastsyn's compiled kernels.  The counts repeat from
run to run (same-commit spread measured at 0 to 0.1 %), so unlike the
``time_*`` benchmarks a change of a fraction of a per cent is real.  They are
not time: they complement the wall-time benchmarks, never replace them.

All cases are counted in one valgrind process in ``setup_cache`` (the
interpreter's start-up under valgrind is most of the cost); without valgrind
every case is skipped (n/a) with the reason.
"""

from fastsyn.bench import costs

CASES = list(costs.CASES)


class InstructionCounts:
    """Kernel instructions per case, one thread, on the smallest grid."""

    params = [CASES]
    param_names = ["case"]
    timeout = 1800

    def setup_cache(self):
        try:
            costs.valgrind_path()
        except costs.ValgrindMissing as exc:
            return {"missing": str(exc)}
        rows = costs.cost_table(CASES, costs.SIZES[0])
        return {r["case"]: r for r in rows}

    def setup(self, table, case):
        if "missing" in table:
            raise NotImplementedError(table["missing"])

    def track_kernel_instructions(self, table, case):
        return table[case]["instructions"]

    track_kernel_instructions.unit = "instructions"

    def track_call_instructions(self, table, case):
        return table[case]["call_instructions"]

    track_call_instructions.unit = "instructions"
