"""Metrics · "Estimate accuracy from my annotation": k-fold cross-validation over the
painted slices (:func:`napari_medseg.crossval.crossval`, run in a worker thread)."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.viewer import Viewer
from qtpy.QtWidgets import QApplication, QHeaderView, QLabel, QSpinBox, QVBoxLayout, QWidget

from ..errors import MedsegInputError
from ._common import button, fill_table, form_layout, result_table
from ._forms import ConfigForm
from ._job import JobControls, RunsJob
from ._layers import (
    annotation_picker,
    class_names_of,
    image_picker,
    layer_array,
    spacing_of,
)
from ._worker import report_error

CROSSVAL_BASIC = ("arch", "time_budget", "iterations", "device")


def crossval_rows(result: Any) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the cross-validation table from a ``CrossValResult``.

    One row per structure and a ``mean`` row: the IoU of each finished fold, then the
    IoU and Dice as mean ± standard deviation over the folds.
    """
    header = ["Structure", *(f"IoU f{f.fold + 1}" for f in result.folds), "IoU", "Dice"]

    def pm(pair: tuple[float | None, float | None]) -> str:
        mean, std = pair
        return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"

    rows = [
        [
            result.name(k),
            *(f"{f.iou[k]:.3f}" for f in result.folds),
            pm(result.iou_mean_std(k)),
            pm(result.dice_mean_std(k)),
        ]
        for k in result.structures
    ]
    rows.append(
        [
            "mean",
            *(f"{f.mean_iou:.3f}" for f in result.folds),
            pm(result.iou_mean_std()),
            pm(result.dice_mean_std()),
        ]
    )
    return header, rows


class CrossValPanel(RunsJob, QWidget):
    """Estimate the accuracy from the sparse annotation alone (k-fold over painted slices).

    Each fold trains a network without some of the painted slices and scores it on them;
    the mean over the folds estimates how well the unpainted slices are segmented.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer.
    """

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__()
        from ..training import TrainConfig

        self.viewer = napari_viewer
        self.result: Any = None
        self.image_picker = image_picker(napari_viewer)
        self.annotation_picker = annotation_picker(napari_viewer)
        self.folds_spin = QSpinBox()
        self.folds_spin.setRange(2, 20)
        self.folds_spin.setValue(3)
        self.folds_spin.setToolTip(
            "The painted slices showing a structure are split into this many groups; each "
            "fold trains without one group and is scored on it (at least one slice per fold)"
        )
        self.form = ConfigForm(TrainConfig, CROSSVAL_BASIC)
        budget = self.form.editors["time_budget"].widget
        label = self.form.basic.form.labelForField(budget)
        if isinstance(label, QLabel):
            label.setText("Time per fold")
        budget.setToolTip(
            "Training time of each fold: the whole run takes about folds × (this + prediction)"
        )
        self.run_button = button(
            "Estimate accuracy", "Cross-validate over the painted slices (trains one network "
            "per fold)"
        )
        self.stop_button = button("Stop", "Stop now; the folds already finished are shown")
        self.job = JobControls(
            "cross-validation", self.run_button, stop_button=self.stop_button,
            controls=(self.form, self.folds_spin, self.image_picker, self.annotation_picker),
        )
        self.progress, self.status = self.job.progress, self.job.status
        self.progress.setVisible(False)  # until the first run
        self.copy_button = button("Copy", "Copy the result as a text table")
        self.copy_button.setEnabled(False)
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.table = result_table()
        self.table.setVisible(False)
        self._build_layout()
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.copy_button.clicked.connect(self.copy_text)

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = form_layout()
        form.addRow("Image", self.image_picker)
        form.addRow("Annotation", self.annotation_picker)
        form.addRow("Folds", self.folds_spin)
        layout.addLayout(form)
        layout.addWidget(self.form)
        layout.addLayout(self.job.button_row(self.copy_button))
        layout.addWidget(self.progress)
        layout.addWidget(self.title)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

    def _inputs(self) -> dict[str, Any]:
        from ..crossval import CrossValConfig

        image_layer = self.image_picker.layer()
        annotation_layer = self.annotation_picker.layer()
        if image_layer is None:
            raise MedsegInputError("choose an image layer")
        if annotation_layer is None:
            raise MedsegInputError("choose your annotation layer (step 1 · Annotate)")
        image = layer_array(image_layer)
        annotation = np.array(layer_array(annotation_layer), copy=True)  # snapshot
        if annotation.shape != image.shape:
            raise MedsegInputError(
                f"annotation shape {annotation.shape} differs from image shape {image.shape}"
            )
        # checked when made
        config = CrossValConfig(folds=self.folds_spin.value(), train=self.form.config())
        return {
            "image": image,
            "annotation": annotation,
            "config": config,
            "spacing": spacing_of(image_layer),
            "class_names": class_names_of(annotation_layer, image_layer),
        }

    def run(self) -> bool:
        """Start the cross-validation in a worker thread.

        Returns
        -------
        bool
            True when it started; False when refused (the reason is shown).
        """
        if self.is_running:
            return False
        from ..crossval import crossval

        try:
            inputs = self._inputs()
        except (MedsegInputError, TypeError, ValueError) as exc:
            report_error(exc, self.status)
            return False
        self.copy_button.setEnabled(False)
        self.job.start(
            lambda stop: crossval(
                inputs["image"], inputs["annotation"], inputs["config"],
                spacing=inputs["spacing"], class_names=inputs["class_names"], stop=stop,
            ),
            message=f"cross-validating over {inputs['config'].folds} folds…",
            busy="finding the painted slices…",
            on_return=self._show,
        )
        return True

    def stop(self) -> None:
        """End after the current training step or tile; finished folds are shown."""
        self.job.stop()

    def _show(self, result: Any) -> None:
        self.result = result
        done, planned = len(result.folds), result.n_folds
        units = len(result.units)
        if result.complete:
            self.title.setText(
                f"{planned} folds over {units} painted slices — estimated accuracy on the "
                "slices you did not paint:"
            )
            self.progress.finish(f"done in {result.seconds:.0f} s")
            self.status.info(f"mean IoU {result.mean_iou:.3f}, mean Dice {result.mean_dice:.3f}")
        else:
            self.title.setText(
                f"<b>incomplete</b>: stopped after {done} of {planned} folds ({units} painted "
                "slices) — a rough estimate only"
            )
            self.progress.finish(f"stopped · {done}/{planned} folds", complete=False)
            self.status.info(
                "stopped before any fold finished: no estimate" if not done
                else f"incomplete: {done} of {planned} folds"
            )
        details = [
            f"fold {f.fold + 1}: held out {', '.join(u.label() for u in f.held_out)} "
            f"({f.n_scored:,} voxels, {f.train_steps} steps)"
            for f in result.folds
        ]
        self.title.setToolTip("\n".join(details))
        if not done:
            self.table.setRowCount(0)
            self.table.setVisible(False)
            self.copy_button.setEnabled(False)
            return
        header, rows = crossval_rows(result)
        self.table.clear()
        self.table.setColumnCount(len(header))
        self.table.setHorizontalHeaderLabels(header)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        fill_table(self.table, rows)
        self.table.setVisible(True)
        self.copy_button.setEnabled(True)

    def copy_text(self) -> str:
        """Copy the result (plain-text table with the held-out slices) to the clipboard."""
        if self.result is None:
            return ""
        text = self.result.format_table()
        QApplication.clipboard().setText(text)
        self.status.info("result copied to the clipboard")
        return text
