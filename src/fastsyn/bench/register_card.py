"""The card of one ``fastsyn register --qc`` run: ``PREFIXqc.html`` (one
offline page, the report's style and card template) and ``PREFIXqc.png``,
drawn by :mod:`fastsyn.bench.qc` from the registration's outputs."""

from pathlib import Path

import numpy as np

from .qc import card_context, card_numbers, card_png, extract_tiles

__all__ = ["write_card", "write_registration_card"]


def write_card(prefix, tiles, *, title, note, label, numbers):
    """Write ``PREFIXqc.html`` (one offline page) and ``PREFIXqc.png``.

    Parameters
    ----------
    prefix : str
        The registration's output prefix.
    tiles : dict
        From :func:`extract_tiles`.
    title, note, label : str
        Heading, the line under it and the method's name.
    numbers : list of (str, str)
        See :func:`card_numbers`.

    Returns
    -------
    (Path, Path)
        The page and the image.
    """
    from PIL import Image

    from .report import _templates

    html, png = Path(f"{prefix}qc.html"), Path(f"{prefix}qc.png")
    card = card_context("qc", title, note,
                        [{"label": label, "numbers": numbers, "tiles": tiles}])
    text = _templates().get_template("qc_card.html").render(card=card)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(text, encoding="utf-8")
    Image.fromarray(card_png(tiles)).save(png, format="PNG", optimize=True)
    return html, png


def _read_volume(name, path, shape):
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several types
        raise ValueError(f"{name}: cannot read {path}: {exc}") from exc
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and data.size == np.prod(
        data.shape[:3]) else data
    if data.shape != tuple(shape):
        raise ValueError(f"{name} ({path}) has shape {data.shape}, but the fixed image "
                         f"has shape {tuple(shape)}")
    return data


def write_registration_card(prefix, fixed, moving, result, *, transform, metric,
                            fixed_mask=None, fixed_labels=None):
    """The card of one :func:`fastsyn.register.register_files` run.

    Parameters
    ----------
    prefix : str
        The run's output prefix.
    fixed, moving : str or Path
        The registered files.
    result : dict
        What ``register_files`` returned (its ``arrays``, ``ncc``, ``seconds``).
    transform, metric : str
        The run's settings, printed on the card.
    fixed_mask, fixed_labels : str or Path, optional
        The fixed mask (cuts, display window, folding statistics) and a fixed
        label map (outlined, and its Dice with the warped labels printed).

    Returns
    -------
    (Path, Path)
        ``PREFIXqc.html`` and ``PREFIXqc.png``.
    """
    import nibabel as nib

    from .evaluate import jacobian_stats, label_overlap

    f_img = nib.load(str(fixed))
    image = np.asarray(f_img.dataobj).reshape(f_img.shape[:3]).astype(np.float64)
    arrays = result["arrays"]
    mask = (_read_volume("fixed mask", fixed_mask, image.shape) != 0
            if fixed_mask else None)
    labels = (_read_volume("fixed labels", fixed_labels, image.shape)
              if fixed_labels else None)
    fg = mask if mask is not None and mask.any() else image != 0
    metrics = {"ncc": result["ncc"]}
    if labels is not None and arrays["warped_labels"] is not None:
        metrics["dice_mean"] = label_overlap(labels, arrays["warped_labels"])["dice_mean"]
    if arrays["displacement"] is not None:
        metrics.update(jacobian_stats(arrays["displacement"], f_img.affine,
                                      fg if fg.any() else None))
    tiles = extract_tiles(image, arrays["warped"], f_img.affine, fixed_labels=labels,
                          mask=mask, displacement=arrays["displacement"])
    outlines = ("fixed labels" if labels is not None
                else "the fixed image's intensity terciles (no --fixed-labels)")
    name = Path(moving).name
    note = (f"{name} registered to {Path(fixed).name}: {transform}, {metric.upper()}. "
            f"Outlines: {outlines}.")
    return write_card(prefix, tiles, title=f"fastsyn register: {name}", note=note,
                      label=f"fastsyn {transform} {metric.upper()}",
                      numbers=card_numbers(metrics, result["seconds"]))
