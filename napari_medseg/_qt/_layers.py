"""Helpers around napari layers: a layer picker, geometry, the current slice."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.viewer import Viewer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

from ..colors import CLASS_NAMES_KEY
from ..errors import MedsegInputError
from ..painted_slices import axis_name

__all__ = [
    "CLASS_NAMES_KEY",
    "LayerPicker",
    "axis_name",
    "current_slice",
    "layer_array",
    "placement_kwargs",
]


#: Words in the names of layers that a picker of annotations (or segmentations) passes over.
NOT_ANNOTATIONS = ("segmentation", "mask", "label", "preview", "false positives",
                   "false negatives")
NOT_SEGMENTATIONS = ("annotation", "expert", "mask", "preview", "false positives",
                     "false negatives")


def layer_array(layer: Layer) -> np.ndarray:
    """The layer's full-resolution data as a numpy array (no copy when already numpy)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return np.asarray(data)


def spacing_of(layer: Layer) -> tuple[float, ...]:
    """Voxel size (mm) per data axis, taken from the layer's scale."""
    return tuple(float(s) for s in layer.scale)


def placement_kwargs(layer: Layer) -> dict[str, Any]:
    """Keyword arguments that give a new layer the same placement as ``layer``.

    Copies the layer's whole transform (scale, translate, rotate, shear, affine) with its
    axis labels and units. Not :func:`napari_medseg._napari.reader.geometry_kwargs`, which
    places a :class:`~napari_medseg.volume.Volume` read from a file.
    """
    return {
        "scale": tuple(float(s) for s in layer.scale),
        "translate": tuple(float(t) for t in layer.translate),
        "rotate": np.array(layer.rotate, copy=True),
        "shear": np.array(layer.shear, copy=True),
        "affine": layer.affine.affine_matrix.copy(),
        "axis_labels": tuple(layer.axis_labels),
        "units": tuple(layer.units),
    }


def class_names_of(*layers: Layer | None) -> list[str] | None:
    """Structure names stored on the first of ``layers`` that has them, or None."""
    for layer in layers:
        if layer is None:
            continue
        names = layer.metadata.get(CLASS_NAMES_KEY)
        if names:
            return [str(n) for n in names]
    return None


def sliced_axis(viewer: Viewer, layer: Layer) -> int:
    """The data axis of ``layer`` that the 2D view currently slices through.

    Raises
    ------
    MedsegInputError
        When the view is 3D, or when it does not slice through exactly one axis of the layer.
    """
    if viewer.dims.ndisplay != 2:
        raise MedsegInputError("switch the viewer to 2D to work on the current slice")
    offset = viewer.dims.ndim - layer.ndim
    axes = [w - offset for w in viewer.dims.not_displayed if w - offset >= 0]
    if len(axes) != 1:
        raise MedsegInputError(
            f"the view slices {len(axes)} axes of '{layer.name}'; expected a 3D layer in a 2D view"
        )
    return axes[0]


def current_slice(viewer: Viewer, layer: Layer) -> tuple[int, int]:
    """The ``(axis, index)`` of the slice of ``layer`` shown in the 2D view.

    Works whichever of the three orthogonal planes is shown (after transposing or rolling
    the viewer's dimensions), and for layers with any scale/translate.

    Raises
    ------
    MedsegInputError
        In 3D view, or when the shown slice lies outside the layer.
    """
    axis = sliced_axis(viewer, layer)
    point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    index = int(np.round(point[axis]))
    size = layer_array(layer).shape[axis]
    if not 0 <= index < size:
        raise MedsegInputError(
            f"the shown slice ({index}) is outside '{layer.name}' (0..{size - 1} along "
            f"{axis_name(axis, layer.ndim)})"
        )
    return axis, index


def unique_layer_name(viewer: Viewer, name: str) -> str:
    """``name`` if no layer is called so, else ``name [2]``, ``name [3]`` ..."""
    if name not in viewer.layers:
        return name
    n = 2
    while f"{name} [{n}]" in viewer.layers:
        n += 1
    return f"{name} [{n}]"


