"""Step 3 · Predict: segment an image with a trained model, tile by tile, live.

The segmentation layer is created when Predict is pressed and each finished tile is
written into it (on the GUI thread, from the worker's ``yielded`` signal), so the result
grows on screen. A stopped run leaves the layer named ``"… (stopped)"``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from ..annotation import keep_painted
from ..errors import MedsegInputError
from ._colors import segmentation_color_dict, structure_color
from ._common import ProgressRow, StatusLabel, button, form_layout, section_title, separator
from ._forms import ConfigForm
from ._layers import (
    CLASS_NAMES_KEY,
    geometry_kwargs,
    image_picker,
    labels_picker,
    layer_array,
    spacing_of,
)
from ._state import MODELS, ModelEntry, ModelRegistry
from ._worker import StopSwitch, report_error, run_function, run_generator

BASIC_FIELDS = ("device", "overlap", "probabilities", "uncertainty")
UNCERTAINTY_TIP = (
    "Show where the ensemble's networks disagree: the places where painting another slice "
    "helps most"
)
#: Disagreement shown black (so hidden by additive blending): the networks all but agree.
UNCERTAINTY_FLOOR = 0.05
NO_ENSEMBLE_TIP = "Needs a model trained as an ensemble (2 · Train · Advanced · Ensemble ≥ 2)"
MODEL_FILE_FILTER = "MedSeg model (*.safetensors);;All files (*)"
SEGMENTATION_FILE_FILTER = (
    "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha *.mhd);;TIFF (*.tif *.tiff);;"
    "NumPy (*.npy)"
)
STOPPED_SUFFIX = " (stopped)"
#: At most one redraw of the growing segmentation per this many seconds (tiles can be fast).
REFRESH_INTERVAL_S = 0.1


def _members(config: Any) -> int:
    """How many networks a model's config holds (1 unless it is an ensemble)."""
    return int(getattr(getattr(config, "network", None), "members", 1))


def describe_model(entry: ModelEntry) -> str:
    """One line about a model: architecture, structures, spacing, training length."""
    config = entry.model.config
    names = list(config.class_names[1:]) or ["—"]
    spacing = " × ".join(f"{s:.3g}" for s in config.spacing)
    history = getattr(config, "history", {}) or {}
    steps = history.get("steps")
    trained = f" · {steps} steps" if steps is not None else ""
    source = "" if entry.source == "trained" else f" · from {Path(entry.source).name}"
    members = _members(config)
    arch = config.arch if members == 1 else f"{members} × {config.arch} (ensemble)"
    if len(getattr(config, "planes", (0,))) > 1:
        arch += " on 3 planes"
    if getattr(getattr(config, "network", None), "norm_groups", 0):
        arch += " · group norm"
    return f"{arch} · {', '.join(names)} · {spacing} mm{trained}{source}"


