"""DICOM series: list the series of a folder and open the ones picked, each as a layer.

A folder dropped on napari opens every series it holds (the reader cannot ask); this
widget lists them first (description, modality, number, slices, size, UID) so that only
the series wanted is read. Listing and reading run off the GUI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.viewer import Viewer
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QLabel, QVBoxLayout, QWidget

from .._napari.reader import layer_data_from_volume, series_layer_name
from ..io import DicomSeriesInfo, list_dicom_series, read_series
from ._common import button, fill_table, result_table, section_title
from ._job import JobControls, RunsJob

COLUMNS = ("Description", "Modality", "Number", "Slices", "Rows × cols", "Series UID")


class DicomSeriesWidget(RunsJob, QWidget):
    """List the DICOM series of a folder; open the selected ones as image layers.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer the layers are added to.
    """

    def __init__(self, napari_viewer: Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.folder: Path | None = None
        self.series: list[DicomSeriesInfo] = []
        self.choose_button = button("Choose folder…", "a folder of DICOM files")
        self.folder_label = QLabel("no folder chosen")
        self.folder_label.setWordWrap(True)
        self.table = result_table(COLUMNS, min_height=120)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.open_button = button(
            "Open selected series", "read each selected series into an image layer"
        )
        self.job = JobControls(
            "DICOM", self.open_button, progress=False,
            controls=[self.choose_button, self.table],
        )  # fmt: skip
        layout = QVBoxLayout(self)
        layout.addWidget(section_title("DICOM series"))
        layout.addWidget(self.choose_button)
        layout.addWidget(self.folder_label)
        layout.addWidget(self.table)
        layout.addLayout(self.job.button_row())
        layout.addWidget(self.job.status)
        layout.addStretch(1)
        self.choose_button.clicked.connect(self._choose_folder)
        self.open_button.clicked.connect(self.open_selected)
        self.table.itemDoubleClicked.connect(lambda _item: self.open_selected())

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of DICOM files")
        if path:
            self.set_folder(path)

    def set_folder(self, folder: str | Path) -> Any:
        """List the series of ``folder`` (in a worker thread); returns the worker."""
        chosen = Path(folder).expanduser()
        self.folder, self.series = chosen, []
        self.folder_label.setText(str(chosen))
        fill_table(self.table, [])
        return self.job.call(
            lambda: list_dicom_series(chosen),
            message="looking for DICOM series…",
            on_return=self._show_series,
        )

    def _show_series(self, series: list[DicomSeriesInfo]) -> None:
        self.series = list(series)
        fill_table(self.table, [_row(info) for info in self.series])
        if not self.series:
            self.job.status.error(f"no DICOM series in {self.folder}")
            return
        if len(self.series) == 1:
            self.table.selectRow(0)
        self.job.status.info(
            f"{len(self.series)} series: select one (or several) and open it"
        )

    def selected_series(self) -> list[DicomSeriesInfo]:
        """The series of the selected rows, in table order."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.series[row] for row in rows if row < len(self.series)]

    def open_selected(self) -> Any:
        """Read the selected series (in a worker thread) and add them; returns the worker."""
        chosen, folder = self.selected_series(), self.folder
        if not chosen or folder is None:
            self.job.status.error("choose a folder and select a series first")
            return None

        def read() -> list[Any]:
            return [
                layer_data_from_volume(read_series(info), name=series_layer_name(folder, info))
                for info in chosen
            ]

        return self.job.call(read, message="reading DICOM…", on_return=self._add_layers)

    def _add_layers(self, layers: list[Any]) -> None:
        for data, kwargs, layer_type in layers:
            getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
        names = ", ".join(kwargs.get("name", "") for _, kwargs, _ in layers)
        self.job.status.info(f"opened {names}")


def _row(info: DicomSeriesInfo) -> list[str]:
    return [
        info.description or "–",
        info.modality or "–",
        info.series_number or "–",
        str(info.n_slices),
        f"{info.rows} × {info.columns}",
        info.uid,
    ]
