"""Colours of annotation and segmentation labels (pure Python, no Qt, no napari).

Used by the Annotate/Predict widgets and by the sample-data hooks so that a structure has
the same colour everywhere: in the sparse annotation (value ``k + 1``), in the
segmentation and in the expert mask (value ``k``).
"""

from __future__ import annotations

RGBA = tuple[float, float, float, float]

#: ``layer.metadata`` key holding the structure names (background excluded), set on the
#: annotation, segmentation and sample layers.
CLASS_NAMES_KEY = "medseg_class_names"

TRANSPARENT: RGBA = (0.0, 0.0, 0.0, 0.0)
BACKGROUND_GREY: RGBA = (0.55, 0.55, 0.58, 1.0)
UNKNOWN_CLASS: RGBA = (1.0, 0.0, 1.0, 1.0)

#: Colours of structures 1, 2, 3 ... (cycled when there are more).
STRUCTURE_COLORS: tuple[RGBA, ...] = (
    (0.90, 0.16, 0.16, 1.0),  # red
    (0.16, 0.75, 0.30, 1.0),  # green
    (0.20, 0.45, 0.95, 1.0),  # blue
    (0.98, 0.80, 0.10, 1.0),  # yellow
    (0.10, 0.85, 0.85, 1.0),  # cyan
    (0.95, 0.50, 0.10, 1.0),  # orange
    (0.65, 0.30, 0.90, 1.0),  # purple
    (0.55, 0.35, 0.20, 1.0),  # brown
)


def structure_color(k: int) -> RGBA:
    """Colour of structure ``k`` (``k >= 1``)."""
    return STRUCTURE_COLORS[(k - 1) % len(STRUCTURE_COLORS)]


def annotation_color_dict(n_structures: int) -> dict[int | None, RGBA]:
    """Label colours for a sparse annotation.

    Parameters
    ----------
    n_structures : int
        Number of structures (background excluded).

    Returns
    -------
    dict
        ``0`` (not annotated) transparent, ``1`` (background) grey, ``k + 1`` the colour of
        structure ``k``; ``None`` (any other value) magenta, so that stray values stand out.
    """
    colors: dict[int | None, RGBA] = {None: UNKNOWN_CLASS, 0: TRANSPARENT, 1: BACKGROUND_GREY}
    for k in range(1, max(1, n_structures) + 1):
        colors[k + 1] = structure_color(k)
    return colors


def segmentation_color_dict(n_structures: int) -> dict[int | None, RGBA]:
    """Label colours for a segmentation or expert mask (``0`` background, transparent)."""
    colors: dict[int | None, RGBA] = {None: UNKNOWN_CLASS, 0: TRANSPARENT}
    for k in range(1, max(1, n_structures) + 1):
        colors[k] = structure_color(k)
    return colors


#: Review layers: where the segmentation says a structure the expert mask lacks (false
#: positives), and where it misses one (false negatives), whatever the structure.
FALSE_POSITIVE_COLOR: RGBA = (1.0, 0.25, 0.6, 1.0)  # pink
FALSE_NEGATIVE_COLOR: RGBA = (0.0, 0.9, 1.0, 1.0)  # light cyan


def error_color_dict(color: RGBA) -> dict[int | None, RGBA]:
    """Label colours of a false-positive or false-negative layer: every structure ``color``."""
    return {None: color, 0: TRANSPARENT}


def parse_class_names(text: str) -> list[str]:
    """Split a comma-separated list of structure names, dropping empty entries.

    >>> parse_class_names(" liver, tumour ,, ")
    ['liver', 'tumour']
    """
    return [part.strip() for part in text.split(",") if part.strip()]
