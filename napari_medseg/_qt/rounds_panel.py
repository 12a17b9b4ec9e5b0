"""The Train widget's rounds: every training run kept (annotation, model, figures), an
effort plot, a round's segmentation on demand, and "go back to this round".

The rounds live on disk (:mod:`napari_medseg.rounds`) beside the autosaves, so they
survive a crash: reopening the image lists them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPaintEvent, QPen
from qtpy.QtWidgets import QHBoxLayout, QSizePolicy, QVBoxLayout, QWidget

from ..autosave_keys import autosave_key, image_source_path
from ..colors import CLASS_NAMES_KEY, annotation_color_dict, segmentation_color_dict
from ..rounds import RoundRecord, RoundStore, segment_round
from ._common import StatusLabel, button, fill_table, result_table
from ._layers import layer_array, placement_kwargs, unique_layer_name
from ._worker import report_error, run_function

COLUMNS = ("Round", "Time", "Slices z/y/x", "Steps", "Validation", "Dice")
VALIDATION_COLOR = QColor(80, 200, 120)
DICE_COLOR = QColor(90, 150, 255)
EXPERT_WORDS = ("expert", "ground", "reference", "mask")
NOT_EXPERT = ("annotation", "segmentation", "preview", "false ")


def expert_layer_for(viewer: Viewer, shape: tuple[int, ...]) -> Labels | None:
    """A loaded expert mask of ``shape`` (by its name), or None."""
    for layer in viewer.layers:
        name = layer.name.lower()
        if (
            isinstance(layer, Labels)
            and any(w in name for w in EXPERT_WORDS)
            and not any(w in name for w in NOT_EXPERT)
            and layer_array(layer).shape == shape
        ):
            return layer
    return None


def _alive(widget: QWidget) -> bool:
    """False once Qt has deleted the widget (a worker may finish after its panel closed)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


