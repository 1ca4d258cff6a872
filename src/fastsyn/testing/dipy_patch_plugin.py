"""pytest plugin: run a whole test session with DIPY patched onto fastsyn.

DIPY's own alignment tests then become a contract for
:func:`fastsyn.patch_dipy`: whatever they check of stock DIPY must still hold
when SyN, ``DiffeomorphicMap`` and ``CCMetric`` run on fastsyn's kernels::

    python -m pytest -p fastsyn.testing.dipy_patch_plugin --fastsyn-threads 2 \\
        --pyargs dipy.align.tests.test_imwarp dipy.align.tests.test_metrics

The patch is installed in ``pytest_configure``, before any test module is
imported (so names a test module binds at import time are the patched ones),
and undone in ``pytest_unconfigure``.  Options, not environment variables,
choose the thread count, so a run is reproduced from its command line alone.

It ships in the package (it imports pytest only when pytest loads it) so the
installed fastsyn can be checked against the installed DIPY, which is where
the contract matters.
"""

import pytest

_STATE = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("fastsyn", "fastsyn: DIPY patched onto fastsyn")
    group.addoption("--fastsyn-threads", type=int, default=2, metavar="N",
                    help="num_threads given to fastsyn.patch_dipy (DIPY's rules: "
                         "-1 all CPUs, -2 all but one; default 2)")
    group.addoption("--fastsyn-grain", type=int, default=1, metavar="VOXELS",
                    help="voxels a kernel thread needs before work is split "
                         "(fastsyn._threads.parallel_grain); default 1, so that "
                         "DIPY's small test images really run on several threads")


def pytest_configure(config):
    from fastsyn import patch_dipy
    from fastsyn._threads import parallel_grain

    threads = config.getoption("fastsyn_threads")
    grain = config.getoption("fastsyn_grain")
    try:
        grain_cm = parallel_grain(grain)
        grain_cm.__enter__()
    except ValueError as exc:
        raise pytest.UsageError(f"--fastsyn-grain: {exc}") from None
    try:
        handle = patch_dipy(num_threads=threads)
    except (ValueError, TypeError) as exc:
        grain_cm.__exit__(None, None, None)
        raise pytest.UsageError(f"--fastsyn-threads: {exc}") from None
    config.stash[_STATE] = [handle, grain_cm]


def pytest_report_header(config):
    if _STATE not in config.stash:
        return None
    return (f"fastsyn: DIPY patched (num_threads={config.getoption('fastsyn_threads')}, "
            f"grain={config.getoption('fastsyn_grain')})")


def pytest_unconfigure(config):
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    handle, grain_cm = state
    del config.stash[_STATE]
    handle.undo()
    grain_cm.__exit__(None, None, None)
