"""Step 4 · Metrics: compare a segmentation with an expert mask, structure by structure.

Without an expert mask, the second section estimates the accuracy from the user's own
sparse annotation by k-fold cross-validation over the painted slices
(:func:`napari_medseg.crossval.crossval`, run in a worker thread).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
from napari.viewer import Viewer
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import MedsegInputError
from ._common import (
    ProgressRow,
    StatusLabel,
    button,
    form_layout,
    section_title,
    separator,
)
from ._forms import train_config_form
from ._layers import class_names_of, image_picker, labels_picker, layer_array, spacing_of
from ._worker import StopSwitch, report_error, run_function, run_generator

COLUMNS = ("Structure", "Dice", "Jaccard", "SA %", "HD95 mm", "ASSD mm")
RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
KEYS = ("dice", "jaccard", "sa", "hd95_mm", "assd_mm")
FORMATS = {"dice": "{:.4f}", "jaccard": "{:.4f}", "sa": "{:.2f}", "hd95_mm": "{:.2f}",
           "assd_mm": "{:.2f}"}


def metric_rows(result: Any, class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the table from an :class:`~napari_medseg.metrics.EvaluationResult`.

    Returns
    -------
    list of dict
        One ``{"structure": name, "dice": ..., ...}`` per structure, then a ``"mean"`` row
        (HD95 and ASSD means are taken over the structures that have them).
    """
    data = result.to_dict()
    names = dict(getattr(result, "class_names", {}) or {})
    rows: list[dict[str, Any]] = []
    for key, values in data["classes"].items():
        k = int(key)
        if k not in names and class_names and 0 < k <= len(class_names):
            names[k] = class_names[k - 1]
        row = {"structure": f"{k} · {names[k]}" if k in names else f"structure {k}"}
        row.update({m: values.get(m) for m in KEYS})
        rows.append(row)
    mean: dict[str, Any] = {"structure": "mean"}
    for m in KEYS:
        if m in data["mean"]:
            mean[m] = data["mean"][m]
        else:
            present = [r[m] for r in rows if r[m] is not None]
            mean[m] = float(np.mean(present)) if present else None
    rows.append(mean)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text (header + rows) with full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [row["structure"]] + ["" if row[m] is None else f"{row[m]:.6g}" for m in KEYS]
        )
    return buffer.getvalue()


