"""Small registration pairs shipped inside the package.

``fastsyn profile`` and ``fastsyn demo`` register these pairs, so they must
be found from any working directory of an installed package.  The files are
the committed test fixtures ``fixtures/<name>.npz`` (see
``fixtures/make_fixtures.py`` for their content); ``src/fastsyn/meson.build``
installs them into this package rather than keeping a second copy in the
source tree.
"""

from importlib.resources import files

__all__ = ["PAIRS", "pair_file"]

#: Names of the shipped pairs.
PAIRS = ("pair3d", "pair3d_multimodal")


def pair_file(name):
    """The shipped ``<name>.npz``, or None when there is no such pair.

    Parameters
    ----------
    name : str
        A name from :data:`PAIRS`.

    Returns
    -------
    importlib.resources.abc.Traversable or None
        Open it with ``.open("rb")``; it need not be a file on disk.
    """
    if name not in PAIRS:
        return None
    resource = files(__name__).joinpath(f"{name}.npz")
    return resource if resource.is_file() else None