class PredictWidget(QWidget):
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
        self.worker: Any = None
        self.result_layer: Labels | None = None
        self.probability_layers: list[Image] = []
        self.uncertainty_layer: Image | None = None
        self.suggested_slices: list[int] = []
        self.tiles_shown = 0
        self.redraws = 0
        self.kept_voxels = 0
        self._last_redraw = 0.0
        self._base_name = ""
        self._annotation_layer: Labels | None = None

        self.model_combo = QComboBox()
        self.model_combo.setPlaceholderText("(no model: train or load one)")
        self.model_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.model_combo.setMinimumContentsLength(12)
        self.load_button = button("Load model…", "Read a model file (.safetensors)")
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.image_picker = image_picker(napari_viewer)
        self.keep_painted_check = QCheckBox("Keep my painted voxels")
        self.keep_painted_check.setChecked(True)
        self.keep_painted_check.setToolTip(
            "When the prediction is complete, the voxels painted in the annotation layer "
            "keep the painted label (background or structure) instead of the network's"
        )
        self.annotation_picker = labels_picker(
            napari_viewer, prefer=("annotation",), avoid=("segmentation", "mask", "label")
        )
        self.form = ConfigForm(
            PredictConfig,
            BASIC_FIELDS,
            none_text={"tile_shape": "chosen from the model"},
            suggest={"tile_shape": (64, 128, 128)},
            limits={"overlap": (0.0, 0.95, 0.05), "tile_shape": (1, 4096)},
        )
        self.predict_button = button("Predict", "Segment the image with the chosen model")
        self.stop_button = button("Stop", "Stop after the current tile")
        self.stop_button.setEnabled(False)
        self._stop = StopSwitch(self.stop_button)
        self.progress = ProgressRow()
        self.status = StatusLabel()
        self.suggest_button = button(
            "Go to a slice to paint", "Show the next slice where the networks disagree most"
        )
        self.suggest_button.setVisible(False)
        self._next_suggestion = 0
        self.save_button = button(
            "Save segmentation…", "Write the segmentation with the image's geometry"
        )
        self.save_button.setEnabled(False)

        layout = QVBoxLayout(self)
        form = form_layout()
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.load_button)
        form.addRow("Model", model_row)
        form.addRow("", self.model_info)
        form.addRow("Image", self.image_picker)
        form.addRow("", self.keep_painted_check)
        form.addRow("Annotation", self.annotation_picker)
        layout.addLayout(form)
        layout.addWidget(separator())
        layout.addWidget(section_title("Settings"))
        layout.addWidget(self.form)
        row = QHBoxLayout()
        row.addWidget(self.predict_button, 2)
        row.addWidget(self.stop_button, 1)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.suggest_button)
        layout.addWidget(self.save_button)
        layout.addStretch(1)

        self.load_button.clicked.connect(self.load_model_dialog)
        self.predict_button.clicked.connect(self.start_prediction)
        self.stop_button.clicked.connect(self.stop_prediction)
        self.save_button.clicked.connect(self.save_segmentation_dialog)
        self.suggest_button.clicked.connect(self.show_next_suggestion)
        self.model_combo.currentIndexChanged.connect(self._show_model_info)
        self.keep_painted_check.toggled.connect(self.annotation_picker.setEnabled)
        self.image_picker.layer_changed.connect(self._prefer_annotation_of)
        self.registry.changed.connect(self._refresh_models)
        self._refresh_models()
        self._prefer_annotation_of(self.image_picker.layer())

    def _prefer_annotation_of(self, image: Any) -> None:
        """Choose ``"<image> annotation"`` (until the user picks another layer)."""
        self.annotation_picker.prefer_name(
            f"{image.name} annotation" if image is not None else None
        )

    # -- models -----------------------------------------------------------------------------
    def _refresh_models(self) -> None:
        try:
            current = self.model_combo.currentText()
            names = self.registry.names()
            known = {self.model_combo.itemText(i) for i in range(self.model_combo.count())}
            new = [n for n in names if n not in known]
            self.model_combo.blockSignals(True)
            self.model_combo.clear()
            self.model_combo.addItems(names)
            chosen = new[-1] if new else current
            self.model_combo.setCurrentIndex(names.index(chosen) if chosen in names else -1)
            self.model_combo.blockSignals(False)
            self._show_model_info()
        except RuntimeError:  # widget deleted: stop listening
            self.registry.changed.disconnect(self._refresh_models)

    def selected_model(self) -> ModelEntry | None:
        """The chosen model entry, or None."""
        return self.registry.get(self.model_combo.currentText())

    def select_model(self, name: str) -> None:
        """Choose the model called ``name``."""
        index = self.model_combo.findText(name)
        if index < 0:
            raise KeyError(name)
        self.model_combo.setCurrentIndex(index)

    def _show_model_info(self, *_: Any) -> None:
        entry = self.selected_model()
        self.model_info.setText(describe_model(entry) if entry is not None else "")
        self.model_info.setVisible(entry is not None)
        # disagreement needs several networks: offered for ensembles only
        editor = self.form.editors["uncertainty"]
        ensemble = entry is not None and _members(entry.model.config) > 1
        if not ensemble:
            editor.set(False)
        editor.widget.setEnabled(ensemble)
        editor.widget.setToolTip(UNCERTAINTY_TIP if ensemble else NO_ENSEMBLE_TIP)

    def load_model_dialog(self) -> None:
        """Ask for a model file and load it."""
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", MODEL_FILE_FILTER)
        if path:
            self.load_model_file(path)

    def load_model_file(self, path: str | Path) -> Any:
        """Load a model file in a worker thread and add it to the registry."""
        from ..checkpoint import load_model

        target = Path(path)
        self.load_button.setEnabled(False)
        self.status.info(f"loading {target.name}…")

        def loaded(model: Any) -> None:
            entry = self.registry.add(target.name.split(".")[0], model, source=str(target))
            self.select_model(entry.name)
            self.status.info(f"model '{entry.name}' loaded")

        def failed(exc: BaseException) -> None:
            report_error(exc, self.status, prefix=f"could not load {target.name}: ")

        return run_function(
            lambda: load_model(target),
            name="MedSeg load model",
            on_return=loaded,
            on_error=failed,
            on_finish=lambda: self.load_button.setEnabled(True),
        )

    # -- prediction -------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True while a prediction is in progress."""
        return self.worker is not None

    def _set_running(self, running: bool) -> None:
        self.predict_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for widget in (self.form, self.model_combo, self.load_button, self.image_picker,
                       self.keep_painted_check):
            widget.setEnabled(not running)
        self.annotation_picker.setEnabled(not running and self.keep_painted_check.isChecked())

    def _result_layer_for(self, image_layer: Image, shape: tuple[int, ...], entry: ModelEntry):
        names = list(entry.model.config.class_names[1:])
        dtype = np.uint8 if len(names) < 255 else np.uint16
        base = f"{image_layer.name} segmentation"
        metadata = dict(image_layer.metadata)
        metadata.update({CLASS_NAMES_KEY: names, "medseg_model": entry.name})
        for candidate in (base, base + STOPPED_SUFFIX):
            old = self.viewer.layers[candidate] if candidate in self.viewer.layers else None
            if isinstance(old, Labels) and layer_array(old).shape == shape:
                old.data = np.zeros(shape, dtype=dtype)
                old.name = base
                old.metadata = metadata
                old.colormap = segmentation_color_dict(len(names))
                return old, base
        layer = self.viewer.add_labels(
            np.zeros(shape, dtype=dtype),
            name=base,
            colormap=segmentation_color_dict(len(names)),
            opacity=0.5,
            metadata=metadata,
            **geometry_kwargs(image_layer),
        )
        return layer, layer.name

    def start_prediction(self) -> bool:
        """Check the inputs, add the segmentation layer and start predicting.

        Returns
        -------
        bool
            True when prediction started; False when refused (the reason is shown).
        """
        if self.is_running:
            return False
        from ..inference import predict

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
                annotation_layer = self.annotation_picker.layer()
                if annotation_layer is not None and layer_array(annotation_layer).shape != (
                    image.shape
                ):
                    if self.annotation_picker.user_chosen:
                        raise MedsegInputError(
                            f"'{annotation_layer.name}' has shape "
                            f"{layer_array(annotation_layer).shape}, the image {image.shape}: "
                            "choose the image's annotation, or untick 'Keep my painted voxels'"
                        )
                    annotation_layer = None  # chosen automatically: another image's layer
        except (MedsegInputError, TypeError, ValueError) as exc:
            report_error(exc, self.status)
            return False

        self.result_layer, self._base_name = self._result_layer_for(image_layer, image.shape, entry)
        self._image_layer = image_layer
        self._annotation_layer = annotation_layer
        self._class_names = list(entry.model.config.class_names[1:])
        self.kept_voxels = 0
        self.suggested_slices = []
        self.suggest_button.setVisible(False)
        self.tiles_shown = 0
        self.redraws = 0
        self._last_redraw = 0.0
        stop = self._stop.arm()
        self._set_running(True)
        self.save_button.setEnabled(False)
        self.progress.start("preparing…")
        note = self._spacing_note(entry, image_layer)
        self.status.info("predicting…" + note)
        model = entry.model
        self.worker = run_generator(
            lambda: predict(model, image, config, stop=stop),
            name="MedSeg prediction",
            on_yield=self._on_tile,
            on_return=self._on_prediction,
            on_error=self._on_error,
            on_finish=self._on_finished,
            on_abort=self._on_aborted,
        )
        return True

    @staticmethod
    def _spacing_note(entry: ModelEntry, image_layer: Image) -> str:
        trained = tuple(entry.model.config.spacing)[-image_layer.ndim :]
        spacing = spacing_of(image_layer)
        if len(trained) == len(spacing) and np.allclose(trained, spacing, rtol=0.25):
            return ""
        shown = " × ".join(f"{s:.3g}" for s in spacing)
        return f" (note: the image's voxel size {shown} mm differs from the model's)"

    def stop_prediction(self) -> None:
        """Stop after the current tile; the layer is then named ``"… (stopped)"``."""
        self._stop.request(self.status, "stopping after the current tile…")

    def _layer_alive(self) -> bool:
        return self.result_layer is not None and self.result_layer in self.viewer.layers

    def _on_tile(self, tile: Any) -> None:
        self.progress.update(
            tile.index / max(tile.total, 1),
            f"tile {tile.index}/{tile.total} · {tile.elapsed:.0f} s"
            + (f" — {tile.message}" if tile.message else ""),
        )
        if not self._layer_alive():
            return
        layer = self.result_layer
        region, labels = tuple(tile.region), np.asarray(tile.labels)
        if len(region) == layer.ndim + 1:  # 2D image: the core works on a 1-slice volume
            region, labels = region[1:], labels[0]
        layer.data[region] = labels
        self.tiles_shown += 1
        now = time.perf_counter()
        if now - self._last_redraw >= REFRESH_INTERVAL_S or tile.index == tile.total:
            layer.refresh()
            self.redraws += 1
            self._last_redraw = now

    def _on_prediction(self, prediction: Any) -> None:
        if not self._layer_alive():
            self.status.info("prediction done, but its layer was deleted")
            return
        layer = self.result_layer
        if prediction.complete:
            labels = np.asarray(prediction.labels).astype(layer.data.dtype, copy=True)
            kept = self._keep_painted(labels)
            layer.data = labels
            layer.name = self._base_name
            found = [int(v) for v in np.unique(labels) if v]
            self.progress.finish(f"done · {len(found)} structure(s) found")
            self.status.info(f"'{layer.name}' complete{kept}")
            self.save_button.setEnabled(True)
            if prediction.probabilities is not None:
                self._show_probabilities(np.asarray(prediction.probabilities))
            if prediction.uncertainty is not None:
                self._show_uncertainty(np.asarray(prediction.uncertainty))
        else:
            layer.refresh()
            layer.name = self._base_name + STOPPED_SUFFIX
            self.progress.finish("stopped", complete=False)
            self.status.info(
                f"stopped: '{layer.name}' covers only the finished tiles; predict again for "
                "a complete segmentation"
            )

    def _keep_painted(self, labels: np.ndarray) -> str:
        """Put the painted voxels' labels into ``labels``; a note for the status line."""
        annotation_layer = self._annotation_layer
        if annotation_layer is None or annotation_layer not in self.viewer.layers:
            return ""
        if annotation_layer is self.result_layer:
            return ""
        annotation = layer_array(annotation_layer)  # read now: painting may have gone on
        try:
            self.kept_voxels = keep_painted(labels, annotation)
        except MedsegInputError as exc:  # changed shape, or a label too large
            return f" (painted voxels of '{annotation_layer.name}' not kept: {exc})"
        if not self.kept_voxels:
            return ""
        return f" · {self.kept_voxels:,} painted voxels kept from '{annotation_layer.name}'"

    def _put_image(self, name: str, data: np.ndarray, **style: Any) -> Image:
        """Show ``data`` on the image's grid as the image layer ``name``.

        An existing image layer of that name is reused (new data and contrast limits);
        otherwise one is added with ``style`` (colormap, contrast limits, blending, ...).
        """
        image_layer = self._image_layer
        if data.ndim == image_layer.ndim + 1:  # 2D image: the core works on a 1-slice volume
            data = data[0]
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Image):
            layer = self.viewer.layers[name]
            layer.data = data
            layer.contrast_limits = style["contrast_limits"]
            return layer
        return self.viewer.add_image(data, name=name, **style, **geometry_kwargs(image_layer))

    def _show_probabilities(self, probabilities: np.ndarray) -> None:
        from napari.utils.colormaps import Colormap

        self.probability_layers = []
        for k in range(1, probabilities.shape[0]):
            name = self._class_names[k - 1] if k - 1 < len(self._class_names) else f"{k}"
            cmap = Colormap([[0, 0, 0, 0], list(structure_color(k))], name=f"medseg p{k}")
            layer = self._put_image(
                f"{self._image_layer.name} p({name})",
                probabilities[k],
                colormap=cmap,
                contrast_limits=(0.0, 1.0),
                blending="additive",
                visible=False,
            )
            self.probability_layers.append(layer)

    def _show_uncertainty(self, uncertainty: np.ndarray) -> None:
        """An image layer of the networks' disagreement, and the slices to paint next."""
        from ..annotation import slices_to_paint

        if uncertainty.ndim == self._image_layer.ndim + 1:
            uncertainty = uncertainty[0]
        top = max(0.1, float(uncertainty.max(initial=0.0)))
        layer = self._put_image(
            f"{self._image_layer.name} uncertainty",
            uncertainty,
            colormap="inferno",
            contrast_limits=(UNCERTAINTY_FLOOR, top),
            blending="additive",
            opacity=0.7,
        )
        self.uncertainty_layer = layer
        if uncertainty.ndim != 3:
            return
        annotation = None
        annotation_layer = self.annotation_picker.layer()
        if annotation_layer is not None and annotation_layer in self.viewer.layers:
            annotation = layer_array(annotation_layer)
            if annotation.shape != uncertainty.shape:
                annotation = None
        self.suggested_slices = slices_to_paint(uncertainty, annotation, axis=0, count=3)
        self._next_suggestion = 0
        self._update_suggest_button()
        if self.suggested_slices:
            listed = ", ".join(str(k) for k in self.suggested_slices)
            self.status.info(
                f"{self.status.text()} · networks disagree most on axial slices {listed}: "
                "paint one of them next"
            )

    def _update_suggest_button(self) -> None:
        if not self.suggested_slices:
            self.suggest_button.setVisible(False)
            return
        index = self._next_suggestion % len(self.suggested_slices)
        self.suggest_button.setText(
            f"Go to axial slice {self.suggested_slices[index]} to paint "
            f"({index + 1} of {len(self.suggested_slices)})"
        )
        self.suggest_button.setVisible(True)

    def show_next_suggestion(self) -> int | None:
        """Move the viewer to the next suggested axial slice; returns it (None: none left)."""
        if not self.suggested_slices or self._image_layer not in self.viewer.layers:
            return None
        index = self._next_suggestion % len(self.suggested_slices)
        chosen = self.suggested_slices[index]
        centre = [chosen, *(s / 2 for s in self._image_layer.data.shape[1:])]
        world = self._image_layer.data_to_world(centre)
        self.viewer.dims.set_point(0, float(world[0]))
        self._next_suggestion = index + 1
        self._update_suggest_button()
        return chosen

    def _on_error(self, exc: BaseException) -> None:
        if self._layer_alive():
            self.viewer.layers.remove(self.result_layer)
        self.result_layer = None
        self.progress.finish("failed", complete=False)
        report_error(exc, self.status, prefix="prediction failed: ")

    def _on_aborted(self) -> None:
        if self._layer_alive():
            self.result_layer.name = self._base_name + STOPPED_SUFFIX
        self.progress.finish("cancelled", complete=False)

    def _on_finished(self) -> None:
        self.worker = None
        self._stop.disarm()
        self._set_running(False)

    # -- saving -----------------------------------------------------------------------------
    def save_segmentation_dialog(self) -> None:
        """Ask for a file name and save the segmentation there."""
        if not self._layer_alive():
            report_error(MedsegInputError("predict a segmentation first"), self.status)
            return
        default = f"{self._base_name.replace(' ', '_')}.nii.gz"
        path, _ = QFileDialog.getSaveFileName(
            self, "Save segmentation", default, SEGMENTATION_FILE_FILTER
        )
        if path:
            self.save_segmentation(path)

    def save_segmentation(self, path: str | Path) -> Any:
        """Write the segmentation layer to ``path`` with the plugin's labels writer.

        The writer gets the layer's metadata, copied from the image layer, so the file keeps
        the image's geometry (spacing, origin, direction).
        """
        if not self._layer_alive():
            report_error(MedsegInputError("predict a segmentation first"), self.status)
            return None
        from .._napari.writer import write_labels

        data, meta, _ = self.result_layer.as_layer_data_tuple()
        data = np.array(data, copy=True)
        target = str(path)
        self.status.info(f"saving {Path(target).name}…")

        def saved(paths: Any) -> None:
            written = ", ".join(str(p) for p in (paths or [target]))
            self.status.info(f"segmentation saved to {written}")

        def failed(exc: BaseException) -> None:
            report_error(exc, self.status, prefix="could not save the segmentation: ")

        return run_function(
            lambda: write_labels(target, data, meta),
            name="MedSeg save segmentation",
            on_return=saved,
            on_error=failed,
        )

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        """Stop a running prediction when the widget is closed."""
        self.stop_prediction()
        super().closeEvent(event)
