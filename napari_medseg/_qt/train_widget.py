"""Step 2 · Train: train a network on the image and its sparse annotation.

The annotation is copied on the GUI thread when Train is pressed, so painting can go on
while the network trains; the training generator runs in a ``thread_worker``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from napari.viewer import Viewer
from qtpy.QtWidgets import QCheckBox, QFileDialog, QVBoxLayout, QWidget

from ..annotation import declared_classes, validate_annotation
from ..errors import MedsegInputError
from ..run_report import describe_validation
from ._common import button, form_layout, section_title, separator
from ._curves import TrainingCurves
from ._forms import ConfigForm
from ._job import JobControls, RunsJob
from ._layers import (
    annotation_picker,
    class_names_of,
    image_picker,
    layer_array,
    spacing_of,
)
from ._preview_layer import LivePreviewLayer
from ._state import MODELS, ModelRegistry
from ._worker import report_error, run_function
from .rounds_panel import RoundsPanel

BASIC_FIELDS = ("arch", "time_budget", "iterations", "device", "seed")

MODEL_FILE_FILTER = "MedSeg model (*.safetensors);;All files (*)"


class TrainWidget(RunsJob, QWidget):
    """Train a segmentation network from the painted slices.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    registry : ModelRegistry, optional
        Where trained models go (default: the session-wide :data:`~._state.MODELS`).
    """

    def __init__(self, napari_viewer: Viewer, registry: ModelRegistry | None = None) -> None:
        super().__init__()
        from ..training import TrainConfig
        from ..training.optimisation import import_optimiser_parts

        import_optimiser_parts()

        self.viewer = napari_viewer
        self.registry = registry if registry is not None else MODELS
        self.model: Any = None
        self.model_name: str | None = None
        self._model_image: tuple[str, tuple[int, ...]] | None = None  # what it was trained on
        self._last_progress: Any = None

        self.image_picker = image_picker(napari_viewer)
        self.annotation_picker = annotation_picker(napari_viewer)
        self.form = ConfigForm(TrainConfig, BASIC_FIELDS)
        self.continue_box = QCheckBox("Continue from the last model")
        self.continue_box.setChecked(True)
        self.continue_box.setVisible(False)
        self.train_button = button("Train", "Train a new model on the image and annotation")
        self.stop_button = button("Stop", "End training after the current step; keep the model")
        self.job = JobControls(
            "training", self.train_button, stop_button=self.stop_button,
            controls=(self.form, self.image_picker, self.annotation_picker),
            stopping="stopping after the current step…",
        )
        self.progress, self.status = self.job.progress, self.job.status
        self.curves = TrainingCurves()
        self.preview = LivePreviewLayer(napari_viewer)
        self.save_button = button("Save model…", "Write the last trained model to a file")
        self.save_button.setEnabled(False)
        self.rounds = RoundsPanel(napari_viewer)
        self.rounds.on_restored = self._on_round_restored
        self._annotation: np.ndarray | None = None  # what the running round trains on

        layout = QVBoxLayout(self)
        form = form_layout()
        form.addRow("Image", self.image_picker)
        form.addRow("Annotation", self.annotation_picker)
        layout.addLayout(form)
        layout.addWidget(separator())
        layout.addWidget(section_title("Settings"))
        layout.addWidget(self.form)
        layout.addWidget(self.continue_box)
        layout.addLayout(self.job.button_row())
        layout.addWidget(self.progress)
        layout.addWidget(self.curves)
        layout.addWidget(self.status)
        layout.addWidget(self.save_button)
        layout.addWidget(separator())
        layout.addWidget(section_title("Rounds"))
        layout.addWidget(self.rounds)
        layout.addStretch(1)

        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.save_button.clicked.connect(self.save_model_dialog)
        self.image_picker.layer_changed.connect(self.rounds.follow)
        self.rounds.follow(self.image_picker.layer())

    # -- training ---------------------------------------------------------------------------
    def _inputs(self) -> tuple[np.ndarray, np.ndarray, Any, tuple[float, ...], list[str] | None]:
        image_layer = self.image_picker.layer()
        annotation_layer = self.annotation_picker.layer()
        if image_layer is None:
            raise MedsegInputError("choose an image layer")
        if annotation_layer is None:
            raise MedsegInputError("choose an annotation layer (step 1 · Annotate creates one)")
        image = layer_array(image_layer)
        annotation = np.array(layer_array(annotation_layer), copy=True)  # snapshot
        names = class_names_of(annotation_layer)
        validate_annotation(annotation, image.shape, declared_classes(names))  # as training does
        config = self.form.config()  # checked when made
        spacing = spacing_of(image_layer)
        if not np.allclose(spacing_of(annotation_layer), spacing, rtol=1e-3):
            raise MedsegInputError(
                f"'{annotation_layer.name}' and '{image_layer.name}' have different voxel "
                "sizes (layer scale)"
            )
        return image, annotation, config, spacing, names

    def start_training(self) -> bool:
        """Check the inputs and start training in a worker thread.

        Returns
        -------
        bool
            True when training started; False when refused (the reason is shown).
        """
        if self.is_running:
            return False
        from ..training import train
        from ..training.warm import network_differs, with_warm_budget

        try:
            image, annotation, config, spacing, names = self._inputs()
        except (MedsegInputError, TypeError, ValueError) as exc:
            report_error(exc, self.status)
            return False
        self._last_progress = None
        self._annotation = annotation
        self.rounds.follow(self.image_picker.layer())
        self.curves.clear()
        self._image_name = self.image_picker.layer().name
        init = self.continued_model(image.shape)
        changed = network_differs(config, init) if init is not None else []
        if changed:  # the user asked for another network: a fresh one
            init = None
        if init is not None:
            config = with_warm_budget(config)
        self._arch = init.config.arch if init is not None else config.arch
        self._trained_on = (self._image_name, tuple(image.shape))
        request = self.preview.start(self.image_picker.layer(), int(annotation.max()) - 1)
        self.job.start(
            lambda stop: train(
                image, annotation, config, spacing=spacing, class_names=names, stop=stop,
                init=init, preview=request,
            ),
            message=(
                f"continuing from '{self.model_name}'…" if init is not None
                else f"training a new network ({', '.join(changed)} changed)…" if changed
                else "training…"
            ),
            on_yield=self._on_progress,
            on_return=self._on_model,
            on_finish=self.preview.finish,
        )
        return True

    def continued_model(self, shape: tuple[int, ...]) -> Any:
        """The model the next run continues from: the last one trained here, on this image,
        while "Continue from the last model" is ticked (else None: from scratch)."""
        if self.model is None or not self.continue_box.isChecked():
            return None
        if self._model_image != (self._image_name, tuple(shape)):
            return None
        return self.model

    def _offer_continuing(self) -> None:
        from ..training.warm import WARM_START_BUDGET

        self.continue_box.setText(
            f"Continue from '{self.model_name}' (a {WARM_START_BUDGET:.0f} s round)"
        )
        self.continue_box.setToolTip(
            "Train on from the last model's weights: paint one more slice and train again. "
            f"A continued round lasts {WARM_START_BUDGET:.0f} s unless you change the time "
            "budget. Untick to train a new network from scratch."
        )
        self.continue_box.setVisible(True)

    def stop_training(self) -> None:
        """Ask training to end after the current step (the model so far is kept)."""
        self.job.stop()

    def _on_progress(self, progress: Any) -> None:
        self._last_progress = progress
        self.job.show_progress(progress)
        self.curves.add(progress.step, progress.loss, progress.validation)
        if progress.preview is not None:
            self.preview.show(progress.preview)

    def _on_model(self, model: Any) -> None:
        self.preview.finish()
        self.model = model
        stamp = time.strftime("%H:%M:%S")
        history = getattr(model.config, "history", {}) or {}
        members = history.get("ensemble", 1)
        arch = self._arch if members == 1 else f"{members} × {self._arch}"
        entry = self.registry.add(f"{arch} · {self._image_name} · {stamp}", model)
        self.model_name = entry.name
        self._model_image = self._trained_on
        self._offer_continuing()
        steps = history.get("steps", "?")
        loss = history.get("final_loss")
        reason = history.get("stop_reason", "finished")
        loss_text = f", loss {loss:.3f}" if isinstance(loss, float) else ""
        how = "stopped" if reason == "stopped" else reason
        line, warning = describe_validation(history)
        figure = f", {line.split(' on ')[0]}" if line.startswith("validation Dice") else ""
        self.progress.finish(
            f"{how} after {steps} steps{loss_text}{figure}", complete=reason != "stopped"
        )
        ready = f"model '{entry.name}' ready — use it in 3 · Predict"
        if warning:
            self.status.error(f"{ready}. Check it: {warning}")
        else:
            self.status.info(ready)
        self.status.setToolTip(line)
        self.save_button.setEnabled(True)
        if self._annotation is not None:
            self.rounds.add_round(self._annotation, model, entry.name)

    def _on_round_restored(self, model: Any, record: Any, annotation_layer: Any) -> None:
        """"Go back to this round": its model is the one the next run continues from."""
        image = self.image_picker.layer()
        if image is None:
            return
        stamp = time.strftime("%H:%M:%S")
        entry = self.registry.add(f"round {record.number} · {image.name} · {stamp}", model)
        self.model, self.model_name = model, entry.name
        self._image_name = image.name
        self._model_image = (image.name, tuple(layer_array(image).shape))
        self.annotation_picker.set_layer(annotation_layer)
        self.continue_box.setChecked(True)
        self._offer_continuing()
        self.save_button.setEnabled(True)

    # -- saving -----------------------------------------------------------------------------
    def save_model_dialog(self) -> None:
        """Ask for a file name and save the last trained model there."""
        if self.model is None:
            report_error(MedsegInputError("train a model first"), self.status)
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Save model", "model.safetensors", MODEL_FILE_FILTER
        )
        if path:
            self.save_model(path)

    def save_model(self, path: str | Path) -> Any:
        """Save the last trained model to ``path`` (in a worker thread).

        Returns
        -------
        FunctionWorker or None
            The worker writing the file.
        """
        if self.model is None:
            report_error(MedsegInputError("train a model first"), self.status)
            return None
        from ..checkpoint import save_model

        model, target = self.model, Path(path)
        if not target.suffix:
            target = target.with_suffix(".safetensors")
        self.save_button.setEnabled(False)
        self.status.info(f"saving {target.name}…")

        def saved(result: Any) -> None:
            self.status.info(f"model saved to {result or target}")

        def failed(exc: BaseException) -> None:
            report_error(exc, self.status, prefix="could not save the model: ")

        return run_function(
            lambda: save_model(target, model),
            name="MedSeg save model",
            on_return=saved,
            on_error=failed,
            on_finish=lambda: self.save_button.setEnabled(self.model is not None),
        )

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        """Stop a running training when the widget is closed."""
        self.stop_training()
        super().closeEvent(event)
