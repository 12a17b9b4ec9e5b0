"""The Annotate widget's legend: structure names, their colours, the label to paint."""

from __future__ import annotations

from collections.abc import Sequence

from napari.viewer import Viewer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QLineEdit, QPushButton, QWidget

from ...colors import CLASS_NAMES_KEY, annotation_color_dict, parse_class_names
from ...io.segments import Segments, layer_features
from .._layers import LayerPicker, class_names_of

NAMES_TIP = (
    "Structure names, comma separated: the first is painted with label 2, the second with "
    "label 3 ... (label 1 is background)"
)


def _swatch(rgba: tuple[float, ...], size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    color = QColor.fromRgbF(*rgba[:3], 1.0) if rgba[3] > 0 else QColor(0, 0, 0, 0)
    pixmap.fill(color)
    return QIcon(pixmap)


class LegendPanel(QWidget):
    """One colour swatch per label: ``0`` unknown, ``1`` background, ``k + 1`` structure ``k``.

    Clicking a swatch makes it the label painted on the annotation layer. The panel also
    owns the structure-name editor (:attr:`names_edit`, shown in the widget's top form):
    editing it renames the annotation layer's structures and recolours the layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    annotation_picker : LayerPicker
        The picker of the annotation layer.
    """

    def __init__(self, viewer: Viewer, annotation_picker: LayerPicker) -> None:
        super().__init__()
        self.viewer = viewer
        self.annotation_picker = annotation_picker
        self.names_edit = QLineEdit("structure")
        self.names_edit.setToolTip(NAMES_TIP)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(6)
        self.grid.setVerticalSpacing(2)
        self.names_edit.editingFinished.connect(self._on_names_edited)

    def class_names(self) -> list[str]:
        """Structure names typed by the user (background excluded)."""
        return parse_class_names(self.names_edit.text())

    def show_names(self, names: Sequence[str]) -> None:
        """Put ``names`` into the structure-name editor."""
        self.names_edit.setText(", ".join(names))

    def refresh(self) -> None:
        """Rebuild the swatches from the annotation layer's names (or the typed ones)."""
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        layer = self.annotation_picker.layer()
        names = class_names_of(layer) or self.class_names() or ["structure"]
        colors = annotation_color_dict(len(names))
        entries = [(0, "not annotated (unknown)"), (1, "background")]
        entries += [(k + 1, name) for k, name in enumerate(names, start=1)]
        for row, (value, text) in enumerate(entries):
            swatch = QPushButton(_swatch(colors[value]), f" {value}")
            swatch.setFlat(True)
            swatch.setToolTip(f"Paint with label {value}")
            swatch.setEnabled(layer is not None)
            swatch.clicked.connect(lambda _=False, v=value: self.select_label(v))
            self.grid.addWidget(swatch, row // 2, 2 * (row % 2))
            self.grid.addWidget(QLabel(text), row // 2, 2 * (row % 2) + 1)
        self.grid.setColumnStretch(1, 1)
        self.grid.setColumnStretch(3, 1)

    def select_label(self, value: int) -> None:
        """Make ``value`` the label painted on the annotation layer (brush mode)."""
        layer = self.annotation_picker.layer()
        if layer is None:
            return
        layer.selected_label = value
        self.viewer.layers.selection.active = layer
        layer.mode = "paint" if value else "erase"

    def _on_names_edited(self) -> None:
        layer = self.annotation_picker.layer()
        names = self.class_names()
        if layer is None or not names or CLASS_NAMES_KEY not in layer.metadata:
            return
        if list(layer.metadata[CLASS_NAMES_KEY]) != names:
            layer.metadata[CLASS_NAMES_KEY] = list(names)
            layer.colormap = annotation_color_dict(len(names))
            if "name" in layer.features:  # names read from a file: hover shows the new ones
                layer.features = layer_features(Segments.of_structures(names, "annotation"))
            self.refresh()
