"""Step 3 · Predict: segment an image with a trained model, tile by tile, live.

The segmentation layer is created when Predict is pressed and each finished tile is
written into it (on the GUI thread, from the worker's ``yielded`` signal), so the result
grows on screen. A stopped run leaves the layer named ``"… (stopped)"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer
from qtpy.QtWidgets import QCheckBox, QFileDialog, QVBoxLayout, QWidget

from ..annotation import keep_painted
from ..errors import MedsegInputError
from ..painted_slices import describe_slices
from ..regions import (
    ApartRegions,
    Regions,
    apart_from_painting,
    apply_regions,
    describe_apart,
)
from ._common import StatusLabel, button, form_layout, section_title, separator
from ._forms import ConfigForm
from ._job import JobControls, RunsJob
from ._layers import (
    LayerPicker,
    annotation_picker,
    image_picker,
    layer_array,
    spacing_of,
)
from ._state import MODELS, ModelEntry, ModelRegistry
from ._worker import report_error
from .predict.model_panel import ModelPanel, offer_uncertainty
from .predict.output_layers import LiveSegmentation, show_probabilities, show_uncertainty
from .predict.saving import SEGMENTATION_FILE_FILTER, write_segmentation
from .predict.suggestions import SliceSuggestions
from .predict.take_slice import TakeSlice

BASIC_FIELDS = ("device", "regions", "overlap", "probabilities", "uncertainty")
#: At most one redraw of the growing segmentation per this many seconds (tiles can be fast,
#: and each redraw recomposes the window: tens of milliseconds with software OpenGL).
REFRESH_INTERVAL_S = 0.4


def spacing_note(entry: ModelEntry, image_layer: Image) -> str:
    """A note for the status line when the image's voxel size is not the model's."""
    trained = tuple(entry.model.config.spacing)[-image_layer.ndim :]
    spacing = spacing_of(image_layer)
    if len(trained) == len(spacing) and np.allclose(trained, spacing, rtol=0.25):
        return ""
    shown = " × ".join(f"{s:.3g}" for s in spacing)
    return f" (note: the image's voxel size {shown} mm differs from the model's)"


def annotation_to_keep(picker: LayerPicker, shape: tuple[int, ...]) -> Labels | None:
    """The annotation layer whose painted voxels the prediction keeps, or None.

    A layer of another shape is refused when the user chose it, skipped when it was
    chosen automatically (another image's annotation).
    """
    layer = picker.layer()
    if layer is None or layer_array(layer).shape == shape:
        return layer
    if picker.user_chosen:
        raise MedsegInputError(
            f"'{layer.name}' has shape {layer_array(layer).shape}, the image {shape}: "
            "choose the image's annotation, or untick 'Keep my painted voxels'"
        )
    return None


def keep_painted_from(
    annotation_layer: Labels,
    labels: np.ndarray,
    regions: Regions = "all",
    class_names: Sequence[str] = (),
    apart: Sequence[ApartRegions] | None = None,
) -> tuple[int, str]:
    """Give ``labels`` the voxels painted in ``annotation_layer`` (read now: painting may
    have gone on), then apply ``regions``; the number of painted voxels and a note for the
    status line (with ``regions="all"``, the structures lying largely apart from the
    painting: ``apart`` as counted in the worker, else counted here)."""
    annotation = layer_array(annotation_layer)
    try:
        kept = keep_painted(labels, annotation)
    except MedsegInputError as exc:  # changed shape, or a label too large
        return 0, f" (painted voxels of '{annotation_layer.name}' not kept: {exc})"
    cleared = apply_regions(labels, annotation, regions)
    note = f" · {cleared:,} voxels apart from your painting cleared" if cleared else ""
    if regions == "all":
        found = apart_from_painting(labels, annotation) if apart is None else apart
        told = describe_apart(found, class_names, "Regions: touching")
        note += f" · {told}" if told else ""
    if not kept:
        return 0, note
    return kept, f" · {kept:,} painted voxels kept from '{annotation_layer.name}'{note}"


class PredictWidget(RunsJob, QWidget):
    """Apply a trained model to an image layer and show the segmentation as it grows.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    registry : ModelRegistry, optional
        Models to choose from (default: the session-wide :data:`~._state.MODELS`).
    """

    def __init__(self, napari_viewer: Viewer, registry: ModelRegistry | None = None) -> None:
        super().__init__()
        from ..inference import PredictConfig

        self.viewer = napari_viewer
        self.registry = registry if registry is not None else MODELS
        self.live = LiveSegmentation(napari_viewer, REFRESH_INTERVAL_S)
        self.probability_layers: list[Image] = []
        self.uncertainty_layer: Image | None = None
        self.kept_voxels = 0
        self._annotation_layer: Labels | None = None
        self._image_layer: Image | None = None
        self._class_names: list[str] = []

        self.image_picker = image_picker(napari_viewer)
        self.keep_painted_check = QCheckBox("Keep my painted voxels")
        self.keep_painted_check.setChecked(True)
        self.keep_painted_check.setToolTip(
            "When the prediction is complete, the voxels painted in the annotation layer "
            "keep the painted label (background or structure) instead of the network's"
        )
        self.annotation_picker = annotation_picker(napari_viewer)
        self.form = ConfigForm(PredictConfig, BASIC_FIELDS)
        self.predict_button = button("Predict", "Segment the image with the chosen model")
        self.stop_button = button("Stop", "Stop after the current tile")
        self._make_parts()
        self._build_layout()
        self._connect()

    def _make_parts(self) -> None:
        self.status = StatusLabel()
        self.models = ModelPanel(self.registry, self.status)
        self.model_combo, self.load_button = self.models.combo, self.models.load_button
        self.model_info = self.models.info
        self.job = JobControls(
            "prediction", self.predict_button, stop_button=self.stop_button,
            controls=(self.form, self.models, self.image_picker, self.keep_painted_check),
            stopping="stopping after the current tile…",
            on_running=self._on_running, status=self.status,
        )
        self.progress = self.job.progress
        self.suggestions = SliceSuggestions(self.viewer)
        self.suggest_button = self.suggestions.button
        self.take_slice = TakeSlice(self.viewer, self.status)
        self.save_button = button(
            "Save segmentation…", "Write the segmentation with the image's geometry"
        )
        self.save_button.setEnabled(False)

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        form = form_layout()
        form.addRow("Model", self.models)
        form.addRow("", self.model_info)
        form.addRow("Image", self.image_picker)
        form.addRow("", self.keep_painted_check)
        form.addRow("Annotation", self.annotation_picker)
        layout.addLayout(form)
        layout.addWidget(separator())
        layout.addWidget(section_title("Settings"))
        layout.addWidget(self.form)
        layout.addLayout(self.job.button_row())
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.suggest_button)
        layout.addWidget(self.take_slice.button)
        layout.addWidget(self.save_button)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.predict_button.clicked.connect(self.start_prediction)
        self.stop_button.clicked.connect(self.stop_prediction)
        self.save_button.clicked.connect(self.save_segmentation_dialog)
        self.models.changed.connect(self._model_changed)
        self.keep_painted_check.toggled.connect(self.annotation_picker.setEnabled)
        self.image_picker.layer_changed.connect(self._prefer_annotation_of)
        self.models.refresh()
        self._prefer_annotation_of(self.image_picker.layer())

    def _prefer_annotation_of(self, image: Any) -> None:
        """Choose ``"<image> annotation"`` (until the user picks another layer)."""
        self.annotation_picker.prefer_name(
            f"{image.name} annotation" if image is not None else None
        )

    # -- models (see ModelPanel) ---------------------------------------------------------
    def selected_model(self) -> ModelEntry | None:
        """The chosen model entry, or None."""
        return self.models.selected_model()

    def select_model(self, name: str) -> None:
        """Choose the model called ``name``."""
        self.models.select_model(name)

    def load_model_file(self, path: str | Path) -> Any:
        """Load a model file in a worker thread and add it to the registry."""
        return self.models.load_model_file(path)

    def _model_changed(self) -> None:
        offer_uncertainty(self.form.editors["uncertainty"], self.selected_model())

    # -- prediction -------------------------------------------------------------------------
    @property
    def result_layer(self) -> Labels | None:
        """The segmentation layer of the last prediction, or None."""
        return self.live.layer

    @property
    def tiles_shown(self) -> int:
        """Tiles written into the segmentation layer by the last prediction."""
        return self.live.tiles_shown

    @property
    def redraws(self) -> int:
        """Redraws of the growing segmentation layer in the last prediction."""
        return self.live.redraws

    def _on_running(self, running: bool) -> None:
        self.annotation_picker.setEnabled(not running and self.keep_painted_check.isChecked())

    def start_prediction(self) -> bool:
        """Check the inputs, add the segmentation layer and start predicting.

        Returns
        -------
        bool
            True when prediction started; False when refused (the reason is shown).
        """
        if self.is_running:
            return False
        from ..inference import predict_counting_apart

        try:
            entry = self.selected_model()
            if entry is None:
                raise MedsegInputError("no model: train one (2 · Train) or load a model file")
            image_layer = self.image_picker.layer()
            if image_layer is None:
                raise MedsegInputError("choose an image layer")
            if getattr(image_layer, "rgb", False):
                raise MedsegInputError(f"'{image_layer.name}' is an RGB image")
            image = layer_array(image_layer)
            if image.ndim not in (2, 3):
                raise MedsegInputError(
                    f"'{image_layer.name}' has {image.ndim} dimensions; expected a 2D or 3D image"
                )
            config = self.form.config()
            annotation_layer = None
            if self.keep_painted_check.isChecked():
                annotation_layer = annotation_to_keep(self.annotation_picker, image.shape)
        except (MedsegInputError, TypeError, ValueError) as exc:
            report_error(exc, self.status)
            return False

        self.live.begin(image_layer, image.shape, entry)
        self._image_layer = image_layer
        self._annotation_layer = annotation_layer
        self._class_names = list(entry.model.config.class_names[1:])
        self.kept_voxels = 0
        self.suggestions.offer([], image_layer)
        self.take_slice.offer(None, None)
        self.save_button.setEnabled(False)
        model = entry.model
        painted = None  # a snapshot, for the regions apart from it (counted in the worker)
        if annotation_layer is not None and annotation_layer is not self.live.layer:
            painted = np.array(layer_array(annotation_layer), copy=True)
        self.job.start(
            lambda stop: predict_counting_apart(model, image, config, painted, stop=stop),
            message="predicting…" + spacing_note(entry, image_layer),
            on_yield=self._on_tile,
            on_return=self._on_prediction,
            on_error=lambda exc: self.live.discard(),  # the job then shows the error
            on_abort=self.live.mark_stopped,
        )
        return True

    def stop_prediction(self) -> None:
        """Stop after the current tile; the layer is then named ``"… (stopped)"``."""
        self.job.stop()

    def _on_tile(self, tile: Any) -> None:
        self.job.show_progress(tile)
        self.live.add_tile(tile)

    def _on_prediction(self, prediction: Any) -> None:
        if not self.live.alive():
            self.status.info("prediction done, but its layer was deleted")
            return
        layer = self.live.layer
        if prediction.complete:
            labels = np.asarray(prediction.labels).astype(layer.data.dtype, copy=True)
            kept = self._keep_painted(labels, prediction.apart)
            self.live.complete(labels)
            found = [int(v) for v in np.unique(labels) if v]
            self.progress.finish(f"done · {len(found)} structure(s) found")
            self.status.info(f"'{layer.name}' complete{kept}")
            self.save_button.setEnabled(True)
            self.take_slice.offer(layer, self._annotation_layer or self.annotation_picker.layer())
            if prediction.probabilities is not None:
                self._show_probabilities(np.asarray(prediction.probabilities))
            if prediction.uncertainty is not None:
                self._show_uncertainty(np.asarray(prediction.uncertainty))
        else:
            layer.refresh()
            self.live.mark_stopped()
            self.progress.finish("stopped", complete=False)
            self.status.info(
                f"stopped: '{layer.name}' covers only the finished tiles; predict again for "
                "a complete segmentation"
            )

    def _keep_painted(self, labels: np.ndarray, apart: list[Any]) -> str:
        """Put the painted voxels' labels into ``labels``; a note for the status line."""
        annotation_layer = self._annotation_layer
        if annotation_layer is None or annotation_layer not in self.viewer.layers:
            return ""
        if annotation_layer is self.live.layer:
            return ""
        regions = self.form.values()["regions"]
        self.kept_voxels, note = keep_painted_from(
            annotation_layer, labels, regions, self._class_names, apart
        )
        return note

    def _show_probabilities(self, probabilities: np.ndarray) -> None:
        self.probability_layers = show_probabilities(
            self.viewer, self._image_layer, probabilities, self._class_names
        )

    def _show_uncertainty(self, uncertainty: np.ndarray) -> None:
        """An image layer of the networks' disagreement, and the slices to paint next."""
        layer, uncertainty = show_uncertainty(self.viewer, self._image_layer, uncertainty)
        self.uncertainty_layer = layer
        slices = self.suggestions.suggest(
            uncertainty, self.annotation_picker.layer(), self._image_layer
        )
        if slices:
            self.status.info(
                f"{self.status.text()} · the model is least sure on {describe_slices(slices)}: "
                "paint one of them next"
            )

    @property
    def suggested_slices(self) -> list[tuple[int, int]]:
        """The slices to paint next, ``(axis, index)`` in any plane, best first."""
        return self.suggestions.slices

    def show_next_suggestion(self) -> tuple[int, int] | None:
        """Show the next suggested slice (turning the view to its plane); returns it."""
        return self.suggestions.show_next()

    # -- saving -----------------------------------------------------------------------------
    def save_segmentation_dialog(self) -> None:
        """Ask for a file name and save the segmentation there."""
        if not self.live.alive():
            report_error(MedsegInputError("predict a segmentation first"), self.status)
            return
        default = f"{self.live.base_name.replace(' ', '_')}.nii.gz"
        path, _ = QFileDialog.getSaveFileName(
            self, "Save segmentation", default, SEGMENTATION_FILE_FILTER
        )
        if path:
            self.save_segmentation(path)

    def save_segmentation(self, path: str | Path) -> Any:
        """Write the segmentation layer to ``path`` (worker thread); the worker, or None."""
        if not self.live.alive():
            report_error(MedsegInputError("predict a segmentation first"), self.status)
            return None
        return write_segmentation(self.live.layer, path, self.status)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        """Stop a running prediction when the widget is closed."""
        self.stop_prediction()
        super().closeEvent(event)
