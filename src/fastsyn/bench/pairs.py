"""Registration pairs: one definition, used by every run and report.

* Monomodal (one modality): every unordered subject pair ``(a, b)`` with ``a``
  before ``b`` in dataset order, ``a`` fixed and ``b`` moving
  (``n * (n - 1) / 2`` pairs: 40 subjects -> 780).
* Multimodal (two or more modalities): for each unordered subject pair, every
  ordered combination of two *different* modalities (``fixed_modality`` on
  ``a``, ``moving_modality`` on ``b``): 7 subjects x 3 modalities ->
  21 x 6 = 126 pairs.
* A sparse dataset (subjects with different modalities, e.g. ``real``):
  every ordered pair of two subjects and two different modalities that both
  exist, in both subject orders, never two subjects marked synthetic.
* ``sample=N`` keeps a reproducible subset of N pairs: a seeded permutation's
  first N entries, returned in the full list's order.  For a fixed seed a
  smaller sample is always contained in a larger one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Pair", "make_pairs", "check_sample_seed"]


@dataclass(frozen=True, order=True)
class Pair:
    """A (fixed, moving) registration pair.

    Attributes
    ----------
    fixed, moving : str
        Subject names.
    fixed_modality, moving_modality : str
        Modality of the fixed and of the moving image.
    """

    fixed: str
    moving: str
    fixed_modality: str
    moving_modality: str

    @property
    def id(self) -> str:
        """Stable identifier, e.g. ``"S01-t1__S02-flair"``."""
        return f"{self.fixed}-{self.fixed_modality}__{self.moving}-{self.moving_modality}"

    @property
    def multimodal(self) -> bool:
        """True when the two images have different modalities."""
        return self.fixed_modality != self.moving_modality

    @classmethod
    def from_id(cls, pair_id: str) -> "Pair":
        """Parse an identifier made by :attr:`id`.

        Raises
        ------
        ValueError
            If ``pair_id`` is not of the form ``A-mod__B-mod``.
        """
        halves = str(pair_id).split("__")
        if len(halves) != 2 or any("-" not in h for h in halves):
            raise ValueError(f"pair id must look like 'S01-t1__S02-t1', got {pair_id!r}")
        (f, fm), (m, mm) = (h.rsplit("-", 1) for h in halves)
        if not all((f, fm, m, mm)):
            raise ValueError(f"pair id must look like 'S01-t1__S02-t1', got {pair_id!r}")
        return cls(f, m, fm, mm)

    def __str__(self) -> str:
        return self.id


def _names_and_modalities(source, modalities):
    from .datasets import Dataset, Subject

    default_mods = None
    if isinstance(source, Dataset):
        names = [s.name for s in source.subjects]
        default_mods = list(source.modalities)
    elif isinstance(source, (str, bytes)):
        raise TypeError(
            "dataset_or_subject_names must be a Dataset or a sequence of subject names, "
            f"got the string {source!r}"
        )
    else:
        try:
            items = list(source)
        except TypeError as exc:
            raise TypeError(
                "dataset_or_subject_names must be a Dataset or a sequence of subject names, "
                f"got {type(source).__name__}"
            ) from exc
        names = []
        for item in items:
            if isinstance(item, Subject):
                names.append(item.name)
            elif isinstance(item, str) and item:
                names.append(item)
            else:
                raise TypeError(f"subject names must be non-empty strings, got {item!r}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate subject names: {dup}")
    if len(names) < 2:
        raise ValueError(f"need at least 2 subjects to make pairs, got {len(names)}")

    if modalities is None:
        mods = default_mods if default_mods is not None else ["t1"]
    elif isinstance(modalities, str):
        mods = [m.strip() for m in modalities.split(",") if m.strip()]
    else:
        mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one modality")
    if len(set(mods)) != len(mods):
        raise ValueError(f"duplicate modalities: {mods}")
    if default_mods is not None:
        unknown = [m for m in mods if m not in default_mods]
        if unknown:
            raise ValueError(
                f"modalities {unknown} not in the dataset (it has {default_mods})"
            )
    return names, mods


def _available(source, pairs):
    """The pairs a dataset can register: on a sparse dataset (subjects with
    different modalities), those whose two images exist, both directions of
    a subject pair, and no pair of two synthetic subjects."""
    from .datasets import Dataset

    if not isinstance(source, Dataset):
        return pairs
    have = {s.name: set(s.images) for s in source.subjects}
    synthetic = set(source.synthetic)
    sparse = any(h != set(source.modalities) for h in have.values())
    if not sparse and not synthetic:
        return pairs
    out = []
    for p in pairs:
        if p.fixed in synthetic and p.moving in synthetic:
            continue
        for q in ((p, Pair(p.moving, p.fixed, p.moving_modality, p.fixed_modality))
                  if sparse else (p,)):
            if q.fixed_modality in have[q.fixed] and q.moving_modality in have[q.moving]:
                out.append(q)
    return list(dict.fromkeys(out))


def check_sample_seed(sample, seed) -> None:
    """Check the sampling arguments of :func:`make_pairs`.

    Raises
    ------
    ValueError
        If ``sample`` is given and is not a positive integer, or is given
        with a ``seed`` that is not a non-negative integer.
    """
    if sample is None:
        return  # no sample: the seed is not used
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)):
        raise ValueError(f"sample must be a positive integer, got {sample!r}")
    if sample < 1:
        raise ValueError(f"sample must be a positive integer, got {sample!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def make_pairs(dataset_or_subject_names, modalities=None, *, sample=None, seed=0) -> list[Pair]:
    """All registration pairs of a dataset, or a reproducible sample of them.

    Parameters
    ----------
    dataset_or_subject_names : Dataset or sequence of str or Subject
        The subjects, in order.
    modalities : sequence of str or str, optional
        Modalities to pair (a comma-separated string is accepted).  Default:
        the dataset's modalities, or ``["t1"]`` for a list of names.  One
        modality gives monomodal pairs; two or more give cross-modality pairs.
    sample : int, optional
        Keep only this many pairs (all of them when ``sample`` is at least the
        number of pairs).
    seed : int
        Seed of the sampling.

    Returns
    -------
    list of Pair
        In a stable order (subject pairs in dataset order, then modality
        combinations in the given modality order).

    Raises
    ------
    TypeError
        If the subjects are not given as a Dataset or names.
    ValueError
        For fewer than 2 subjects, duplicates, unknown modalities or a
        non-positive ``sample``.

    Examples
    --------
    >>> len(make_pairs([f"S{i:02d}" for i in range(40)]))
    780
    >>> len(make_pairs([f"S{i}" for i in range(7)], ["t1", "t2", "flair"]))
    126
    """
    names, mods = _names_and_modalities(dataset_or_subject_names, modalities)
    pairs = []
    for a, b in itertools.combinations(names, 2):
        if len(mods) == 1:
            pairs.append(Pair(a, b, mods[0], mods[0]))
        else:
            pairs.extend(Pair(a, b, fm, mm) for fm, mm in itertools.permutations(mods, 2))
    pairs = _available(dataset_or_subject_names, pairs)
    if sample is None:
        return pairs
    check_sample_seed(sample, seed)
    if sample >= len(pairs):
        return pairs
    order = np.random.default_rng(int(seed)).permutation(len(pairs))
    keep = np.sort(order[: int(sample)])
    return [pairs[i] for i in keep]
