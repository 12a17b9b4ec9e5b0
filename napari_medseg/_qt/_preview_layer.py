"""The Train widget's live preview: a translucent labels layer showing, every few seconds,
what the model being trained makes of the slice in view (GUI thread only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer

from ..colors import segmentation_color_dict
from ..errors import MedsegInputError
from ._layers import current_slice, layer_array, placement_kwargs

PREVIEW_SUFFIX = " preview"


class LivePreviewLayer:
    """Tells the training run which slice is shown, and paints the previews it sends back."""

    def __init__(self, viewer: Viewer) -> None:
        from ..training.preview import PreviewRequest

        self.viewer = viewer
        self.request = PreviewRequest()
        self.image_layer: Image | None = None
        self.layer: Labels | None = None
        self.structures = 1
        self._shown: tuple[int, int] | None = None
        viewer.dims.events.current_step.connect(self.follow)

    def start(self, image_layer: Image, structures: int) -> Any:
        """A new run on ``image_layer``: a fresh request for the slice in view (returned)."""
        from ..training.preview import PreviewRequest

        self.finish()
        self.request = PreviewRequest()
        self.image_layer, self.structures = image_layer, max(1, structures)
        self._layer(image_layer)  # made now, on the click, not while the user paints
        self.follow()
        return self.request

    def follow(self, event: Any = None) -> None:
        """Ask for the slice now in view (nothing in a 3D view)."""
        if self.image_layer is None or self.image_layer not in self.viewer.layers:
            return
        try:
            axis, index = current_slice(self.viewer, self.image_layer)
        except MedsegInputError:
            return
        self.request.show(axis, index)

    def show(self, preview: Any) -> None:
        """Paint one :class:`~napari_medseg.training.preview.SlicePreview`."""
        image = self.image_layer
        if image is None or image not in self.viewer.layers:
            return
        layer = self._layer(image)
        data = layer.data
        if self._shown is not None:
            np.moveaxis(data, self._shown[0], 0)[self._shown[1]] = 0
        np.moveaxis(data, preview.axis, 0)[preview.index] = preview.labels
        self._shown = (preview.axis, preview.index)
        layer.refresh()

    def _layer(self, image: Image) -> Labels:
        shape = layer_array(image).shape
        if self.layer is not None and self.layer in self.viewer.layers:
            if self.layer.data.shape == shape:
                self.layer.visible = True
                return self.layer
            self.viewer.layers.remove(self.layer)
        active = self.viewer.layers.selection.active  # the user may be painting: keep it
        self.layer = self.viewer.add_labels(
            np.zeros(shape, dtype=np.uint8), name=f"{image.name}{PREVIEW_SUFFIX}", opacity=0.5,
            colormap=segmentation_color_dict(self.structures), **placement_kwargs(image),
        )
        if active is not None:
            self.viewer.layers.selection.active = active
        self._shown = None
        return self.layer

    def finish(self) -> None:
        """The run ended: the preview is emptied and hidden (Predict makes the real
        segmentation); the layer waits for the next run (removing it would stall the GUI)."""
        layer = self.layer
        if layer is not None and layer in self.viewer.layers:
            if self._shown is not None:
                np.moveaxis(layer.data, self._shown[0], 0)[self._shown[1]] = 0
            layer.visible = False
        self._shown = None
