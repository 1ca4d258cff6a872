"""Deformable registration methods behind one interface.

Every method takes a prealigned pair (arrays on the fixed grid plus their
grid-to-world matrices) and returns a :class:`MethodResult`: the warped moving
image, the warped moving labels (nearest neighbour), the displacement on the
fixed grid in world millimetres (fixed point ``x`` corresponds to
``x + u(x)`` in the moving space) and the wall-clock seconds of the deformable
stage alone, with the thread count and the peak resident memory.

Methods
-------
``dipy``
    Stock DIPY ``SymmetricDiffeomorphicRegistration``. ``cc``: DIPY's
    ``CCMetric`` (radius 4, sigma_diff 2). DIPY has no mutual information for
    SyN, so ``mi`` runs the stock optimizer with ``fastsyn.MIMetric`` (the
    configuration records ``metric_impl="fastsyn.MIMetric"``). Serial.
``fastsyn``
    ``fastsyn.SymmetricDiffeomorphicRegistration`` with ``fastsyn.CCMetric`` or
    ``fastsyn.MIMetric`` and the requested thread count.  MI takes the
    ``nbins``, ``mi_sigma_diff``, ``clip`` and ``sampling`` options (the
    metric's own defaults, see :class:`fastsyn.MIMetric`); ``sigma_diff``
    is CC's.
``fastsyn-ants``
    fastsyn in its ANTs-faithful mode (:func:`fastsyn.ants_like`: ANTs'
    pyramid, ITK's update smoothing, ANTs' convergence test) with the
    ``ants`` method's parameters (step 0.2, flow variance 3, CC radius 4 or
    32 bins).
``ants``
    antspyx ``ants.registration(type_of_transform="SyNOnly")`` with ``CC``
    (radius 4) or ``mattes`` (32 bins), run in a child process whose ITK thread
    count is set through ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``.
``greedy``
    picsl-greedy ``Greedy3D`` with ``NCC 4x4x4`` or ``NMI`` and ``-threads``.

A method whose package is missing answers ``available()`` with ``False`` and a
reason; it never raises at import time.

Masks
-----
``run`` takes optional ``fixed_mask`` / ``moving_mask`` (boolean arrays on the
fixed grid, the moving one prealigned) and hands them to the methods that
restrict their metric to a mask (:meth:`Method.accepts_masks`): fastsyn's and
DIPY's MI (``MIMetric(static_mask=, moving_mask=)``), ANTs (``mask`` and
``moving_mask`` of ``ants.registration``, applied to the SyN stage) and
greedy (``-gm`` and ``-mm``).  CC in fastsyn and DIPY has no mask: it gets
none, and the harness records ``masks="none"`` for it.
"""

import importlib.util
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "MethodResult",
    "Method",
    "DipyMethod",
    "FastsynMethod",
    "FastsynAntsMethod",
    "AntsMethod",
    "GreedyMethod",
    "METHODS",
    "get_method",
]

METRICS = ("cc", "mi")


@dataclass
class MethodResult:
    """Output of one deformable registration.

    Attributes
    ----------
    warped : ndarray
        Moving image warped onto the fixed grid (linear).
    warped_labels : ndarray of int32
        Moving labels warped onto the fixed grid (nearest neighbour).
    displacement : ndarray or None
        ``(X, Y, Z, 3)`` displacement in world mm on the fixed grid, or
        ``None`` when the method does not expose one.
    seconds : float
        Wall-clock time of the deformable stage only.
    threads : int
        Threads the method was allowed to use.
    peak_mem_mb : float or None
        Peak resident memory (MiB) of the process that ran the registration.
    extra : dict
        Method-specific details (e.g. fastsyn's per-stage times).
    """

    warped: np.ndarray
    warped_labels: np.ndarray
    displacement: np.ndarray | None
    seconds: float
    threads: int
    peak_mem_mb: float | None
    extra: dict = field(default_factory=dict)


class _PeakRSS:
    """Sample the resident set size of this process while a block runs."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False

    @property
    def mb(self):
        return self.peak / 2**20


def _check_mask(name, mask, shape):
    """A mask as a boolean array of the image's shape (``None`` stays ``None``)."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be boolean or numeric, got dtype {arr.dtype}")
    arr = arr != 0
    if not arr.any():
        raise ValueError(f"{name} is empty (no nonzero voxel)")
    return arr


