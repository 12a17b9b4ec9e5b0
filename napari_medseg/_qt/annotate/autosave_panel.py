"""The Annotate widget's autosave: a copy of the annotation every 30 s and after painting.

The state machine lives here: whether the annotation changed since the last save
(``dirty``), whether it changed again while a save was being written (``again``), the
worker writing it, and two timers (the period, and "a little after the last stroke").
The copy is taken on the GUI thread; the file is written in a worker thread
(:func:`napari_medseg.autosave_keys.save_snapshot`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QWidget

from ...autosave import AutosaveStore
from ...autosave_keys import autosave_key, image_source_path, save_snapshot
from .._common import StatusLabel
from .._layers import LayerPicker, class_names_of, layer_array
from .._worker import report_error, run_function

#: Autosave period (ms) while the annotation keeps changing.
AUTOSAVE_INTERVAL_MS = 30_000
#: Autosave this long (ms) after the last brush stroke.
AUTOSAVE_AFTER_PAINT_MS = 3_000
OFF_TEXT = "off: a crash loses the painting since the last save"
PAUSED_TEXT = "paused until the autosave above is restored or discarded"


def image_for(viewer: Viewer, annotation: Labels, chosen: Any) -> Image | None:
    """The image layer ``annotation`` was made for (same shape), or None.

    The image named in the annotation's metadata comes first, then ``chosen`` (the
    widget's image layer).
    """
    shape = layer_array(annotation).shape
    name = annotation.metadata.get("medseg_image")
    candidates = []
    if name and name in viewer.layers:
        candidates.append(viewer.layers[name])
    candidates.append(chosen)
    for image in candidates:
        if isinstance(image, Image) and layer_array(image).shape == shape:
            return image
    return None


class AutosavePanel(QWidget):
    """The "Autosave" check box with its note, and the autosaves of the annotation layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    store : AutosaveStore
        Where autosaves go.
    image_picker, annotation_picker : LayerPicker
        The widget's pickers.
    status : StatusLabel
        Where a failed autosave is reported (once).
    paused : callable
        ``paused(image)`` is True while an earlier autosave of ``image`` is offered back:
        nothing is written then, so that it is not overwritten.
    """

    def __init__(
        self,
        viewer: Viewer,
        store: AutosaveStore,
        image_picker: LayerPicker,
        annotation_picker: LayerPicker,
        status: StatusLabel,
        paused: Callable[[Image], bool],
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self.image_picker = image_picker
        self.annotation_picker = annotation_picker
        self.status = status
        self._paused = paused
        self.worker: Any = None
        self.path: Any = None
        self._dirty = True
        self._again = False
        self._error_shown = False
        self._watched: Labels | None = None
        self.check = QCheckBox("Autosave")
        self.check.setChecked(True)
        self.check.setToolTip(
            "Save a copy of the annotation every 30 s and after painting stops, to "
            f"{store.root}, so that it can be restored after a crash"
        )
        self.label = QLabel("")
        self.label.setWordWrap(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.check)
        layout.addWidget(self.label, 1)
        self.timer = QTimer(self)
        self.timer.setInterval(AUTOSAVE_INTERVAL_MS)
        self.timer.timeout.connect(self.save_now)
        self.soon = QTimer(self)
        self.soon.setSingleShot(True)
        self.soon.setInterval(AUTOSAVE_AFTER_PAINT_MS)
        self.soon.timeout.connect(self.save_now)
        self.check.toggled.connect(self._on_toggled)

    def mark_dirty(self) -> None:
        """The annotation changed in a way no layer event tells: save it at the next tick."""
        self._dirty = True

    def follow(self, layer: Labels | None) -> None:
        """Autosave the edits of ``layer``; stop following the previous one."""
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._on_painted)
            self._watched.events.data.disconnect(self._on_painted)
            self._watched.events.set_data.disconnect(self._on_refreshed)
        self._watched = layer
        self._dirty = True
        if layer is not None:
            layer.events.paint.connect(self._on_painted)
            layer.events.data.connect(self._on_painted)
            layer.events.set_data.connect(self._on_refreshed)

    def _on_toggled(self, on: bool) -> None:
        if on:
            self._dirty = True
            self.timer.start()
            self.label.setText("")
        else:
            self.timer.stop()
            self.soon.stop()
            self.label.setText(OFF_TEXT)

    def _on_painted(self, event: object = None) -> None:
        """A brush stroke ended (or the data was replaced): autosave a little later."""
        self._dirty = True
        if self.check.isChecked():
            self.soon.start()

    def _on_refreshed(self, event: object = None) -> None:
        # undo/redo (and slicing) only refresh the layer: leave it to the periodic save
        self._dirty = True

    def save_now(self) -> Any:
        """Autosave the annotation layer when it changed (the timers' slot).

        The annotation is copied here, on the GUI thread, and written in a worker thread.
        Nothing is written while a restore of the same image is still on offer (the
        autosave of the earlier session is kept until the user restores or discards it).

        Returns
        -------
        FunctionWorker or None
            The worker writing the autosave, or None when nothing was to be saved.
        """
        if not self.check.isChecked():
            return None
        annotation = self.annotation_picker.layer()
        if annotation is None:
            return None
        image = image_for(self.viewer, annotation, self.image_picker.layer())
        if image is None or getattr(image, "rgb", False):
            return None
        if self._paused(image):
            self.label.setText(PAUSED_TEXT)
            return None
        if self.worker is not None:
            self._again = True
            return None
        if not self._dirty:
            return None
        snapshot = np.array(layer_array(annotation), copy=True)
        self._dirty = False
        self._again = False
        store = self.store
        path, image_data = image_source_path(image), layer_array(image)
        names = class_names_of(annotation) or []
        spacing = tuple(float(s) for s in annotation.scale)
        image_name = image.name

        def save() -> Any:
            return save_snapshot(
                store, autosave_key(path, image_data), snapshot,
                spacing=spacing, class_names=names, image_name=image_name,
            )

        self.worker = run_function(
            save,
            name="MedSeg autosave",
            on_return=self._on_saved,
            on_error=self._on_error,
            on_finish=self._on_finished,
        )
        return self.worker

    def _on_saved(self, path: Any) -> None:
        if path is None:
            return
        self.path = path
        self._error_shown = False
        self.label.setText(f"autosaved {time.strftime('%H:%M:%S')}")
        self.label.setToolTip(str(path))

    def _on_error(self, exc: BaseException) -> None:
        self._dirty = True  # try again at the next tick
        self.label.setText("autosave failed (see the message below)")
        if not self._error_shown:
            self._error_shown = True
            report_error(exc, self.status, prefix="autosave failed: ")

    def _on_finished(self) -> None:
        self.worker = None
        if self._again and self.check.isChecked():
            self.soon.start()