class LayerPicker(QComboBox):
    """A combo box listing the viewer's layers of some type, kept up to date.

    Until the user picks one, it selects automatically: the most recent layer whose name
    contains one of ``prefer`` (case-insensitive), otherwise the first layer that contains
    none of ``avoid``, otherwise the first layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are listed.
    layer_type : type or tuple of types
        ``napari.layers.Image``, ``napari.layers.Labels`` ...
    prefer, avoid : sequence of str
        Name fragments used by the automatic choice.
    placeholder : str
        Shown when there is no such layer.
    """

    layer_changed = Signal(object)

    def __init__(
        self,
        viewer: Viewer,
        layer_type: type[Layer] | tuple[type[Layer], ...],
        *,
        prefer: Sequence[str] = (),
        avoid: Sequence[str] = (),
        placeholder: str = "(no layer)",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_type
        self._prefer = tuple(p.lower() for p in prefer)
        self._avoid = tuple(a.lower() for a in avoid)
        self._layers: list[Layer] = []
        self._selected: Layer | None = None
        self._user_chosen = False
        self._preferred_name: str | None = None
        self.setPlaceholderText(placeholder)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.reordered):
            emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self.activated.connect(self._on_activated)
        self.currentIndexChanged.connect(self._on_index_changed)
        self._refresh()

    # -- public -------------------------------------------------------------------------
    def layer(self) -> Any:
        """The chosen layer, or None."""
        index = self.currentIndex()
        if 0 <= index < len(self._layers) and self._layers[index] in self._viewer.layers:
            return self._layers[index]
        return None

    def set_layer(self, layer: Layer | None) -> None:
        """Choose ``layer`` (counts as the user's choice)."""
        self._user_chosen = layer is not None
        self._selected = layer
        self._refresh()

    @property
    def user_chosen(self) -> bool:
        """True when the user picked the layer (not the automatic choice)."""
        return self._user_chosen and self.layer() is not None

    def layers(self) -> list[Layer]:
        """The layers listed."""
        return list(self._layers)

    def prefer_name(self, name: str | None) -> None:
        """Until the user picks a layer, choose the one called ``name`` when present.

        ``name [2]``, ``name [3]`` ... (see :func:`unique_layer_name`) count too; the newest
        of them is chosen. ``None`` goes back to the name fragments given at construction.
        """
        self._preferred_name = name
        self._refresh()

    # -- internals ------------------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        try:
            if event is not None and getattr(event, "type", "") == "inserted":
                event.value.events.name.connect(self._on_layers_changed)
            if event is not None and getattr(event, "type", "") == "removed":
                event.value.events.name.disconnect(self._on_layers_changed)
            self._refresh()
        except RuntimeError:  # the Qt object is gone: stop listening
            self._disconnect()

    def _disconnect(self) -> None:
        events = self._viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.reordered):
            with contextlib.suppress(Exception):
                emitter.disconnect(self._on_layers_changed)

    def _auto_choice(self, layers: list[Layer]) -> Layer | None:
        if not layers:
            return None
        name = self._preferred_name
        if name is not None:
            named = [
                layer for layer in layers
                if layer.name == name or (layer.name.startswith(f"{name} [")
                                          and layer.name.endswith("]"))
            ]
            if named:
                return named[-1]
        allowed = [
            layer for layer in layers if not any(a in layer.name.lower() for a in self._avoid)
        ]
        for layer in reversed(allowed):
            if any(p in layer.name.lower() for p in self._prefer):
                return layer
        return allowed[0] if allowed else layers[0]

    def _refresh(self) -> None:
        layers = [layer for layer in self._viewer.layers if isinstance(layer, self._types)]
        previous = self._selected
        if previous not in layers:
            self._user_chosen = False
        chosen = previous if self._user_chosen else self._auto_choice(layers)
        self.blockSignals(True)
        try:
            self.clear()
            self._layers = layers
            for layer in layers:
                self.addItem(layer.name)
            self.setCurrentIndex(layers.index(chosen) if chosen in layers else -1)
        finally:
            self.blockSignals(False)
        self._selected = chosen if chosen in layers else None
        if self._selected != previous:
            self.layer_changed.emit(self._selected)

    def _on_activated(self, index: int) -> None:
        self._user_chosen = True
        self._on_index_changed(index)

    def _on_index_changed(self, index: int) -> None:
        layer = self._layers[index] if 0 <= index < len(self._layers) else None
        if layer != self._selected:
            self._selected = layer
            self.layer_changed.emit(layer)


def image_picker(viewer: Viewer, **kwargs: Any) -> LayerPicker:
    """A picker of Image layers (probability maps avoided)."""
    kwargs.setdefault("avoid", ("p(",))
    return LayerPicker(viewer, Image, placeholder="(no image layer)", **kwargs)


def labels_picker(viewer: Viewer, **kwargs: Any) -> LayerPicker:
    """A picker of Labels layers."""
    return LayerPicker(viewer, Labels, placeholder="(no labels layer)", **kwargs)


def annotation_picker(viewer: Viewer, **kwargs: Any) -> LayerPicker:
    """A picker of the viewer's labels layers that prefers an annotation."""
    return labels_picker(viewer, prefer=("annotation",), avoid=NOT_ANNOTATIONS, **kwargs)