class EffortPlot(QWidget):
    """Validation (green) and Dice against an expert mask (blue) against slices painted."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(80)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "per round, against the slices painted: green, the run's validation Dice on held-"
            "out painted voxels; blue, Dice against the expert mask (painted voxels kept)"
        )
        self.rounds: list[RoundRecord] = []

    def set_rounds(self, rounds: list[RoundRecord]) -> None:
        self.rounds = list(rounds)
        self.setVisible(bool(rounds))
        self.update()

    def series(self) -> dict[str, list[tuple[int, float]]]:
        """``{"validation": [(slices, value), ...], "dice": [...]}`` in round order."""
        return {
            "validation": [(r.painted, r.validation) for r in self.rounds
                           if r.validation is not None],
            "dice": [(r.painted, r.dice) for r in self.rounds if r.dice is not None],
        }

    def floor(self) -> float:
        """The bottom of the plot: the lowest figure rounded down to a tenth (0 at most)."""
        values = [v for points in self.series().values() for _, v in points]
        return max(0.0, min([*values, 1.0]) // 0.1 * 0.1 - 0.1) if values else 0.0

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, m = self.width(), self.height(), 6
        painter.setPen(QPen(QColor(120, 120, 120), 1))
        painter.drawRect(m, m, w - 2 * m, h - 2 * m)
        slices = [r.painted for r in self.rounds] or [0]
        lo, hi = min(slices), max(max(slices), min(slices) + 1)
        bottom = self.floor()

        def at(x: float, y: float) -> QPointF:
            share = (y - bottom) / (1.0 - bottom)
            return QPointF(m + (x - lo) / (hi - lo) * (w - 2 * m), h - m - share * (h - 2 * m))

        painter.setPen(QPen(QColor(150, 150, 150), 1))
        painter.drawText(m + 3, m + 12, "1.0")
        painter.drawText(m + 3, h - m - 3, f"{bottom:.1f}  ·  {lo} → {hi} slices painted")

        for key, color in (("validation", VALIDATION_COLOR), ("dice", DICE_COLOR)):
            points = [at(x, y) for x, y in self.series()[key]]
            painter.setPen(QPen(color, 2))
            for a, b in zip(points, points[1:]):
                painter.drawLine(a, b)
            for p in points:
                painter.drawEllipse(p, 2.5, 2.5)
        painter.end()


class RoundsPanel(QWidget):
    """Lists the rounds of the image being trained on; shows or restores one.

    The Train widget calls :meth:`follow` when the image changes and :meth:`add_round`
    after each run.
    """

    def __init__(self, viewer: Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.store: RoundStore | None = None
        self.image: Image | None = None
        self.rounds: list[RoundRecord] = []
        self.restored_model: Any = None  # set by "go back"; the Train widget continues from it
        self.on_restored: Any = None  # callback(model, record)
        self.table = result_table(COLUMNS, min_height=90)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.plot = EffortPlot()
        self.plot.setVisible(False)
        self.show_button = button("Show segmentation", "Show the selected round's segmentation")
        self.back_button = button(
            "Go back to this round",
            "Restore the selected round's annotation and continue from its model",
        )
        self.status = StatusLabel()
        row = QHBoxLayout()
        row.addWidget(self.show_button)
        row.addWidget(self.back_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addWidget(self.plot)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self.show_button.clicked.connect(self.show_selected)
        self.back_button.clicked.connect(self.go_back)
        self._on_selection()

    # -- listing ----------------------------------------------------------------------------
    def follow(self, image: Image | None) -> None:
        """List the rounds of ``image`` (kept on disk from earlier sessions too)."""
        if image is self.image and self.store is not None:
            return
        self.image = image
        self.store = None
        if image is not None:
            key = autosave_key(image_source_path(image), layer_array(image))
            self.store = RoundStore(key)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the rounds from disk."""
        self.rounds = self.store.rounds() if self.store is not None else []
        cells = [
            [str(r.number), r.time[11:19], "/".join(map(str, r.slices)), str(r.steps),
             _figure(r.validation), _figure(r.dice)]
            for r in self.rounds
        ]
        fill_table(self.table, cells)
        self.plot.set_rounds(self.rounds)
        self._on_selection()

    def selected(self) -> RoundRecord | None:
        """The round selected in the table (None when none is)."""
        rows = {index.row() for index in self.table.selectedIndexes()}
        if len(rows) != 1:
            return None
        row = rows.pop()
        return self.rounds[row] if 0 <= row < len(self.rounds) else None

    def select(self, number: int) -> None:
        """Select round ``number`` in the table."""
        for row, record in enumerate(self.rounds):
            if record.number == number:
                self.table.selectRow(row)

    def _on_selection(self) -> None:
        chosen = self.selected() is not None
        self.show_button.setEnabled(chosen)
        self.back_button.setEnabled(chosen)

    # -- adding -----------------------------------------------------------------------------
    def add_round(self, annotation: np.ndarray, model: Any, model_name: str) -> Any:
        """Keep a finished run as a round (in a worker: its segmentation and, when an
        expert mask is loaded, its Dice are computed there too)."""
        if self.store is None or self.image is None:
            return None
        store, image = self.store, layer_array(self.image)
        expert_layer = expert_layer_for(self.viewer, image.shape)
        expert = None if expert_layer is None else np.array(layer_array(expert_layer))

        def work() -> RoundRecord:
            labels, dice = segment_round(model, image, annotation, expert)
            return store.add(annotation, model, model_name=model_name, segmentation=labels,
                             dice=dice)

        self.status.info("keeping this round…")
        return run_function(
            work, name="MedSeg round",
            on_return=lambda record: self._added(record),
            on_error=lambda exc: report_error(exc, self.status, prefix="round not kept: "),
        )

    def _added(self, record: RoundRecord) -> None:
        if not _alive(self.table):  # the widget was closed meanwhile
            return
        self.refresh()
        self.select(record.number)
        dice = "" if record.dice is None else f", Dice {record.dice:.3f} against the expert mask"
        self.status.info(f"round {record.number} kept{dice}")

    # -- showing and restoring -------------------------------------------------------------
    def show_selected(self) -> Any:
        """Show the selected round's segmentation as a layer (computed if not kept)."""
        record, store, image = self.selected(), self.store, self.image
        if record is None or store is None or image is None:
            return None
        pixels = layer_array(image)

        def work() -> np.ndarray:
            labels = store.load_segmentation(record)
            if labels is None:
                annotation = store.load_annotation(record, pixels.shape)
                labels, _ = segment_round(store.load_model(record), pixels, annotation)
                store.save_segmentation(record, labels)
            return labels

        return run_function(
            work, name="MedSeg round segmentation",
            on_return=lambda labels: self._put_segmentation(record, labels),
            on_error=lambda exc: report_error(exc, self.status),
        )

    def _put_segmentation(self, record: RoundRecord, labels: np.ndarray) -> Labels | None:
        if not _alive(self.table) or self.image is None or self.image not in self.viewer.layers:
            return None
        name = f"{self.image.name} round {record.number} segmentation"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(
            labels, name=name, opacity=0.5,
            colormap=segmentation_color_dict(len(record.class_names)),
            metadata={CLASS_NAMES_KEY: list(record.class_names)},
            **placement_kwargs(self.image),
        )
        self.status.info(f"showing round {record.number}'s segmentation")
        return layer

    def go_back(self) -> Any:
        """Restore the selected round's annotation (into a new layer when the current one
        does not fit) and hand its model to the Train widget to continue from."""
        record, store, image = self.selected(), self.store, self.image
        if record is None or store is None or image is None:
            return None
        shape = layer_array(image).shape

        def work() -> tuple[np.ndarray, Any]:
            return store.load_annotation(record, shape), store.load_model(record)

        return run_function(
            work, name="MedSeg restore round",
            on_return=lambda pair: self._restored(record, *pair),
            on_error=lambda exc: report_error(exc, self.status),
        )

    def _restored(self, record: RoundRecord, annotation: np.ndarray, model: Any) -> None:
        if not _alive(self.table) or self.image is None:
            return
        name = unique_layer_name(self.viewer, f"{self.image.name} annotation round "
                                 f"{record.number}")
        self.viewer.add_labels(
            annotation, name=name, opacity=0.7,
            colormap=annotation_color_dict(len(record.class_names)),
            metadata={CLASS_NAMES_KEY: list(record.class_names)},
            **placement_kwargs(self.image),
        )
        self.restored_model = model
        if self.on_restored is not None:
            self.on_restored(model, record, self.viewer.layers[name])
        self.status.info(
            f"back at round {record.number}: its annotation is '{name}'; Train continues "
            "from its model"
        )

