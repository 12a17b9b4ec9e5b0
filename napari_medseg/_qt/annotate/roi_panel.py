"""The Annotate widget's region of interest: a drawn box, everything outside is background."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Labels, Layer, Shapes
from napari.viewer import Viewer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from ...annotation import box_from_rectangle, mark_outside_box_background, rectangle_axis
from ...errors import MedsegInputError
from ...painted_slices import axis_name
from .._common import StatusLabel, button, form_layout, section_title
from .._layers import (
    LayerPicker,
    current_slice,
    layer_array,
    placement_kwargs,
    sliced_axis,
    unique_layer_name,
)
from .._worker import report_error
from .edit import UNDO_LIMIT, apply_edit, whole

AXIS_HINT = "Slice range: along the axis the 2D view scrolls through"


class RoiPanel(QWidget):
    """Draw a rectangle, choose a slice range across it, mark everything outside as background.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    annotation_picker, image_picker : LayerPicker
        The pickers of the annotation and image layers (the image places the box when
        there is no annotation layer yet).
    status : StatusLabel
        Where messages are shown.
    edited : callable
        Called after the annotation was changed.
    """

    def __init__(
        self,
        viewer: Viewer,
        annotation_picker: LayerPicker,
        image_picker: LayerPicker,
        status: StatusLabel,
        edited: Callable[[], None],
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.annotation_picker = annotation_picker
        self.image_picker = image_picker
        self.status = status
        self._edited = edited
        self.shapes_picker = LayerPicker(
            viewer, Shapes, prefer=("roi", "box"), placeholder="(no shapes layer)"
        )
        self.add_box_button = button(
            "Draw box…", "Add a Shapes layer in rectangle mode: draw the region of interest"
        )
        self.from_spin = QSpinBox()
        self.to_spin = QSpinBox()
        self.from_here = button("current", "Use the slice shown now")
        self.to_here = button("current", "Use the slice shown now")
        self.axis_label = QLabel("")
        self.roi_button = button(
            "Mark everything outside the box as background",
            "Voxels outside the rectangle (in-plane) and outside the slice range (across) that "
            "are not annotated become background",
        )
        self._build_layout()
        self.add_box_button.clicked.connect(self.add_box_layer)
        self.from_here.clicked.connect(lambda: self._set_to_current(self.from_spin))
        self.to_here.clicked.connect(lambda: self._set_to_current(self.to_spin))
        self.roi_button.clicked.connect(self.mark_outside_box)
        viewer.dims.events.order.connect(self.update_axis)
        viewer.dims.events.ndisplay.connect(self.update_axis)

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(section_title("Region of interest"))
        form = form_layout()
        shapes_row = QHBoxLayout()
        shapes_row.addWidget(self.shapes_picker, 1)
        shapes_row.addWidget(self.add_box_button)
        form.addRow("Box", shapes_row)
        for label, spin, here in (
            ("From slice", self.from_spin, self.from_here),
            ("To slice", self.to_spin, self.to_here),
        ):
            row = QHBoxLayout()
            spin.setRange(0, 0)
            row.addWidget(spin, 1)
            row.addWidget(here)
            form.addRow(label, row)
        layout.addLayout(form)
        layout.addWidget(self.axis_label)
        layout.addWidget(self.roi_button)

    def _reference(self) -> Layer | None:
        return self.annotation_picker.layer() or self.image_picker.layer()

    def _annotation_or_raise(self) -> Labels:
        layer = self.annotation_picker.layer()
        if layer is None:
            raise MedsegInputError("create or choose an annotation layer first")
        return layer

    def add_box_layer(self) -> Shapes | None:
        """Add a Shapes layer (in rectangle mode) on the annotation/image grid."""
        reference = self._reference()
        if reference is None:
            report_error(MedsegInputError("choose an image layer first"), self.status)
            return None
        kwargs = placement_kwargs(reference)
        kwargs.pop("units", None)
        shapes = self.viewer.add_shapes(
            name=unique_layer_name(self.viewer, "ROI box"),
            ndim=reference.ndim,
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            **kwargs,
        )
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        self.shapes_picker.set_layer(shapes)
        self.status.info("draw a rectangle around the structure on the shown slice")
        return shapes

    def update_axis(self, event: object = None) -> None:
        """Show the axis the slice range runs along, and bound the spin boxes to it."""
        try:
            self._show_axis()
        except RuntimeError:  # the widget was deleted: stop following the viewer
            self.viewer.dims.events.order.disconnect(self.update_axis)
            self.viewer.dims.events.ndisplay.disconnect(self.update_axis)

    def _show_axis(self) -> None:
        layer = self._reference()
        try:
            if layer is None:
                raise MedsegInputError("")
            axis = sliced_axis(self.viewer, layer)
        except MedsegInputError:
            self.axis_label.setText(AXIS_HINT)
            return
        size = layer_array(layer).shape[axis]
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, size - 1)
        if self.to_spin.value() == 0 and self.from_spin.value() == 0:
            self.to_spin.setValue(size - 1)
        self.axis_label.setText(
            f"Slice range along {axis_name(axis, layer.ndim)} (axis {axis}), inclusive"
        )

    def _set_to_current(self, spin: QSpinBox) -> None:
        layer = self._reference()
        try:
            if layer is None:
                raise MedsegInputError("choose an annotation layer first")
            self.update_axis()
            _, index = current_slice(self.viewer, layer)
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return
        spin.setValue(index)

    def roi_box(self) -> list[tuple[int, int]]:
        """The box (half-open voxel ranges per axis of the annotation) from the drawn shape.

        The rectangle gives the in-plane ranges (voxels whose centre lies inside it); the
        two spin boxes give the range across, along the axis the rectangle was drawn on
        (:func:`~napari_medseg.annotation.box_from_rectangle`).
        """
        annotation = self._annotation_or_raise()
        shapes = self.shapes_picker.layer()
        if shapes is None or len(shapes.data) == 0:
            raise MedsegInputError("draw a rectangle on a Shapes layer first (Draw box…)")
        chosen = sorted(shapes.selected_data)
        vertices = np.asarray(shapes.data[chosen[-1] if chosen else -1], dtype=float)
        world = np.array([shapes.data_to_world(v) for v in vertices])
        if world.shape[1] != annotation.ndim:
            raise MedsegInputError(
                f"the box has {world.shape[1]} dimensions, the annotation {annotation.ndim}"
            )
        points = np.array([annotation.world_to_data(w) for w in world])
        across = rectangle_axis(points)
        if across is None:
            across = sliced_axis(self.viewer, annotation)
        slice_range = (self.from_spin.value(), self.to_spin.value())
        return box_from_rectangle(points, layer_array(annotation).shape, across, slice_range)

    def mark_outside_box(self) -> int:
        """Mark every unannotated voxel outside the ROI box as background.

        Returns
        -------
        int
            Number of voxels changed (0 when refused, with a message).
        """
        try:
            layer = self._annotation_or_raise()
            box = self.roi_box()
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return 0
        after = np.array(layer.data, copy=True)
        changed = mark_outside_box_background(after, box)
        if changed:
            apply_edit(layer, whole(layer), after)
        self._edited()
        ranges = ", ".join(
            f"{axis_name(a, layer.ndim)} {lo}–{hi - 1}" for a, (lo, hi) in enumerate(box)
        )
        undo = "" if changed <= UNDO_LIMIT else " (too large to undo)"
        self.status.info(f"{changed} voxels outside the box ({ranges}) marked as background{undo}")
        return changed
