"""Making the annotation layer, and writing edits into it undoably (no Qt here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.viewer import Viewer

from ...colors import CLASS_NAMES_KEY, annotation_color_dict
from ...errors import MedsegInputError
from ...io.segments import KIND_KEY
from .._layers import layer_array, placement_kwargs, unique_layer_name

#: Edits touching more voxels than this are applied without undo history (memory).
UNDO_LIMIT = 2_000_000


def check_new_annotation(image: Any, names: Sequence[str]) -> None:
    """Refuse (:class:`MedsegInputError`) to make an annotation layer for ``image`` (an
    image layer or None) with the structure ``names``."""
    if image is None:
        raise MedsegInputError(
            "choose an image layer first (open a volume, or File ▸ Open Sample ▸ MedSeg)"
        )
    if not names:
        raise MedsegInputError("give at least one structure name")
    if len(names) > 250:
        raise MedsegInputError("at most 250 structures")
    if getattr(image, "rgb", False):
        raise MedsegInputError(f"'{image.name}' is an RGB image; use a grey-level volume")


def add_annotation_layer(viewer: Viewer, image: Any, names: Sequence[str]) -> Labels:
    """Add an empty annotation layer on ``image``'s grid, active and painting label 2.

    The layer is called ``"<image> annotation"`` (made unique), holds the structure names
    and the image's name in its metadata, and has the annotation colours.
    """
    shape = layer_array(image).shape
    layer = viewer.add_labels(
        np.zeros(shape, dtype=np.uint8),
        name=unique_layer_name(viewer, f"{image.name} annotation"),
        colormap=annotation_color_dict(len(names)),
        opacity=0.6,
        metadata={CLASS_NAMES_KEY: list(names), "medseg_image": image.name, KIND_KEY: "annotation"},
        **placement_kwargs(image),
    )
    layer.selected_label = 2
    layer.brush_size = max(3, min(20, min(shape[-2:]) // 20))
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    return layer


def whole(layer: Labels) -> tuple[slice, ...]:
    """The index of a layer's whole data, for :func:`apply_edit`."""
    return tuple(slice(None) for _ in range(layer.ndim))


def apply_edit(layer: Labels, region: tuple[slice | int, ...], after: np.ndarray) -> int:
    """Write ``after`` into ``layer.data[region]``, with undo history when small enough.

    Parameters
    ----------
    layer : napari.layers.Labels
        The annotation layer.
    region : tuple of slice or int
        Basic index of the edited block (an int drops that axis from ``after``).
    after : np.ndarray
        New values of the block.

    Returns
    -------
    int
        Number of voxels that changed.
    """
    data = layer.data
    before = np.asarray(data[region])
    changed = np.nonzero(after != before)
    count = int(changed[0].size)
    if count == 0:
        return 0
    if count <= UNDO_LIMIT:
        full: list[np.ndarray] = []
        k = 0
        for axis, index in enumerate(region):
            if isinstance(index, int | np.integer):
                full.append(np.full(count, int(index), dtype=np.intp))
            else:
                start = index.indices(data.shape[axis])[0]
                full.append(changed[k] + start)
                k += 1
        layer.data_setitem(tuple(full), after[changed])  # undoable, emits `paint`
    else:
        data[region] = after
        layer.refresh()
        layer.events.paint(value=[])
    return count
