"""The Metrics widget's review section: a per-slice Dice strip and false-positive /
false-negative layers (the numbers come from :mod:`napari_medseg.review`)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from napari.layers import Labels, Layer
from napari.viewer import Viewer
from qtpy.QtCore import QPoint, QRect, Qt, Signal
from qtpy.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QToolTip, QVBoxLayout, QWidget

from ..colors import FALSE_NEGATIVE_COLOR, FALSE_POSITIVE_COLOR, error_color_dict
from ..errors import MedsegInputError
from ..review import Review, worst_slice
from ._common import button
from ._layers import axis_name, placement_kwargs, sliced_axis, unique_layer_name

NO_SCORE = QColor(90, 90, 96)
STRIP_HEIGHT = 22


def dice_color(value: float) -> QColor:
    """Red (0) through yellow (0.5) to green (1); grey where there is nothing to score."""
    if not np.isfinite(value):
        return NO_SCORE
    v = float(np.clip(value, 0.0, 1.0))
    if v < 0.5:
        return QColor(220, int(60 + 2 * v * 160), 50)
    return QColor(int(220 - 2 * (v - 0.5) * 180), 200, 60)


class SliceStrip(QWidget):
    """One coloured cell per slice (its Dice); click a cell to go to that slice."""

    slice_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values = np.zeros(0)
        self.current: int | None = None
        self.setMinimumHeight(STRIP_HEIGHT)
        self.setMaximumHeight(STRIP_HEIGHT)
        self.setMouseTracking(True)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def set_values(self, values: np.ndarray, current: int | None = None) -> None:
        """Show ``values`` (one Dice per slice, NaN: nothing to score)."""
        self.values = np.asarray(values, dtype=float)
        self.current = current
        self.update()

    def set_current(self, current: int | None) -> None:
        """Mark slice ``current`` (the one in view)."""
        if current != self.current:
            self.current = current
            self.update()

    def index_at(self, x: float) -> int | None:
        """The slice under horizontal position ``x`` (pixels)."""
        n = self.values.size
        if n == 0 or self.width() <= 0:
            return None
        return int(np.clip(x * n / self.width(), 0, n - 1))

    def _cell(self, i: int) -> QRect:
        n, w = self.values.size, self.width()
        left, right = round(i * w / n), round((i + 1) * w / n)
        return QRect(left, 0, max(1, right - left), self.height())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        for i, value in enumerate(self.values):
            painter.fillRect(self._cell(i), dice_color(value))
        if self.current is not None and 0 <= self.current < self.values.size:
            painter.setPen(QPen(QColor(255, 255, 255), 2))
            painter.drawRect(self._cell(self.current).adjusted(0, 1, -1, -1))
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        index = self.index_at(event.pos().x())
        if index is not None:
            self.slice_clicked.emit(index)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        index = self.index_at(event.pos().x())
        if index is None:
            return
        value = self.values[index]
        text = f"slice {index}: " + ("nothing to score" if np.isnan(value) else f"Dice {value:.3f}")
        QToolTip.showText(self.mapToGlobal(QPoint(event.pos().x(), 0)), text, self)


class ReviewPanel(QWidget):
    """Per-slice Dice along the axis in view, the worst slice, and the error layers.

    Filled by :meth:`show_review` after the Metrics widget's computation.
    """

    def __init__(self, viewer: Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.review: Review | None = None
        self.layer: Layer | None = None  # the segmentation reviewed
        self.error_layers: list[Labels] = []
        self.caption = QLabel("Dice per slice: compute the metrics first")
        self.caption.setWordWrap(True)
        self.strip = SliceStrip()
        self.worst_button = button("Go to the worst slice", "Show the slice with the lowest Dice")
        self.errors_box = QCheckBox("show false positives / negatives")
        self.errors_box.setToolTip(
            "Two layers: where the segmentation says a structure the expert mask lacks "
            "(pink) and where it misses one (cyan)"
        )
        self.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.strip)
        row = QHBoxLayout()
        row.addWidget(self.worst_button)
        row.addWidget(self.errors_box)
        layout.addLayout(row)
        self.strip.slice_clicked.connect(self.go_to)
        self.worst_button.clicked.connect(self.go_to_worst)
        self.errors_box.toggled.connect(self.show_errors)
        self.viewer.dims.events.current_step.connect(self._on_dims)
        self.viewer.dims.events.order.connect(self._on_dims)
        self.viewer.dims.events.ndisplay.connect(self._on_dims)

    def show_review(self, review: Review, layer: Layer) -> None:
        """Show ``review`` of the segmentation ``layer``."""
        self.review, self.layer = review, layer
        self.setEnabled(True)
        self._remove_error_layers()
        if self.errors_box.isChecked():
            self.show_errors(True)
        self._on_dims()

    def axis(self) -> int | None:
        """The data axis the 2D view slices through; None in 3D or without a review."""
        if self.layer is None or self.layer not in self.viewer.layers:
            return None
        try:
            return sliced_axis(self.viewer, self.layer)
        except MedsegInputError:
            return None

    def current_index(self, axis: int) -> int | None:
        """The index of the slice in view along ``axis`` of the reviewed layer."""
        assert self.layer is not None
        point = np.asarray(self.layer.world_to_data(self.viewer.dims.point), dtype=float)
        return int(np.round(point[axis]))

    def strip_values(self) -> np.ndarray | None:
        """The strip along the axis in view (None in 3D view or before a review)."""
        axis = self.axis()
        if axis is None or self.review is None:
            return None
        return self.review.strips.get(axis)

    def _on_dims(self, event: Any = None) -> None:
        axis = self.axis()
        values = self.strip_values()
        if axis is None or values is None or self.layer is None:
            self.strip.set_values(np.zeros(0))
            self.worst_button.setEnabled(False)
            if self.review is not None:
                self.caption.setText("Dice per slice: switch the viewer to 2D")
            return
        if values is not self.strip.values:
            self.strip.set_values(values)
            worst = worst_slice(values)
            self.worst_button.setEnabled(worst is not None)
            self.worst_button.setText(
                "Go to the worst slice"
                if worst is None
                else f"Go to the worst slice ({worst}, Dice {values[worst]:.3f})"
            )
            scored = int(np.isfinite(values).sum())
            self.caption.setText(
                f"Dice per slice along {axis_name(axis, self.layer.ndim)} ({scored} slices "
                "hold a structure; grey: none); click to go there"
            )
        self.strip.set_current(self.current_index(axis))

    def go_to(self, index: int) -> None:
        """Move the 2D view to slice ``index`` along the axis in view."""
        axis = self.axis()
        if axis is None or self.layer is None:
            return
        point = np.asarray(self.layer.world_to_data(self.viewer.dims.point), dtype=float)
        point[axis] = index
        world = np.asarray(self.layer.data_to_world(point), dtype=float)
        world_axis = axis + self.viewer.dims.ndim - self.layer.ndim
        self.viewer.dims.set_point(world_axis, float(world[world_axis]))

    def go_to_worst(self) -> int | None:
        """Go to the slice with the lowest Dice along the axis in view; returns it."""
        values = self.strip_values()
        worst = None if values is None else worst_slice(values)
        if worst is not None:
            self.go_to(worst)
        return worst

    def show_errors(self, on: bool) -> None:
        """Add (or remove) the false-positive and false-negative layers."""
        self._remove_error_layers()
        if not on or self.review is None or self.layer is None:
            return
        base = self.layer.name
        for data, what, color in (
            (self.review.false_positive, "false positives", FALSE_POSITIVE_COLOR),
            (self.review.false_negative, "false negatives", FALSE_NEGATIVE_COLOR),
        ):
            layer = self.viewer.add_labels(
                data,
                name=unique_layer_name(self.viewer, f"{base} {what}"),
                colormap=error_color_dict(color),
                opacity=0.8,
                **placement_kwargs(self.layer),
            )
            self.error_layers.append(layer)

    def _remove_error_layers(self) -> None:
        for layer in self.error_layers:
            with contextlib.suppress(ValueError, KeyError):
                self.viewer.layers.remove(layer)
        self.error_layers = []
