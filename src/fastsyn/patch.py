"""Route unchanged DIPY code through fastsyn's kernels.

:func:`patch_dipy` installs fastsyn's implementations on DIPY's own classes
(``SymmetricDiffeomorphicRegistration``, ``DiffeomorphicMap`` and
``CCMetric``; for affine registration ``AffineRegistration`` and
``imaffine.MutualInformationMetric``), so code that imported them before or
after the patch runs on threads, and puts everything back when undone.
"""

import threading

from dipy.align import imaffine as dipy_imaffine
from dipy.align import imwarp as dipy_imwarp
from dipy.align import metrics as dipy_metrics

from fastsyn import imaffine as fs_imaffine
from fastsyn import imwarp as fs_imwarp
from fastsyn import metrics as fs_metrics
from fastsyn._threads import resolve_num_threads

__all__ = ["patch_dipy", "is_patched"]

_MISSING = object()
_lock = threading.Lock()
_active = []


def _replacements():
    fs_cc = fs_metrics.CCMetric
    return {
        dipy_imwarp.SymmetricDiffeomorphicRegistration: {
            "_connect_functions": fs_imwarp._connect_functions,
            "_init_optimizer": fs_imwarp._init_optimizer,
            "_iterate": fs_imwarp._iterate,
            "_optimize": fs_imwarp._optimize,
        },
        dipy_imwarp.DiffeomorphicMap: {
            "_get_warping_function": fs_imwarp._get_warping_function,
            "expand_fields": fs_imwarp.expand_fields,
            "compute_inversion_error": fs_imwarp.compute_inversion_error,
            "warp_endomorphism": fs_imwarp.warp_endomorphism,
        },
        dipy_metrics.CCMetric: {
            name: fs_cc.__dict__[name]
            for name in ("initialize_iteration", "free_iteration", "compute_forward",
                         "compute_backward", "_step", "_threads")
        } | {"smoothing_seconds": 0.0},
        # Affine registration: dense MI on the fused kernel (sparse sampling
        # stays DIPY's), threaded scale space and per-level resampling.
        dipy_imaffine.MutualInformationMetric: {
            "setup": fs_imaffine._metric_setup,
            "_update_mutual_information": fs_imaffine._metric_update,
        },
        dipy_imaffine.AffineRegistration: {
            "_init_optimizer": fs_imaffine._init_optimizer,
            "optimize": fs_imaffine._optimize,
        },
    }


def is_patched():
    """Whether DIPY currently runs on fastsyn's kernels."""
    return bool(_active)


class patch_dipy:
    """Make DIPY's SyN, DiffeomorphicMap, CCMetric and affine registration
    (``AffineRegistration``, ``MutualInformationMetric``, hence
    ``dipy.align.affine_registration``) run on fastsyn.

    Use as a context manager, or call it and keep the handle to ``undo()``::

        with fastsyn.patch_dipy(num_threads=2):
            mapping = dipy.align.imwarp.SymmetricDiffeomorphicRegistration(
                dipy.align.metrics.CCMetric(3), level_iters=[10, 10, 5]
            ).optimize(static, moving)

        handle = fastsyn.patch_dipy()
        ...
        handle.undo()

    Parameters
    ----------
    num_threads : int or None, optional
        Threads used by the patched classes (None: OpenMP default).  An
        instance's own ``num_threads`` attribute, if set, takes precedence.
    pyramid, flow_sigma, total_sigma, convergence : optional
        ANTs-style SyN for unchanged DIPY code, as in
        :class:`fastsyn.SymmetricDiffeomorphicRegistration` (defaults keep
        DIPY's algorithm).  DIPY's ``opt_tol`` (default 1e-5) stays the
        threshold: pass ``opt_tol=1e-7`` for ANTs' with ``convergence="ants"``.

    Notes
    -----
    Patches nest: the innermost active patch decides the thread count, and
    DIPY is restored when the last one is undone.  Undo in reverse order.
    """

    def __init__(self, num_threads=None, *, pyramid="dipy", flow_sigma=None,
                 total_sigma=0.0, convergence="dipy"):
        resolve_num_threads(num_threads)
        options = fs_imwarp.check_syn_options(pyramid=pyramid, flow_sigma=flow_sigma,
                                              total_sigma=total_sigma,
                                              convergence=convergence)
        self.num_threads = num_threads
        self._saved = None
        with _lock:
            self._saved = {}
            for cls, methods in _replacements().items():
                saved = self._saved[cls] = {}
                extra = [("num_threads", num_threads)]
                if cls is dipy_imwarp.SymmetricDiffeomorphicRegistration:
                    extra += list(options.items())
                for name, new in list(methods.items()) + extra:
                    saved[name] = cls.__dict__.get(name, _MISSING)
                    setattr(cls, name, new)
            _active.append(self)

    @property
    def active(self):
        return self._saved is not None

    def undo(self):
        """Restore DIPY's classes as they were before this patch."""
        with _lock:
            if self._saved is None:
                return
            for cls, saved in self._saved.items():
                for name, old in saved.items():
                    if old is _MISSING:
                        if name in cls.__dict__:
                            delattr(cls, name)
                    else:
                        setattr(cls, name, old)
            self._saved = None
            _active.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False
