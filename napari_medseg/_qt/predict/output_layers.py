"""The layers a prediction fills: the segmentation, probabilities and uncertainty (no Qt).

Each is placed on the image layer's grid (:func:`~.._layers.placement_kwargs`); a layer of
the same name left by an earlier prediction is reused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer

from ...colors import CLASS_NAMES_KEY, segmentation_color_dict, structure_color
from ...io.segments import KIND_KEY
from .._layers import layer_array, placement_kwargs
from .._state import ModelEntry

STOPPED_SUFFIX = " (stopped)"
#: Disagreement shown black (so hidden by additive blending): the networks all but agree.
UNCERTAINTY_FLOOR = 0.05


def result_layer_for(
    viewer: Viewer, image_layer: Image, shape: tuple[int, ...], entry: ModelEntry
) -> tuple[Labels, str]:
    """The empty segmentation layer of ``image_layer`` and its name (without "(stopped)").

    The layer of an earlier (maybe stopped) prediction of the same shape is emptied and
    reused; otherwise a new one is added.
    """
    names = list(entry.model.config.class_names[1:])
    dtype = np.uint8 if len(names) < 255 else np.uint16
    base = f"{image_layer.name} segmentation"
    metadata = dict(image_layer.metadata)
    metadata.update({CLASS_NAMES_KEY: names, "medseg_model": entry.name, KIND_KEY: "segmentation"})
    for candidate in (base, base + STOPPED_SUFFIX):
        old = viewer.layers[candidate] if candidate in viewer.layers else None
        if isinstance(old, Labels) and layer_array(old).shape == shape:
            old.data = np.zeros(shape, dtype=dtype)
            old.name = base
            old.metadata = metadata
            old.colormap = segmentation_color_dict(len(names))
            return old, base
    layer = viewer.add_labels(
        np.zeros(shape, dtype=dtype),
        name=base,
        colormap=segmentation_color_dict(len(names)),
        opacity=0.5,
        metadata=metadata,
        **placement_kwargs(image_layer),
    )
    return layer, layer.name


def put_image(viewer: Viewer, image_layer: Image, name: str, data: np.ndarray,
              **style: Any) -> Image:
    """Show ``data`` on the image's grid as the image layer ``name``.

    An existing image layer of that name is reused (new data and contrast limits);
    otherwise one is added with ``style`` (colormap, contrast limits, blending, ...).
    """
    if data.ndim == image_layer.ndim + 1:  # 2D image: the core works on a 1-slice volume
        data = data[0]
    if name in viewer.layers and isinstance(viewer.layers[name], Image):
        layer = viewer.layers[name]
        layer.data = data
        layer.contrast_limits = style["contrast_limits"]
        return layer
    return viewer.add_image(data, name=name, **style, **placement_kwargs(image_layer))


def show_probabilities(viewer: Viewer, image_layer: Image, probabilities: np.ndarray,
                       class_names: Sequence[str]) -> list[Image]:
    """One hidden image layer per structure: its probability, in the structure's colour."""
    from napari.utils.colormaps import Colormap

    layers = []
    for k in range(1, probabilities.shape[0]):
        name = class_names[k - 1] if k - 1 < len(class_names) else f"{k}"
        cmap = Colormap([[0, 0, 0, 0], list(structure_color(k))], name=f"medseg p{k}")
        layers.append(
            put_image(
                viewer, image_layer, f"{image_layer.name} p({name})", probabilities[k],
                colormap=cmap, contrast_limits=(0.0, 1.0), blending="additive", visible=False,
            )
        )
    return layers


def show_uncertainty(viewer: Viewer, image_layer: Image,
                     uncertainty: np.ndarray) -> tuple[Image, np.ndarray]:
    """An image layer of the networks' disagreement; the layer and its data."""
    if uncertainty.ndim == image_layer.ndim + 1:
        uncertainty = uncertainty[0]
    top = max(0.1, float(uncertainty.max(initial=0.0)))
    layer = put_image(
        viewer, image_layer, f"{image_layer.name} uncertainty", uncertainty,
        colormap="inferno", contrast_limits=(UNCERTAINTY_FLOOR, top), blending="additive",
        opacity=0.7,
    )
    return layer, uncertainty


class LiveSegmentation:
    """The segmentation layer a prediction fills tile by tile (GUI thread only).

    Each finished tile is written into the layer as it comes; the layer is redrawn at most
    every ``refresh_s`` seconds, and after the last tile.
    """

    def __init__(self, viewer: Viewer, refresh_s: float) -> None:
        self.viewer = viewer
        self.refresh_s = refresh_s
        self.layer: Labels | None = None
        self.base_name = ""
        self.tiles_shown = 0
        self.redraws = 0
        self._last_redraw = 0.0

    def begin(self, image_layer: Image, shape: tuple[int, ...], entry: ModelEntry) -> None:
        """Make (or empty) the segmentation layer of ``image_layer`` for a new prediction."""
        self.layer, self.base_name = result_layer_for(self.viewer, image_layer, shape, entry)
        self.tiles_shown = 0
        self.redraws = 0
        self._last_redraw = 0.0

    def alive(self) -> bool:
        """True while the layer is in the viewer."""
        return self.layer is not None and self.layer in self.viewer.layers

    def add_tile(self, tile: Any) -> None:
        """Write a finished tile (a ``TileProgress``) into the layer."""
        if not self.alive():
            return
        layer = self.layer
        region, labels = tuple(tile.region), np.asarray(tile.labels)
        if len(region) == layer.ndim + 1:  # 2D image: the core works on a 1-slice volume
            region, labels = region[1:], labels[0]
        layer.data[region] = labels
        self.tiles_shown += 1
        now = time.perf_counter()
        if now - self._last_redraw >= self.refresh_s or tile.index == tile.total:
            layer.refresh()
            self.redraws += 1
            self._last_redraw = now

    def complete(self, labels: np.ndarray) -> None:
        """Show the whole segmentation under the layer's own name."""
        self.layer.data = labels
        self.layer.name = self.base_name

    def mark_stopped(self) -> None:
        """Name the layer ``"… (stopped)"``: it covers only the finished tiles."""
        if self.alive():
            self.layer.name = self.base_name + STOPPED_SUFFIX

    def discard(self) -> None:
        """Remove the unfinished layer."""
        if self.alive():
            self.viewer.layers.remove(self.layer)
        self.layer = None