def _check_inputs(fixed_img, moving_img, fixed_affine, moving_affine, moving_labels,
                  metric, levels, threads):
    fixed = np.asarray(fixed_img)
    moving = np.asarray(moving_img)
    labels = np.asarray(moving_labels)
    for name, arr in (("fixed_img", fixed), ("moving_img", moving)):
        if arr.ndim != 3:
            raise ValueError(f"{name} must be a 3D array, got {arr.ndim}D")
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if labels.shape != moving.shape:
        raise ValueError(
            f"moving_labels has shape {labels.shape}, expected {moving.shape}"
        )
    if labels.dtype.kind not in "biuf":
        raise TypeError(f"moving_labels must be integer, got dtype {labels.dtype}")
    affs = []
    for name, aff in (("fixed_affine", fixed_affine), ("moving_affine", moving_affine)):
        a = np.asarray(aff, dtype=np.float64)
        if a.shape != (4, 4):
            raise ValueError(f"{name} must be 4x4, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise ValueError(f"{name} is not a finite invertible matrix")
        affs.append(a)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    levels = tuple(levels)
    if not levels or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in levels):
        raise ValueError(f"levels must be a non-empty sequence of ints >= 0, got {levels!r}")
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    return (fixed.astype(np.float64), moving.astype(np.float64), affs[0], affs[1],
            np.rint(labels).astype(np.int32), [int(v) for v in levels], int(threads))


class Method:
    """A deformable registration method of the benchmark.

    Parameters
    ----------
    **options
        Method parameters that override :attr:`defaults`; they become part of
        :attr:`config` and so of the record key.

    Attributes
    ----------
    name : str
        Method name used on the command line and in record keys.
    label : str
        Name shown in tables.
    defaults : dict
        Default method parameters.
    """

    name = "method"
    label = "Method"
    defaults = {}
    package = None
    #: Metrics for which the method restricts its similarity to masks.
    mask_metrics = ()

    def __init__(self, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"unknown option(s) for method {self.name!r}: {sorted(unknown)}; "
                f"known: {sorted(self.defaults)}"
            )
        self.options = {**self.defaults, **options}

    def __repr__(self):
        return f"{type(self).__name__}({self.options})"

    @property
    def config(self):
        """Method parameters (without metric, levels and threads)."""
        return {"method": self.name, **self.options}

    def configuration(self, metric, levels, threads):
        """The full configuration of a run, as stored in results.

        Parameters
        ----------
        metric : {"cc", "mi"}
        levels : sequence of int
            Iterations per pyramid level, coarsest first.
        threads : int
            Requested threads.

        Returns
        -------
        dict
        """
        return {**self.config, "metric": metric, "levels": [int(v) for v in levels],
                "threads": self.effective_threads(threads)}

    def effective_threads(self, threads):
        """Threads the method really uses when ``threads`` are requested."""
        return int(threads)

    def accepts_masks(self, metric):
        """Whether :meth:`run` passes masks on to the registration for ``metric``."""
        return metric in self.mask_metrics

    def available(self, metric=None):
        """Whether the method can run here.

        Parameters
        ----------
        metric : {"cc", "mi"}, optional
            Also check that this metric is supported.

        Returns
        -------
        (bool, str)
            ``(True, "")`` or ``(False, reason)``.
        """
        if metric is not None and metric not in METRICS:
            return False, f"unknown metric {metric!r} (expected one of {METRICS})"
        if self.package and importlib.util.find_spec(self.package) is None:
            return False, f"package {self.package!r} is not installed"
        return True, ""

    def run(self, fixed_img, moving_img, fixed_affine, moving_affine, moving_labels, *,
            metric, levels, threads, fixed_mask=None, moving_mask=None):
        """Register ``moving_img`` to ``fixed_img``.

        Parameters
        ----------
        fixed_img, moving_img : ndarray, 3D
            Fixed image and the prealigned moving image.
        fixed_affine, moving_affine : ndarray, (4, 4)
            Grid-to-world matrices.
        moving_labels : ndarray of int
            Moving labels on the moving grid.
        metric : {"cc", "mi"}
            Similarity metric.
        levels : sequence of int
            Iterations per pyramid level, coarsest first.
        threads : int
            Threads the method may use.
        fixed_mask, moving_mask : ndarray, optional
            Masks of the fixed and of the (prealigned) moving image, same
            shapes as the images; nonzero is inside.  Used only where
            :meth:`accepts_masks` says so, ignored otherwise.

        Returns
        -------
        MethodResult
        """
        ok, reason = self.available(metric)
        if not ok:
            raise RuntimeError(f"method {self.name!r} is unavailable: {reason}")
        args = _check_inputs(fixed_img, moving_img, fixed_affine, moving_affine,
                             moving_labels, metric, levels, threads)
        masks = {"fixed_mask": _check_mask("fixed_mask", fixed_mask, args[0].shape),
                 "moving_mask": _check_mask("moving_mask", moving_mask, args[1].shape)}
        if not self.accepts_masks(metric):
            masks = {}  # a method without masks never sees the keywords
        return self._run(*args[:5], metric=metric, levels=args[5], threads=args[6], **masks)

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *,
             metric, levels, threads, fixed_mask=None, moving_mask=None):
        raise NotImplementedError


