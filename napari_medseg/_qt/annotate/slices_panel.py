"""The Annotate widget's "Annotated slices" box: painted slices per axis, voxel counts."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ...painted_slices import annotation_summary
from .._common import StatusLabel, section_title
from .._layers import LayerPicker, class_names_of, layer_array
from .._worker import report_error, run_function

#: Delay (ms) after the last paint/data event before the annotated-slice list is updated.
SLICE_LIST_DELAY_MS = 250
#: Above this many voxels the slice list is computed in a worker thread.
SYNC_SUMMARY_VOXELS = 8_000_000


def layer_emitters(layer: Labels) -> tuple[Any, Any, Any]:
    """The events of an annotation layer that say its data changed.

    ``paint``: end of a brush stroke / fill; ``data``: data replaced; ``set_data``: full
    refresh (after undo / redo, and when slicing).
    """
    return (layer.events.paint, layer.events.data, layer.events.set_data)


class SlicesPanel(QWidget):
    """The slices painted in each plane and the painted voxels per label, kept up to date.

    Follows the edits of the chosen annotation layer (:meth:`follow`) and refreshes the
    text a little after the last one (:data:`SLICE_LIST_DELAY_MS`); large volumes are
    summarised in a worker thread, on a copy.

    Parameters
    ----------
    annotation_picker : LayerPicker
        The picker of the annotation layer.
    status : StatusLabel
        Where errors are shown.
    """

    def __init__(self, annotation_picker: LayerPicker, status: StatusLabel) -> None:
        super().__init__()
        self.annotation_picker = annotation_picker
        self.status = status
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self._watched: Labels | None = None
        self._worker: Any = None
        self._pending = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SLICE_LIST_DELAY_MS)
        self._timer.timeout.connect(self.refresh)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(section_title("Annotated slices"))
        layout.addWidget(self.label)

    def follow(self, layer: Labels | None) -> None:
        """Refresh (throttled) after each edit of ``layer``; stop following the previous one."""
        if self._watched is not None:
            for emitter in layer_emitters(self._watched):
                emitter.disconnect(self._schedule)
        self._watched = layer
        if layer is not None:
            for emitter in layer_emitters(layer):
                emitter.connect(self._schedule)

    def _schedule(self, event: object = None) -> None:
        self._timer.start()

    def refresh(self) -> None:
        """Refresh the text now (small volumes) or in a worker thread (large ones)."""
        layer = self.annotation_picker.layer()
        if layer is None:
            self.label.setText("no annotation layer")
            return
        names = class_names_of(layer) or []
        data = layer_array(layer)
        if data.size <= SYNC_SUMMARY_VOXELS:
            self.label.setText(annotation_summary(data, names))
            return
        if self._worker is not None:
            self._pending = True
            return
        snapshot = np.array(data, copy=True)
        self._pending = False

        def done() -> None:
            self._worker = None
            if self._pending:
                self.refresh()

        self._worker = run_function(
            lambda: annotation_summary(snapshot, names),
            name="MedSeg annotation summary",
            on_return=self.label.setText,
            on_error=lambda exc: report_error(exc, self.status),
            on_finish=done,
        )
