"""Builds of fastsyn to compare ("sides"), and child processes that run them.

A gate compares two commits in one job.  Each commit is installed into a
folder of its own (``pip install --target``) and measured in child processes
whose ``sys.path`` starts with that folder, followed by this environment's
site-packages for NumPy, SciPy and DIPY.  The children run with ``python -S``,
so no ``.pth`` file is read: an editable install of fastsyn in this
environment (a meta-path hook installed by a ``.pth``) cannot shadow the build
under test.

The measuring scripts (the workers of :mod:`fastsyn.bench.costs`,
:mod:`fastsyn.bench.timing` and :mod:`fastsyn.bench.tracks`) are run by path
from *this* checkout with :func:`runpy.run_path`, so a base commit older than
the gate itself is measured by the same code as the head, through fastsyn's
public API only.
"""

import os
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Side", "build_side", "dependency_paths"]

# Put the side's folder first on sys.path, then run the script by path (the
# script's own folder is not added to sys.path, so its sibling modules cannot
# shadow the standard library or the side's fastsyn).
_PRELUDE = ("import os, runpy, sys; "
            "sys.path[:0] = [p for p in sys.argv[1].split(os.pathsep) if p]; "
            "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def dependency_paths():
    """Site-packages folders of this environment (NumPy, SciPy, DIPY, ...).

    Returns
    -------
    list of str
    """
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths += [p for p in site.getsitepackages() if p not in paths]
    return [p for p in dict.fromkeys(paths) if os.path.isdir(p)]


@dataclass(frozen=True)
class Side:
    """One build of fastsyn under test.

    Parameters
    ----------
    label : str
        Name shown in tables (a commit, ``base``, ``head``, a plant).
    site : str or None
        Folder holding the installed ``fastsyn`` package; ``None`` for the
        fastsyn this interpreter imports.
    """

    label: str
    site: str = None

    def command(self, script, *args):
        """The argv that runs ``script`` (a path) against this side's fastsyn.

        Parameters
        ----------
        script : str or Path
        *args : str

        Returns
        -------
        list of str
        """
        if self.site is None:
            return [sys.executable, "-c", _PRELUDE, "", str(script), *map(str, args)]
        extra = os.pathsep.join([str(self.site), *dependency_paths()])
        return [sys.executable, "-S", "-c", _PRELUDE, extra, str(script), *map(str, args)]


def build_side(label, source, target, *, build_dir=None, log=None):
    """Install the fastsyn of a source tree into ``target`` (no dependencies).

    Parameters
    ----------
    label : str
        Name of the side.
    source : str or Path
        A fastsyn source tree (a checkout or a ``git worktree``).
    target : str or Path
        Folder to install into (``pip install --target``); replaced.
    build_dir : str or Path, optional
        A persistent meson build folder (``-Cbuild-dir``): later builds of the
        same source tree only recompile what changed.
    log : file, optional
        Where pip's output goes (default: discarded unless the build fails).

    Returns
    -------
    Side

    Raises
    ------
    RuntimeError
        If the build fails (the tail of pip's output is in the message).
    """
    import shutil

    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--target", str(target)]
    if build_dir is not None:
        cmd.append(f"-Cbuild-dir={Path(build_dir).resolve()}")
    cmd.append(str(Path(source).resolve()))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        log.write(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (target / "fastsyn").is_dir():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"building {label} from {source} failed:\n{tail}")
    return Side(label, str(target.resolve()))