def _run_syn(registration, fixed, moving, fixed_affine, moving_affine, labels, threads):
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        mapping = registration.optimize(fixed, moving, static_grid2world=fixed_affine,
                                        moving_grid2world=moving_affine)
        seconds = time.perf_counter() - t0
    warped = mapping.transform(moving, interpolation="linear")
    warped_labels = mapping.transform(labels, interpolation="nearest")
    disp = np.asarray(mapping.get_forward_field(), dtype=np.float64)
    if disp.shape[:3] != fixed.shape:
        disp = None
    extra = {}
    stage = getattr(registration, "stage_times", None)
    if isinstance(stage, dict):
        extra["stage_times"] = {str(k): float(v) for k, v in stage.items()}
    return MethodResult(np.asarray(warped, dtype=np.float64),
                        np.rint(warped_labels).astype(np.int32), disp, seconds,
                        threads, mem.mb, extra)


class DipyMethod(Method):
    """Stock DIPY SyN (serial); ``mi`` uses ``fastsyn.MIMetric``."""

    name = "dipy"
    label = "DIPY"
    package = "dipy"
    mask_metrics = ("mi",)
    # sigma_diff smooths CC's updates (DIPY's 2), mi_sigma_diff MI's (MIMetric's 2)
    defaults = {"radius": 4, "sigma_diff": 2.0, "nbins": 32, "mi_sigma_diff": 2.0,
                "step_length": 0.25, "ss_sigma_factor": 0.2, "opt_tol": 1e-5,
                "inv_iter": 20, "inv_tol": 1e-3}

    def effective_threads(self, threads):
        return 1

    def configuration(self, metric, levels, threads):
        cfg = super().configuration(metric, levels, threads)
        cfg["metric_impl"] = "dipy.CCMetric" if metric == "cc" else "fastsyn.MIMetric"
        return cfg

    def available(self, metric=None):
        ok, reason = super().available(metric)
        if ok and metric == "mi" and importlib.util.find_spec("fastsyn") is None:
            return False, "stock DIPY has no MI metric for SyN and fastsyn is missing"
        if ok and metric == "mi":
            try:
                from fastsyn import MIMetric  # noqa: F401
            except ImportError as exc:
                return False, ("stock DIPY has no MI metric for SyN and "
                               f"fastsyn.MIMetric is not importable ({exc})")
        return ok, reason

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *,
             metric, levels, threads, fixed_mask=None, moving_mask=None):
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        o = self.options
        if metric == "cc":
            from dipy.align.metrics import CCMetric
            m = CCMetric(3, sigma_diff=o["sigma_diff"], radius=o["radius"])
        else:
            from fastsyn import MIMetric
            m = MIMetric(3, nbins=o["nbins"], sigma_diff=o["mi_sigma_diff"], num_threads=1,
                         static_mask=fixed_mask, moving_mask=moving_mask)
        reg = SymmetricDiffeomorphicRegistration(
            m, level_iters=list(levels), step_length=o["step_length"],
            ss_sigma_factor=o["ss_sigma_factor"], opt_tol=o["opt_tol"],
            inv_iter=o["inv_iter"], inv_tol=o["inv_tol"])
        return _run_syn(reg, fixed, moving, fixed_affine, moving_affine, labels, 1)


