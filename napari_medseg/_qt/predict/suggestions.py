"""The Predict widget's "Go to axial slice … to paint" button."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image
from napari.viewer import Viewer

from ...annotation import slices_to_paint
from .._common import button
from .._layers import layer_array


class SliceSuggestions:
    """The slices to paint next (where an ensemble disagrees most) and a button to visit them.

    Each click moves the viewer to the next suggested axial slice, round and round.
    """

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.slices: list[int] = []
        self.image_layer: Image | None = None
        self._next = 0
        self.button = button(
            "Go to a slice to paint", "Show the next slice where the model is least sure"
        )
        self.button.setVisible(False)
        self.button.clicked.connect(self.show_next)

    def offer(self, slices: Sequence[int], image_layer: Image | None) -> None:
        """Suggest ``slices`` (axial slices of ``image_layer``); none hides the button."""
        self.slices = list(slices)
        self.image_layer = image_layer
        self._next = 0
        self._update_button()

    def suggest(self, uncertainty: np.ndarray, annotation_layer: Any,
                image_layer: Image | None) -> list[int]:
        """Offer the (at most 3) axial slices where the model is least sure and nothing
        is painted yet; returns them. Only for 3D images."""
        if uncertainty.ndim != 3:
            return []
        annotation = None
        if annotation_layer is not None and annotation_layer in self.viewer.layers:
            annotation = layer_array(annotation_layer)
            if annotation.shape != uncertainty.shape:
                annotation = None
        self.offer(slices_to_paint(uncertainty, annotation, axis=0, count=3), image_layer)
        return self.slices

    def _update_button(self) -> None:
        if not self.slices:
            self.button.setVisible(False)
            return
        index = self._next % len(self.slices)
        self.button.setText(
            f"Go to axial slice {self.slices[index]} to paint "
            f"({index + 1} of {len(self.slices)})"
        )
        self.button.setVisible(True)

    def show_next(self) -> int | None:
        """Move the viewer to the next suggested axial slice; returns it (None: none left)."""
        image = self.image_layer
        if not self.slices or image is None or image not in self.viewer.layers:
            return None
        index = self._next % len(self.slices)
        chosen = self.slices[index]
        centre = [chosen, *(s / 2 for s in image.data.shape[1:])]
        world = image.data_to_world(centre)
        self.viewer.dims.set_point(0, float(world[0]))
        self._next = index + 1
        self._update_button()
        return chosen
