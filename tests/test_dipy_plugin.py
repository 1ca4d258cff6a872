"""The pytest plugin that runs DIPY's tests with fastsyn patched in."""

import subprocess
import sys

from dipy.align import imwarp as dipy_imwarp

from fastsyn.patch import is_patched

PLUGIN = "fastsyn.testing.dipy_patch_plugin"

INNER = """
from dipy.align import imwarp
import fastsyn._threads
from fastsyn.patch import is_patched


def test_patched():
    assert is_patched()
    assert imwarp.SymmetricDiffeomorphicRegistration.num_threads == 3
    assert imwarp.DiffeomorphicMap.num_threads == 3
    assert fastsyn._threads.effective_threads(3, 10) == 2  # grain 5: 10 voxels, 2 threads
"""


def _run(tmp_path, *args):
    (tmp_path / "test_inner.py").write_text(INNER)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-q",
                           "-p", "no:cacheprovider",
                           *args, str(tmp_path / "test_inner.py")],
                          cwd=tmp_path, capture_output=True, text=True)


def test_plugin_patches_for_the_session(tmp_path):
    res = _run(tmp_path, "--fastsyn-threads", "3", "--fastsyn-grain", "5")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout


def test_plugin_rejects_bad_thread_count(tmp_path):
    res = _run(tmp_path, "--fastsyn-threads", "0")
    assert res.returncode != 0
    assert "--fastsyn-threads" in res.stderr


def test_plugin_hooks_undo_the_patch():
    from fastsyn.testing import dipy_patch_plugin as plugin

    class Config:
        def __init__(self):
            import pytest
            self.stash = pytest.Stash()

        def getoption(self, name):
            return {"fastsyn_threads": 2, "fastsyn_grain": 1}[name]

    original = dipy_imwarp.SymmetricDiffeomorphicRegistration.__dict__["_iterate"]
    config = Config()
    plugin.pytest_configure(config)
    try:
        assert is_patched()
        assert dipy_imwarp.SymmetricDiffeomorphicRegistration._iterate is not original
    finally:
        plugin.pytest_unconfigure(config)
    assert not is_patched()
    assert dipy_imwarp.SymmetricDiffeomorphicRegistration.__dict__["_iterate"] is original