def syn_default(metric, name):
    """The value ``SymmetricDiffeomorphicRegistration`` takes for setting
    ``name`` when it is left at None with fastsyn's ``metric`` ("cc" or "mi")."""
    from fastsyn import CCMetric, MIMetric
    from fastsyn.imwarp import syn_setting

    return syn_setting(MIMetric if metric == "mi" else CCMetric, name)


class FastsynMethod(Method):
    """fastsyn SyN with a thread count, CC or MI."""

    name = "fastsyn"
    label = "fastsyn"
    package = "fastsyn"
    # clip and sampling are MIMetric's (its defaults); MI also takes sigma_diff
    # step_length, pyramid, total_sigma, reinvert, repair_folds, step_percentile,
    # moving_share and coarse_moving_share are SymmetricDiffeomorphicRegistration's (None: the
    # metric's syn_defaults, else DIPY's value); mi_inversion_sweeps is its inversion_sweeps and
    # mi_fused_inversion its fused_inversion, for MI (MIMetric.syn_defaults;
    # CC keeps DIPY's rule); mask_rule, mask_margin and auto_masks are
    # MIMetric's (how two masks combine, the voxels of background kept around
    # each, and a skull-stripped image's own mask where it meets a head, or a
    # whole head stripped by its brain mask)
    defaults = {**DipyMethod.defaults, "clip": (0.5, 99.5), "sampling": None,
                "step_length": None, "pyramid": "dipy", "total_sigma": None,
                "reinvert": None, "repair_folds": None, "step_percentile": None,
                "moving_share": None, "coarse_moving_share": None,
                "mi_inversion_sweeps": 1, "mi_fused_inversion": True,
                "mask_rule": "either", "mask_margin": 1, "auto_masks": True,
                "partial_volume": "coarse"}
    mask_metrics = ("mi",)
    #: Options whose None means "the metric's syn_defaults"
    resolved_options = ("step_length", "total_sigma", "reinvert", "repair_folds",
                        "step_percentile", "moving_share", "coarse_moving_share")

    def configuration(self, metric, levels, threads):
        # Record the values a None resolves to: a record made under other
        # defaults then has another key and is rerun, never taken for these.
        cfg = super().configuration(metric, levels, threads)
        coarse_share_given = cfg.get("coarse_moving_share") is not None
        for name in self.resolved_options:
            if name in cfg and cfg[name] is None:
                cfg[name] = syn_default(metric, name)
        if "coarse_moving_share" in cfg and cfg["coarse_moving_share"] in (
                None, cfg.get("moving_share")):
            # moving_share on every level: the registrations recorded before
            # this option existed, under the same key
            del cfg["coarse_moving_share"]
        if metric == "mi" and cfg.get("auto_masks"):
            from fastsyn.metrics.mi import AUTO_MASK_RULES

            cfg["auto_mask_rules"] = list(AUTO_MASK_RULES)
            if "coarse_moving_share" in cfg and not coarse_share_given:
                # the metric's preferred coarse share yields to the auto masks
                from fastsyn.imwarp import COARSE_SHARE_RULE

                cfg["coarse_share_rule"] = COARSE_SHARE_RULE
        return cfg

    def available(self, metric=None):
        ok, reason = super().available(metric)
        if not ok:
            return ok, reason
        need = ["SymmetricDiffeomorphicRegistration"]
        if metric in (None, "cc"):
            need.append("CCMetric")
        if metric in (None, "mi"):
            need.append("MIMetric")
        try:
            import fastsyn
        except ImportError as exc:
            return False, f"fastsyn is not importable ({exc})"
        missing = [n for n in need if not hasattr(fastsyn, n)]
        if missing:
            return False, f"fastsyn does not provide {', '.join(missing)} yet"
        return True, ""

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *,
             metric, levels, threads, fixed_mask=None, moving_mask=None):
        import fastsyn
        o = self.options
        if metric == "cc":
            m = fastsyn.CCMetric(3, sigma_diff=o["sigma_diff"], radius=o["radius"],
                                 num_threads=threads)
        else:
            m = fastsyn.MIMetric(3, nbins=o["nbins"], sigma_diff=o["mi_sigma_diff"],
                                 clip=tuple(o["clip"]), sampling=o["sampling"],
                                 num_threads=threads, static_mask=fixed_mask,
                                 moving_mask=moving_mask, mask_rule=o["mask_rule"],
                                 mask_margin=o["mask_margin"],
                                 auto_masks=o["auto_masks"],
                                 partial_volume=o["partial_volume"])
        reg = fastsyn.SymmetricDiffeomorphicRegistration(
            m, level_iters=list(levels), step_length=o["step_length"],
            ss_sigma_factor=o["ss_sigma_factor"], opt_tol=o["opt_tol"],
            inv_iter=o["inv_iter"], inv_tol=o["inv_tol"], num_threads=threads,
            pyramid=o["pyramid"], total_sigma=o["total_sigma"], reinvert=o["reinvert"],
            repair_folds=o["repair_folds"], step_percentile=o["step_percentile"],
            moving_share=o["moving_share"], coarse_moving_share=o["coarse_moving_share"],
            inversion_sweeps=o["mi_inversion_sweeps"] if metric == "mi" else None,
            fused_inversion=o["mi_fused_inversion"] if metric == "mi" else None)
        return _run_syn(reg, fixed, moving, fixed_affine, moving_affine, labels, threads)


