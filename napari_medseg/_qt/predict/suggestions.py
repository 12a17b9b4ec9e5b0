"""The Predict widget's "Go to … slice … to paint" button: suggestions in any plane."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image
from napari.viewer import Viewer

from ...painted_slices import PLANE_NAMES, planes_to_paint
from .._common import button
from .._layers import layer_array

COUNT = 3


class SliceSuggestions:
    """The slices to paint next, in any of the three planes, where the model is least sure,
    and a button that shows them.

    Each click turns the view to the suggested slice's plane and moves to it, round and
    round the suggestions.
    """

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.slices: list[tuple[int, int]] = []
        self.image_layer: Image | None = None
        self._next = 0
        self.button = button(
            "Go to a slice to paint", "Show the next slice where the model is least sure"
        )
        self.button.setVisible(False)
        self.button.clicked.connect(self.show_next)

    def offer(self, slices: Sequence[tuple[int, int]], image_layer: Image | None) -> None:
        """Suggest ``slices`` (``(axis, index)`` of ``image_layer``); none hides the button."""
        self.slices = [(int(a), int(i)) for a, i in slices]
        self.image_layer = image_layer
        self._next = 0
        self._update_button()

    def suggest(
        self, uncertainty: np.ndarray, annotation_layer: Any, image_layer: Image | None
    ) -> list[tuple[int, int]]:
        """Offer the (at most 3) slices, in any plane, where the model is least sure on
        voxels nobody painted; returns them. Only for 3D images."""
        if uncertainty.ndim != 3:
            self.offer([], image_layer)
            return []
        annotation = None
        if annotation_layer is not None and annotation_layer in self.viewer.layers:
            annotation = layer_array(annotation_layer)
            if annotation.shape != uncertainty.shape:
                annotation = None
        self.offer(planes_to_paint(uncertainty, annotation, count=COUNT), image_layer)
        return self.slices

    def _update_button(self) -> None:
        if not self.slices:
            self.button.setVisible(False)
            return
        index = self._next % len(self.slices)
        axis, chosen = self.slices[index]
        self.button.setText(
            f"Go to {PLANE_NAMES[axis]} slice {chosen} to paint ({index + 1} of {len(self.slices)})"
        )
        self.button.setVisible(True)

    def show_next(self) -> tuple[int, int] | None:
        """Turn the view to the next suggestion's plane and move to its slice; returns its
        ``(axis, index)`` (None: none left)."""
        image = self.image_layer
        if not self.slices or image is None or image not in self.viewer.layers:
            return None
        index = self._next % len(self.slices)
        axis, chosen = self.slices[index]
        show_plane(self.viewer, image, axis)
        centre = [s / 2 for s in image.data.shape]
        centre[axis] = chosen
        world = image.data_to_world(centre)
        self.viewer.dims.set_point(self.viewer.dims.ndim - image.ndim + axis, float(world[axis]))
        self._next = index + 1
        self._update_button()
        return axis, chosen


def show_plane(viewer: Viewer, layer: Image, axis: int) -> None:
    """Make the 2D view slice across ``axis`` of the 3D ``layer`` (its other two axes shown,
    in their order); the viewer's other dimensions keep their places."""
    offset = viewer.dims.ndim - layer.ndim
    across = offset + axis
    plane = [offset + a for a in range(layer.ndim) if a != axis]
    order = [d for d in viewer.dims.order if d != across and d not in plane]
    viewer.dims.order = (*order, across, *plane[-2:])
