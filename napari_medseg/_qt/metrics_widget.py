"""Step 4 · Metrics: compare a segmentation with an expert mask, structure by structure.

Without an expert mask, the second section estimates the accuracy from the user's own
sparse annotation by k-fold cross-validation over the painted slices
(:class:`~napari_medseg._qt.crossval_panel.CrossValPanel`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from napari.viewer import Viewer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QFileDialog,
    QVBoxLayout,
    QWidget,
)

from .._atomic import atomic_write
from ..errors import MedsegError, MedsegInputError
from ..review import Review, review, volume_difference_percent
from ._common import button, fill_table, form_layout, result_table, section_title, separator
from ._job import JobControls, RunsJob
from ._layers import (
    NOT_SEGMENTATIONS,
    annotation_picker,
    class_names_of,
    labels_picker,
    layer_array,
    spacing_of,
)
from ._worker import report_error
from .crossval_panel import CrossValPanel
from .review_panel import ReviewPanel

COLUMNS = ("Structure", "Dice", "Jaccard", "SA %", "HD95 mm", "ASSD mm", "Volume mL",
           "Expert mL", "ΔV %")
KEYS = ("dice", "jaccard", "sa", "hd95_mm", "assd_mm", "volume_ml", "expert_ml",
        "volume_diff_pct")
FORMATS = {"dice": "{:.4f}", "jaccard": "{:.4f}", "sa": "{:.2f}", "hd95_mm": "{:.2f}",
           "assd_mm": "{:.2f}", "volume_ml": "{:.2f}", "expert_ml": "{:.2f}",
           "volume_diff_pct": "{:+.1f}"}
VOLUME_KEYS = ("volume_ml", "expert_ml", "volume_diff_pct")


def metric_rows(
    result: Any, class_names: list[str] | None = None, review: Review | None = None
) -> list[dict[str, Any]]:
    """Rows of the table from an :class:`~napari_medseg.metrics.EvaluationResult`.

    Returns
    -------
    list of dict
        One ``{"structure": name, "dice": ..., ...}`` per structure, then a ``"mean"`` row
        (HD95 and ASSD means are taken over the structures that have them). With a
        ``review``, whole-volume volumes in mL and their difference; the last row then sums
        the volumes ("mean / total").
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
        row.update(_volumes(review, k))
        if values.get("empty"):  # distances undefined: one side lacks the structure
            row.update({m: "empty" for m in ("hd95_mm", "assd_mm")})
        rows.append(row)
    mean: dict[str, Any] = {"structure": "mean" if review is None else "mean / total"}
    for m in KEYS:
        if m in VOLUME_KEYS:
            continue
        if m in data["mean"]:
            mean[m] = data["mean"][m]
        else:
            present = [r[m] for r in rows if isinstance(r[m], float | int)]
            mean[m] = float(np.mean(present)) if present else None
    mean.update(_total_volumes(rows, review))
    rows.append(mean)
    return rows


def _volumes(review: Review | None, k: int) -> dict[str, float | None]:
    if review is None:
        return dict.fromkeys(VOLUME_KEYS)
    seg, expert = review.segmentation_ml.get(k, 0.0), review.expert_ml.get(k, 0.0)
    return {"volume_ml": seg, "expert_ml": expert,
            "volume_diff_pct": volume_difference_percent(seg, expert)}


def _total_volumes(rows: list[dict[str, Any]], review: Review | None) -> dict[str, float | None]:
    if review is None:
        return dict.fromkeys(VOLUME_KEYS)
    seg = float(sum(r["volume_ml"] for r in rows))
    expert = float(sum(r["expert_ml"] for r in rows))
    return {"volume_ml": seg, "expert_ml": expert,
            "volume_diff_pct": volume_difference_percent(seg, expert)}


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else fmt.format(value)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:.6g}"


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text (header + rows) with full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [row["structure"]] + [_csv_cell(row[m]) for m in KEYS]
        )
    return buffer.getvalue()


