"""The Predict widget's model choice: the session's models, and model files loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QWidget

from .._common import StatusLabel, button
from .._forms import FieldEditor
from .._state import ModelEntry, ModelRegistry
from .._worker import report_error, run_function

MODEL_FILE_FILTER = "MedSeg model (*.safetensors);;All files (*)"
UNCERTAINTY_TIP = (
    "Show where the ensemble's networks disagree: the places where painting another slice "
    "helps most"
)
SINGLE_TIP = (
    "Where this network is unsure (the entropy of its probabilities); an ensemble "
    "(2 · Train · Advanced · Ensemble ≥ 2) shows where its networks disagree instead"
)


def members(config: Any) -> int:
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
    count = members(config)
    arch = config.arch if count == 1 else f"{count} × {config.arch} (ensemble)"
    if len(getattr(config, "planes", (0,))) > 1:
        arch += " on 3 planes"
    if getattr(getattr(config, "network", None), "norm_groups", 0):
        arch += " · group norm"
    return f"{arch} · {', '.join(names)} · {spacing} mm{trained}{source}"


def offer_uncertainty(editor: FieldEditor, entry: ModelEntry | None) -> None:
    """Enable the "uncertainty" setting for any model, with the tooltip of what it shows:
    an ensemble's disagreement, or a single network's doubt."""
    ensemble = entry is not None and members(entry.model.config) > 1
    editor.widget.setEnabled(entry is not None)
    editor.widget.setToolTip(UNCERTAINTY_TIP if ensemble else SINGLE_TIP)


class ModelPanel(QWidget):
    """A combo box of the registry's models and a "Load model…" button, side by side.

    The newest model is chosen when one is added. :attr:`info` (a label the widget shows
    under the row) describes the chosen model; :attr:`changed` is emitted whenever the
    choice may have changed.

    Parameters
    ----------
    registry : ModelRegistry
        The models to choose from.
    status : StatusLabel
        Where loading a model file is reported.
    """

    changed = Signal()

    def __init__(self, registry: ModelRegistry, status: StatusLabel) -> None:
        super().__init__()
        self.registry = registry
        self.status = status
        self.combo = QComboBox()
        self.combo.setPlaceholderText("(no model: train or load one)")
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(12)
        self.load_button = button("Load model…", "Read a model file (.safetensors)")
        self.info = QLabel("")
        self.info.setWordWrap(True)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.load_button)
        self.load_button.clicked.connect(self.load_model_dialog)
        self.combo.currentIndexChanged.connect(self._show_info)
        registry.changed.connect(self.refresh)

    def refresh(self) -> None:
        """List the registry's models again; a newly added one becomes the choice."""
        try:
            current = self.combo.currentText()
            names = self.registry.names()
            known = {self.combo.itemText(i) for i in range(self.combo.count())}
            new = [n for n in names if n not in known]
            self.combo.blockSignals(True)
            self.combo.clear()
            self.combo.addItems(names)
            chosen = new[-1] if new else current
            self.combo.setCurrentIndex(names.index(chosen) if chosen in names else -1)
            self.combo.blockSignals(False)
            self._show_info()
        except RuntimeError:  # widget deleted: stop listening
            self.registry.changed.disconnect(self.refresh)

    def selected_model(self) -> ModelEntry | None:
        """The chosen model entry, or None."""
        return self.registry.get(self.combo.currentText())

    def select_model(self, name: str) -> None:
        """Choose the model called ``name``."""
        index = self.combo.findText(name)
        if index < 0:
            raise KeyError(name)
        self.combo.setCurrentIndex(index)

    def _show_info(self, *_: Any) -> None:
        entry = self.selected_model()
        self.info.setText(describe_model(entry) if entry is not None else "")
        self.info.setVisible(entry is not None)
        self.changed.emit()

    def load_model_dialog(self) -> None:
        """Ask for a model file and load it."""
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", MODEL_FILE_FILTER)
        if path:
            self.load_model_file(path)

    def load_model_file(self, path: str | Path) -> Any:
        """Load a model file in a worker thread and add it to the registry."""
        from ...checkpoint import load_model

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