class FastsynAntsMethod(FastsynMethod):
    """fastsyn SyN in its ANTs-faithful mode (:func:`fastsyn.ants_like`):
    ANTs' pyramid, ITK's update smoothing and ANTs' convergence test, with the
    parameters of the ``ants`` method."""

    name = "fastsyn-ants"
    label = "fastsyn (ANTs mode)"
    defaults = {"radius": 4, "nbins": 32, "grad_step": 0.2, "flow_sigma": 3.0,
                "total_sigma": 0.0, "inv_iter": 20, "inv_tol": 1e-3}

    def available(self, metric=None):
        ok, reason = super().available(metric)
        if ok:
            import fastsyn
            if not hasattr(fastsyn, "ants_like"):
                return False, "fastsyn does not provide ants_like"
        return ok, reason

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *,
             metric, levels, threads, fixed_mask=None, moving_mask=None):
        import fastsyn
        o = self.options
        if metric == "cc":
            m = fastsyn.CCMetric(3, radius=o["radius"], num_threads=threads)
        else:
            # ANTs counts a point where both masks, as given, hold it, and
            # its Mattes histogram takes interpolated values on every level
            m = fastsyn.MIMetric(3, nbins=o["nbins"], num_threads=threads,
                                 static_mask=fixed_mask, moving_mask=moving_mask,
                                 mask_rule="both", mask_margin=0, auto_masks=False,
                                 partial_volume=False)
        reg = fastsyn.ants_like(m, level_iters=list(levels), num_threads=threads,
                                step_length=o["grad_step"], flow_sigma=o["flow_sigma"],
                                total_sigma=o["total_sigma"], inv_iter=o["inv_iter"],
                                inv_tol=o["inv_tol"])
        return _run_syn(reg, fixed, moving, fixed_affine, moving_affine, labels, threads)


def _write_nifti(path, data, affine):
    import nibabel as nib
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _read_nifti(path, dtype=np.float64):
    import nibabel as nib
    return np.asarray(nib.load(str(path)).dataobj, dtype=dtype)


def _itk_displacement_to_ras(path, shape):
    """Read an ITK displacement file (LPS components) as RAS world mm."""
    d = _read_nifti(path)
    if d.ndim == 5 and d.shape[3] == 1:
        d = d[:, :, :, 0, :]
    if d.shape != tuple(shape) + (3,):
        return None
    d[..., 0] *= -1.0
    d[..., 1] *= -1.0
    return d