class MetricsWidget(RunsJob, QWidget):
    """Dice, Jaccard, SA, HD95 and ASSD of a segmentation against an expert mask.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.rows: list[dict[str, Any]] = []
        self.segmentation_picker = labels_picker(
            napari_viewer, prefer=("segmentation",), avoid=NOT_SEGMENTATIONS
        )
        self.reference_picker = labels_picker(
            napari_viewer,
            prefer=("expert", "mask", "label", "reference", "ground"),
            avoid=("annotation", "segmentation", "preview"),
        )
        self.only_unannotated = QCheckBox("only voxels not annotated")
        self.only_unannotated.setToolTip(
            "Score only the voxels the user did not paint (as in the 3D U-Net paper)"
        )
        self.annotation_picker = annotation_picker(napari_viewer)
        self.annotation_picker.setEnabled(False)
        self.compute_button = button("Compute", "Compute the metrics (surface distances in mm)")
        self.job = JobControls("metrics", self.compute_button, progress=False)
        self.status = self.job.status
        self.copy_button = button("Copy as CSV", "Copy the table to the clipboard")
        self.copy_button.setEnabled(False)
        self.save_button = button("Save CSV…", "Save the table as a CSV file")
        self.save_button.setEnabled(False)
        self.table = result_table(COLUMNS, min_height=110)
        # the structure names stay readable; the figures scroll when the dock is narrow
        self.table.horizontalHeader().setStretchLastSection(True)

        self.review_panel = ReviewPanel(napari_viewer)
        self.crossval = CrossValPanel(napari_viewer)

        layout = QVBoxLayout(self)
        layout.addWidget(section_title("Compare with an expert mask"))
        form = form_layout()
        form.addRow("Segmentation", self.segmentation_picker)
        form.addRow("Expert mask", self.reference_picker)
        form.addRow("", self.only_unannotated)
        form.addRow("Annotation", self.annotation_picker)
        layout.addLayout(form)
        layout.addLayout(self.job.button_row(self.copy_button, self.save_button))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        layout.addWidget(self.review_panel)
        layout.addWidget(separator())
        layout.addWidget(section_title("Estimate accuracy from my annotation (no expert mask)"))
        layout.addWidget(self.crossval)

        self.only_unannotated.toggled.connect(self.annotation_picker.setEnabled)
        self.compute_button.clicked.connect(self.compute)
        self.copy_button.clicked.connect(self.copy_csv)
        self.save_button.clicked.connect(self.save_csv_dialog)

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
        layer = self.segmentation_picker.layer()

        def work() -> tuple[Any, Review]:
            result = evaluate(
                inputs["segmentation"], inputs["reference"], spacing=inputs["spacing"],
                mask=inputs["mask"], class_names=names,
            )
            found = review(inputs["segmentation"], inputs["reference"], inputs["spacing"],
                           sorted(result.classes), inputs["mask"])
            return result, found

        self.job.call(
            work, message="computing…",
            on_return=lambda pair: self._show(pair[0], names, pair[1], layer),
        )
        return True

    def _show(self, result: Any, class_names: list[str] | None, found: Review,
              layer: Any) -> None:
        self.result = result
        self.rows = metric_rows(result, class_names, found)
        if layer in self.viewer.layers:
            self.review_panel.show_review(found, layer)
        cells = [
            [row["structure"]]
            + [_cell(row[key], FORMATS[key]) for key in KEYS]
            for row in self.rows
        ]
        fill_table(self.table, cells, bold_columns=1)
        self.copy_button.setEnabled(True)
        self.save_button.setEnabled(True)
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

    def save_csv_dialog(self) -> None:
        """Ask for a file name and save the table there as CSV."""
        path, _ = QFileDialog.getSaveFileName(self, "Save metrics", "metrics.csv", "CSV (*.csv)")
        if path:
            self.save_csv(path)

    def save_csv(self, path: str | Path) -> bool:
        """Write the table to ``path`` as CSV (atomically); False when it failed (shown)."""
        if not self.rows:
            report_error(MedsegInputError("compute the metrics first"), self.status)
            return False
        try:
            with atomic_write(path, "w") as handle:
                handle.write(self.csv_text())
        except MedsegError as exc:
            report_error(exc, self.status)
            return False
        self.status.info(f"saved {Path(path).name}")
        return True
