"""fastsyn: fast, threaded, deterministic SyN registration on top of DIPY.

Public API
----------
SymmetricDiffeomorphicRegistration
    DIPY's SyN optimizer plus ``num_threads``, every stage threaded.
CCMetric, MIMetric
    Similarity metrics with DIPY's interface (MI is new).
DiffeomorphicMap
    DIPY's map whose ``transform``/``transform_inverse`` run on threads.
ants_like
    SyN configured as ANTs' SyNOnly (pyramid, update smoothing, convergence).
patch_dipy
    Route unchanged DIPY code through fastsyn (reversible).
fields
    DIPY's ``vector_fields`` operations with ``num_threads``.
affine_registration, AffineRegistration, MutualInformationMetric
    DIPY's affine registration (``dipy.align.affine_registration``,
    ``imaffine``) plus ``num_threads``, on threaded kernels.
"""

from fastsyn import fields
from fastsyn._threads import resolve_num_threads
from fastsyn.imaffine import AffineRegistration, MutualInformationMetric, affine_registration
from fastsyn.imwarp import DiffeomorphicMap, SymmetricDiffeomorphicRegistration, ants_like
from fastsyn.metrics import CCMetric, MIMetric
from fastsyn.patch import patch_dipy

__version__ = "0.2.0"

__all__ = [
    "AffineRegistration",
    "CCMetric",
    "DiffeomorphicMap",
    "MIMetric",
    "MutualInformationMetric",
    "SymmetricDiffeomorphicRegistration",
    "affine_registration",
    "ants_like",
    "fields",
    "patch_dipy",
    "resolve_num_threads",
]