class AntsMethod(Method):
    """ANTs SyNOnly (antspyx), run in a child process with a set ITK thread count."""

    name = "ants"
    label = "ANTs"
    package = "ants"
    mask_metrics = ("cc", "mi")
    defaults = {"cc_radius": 4, "mattes_bins": 32, "grad_step": 0.2,
                "flow_sigma": 3.0, "total_sigma": 0.0, "timeout": 3600}

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *,
             metric, levels, threads, fixed_mask=None, moving_mask=None):
        o = self.options
        with tempfile.TemporaryDirectory(prefix="fastsyn-ants-") as tmp:
            tmp = Path(tmp)
            _write_nifti(tmp / "fixed.nii.gz", fixed.astype(np.float32), fixed_affine)
            _write_nifti(tmp / "moving.nii.gz", moving.astype(np.float32), moving_affine)
            _write_nifti(tmp / "labels.nii.gz", labels, moving_affine)
            masks = {}
            for key, mask, aff in (("mask", fixed_mask, fixed_affine),
                                   ("moving_mask", moving_mask, moving_affine)):
                if mask is not None:
                    _write_nifti(tmp / f"{key}.nii.gz", mask.astype(np.uint8), aff)
                    masks[key] = f"{key}.nii.gz"
            spec = {
                "tool": "ants", "dir": str(tmp), "levels": list(levels),
                "syn_metric": "CC" if metric == "cc" else "mattes",
                "syn_sampling": o["cc_radius"] if metric == "cc" else o["mattes_bins"],
                "grad_step": o["grad_step"], "flow_sigma": o["flow_sigma"],
                "total_sigma": o["total_sigma"], "masks": masks,
            }
            (tmp / "spec.json").write_text(json.dumps(spec))
            env = dict(os.environ)
            env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
            env["OMP_NUM_THREADS"] = str(threads)
            proc = subprocess.run(
                [sys.executable, "-m", "fastsyn.bench.methods", str(tmp / "spec.json")],
                env=env, capture_output=True, text=True, timeout=o["timeout"])
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
                raise RuntimeError(f"ANTs worker failed (exit {proc.returncode}): {tail}")
            res = json.loads((tmp / "result.json").read_text())
            warped = _read_nifti(tmp / "warped.nii.gz")
            wlab = np.rint(_read_nifti(tmp / "warped_labels.nii.gz")).astype(np.int32)
            disp = None
            if (tmp / "disp.nii.gz").exists():
                disp = _itk_displacement_to_ras(tmp / "disp.nii.gz", fixed.shape)
        return MethodResult(warped, wlab, disp, float(res["seconds"]), threads,
                            float(res["peak_mem_mb"]))


def _ants_worker(spec):
    """Child-process side of :class:`AntsMethod` (ITK threads come from the env)."""
    import shutil

    import ants
    tmp = Path(spec["dir"])
    f = ants.image_read(str(tmp / "fixed.nii.gz"))
    m = ants.image_read(str(tmp / "moving.nii.gz"))
    lab = ants.image_read(str(tmp / "labels.nii.gz"))
    # SyNOnly has one stage, so the masks apply to it (-x [fixed,moving])
    masks = {k: ants.image_read(str(tmp / name)) for k, name in spec.get("masks", {}).items()}
    t0 = time.perf_counter()
    reg = ants.registration(
        f, m, type_of_transform="SyNOnly", syn_metric=spec["syn_metric"],
        syn_sampling=spec["syn_sampling"], reg_iterations=tuple(spec["levels"]),
        grad_step=spec["grad_step"], flow_sigma=spec["flow_sigma"],
        total_sigma=spec["total_sigma"], outprefix=str(tmp / "ants_"), **masks)
    seconds = time.perf_counter() - t0
    ants.image_write(reg["warpedmovout"], str(tmp / "warped.nii.gz"))
    wl = ants.apply_transforms(f, lab, reg["fwdtransforms"],
                               interpolator="nearestNeighbor")
    ants.image_write(wl, str(tmp / "warped_labels.nii.gz"))
    warps, others_identity = [], True
    for p in reg["fwdtransforms"]:
        if str(p).endswith("Warp.nii.gz") and "Inverse" not in str(p):
            warps.append(p)
        else:  # the identity initial transform SyNOnly writes as an affine
            params = np.asarray(ants.read_transform(str(p)).parameters, dtype=float)
            ident = np.r_[np.eye(3).ravel(), np.zeros(params.size - 9)]
            others_identity &= params.size >= 9 and np.allclose(params, ident)
    if len(warps) == 1 and others_identity:
        shutil.copy(warps[0], tmp / "disp.nii.gz")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    (tmp / "result.json").write_text(json.dumps({"seconds": seconds,
                                                 "peak_mem_mb": peak}))