class MetricsWidget(QWidget):
    """Dice, Jaccard, SA, HD95 and ASSD of a segmentation against an expert mask.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.rows: list[dict[str, Any]] = []
        self.segmentation_picker = labels_picker(
            napari_viewer, prefer=("segmentation",), avoid=("annotation", "expert", "mask")
        )
        self.reference_picker = labels_picker(
            napari_viewer,
            prefer=("expert", "mask", "label", "reference", "ground"),
            avoid=("annotation", "segmentation"),
        )
        self.only_unannotated = QCheckBox("only voxels not annotated")
        self.only_unannotated.setToolTip(
            "Score only the voxels the user did not paint (as in the 3D U-Net paper)"
        )
        self.annotation_picker = labels_picker(
            napari_viewer, prefer=("annotation",), avoid=("segmentation", "mask", "label")
        )
        self.annotation_picker.setEnabled(False)
        self.compute_button = button("Compute", "Compute the metrics (surface distances in mm)")
        self.copy_button = button("Copy as CSV", "Copy the table to the clipboard")
        self.copy_button.setEnabled(False)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(110)
        self.status = StatusLabel()

        self.crossval = CrossValPanel(napari_viewer)

        layout = QVBoxLayout(self)
        layout.addWidget(section_title("Compare with an expert mask"))
        form = form_layout()
        form.addRow("Segmentation", self.segmentation_picker)
        form.addRow("Expert mask", self.reference_picker)
        form.addRow("", self.only_unannotated)
        form.addRow("Annotation", self.annotation_picker)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.compute_button, 2)
        row.addWidget(self.copy_button, 1)
        layout.addLayout(row)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        layout.addWidget(separator())
        layout.addWidget(section_title("Estimate accuracy from my annotation (no expert mask)"))
        layout.addWidget(self.crossval)

        self.only_unannotated.toggled.connect(self.annotation_picker.setEnabled)
        self.compute_button.clicked.connect(self.compute)
        self.copy_button.clicked.connect(self.copy_csv)

    @property
    def is_running(self) -> bool:
        """True while metrics are being computed."""
        return self.worker is not None

    def _inputs(self) -> dict[str, Any]:
        seg_layer = self.segmentation_picker.layer()
        ref_layer = self.reference_picker.layer()
        if seg_layer is None or ref_layer is None:
            raise MedsegInputError("choose a segmentation and an expert-mask layer")
        if seg_layer == ref_layer:
            raise MedsegInputError("the segmentation and the expert mask are the same layer")
        seg = np.array(layer_array(seg_layer), copy=True)
        ref = np.array(layer_array(ref_layer), copy=True)
        if seg.shape != ref.shape:
            raise MedsegInputError(
                f"segmentation shape {seg.shape} differs from expert-mask shape {ref.shape}"
            )
        spacing = spacing_of(seg_layer)
        if not np.allclose(spacing, spacing_of(ref_layer), rtol=1e-3):
            raise MedsegInputError(
                "the segmentation and the expert mask have different voxel sizes"
            )
        mask = None
        ann_layer = None
        if self.only_unannotated.isChecked():
            ann_layer = self.annotation_picker.layer()
            if ann_layer is None:
                raise MedsegInputError("choose the annotation layer (or untick 'only voxels …')")
            annotation = layer_array(ann_layer)
            if annotation.shape != ref.shape:
                raise MedsegInputError(
                    f"annotation shape {annotation.shape} differs from expert-mask shape "
                    f"{ref.shape}"
                )
            mask = np.asarray(annotation) == 0
            if not mask.any():
                raise MedsegInputError("every voxel is annotated: nothing left to score")
        names = class_names_of(seg_layer, ref_layer, ann_layer)
        return {"segmentation": seg, "reference": ref, "spacing": spacing, "mask": mask,
                "class_names": names}

    def compute(self) -> bool:
        """Compute the metrics in a worker thread and fill the table.

        Returns
        -------
        bool
            True when the computation started; False when refused (the reason is shown).
        """
        if self.is_running:
            return False
        from ..metrics import evaluate

        try:
            inputs = self._inputs()
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return False
        names = inputs.pop("class_names")
        self.compute_button.setEnabled(False)
        self.status.info("computing…")
        self.worker = run_function(
            lambda: evaluate(
                inputs["segmentation"], inputs["reference"], spacing=inputs["spacing"],
                mask=inputs["mask"], class_names=names,
            ),
            name="MedSeg metrics",
            on_return=lambda result: self._show(result, names),
            on_error=lambda exc: report_error(exc, self.status, prefix="metrics failed: "),
            on_finish=self._on_finished,
        )
        return True

    def _on_finished(self) -> None:
        self.worker = None
        self.compute_button.setEnabled(True)

    def _show(self, result: Any, class_names: list[str] | None) -> None:
        self.result = result
        self.rows = metric_rows(result, class_names)
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            item = QTableWidgetItem(row["structure"])
            if row["structure"] == "mean":
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            self.table.setItem(r, 0, item)
            for c, key in enumerate(KEYS, start=1):
                value = row[key]
                text = "–" if value is None else FORMATS[key].format(value)
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(RIGHT)
                self.table.setItem(r, c, cell)
        self.copy_button.setEnabled(True)
        scope = " (voxels not annotated)" if self.only_unannotated.isChecked() else ""
        self.status.info(f"{len(self.rows) - 1} structure(s) scored{scope}")

    def csv_text(self) -> str:
        """The table as CSV text."""
        return rows_to_csv(self.rows)

    def copy_csv(self) -> str:
        """Copy the table to the clipboard as CSV and return the text."""
        text = self.csv_text()
        QApplication.clipboard().setText(text)
        self.status.info("table copied to the clipboard")
        return text


# ----------------------------------------------------------------------------- cross-validation

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


def describe_crossval_progress(progress: Any) -> str:
    """``"fold 2/3 · train · step 40 · loss 0.412 · 95 s"`` from a ``CrossValProgress``."""
    what = "step" if progress.phase == "train" else "tile"
    text = f"fold {progress.fold + 1}/{progress.folds} · {progress.phase} · {what} {progress.step}"
    if progress.loss is not None:
        text += f" · loss {progress.loss:.3f}"
    text += f" · {progress.elapsed:.0f} s"
    if progress.message:
        text += f" — {progress.message}"
    return text


class CrossValPanel(QWidget):
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
        self.worker: Any = None
        self.result: Any = None
        self.image_picker = image_picker(napari_viewer)
        self.annotation_picker = labels_picker(
            napari_viewer, prefer=("annotation",), avoid=("segmentation", "mask", "label")
        )
        self.folds_spin = QSpinBox()
        self.folds_spin.setRange(2, 20)
        self.folds_spin.setValue(3)
        self.folds_spin.setToolTip(
            "The painted slices showing a structure are split into this many groups; each "
            "fold trains without one group and is scored on it (at least one slice per fold)"
        )
        self.form = train_config_form(TrainConfig, CROSSVAL_BASIC)
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
        self.stop_button.setEnabled(False)
        self._stop = StopSwitch(self.stop_button)
        self.copy_button = button("Copy", "Copy the result as a text table")
        self.copy_button.setEnabled(False)
        self.progress = ProgressRow()
        self.progress.setVisible(False)  # until the first run
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.table.setMinimumHeight(90)
        self.table.setVisible(False)
        self.status = StatusLabel()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = form_layout()
        form.addRow("Image", self.image_picker)
        form.addRow("Annotation", self.annotation_picker)
        form.addRow("Folds", self.folds_spin)
        layout.addLayout(form)
        layout.addWidget(self.form)
        row = QHBoxLayout()
        row.addWidget(self.run_button, 2)
        row.addWidget(self.stop_button, 1)
        row.addWidget(self.copy_button, 1)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.title)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.copy_button.clicked.connect(self.copy_text)

    @property
    def is_running(self) -> bool:
        """True while a cross-validation runs."""
        return self.worker is not None

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for widget in (self.form, self.folds_spin, self.image_picker, self.annotation_picker):
            widget.setEnabled(not running)

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
        config = CrossValConfig(folds=self.folds_spin.value(), train=self.form.config())
        config.check()
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
        stop = self._stop.arm()
        self._set_running(True)
        self.copy_button.setEnabled(False)
        self.status.info(f"cross-validating over {inputs['config'].folds} folds…")
        self.progress.setVisible(True)
        self.progress.start("finding the painted slices…")
        self.worker = run_generator(
            lambda: crossval(
                inputs["image"], inputs["annotation"], inputs["config"],
                spacing=inputs["spacing"], class_names=inputs["class_names"], stop=stop,
            ),
            name="MedSeg cross-validation",
            on_yield=self._on_progress,
            on_return=self._show,
            on_error=self._on_error,
            on_finish=self._on_finished,
            on_abort=self._on_aborted,
        )
        return True

    def stop(self) -> None:
        """End after the current training step or tile; finished folds are shown."""
        self._stop.request(self.status, "stopping…")

    def _on_progress(self, progress: Any) -> None:
        self.progress.update(progress.fraction, describe_crossval_progress(progress))

    def _on_error(self, exc: BaseException) -> None:
        self.progress.finish("failed", complete=False)
        report_error(exc, self.status, prefix="cross-validation failed: ")

    def _on_aborted(self) -> None:
        self.progress.finish("cancelled", complete=False)
        self.status.info("cross-validation cancelled")

    def _on_finished(self) -> None:
        self.worker = None
        self._stop.disarm()
        self._set_running(False)

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
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(RIGHT)
                if row[0] == "mean":
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(r, c, item)
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