class _QuietFds:
    """Send the C-level stdout/stderr of a block to a log file (greedy prints there)."""

    def __init__(self, log_path):
        self.log_path = log_path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._log = open(self.log_path, "ab")
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
            self._log.close()
        return False


class GreedyMethod(Method):
    """picsl-greedy deformable registration (``NCC`` or ``NMI``)."""

    name = "greedy"
    label = "greedy"
    package = "picsl_greedy"
    mask_metrics = ("cc", "mi")
    defaults = {"ncc_radius": 4, "step": 1.0, "sigma_pre": "1.732vox",
                "sigma_post": "0.7071vox"}

    def _run(self, fixed, moving, fixed_affine, moving_affine, labels, *,
             metric, levels, threads, fixed_mask=None, moving_mask=None):
        from picsl_greedy import Greedy3D
        o = self.options
        r = int(o["ncc_radius"])
        metric_arg = f"NCC {r}x{r}x{r}" if metric == "cc" else "NMI"
        with tempfile.TemporaryDirectory(prefix="fastsyn-greedy-") as tmp:
            tmp = Path(tmp)
            fx, mv, lb = tmp / "fixed.nii.gz", tmp / "moving.nii.gz", tmp / "labels.nii.gz"
            _write_nifti(fx, fixed.astype(np.float32), fixed_affine)
            _write_nifti(mv, moving.astype(np.float32), moving_affine)
            _write_nifti(lb, labels, moving_affine)
            mask_args = ""
            for flag, mask, aff, fname in (("-gm", fixed_mask, fixed_affine, "fixed_mask"),
                                           ("-mm", moving_mask, moving_affine, "moving_mask")):
                if mask is not None:
                    path = tmp / f"{fname}.nii.gz"
                    _write_nifti(path, mask.astype(np.uint8), aff)
                    mask_args += f" {flag} {path}"
            warp = tmp / "warp.nii.gz"
            g = Greedy3D()
            log = io.StringIO()
            cmd = (f"-d 3 -i {fx} {mv} -n {'x'.join(str(v) for v in levels)} "
                   f"-m {metric_arg} -e {o['step']} -s {o['sigma_pre']} "
                   f"{o['sigma_post']} -o {warp} -threads {threads}{mask_args}")
            logfile = tmp / "greedy.log"
            try:
                with _PeakRSS() as mem, _QuietFds(logfile):
                    t0 = time.perf_counter()
                    g.execute(cmd, out=log, err=log)
                    seconds = time.perf_counter() - t0
                wimg, wlab = tmp / "warped.nii.gz", tmp / "warped_labels.nii.gz"
                with _QuietFds(logfile):
                    g.execute(f"-d 3 -rf {fx} -rm {mv} {wimg} -ri NN -rm {lb} {wlab} "
                              f"-r {warp} -threads {threads}", out=log, err=log)
            except Exception as exc:
                tail = (log.getvalue() + logfile.read_text(errors="replace"))[-2000:]
                raise RuntimeError(f"greedy failed: {exc}; log tail: {tail}") from exc
            warped = _read_nifti(wimg)
            warped_labels = np.rint(_read_nifti(wlab)).astype(np.int32)
            disp = _itk_displacement_to_ras(warp, fixed.shape)
        return MethodResult(warped, warped_labels, disp, seconds, threads, mem.mb)


METHODS = {cls.name: cls for cls in (DipyMethod, FastsynMethod, FastsynAntsMethod, AntsMethod,
                                      GreedyMethod)}


def get_method(name, **options):
    """Instantiate a method by name.

    Parameters
    ----------
    name : str
        One of ``dipy``, ``fastsyn``, ``ants``, ``greedy``.
    **options
        Method parameters (see each class's ``defaults``).

    Returns
    -------
    Method
    """
    if isinstance(name, Method):
        return name
    key = str(name).strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[key](**options)


if __name__ == "__main__":  # child process of AntsMethod
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fastsyn.bench.methods SPEC.json")
    _spec = json.loads(Path(sys.argv[1]).read_text())
    if _spec.get("tool") != "ants":
        sys.exit(f"unknown worker tool {_spec.get('tool')!r}")
    _ants_worker(_spec)
