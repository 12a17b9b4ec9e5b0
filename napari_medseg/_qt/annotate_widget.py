"""Step 1 · Annotate: create a sparse-annotation layer and help painting it.

Conventions (see :mod:`napari_medseg.annotation`): ``0`` not annotated, ``1`` background,
``k + 1`` structure ``k``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from napari.viewer import Viewer
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..annotation import (
    BACKGROUND,
    UNKNOWN,
    annotated_slices,
    fill_slice_background,
    mark_outside_box_background,
)
from ..autosave import AutosaveStore
from ..errors import MedsegError, MedsegInputError
from ._autosave import (
    autosave_key,
    describe_entry,
    find_autosave,
    image_source_path,
    save_snapshot,
)
from ._colors import annotation_color_dict, parse_class_names
from ._common import StatusLabel, button, form_layout, section_title, separator
from ._layers import (
    CLASS_NAMES_KEY,
    LayerPicker,
    axis_name,
    class_names_of,
    current_slice,
    geometry_kwargs,
    image_picker,
    labels_picker,
    layer_array,
    sliced_axis,
    unique_layer_name,
)
from ._worker import report_error, run_function

#: Edits touching more voxels than this are applied without undo history (memory).
UNDO_LIMIT = 2_000_000
#: Delay (ms) after the last paint/data event before the annotated-slice list is updated.
SLICE_LIST_DELAY_MS = 250
MAX_LISTED_SLICES = 24
#: Above this many voxels the slice list is computed in a worker thread.
SYNC_SUMMARY_VOXELS = 8_000_000
#: Autosave period (ms) while the annotation keeps changing.
AUTOSAVE_INTERVAL_MS = 30_000
#: Autosave this long (ms) after the last brush stroke.
AUTOSAVE_AFTER_PAINT_MS = 3_000
BANNER_STYLE = (
    "QFrame#medseg_restore_banner { border: 1px solid #d9a400; border-radius: 4px; "
    "background-color: rgba(217, 164, 0, 40); }"
)


def _swatch(rgba: tuple[float, ...], size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    color = QColor.fromRgbF(*rgba[:3], 1.0) if rgba[3] > 0 else QColor(0, 0, 0, 0)
    pixmap.fill(color)
    return QIcon(pixmap)


def format_slice_list(slices: list[int], limit: int = MAX_LISTED_SLICES) -> str:
    """``[12, 14, 16]`` -> ``"12, 14, 16"``; long lists are shortened; ``"none"`` if empty."""
    if not slices:
        return "none"
    shown = ", ".join(str(s) for s in slices[:limit])
    if len(slices) > limit:
        shown += f", … ({len(slices)} slices)"
    return shown


def painted_slices(annotation: np.ndarray, axis: int) -> list[int]:
    """Slices along ``axis`` painted *in that plane*.

    A slice counts when it holds a 2 × 2 patch of annotated voxels. A slice painted in
    another plane crosses this one as a 1-voxel-thin line, so it does not make every slice
    along ``axis`` look annotated. For 2D arrays this is
    :func:`napari_medseg.annotation.annotated_slices`.
    """
    annotation = np.asarray(annotation)
    if annotation.ndim != 3:
        return annotated_slices(annotation, axis)
    m = np.moveaxis(annotation > 0, axis, 0)
    if min(m.shape[1:]) < 2:
        return annotated_slices(annotation, axis)
    pairs = m[:, :-1, :] & m[:, 1:, :]
    blocks = pairs[:, :, :-1] & pairs[:, :, 1:]
    return [int(i) for i in np.flatnonzero(blocks.any(axis=(1, 2)))]


def annotation_summary(annotation: np.ndarray, class_names: list[str]) -> str:
    """Text of the "Annotated slices" box: painted slices per axis and voxel counts."""
    annotation = np.asarray(annotation)
    lines = [
        f"axis {axis} ({axis_name(axis, annotation.ndim)}): "
        f"{format_slice_list(painted_slices(annotation, axis))}"
        for axis in range(annotation.ndim)
    ]
    counts = np.bincount(annotation.ravel().astype(np.intp, copy=False), minlength=2)
    names = {BACKGROUND: "background"}
    names.update({k + 1: name for k, name in enumerate(class_names, start=1)})
    parts = [
        f"{names.get(value, f'label {value}')} {int(n):,}"
        for value, n in enumerate(counts)
        if value != UNKNOWN and n
    ]
    unknown = 100.0 * counts[UNKNOWN] / max(annotation.size, 1)
    lines.append(
        "painted voxels: " + (" · ".join(parts) if parts else "none")
        + f" ({unknown:.1f} % not annotated)"
    )
    return "\n".join(lines)


def apply_edit(layer: Labels, region: tuple[slice | int, ...], after: np.ndarray) -> int:
    """Write ``after`` into ``layer.data[region]``, with undo history when small enough.

    Parameters
    ----------
    layer : napari.layers.Labels
        The annotation layer.
    region : tuple of slice or int
        Basic index of the edited block (an int drops that axis from ``after``).
    after : np.ndarray
        New values of the block.

    Returns
    -------
    int
        Number of voxels that changed.
    """
    data = layer.data
    before = np.asarray(data[region])
    changed = np.nonzero(after != before)
    count = int(changed[0].size)
    if count == 0:
        return 0
    if count <= UNDO_LIMIT:
        full: list[np.ndarray] = []
        k = 0
        for axis, index in enumerate(region):
            if isinstance(index, int | np.integer):
                full.append(np.full(count, int(index), dtype=np.intp))
            else:
                start = index.indices(data.shape[axis])[0]
                full.append(changed[k] + start)
                k += 1
        layer.data_setitem(tuple(full), after[changed])  # undoable, emits `paint`
    else:
        data[region] = after
        layer.refresh()
        layer.events.paint(value=[])
    return count


class AnnotateWidget(QWidget):
    """Create the annotation layer, show what each label means, fill/ROI helpers.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._watched: Labels | None = None
        self._summary_worker: object = None
        self._summary_pending = False
        # autosave / crash recovery
        self.autosave_store = AutosaveStore()
        self.autosave_worker: Any = None
        self.autosave_path: Any = None
        self._autosave_dirty = True
        self._autosave_again = False
        self._autosave_error_shown = False
        self._offer: tuple[Image, str, Any] | None = None
        self._check_generation = 0
        self.check_worker: Any = None
        self.restore_worker: Any = None
        self._restoring = False

        self.image_picker = image_picker(napari_viewer)
        self.class_names_edit = QLineEdit("structure")
        self.class_names_edit.setToolTip(
            "Structure names, comma separated: the first is painted with label 2, the "
            "second with label 3 ... (label 1 is background)"
        )
        self.create_button = button(
            "Create annotation layer",
            "Add an empty Labels layer on the image's grid (same spacing), ready to paint",
        )
        self.annotation_picker = labels_picker(
            napari_viewer, prefer=("annotation",), avoid=("segmentation", "mask", "label")
        )
        self.legend = QWidget()
        self.legend_layout = QGridLayout(self.legend)
        self.legend_layout.setContentsMargins(0, 0, 0, 0)
        self.legend_layout.setHorizontalSpacing(6)
        self.legend_layout.setVerticalSpacing(2)
        self.fill_button = button(
            "Fill rest of this slice as background",
            "Every not-annotated voxel of the slice shown in the 2D view becomes background "
            "(label 1). Works on any of the three planes.",
        )
        self.slices_label = QLabel("")
        self.slices_label.setWordWrap(True)

        self.shapes_picker = LayerPicker(
            napari_viewer, Shapes, prefer=("roi", "box"), placeholder="(no shapes layer)"
        )
        self.add_box_button = button(
            "Draw box…", "Add a Shapes layer in rectangle mode: draw the region of interest"
        )
        self.from_spin = QSpinBox()
        self.to_spin = QSpinBox()
        self.from_here = button("current", "Use the slice shown now")
        self.to_here = button("current", "Use the slice shown now")
        self.roi_axis_label = QLabel("")
        self.roi_button = button(
            "Mark everything outside the box as background",
            "Voxels outside the rectangle (in-plane) and outside the slice range (across) that "
            "are not annotated become background",
        )
        self.autosave_check = QCheckBox("Autosave")
        self.autosave_check.setChecked(True)
        self.autosave_check.setToolTip(
            "Save a copy of the annotation every 30 s and after painting stops, to "
            f"{self.autosave_store.root}, so that it can be restored after a crash"
        )
        self.autosave_label = QLabel("")
        self.autosave_label.setWordWrap(True)
        self.restore_banner = QFrame()
        self.restore_banner.setObjectName("medseg_restore_banner")
        self.restore_banner.setStyleSheet(BANNER_STYLE)
        self.restore_label = QLabel("")
        self.restore_label.setWordWrap(True)
        self.restore_button = button(
            "Restore autosaved annotation",
            "Put the autosaved annotation back into the annotation layer (created if needed)",
        )
        self.discard_button = button("Discard", "Delete the autosave of this image")
        self.restore_banner.setVisible(False)
        self.status = StatusLabel()
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setInterval(AUTOSAVE_INTERVAL_MS)
        self._autosave_timer.timeout.connect(self.autosave_now)
        self._autosave_soon = QTimer(self)
        self._autosave_soon.setSingleShot(True)
        self._autosave_soon.setInterval(AUTOSAVE_AFTER_PAINT_MS)
        self._autosave_soon.timeout.connect(self.autosave_now)
        self._slices_timer = QTimer(self)
        self._slices_timer.setSingleShot(True)
        self._slices_timer.setInterval(SLICE_LIST_DELAY_MS)
        self._slices_timer.timeout.connect(self.update_slice_list)
        self._build_layout()

        self.create_button.clicked.connect(self.create_annotation_layer)
        self.class_names_edit.editingFinished.connect(self._on_class_names_edited)
        self.annotation_picker.layer_changed.connect(self._watch)
        self.fill_button.clicked.connect(self.fill_current_slice)
        self.add_box_button.clicked.connect(self.add_box_layer)
        self.from_here.clicked.connect(lambda: self._set_to_current(self.from_spin))
        self.to_here.clicked.connect(lambda: self._set_to_current(self.to_spin))
        self.roi_button.clicked.connect(self.mark_outside_box)
        self.autosave_check.toggled.connect(self._on_autosave_toggled)
        self.restore_button.clicked.connect(self.restore_autosave)
        self.discard_button.clicked.connect(self.discard_autosave)
        self.image_picker.layer_changed.connect(lambda _layer: self.check_autosave())
        self.annotation_picker.layer_changed.connect(self._recheck_offer)
        napari_viewer.dims.events.order.connect(self._update_roi_axis)
        napari_viewer.dims.events.ndisplay.connect(self._update_roi_axis)
        self._watch(self.annotation_picker.layer())
        self._autosave_timer.start()
        self.check_autosave()

    # -- layout -----------------------------------------------------------------------------
    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        hint = QLabel(
            "Paint a few slices (any plane): <b>1</b> = background, <b>2, 3 …</b> = "
            "structures, unpainted = unknown."
        )
        hint.setWordWrap(True)
        layout.addWidget(hint)
        form = form_layout()
        form.addRow("Image", self.image_picker)
        form.addRow("Structures", self.class_names_edit)
        layout.addLayout(form)
        layout.addWidget(self.create_button)
        banner = QVBoxLayout(self.restore_banner)
        banner.setContentsMargins(6, 6, 6, 6)
        banner.addWidget(self.restore_label)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.restore_button, 3)
        banner_row.addWidget(self.discard_button, 1)
        banner.addLayout(banner_row)
        layout.addWidget(self.restore_banner)
        layout.addWidget(separator())
        form2 = form_layout()
        form2.addRow("Annotation", self.annotation_picker)
        autosave_row = QHBoxLayout()
        autosave_row.addWidget(self.autosave_check)
        autosave_row.addWidget(self.autosave_label, 1)
        form2.addRow("", autosave_row)
        layout.addLayout(form2)
        layout.addWidget(self.legend)
        layout.addWidget(self.fill_button)
        layout.addWidget(section_title("Annotated slices"))
        layout.addWidget(self.slices_label)
        layout.addWidget(separator())
        layout.addWidget(section_title("Region of interest"))
        roi_form = form_layout()
        shapes_row = QHBoxLayout()
        shapes_row.addWidget(self.shapes_picker, 1)
        shapes_row.addWidget(self.add_box_button)
        roi_form.addRow("Box", shapes_row)
        for label, spin, here in (
            ("From slice", self.from_spin, self.from_here),
            ("To slice", self.to_spin, self.to_here),
        ):
            row = QHBoxLayout()
            spin.setRange(0, 0)
            row.addWidget(spin, 1)
            row.addWidget(here)
            roi_form.addRow(label, row)
        layout.addLayout(roi_form)
        layout.addWidget(self.roi_axis_label)
        layout.addWidget(self.roi_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- annotation layer -------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """Structure names typed by the user (background excluded)."""
        return parse_class_names(self.class_names_edit.text())

    def create_annotation_layer(self) -> Labels | None:
        """Add an empty annotation layer on the chosen image's grid and get it ready to paint.

        Returns
        -------
        napari.layers.Labels or None
            The new layer, or None (with a message) when it cannot be made.
        """
        try:
            image = self.image_picker.layer()
            if image is None:
                raise MedsegInputError(
                    "choose an image layer first (open a volume, or File ▸ Open Sample ▸ MedSeg)"
                )
            names = self.class_names()
            if not names:
                raise MedsegInputError("give at least one structure name")
            if len(names) > 250:
                raise MedsegInputError("at most 250 structures")
            if getattr(image, "rgb", False):
                raise MedsegInputError(f"'{image.name}' is an RGB image; use a grey-level volume")
            shape = layer_array(image).shape
            layer = self.viewer.add_labels(
                np.zeros(shape, dtype=np.uint8),
                name=unique_layer_name(self.viewer, f"{image.name} annotation"),
                colormap=annotation_color_dict(len(names)),
                opacity=0.6,
                metadata={CLASS_NAMES_KEY: list(names), "medseg_image": image.name},
                **geometry_kwargs(image),
            )
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return None
        layer.selected_label = 2
        layer.brush_size = max(3, min(20, min(shape[-2:]) // 20))
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.annotation_picker.set_layer(layer)
        self.status.info(
            f"'{layer.name}' ready: painting label 2 ({names[0]}). Press 1 in the layer "
            "controls' label box (or click a legend entry) to paint background."
        )
        if not self._restoring and (self._offer is None or self._offer[0] is not image):
            self.check_autosave()  # an autosave of this image may be waiting
        return layer

    def _on_class_names_edited(self) -> None:
        layer = self.annotation_picker.layer()
        names = self.class_names()
        if layer is None or not names or CLASS_NAMES_KEY not in layer.metadata:
            return
        if list(layer.metadata[CLASS_NAMES_KEY]) != names:
            layer.metadata[CLASS_NAMES_KEY] = list(names)
            layer.colormap = annotation_color_dict(len(names))
            self._update_legend()

    def _watch(self, layer: Layer | None) -> None:
        """Follow the edits of the chosen annotation layer (throttled slice-list update)."""
        if self._watched is not None:
            for emitter in self._watched_emitters(self._watched):
                emitter.disconnect(self._schedule_slice_list)
            self._watched.events.paint.disconnect(self._on_annotation_painted)
            self._watched.events.data.disconnect(self._on_annotation_painted)
            self._watched.events.set_data.disconnect(self._on_annotation_refreshed)
        self._watched = layer if isinstance(layer, Labels) else None
        self._autosave_dirty = True
        if self._watched is not None:
            for emitter in self._watched_emitters(self._watched):
                emitter.connect(self._schedule_slice_list)
            self._watched.events.paint.connect(self._on_annotation_painted)
            self._watched.events.data.connect(self._on_annotation_painted)
            self._watched.events.set_data.connect(self._on_annotation_refreshed)
            names = class_names_of(self._watched)
            if names:
                self.class_names_edit.setText(", ".join(names))
        self._update_legend()
        self.update_slice_list()
        self._update_roi_axis()

    @staticmethod
    def _watched_emitters(layer: Labels) -> tuple:
        # paint: end of a brush stroke / fill; data: data replaced;
        # set_data: full refresh (after undo / redo, and when slicing)
        return (layer.events.paint, layer.events.data, layer.events.set_data)

    def _schedule_slice_list(self, event: object = None) -> None:
        self._slices_timer.start()

    # -- legend -----------------------------------------------------------------------------
    def _update_legend(self) -> None:
        while self.legend_layout.count():
            item = self.legend_layout.takeAt(0)
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
            self.legend_layout.addWidget(swatch, row // 2, 2 * (row % 2))
            self.legend_layout.addWidget(QLabel(text), row // 2, 2 * (row % 2) + 1)
        self.legend_layout.setColumnStretch(1, 1)
        self.legend_layout.setColumnStretch(3, 1)

    def select_label(self, value: int) -> None:
        """Make ``value`` the label painted on the annotation layer (brush mode)."""
        layer = self.annotation_picker.layer()
        if layer is None:
            return
        layer.selected_label = value
        self.viewer.layers.selection.active = layer
        layer.mode = "paint" if value else "erase"

    # -- slice list -------------------------------------------------------------------------
    def slice_lists(self) -> dict[int, list[int]]:
        """Slices painted in each plane of the chosen annotation layer, per axis."""
        layer = self.annotation_picker.layer()
        if layer is None:
            return {}
        data = layer_array(layer)
        return {axis: painted_slices(data, axis) for axis in range(data.ndim)}

    def update_slice_list(self) -> None:
        """Refresh the "annotated slices" text (called throttled after paint events).

        Small volumes are summarised at once; large ones in a worker thread, on a copy.
        """
        layer = self.annotation_picker.layer()
        if layer is None:
            self.slices_label.setText("no annotation layer")
            return
        names = class_names_of(layer) or []
        data = layer_array(layer)
        if data.size <= SYNC_SUMMARY_VOXELS:
            self.slices_label.setText(annotation_summary(data, names))
            return
        if self._summary_worker is not None:
            self._summary_pending = True
            return
        snapshot = np.array(data, copy=True)
        self._summary_pending = False

        def done() -> None:
            self._summary_worker = None
            if self._summary_pending:
                self.update_slice_list()

        self._summary_worker = run_function(
            lambda: annotation_summary(snapshot, names),
            name="MedSeg annotation summary",
            on_return=self.slices_label.setText,
            on_error=lambda exc: report_error(exc, self.status),
            on_finish=done,
        )

    # -- fill slice -------------------------------------------------------------------------
    def _annotation_or_raise(self) -> Labels:
        layer = self.annotation_picker.layer()
        if layer is None:
            raise MedsegInputError("create or choose an annotation layer first")
        return layer

    def fill_current_slice(self) -> int:
        """Mark the unannotated voxels of the shown slice as background.

        Returns
        -------
        int
            Number of voxels changed (0 also when refused, with a message).
        """
        try:
            layer = self._annotation_or_raise()
            axis, index = current_slice(self.viewer, layer)
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return 0
        region: list[slice | int] = [slice(None)] * layer.ndim
        region[axis] = index
        after = np.array(layer.data[tuple(region)], copy=True)
        changed = fill_slice_background(after[np.newaxis], 0, 0)
        where = f"{axis_name(axis, layer.ndim)} = {index}"
        if changed == 0:
            self.status.info(f"slice {where} is already fully annotated")
            return 0
        apply_edit(layer, tuple(region), after)
        self.update_slice_list()
        self.status.info(f"slice {where}: {changed} voxels marked as background")
        return changed

    # -- region of interest -----------------------------------------------------------------
    def add_box_layer(self) -> Shapes | None:
        """Add a Shapes layer (in rectangle mode) on the annotation/image grid."""
        reference = self.annotation_picker.layer() or self.image_picker.layer()
        if reference is None:
            report_error(MedsegInputError("choose an image layer first"), self.status)
            return None
        kwargs = geometry_kwargs(reference)
        kwargs.pop("units", None)
        shapes = self.viewer.add_shapes(
            name=unique_layer_name(self.viewer, "ROI box"),
            ndim=reference.ndim,
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            **kwargs,
        )
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        self.shapes_picker.set_layer(shapes)
        self.status.info("draw a rectangle around the structure on the shown slice")
        return shapes

    def _update_roi_axis(self, event: object = None) -> None:
        try:
            self._show_roi_axis()
        except RuntimeError:  # the widget was deleted: stop following the viewer
            self.viewer.dims.events.order.disconnect(self._update_roi_axis)
            self.viewer.dims.events.ndisplay.disconnect(self._update_roi_axis)

    def _show_roi_axis(self) -> None:
        layer = self.annotation_picker.layer() or self.image_picker.layer()
        try:
            if layer is None:
                raise MedsegInputError("")
            axis = sliced_axis(self.viewer, layer)
        except MedsegInputError:
            self.roi_axis_label.setText("Slice range: along the axis the 2D view scrolls through")
            return
        size = layer_array(layer).shape[axis]
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, size - 1)
        if self.to_spin.value() == 0 and self.from_spin.value() == 0:
            self.to_spin.setValue(size - 1)
        self.roi_axis_label.setText(
            f"Slice range along {axis_name(axis, layer.ndim)} (axis {axis}), inclusive"
        )

    def _set_to_current(self, spin: QSpinBox) -> None:
        layer = self.annotation_picker.layer() or self.image_picker.layer()
        try:
            if layer is None:
                raise MedsegInputError("choose an annotation layer first")
            self._update_roi_axis()
            _, index = current_slice(self.viewer, layer)
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return
        spin.setValue(index)

    def roi_box(self) -> list[tuple[int, int]]:
        """The box (half-open voxel ranges per axis of the annotation) from the drawn shape.

        The rectangle gives the in-plane ranges (voxels whose centre lies inside it); the
        two spin boxes give the range across, along the axis the rectangle was drawn on.
        """
        annotation = self._annotation_or_raise()
        shapes = self.shapes_picker.layer()
        if shapes is None or len(shapes.data) == 0:
            raise MedsegInputError("draw a rectangle on a Shapes layer first (Draw box…)")
        chosen = sorted(shapes.selected_data)
        vertices = np.asarray(shapes.data[chosen[-1] if chosen else -1], dtype=float)
        world = np.array([shapes.data_to_world(v) for v in vertices])
        if world.shape[1] != annotation.ndim:
            raise MedsegInputError(
                f"the box has {world.shape[1]} dimensions, the annotation {annotation.ndim}"
            )
        points = np.array([annotation.world_to_data(w) for w in world])
        shape = layer_array(annotation).shape
        flat = [a for a in range(annotation.ndim) if np.ptp(points[:, a]) < 0.5]
        across = flat[0] if len(flat) == 1 else sliced_axis(self.viewer, annotation)
        box: list[tuple[int, int]] = []
        for axis in range(annotation.ndim):
            if axis == across:
                low, high = sorted((self.from_spin.value(), self.to_spin.value()))
                box.append((max(0, low), min(shape[axis], high + 1)))
            else:
                low = int(np.ceil(points[:, axis].min() - 1e-6))
                high = int(np.floor(points[:, axis].max() + 1e-6)) + 1
                box.append((max(0, low), min(shape[axis], high)))
        if any(b <= a for a, b in box):
            raise MedsegInputError("the box does not overlap the annotation")
        return box

    def mark_outside_box(self) -> int:
        """Mark every unannotated voxel outside the ROI box as background.

        Returns
        -------
        int
            Number of voxels changed (0 when refused, with a message).
        """
        try:
            layer = self._annotation_or_raise()
            box = self.roi_box()
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return 0
        after = np.array(layer.data, copy=True)
        changed = mark_outside_box_background(after, box)
        if changed:
            apply_edit(layer, tuple(slice(None) for _ in range(layer.ndim)), after)
        self.update_slice_list()
        ranges = ", ".join(
            f"{axis_name(a, layer.ndim)} {lo}–{hi - 1}" for a, (lo, hi) in enumerate(box)
        )
        undo = "" if changed <= UNDO_LIMIT else " (too large to undo)"
        self.status.info(f"{changed} voxels outside the box ({ranges}) marked as background{undo}")
        return changed

    # -- autosave / crash recovery ----------------------------------------------------------
    def _on_autosave_toggled(self, on: bool) -> None:
        if on:
            self._autosave_dirty = True
            self._autosave_timer.start()
            self.autosave_label.setText("")
        else:
            self._autosave_timer.stop()
            self._autosave_soon.stop()
            self.autosave_label.setText("off: a crash loses the painting since the last save")

    def _on_annotation_painted(self, event: object = None) -> None:
        """A brush stroke ended (or the data was replaced): autosave a little later."""
        self._autosave_dirty = True
        if self.autosave_check.isChecked():
            self._autosave_soon.start()

    def _on_annotation_refreshed(self, event: object = None) -> None:
        # undo/redo (and slicing) only refresh the layer: leave it to the periodic save
        self._autosave_dirty = True

    def _image_for(self, annotation: Labels) -> Image | None:
        """The image layer ``annotation`` was made for (same shape), or None."""
        shape = layer_array(annotation).shape
        name = annotation.metadata.get("medseg_image")
        candidates = []
        if name and name in self.viewer.layers:
            candidates.append(self.viewer.layers[name])
        candidates.append(self.image_picker.layer())
        for image in candidates:
            if isinstance(image, Image) and layer_array(image).shape == shape:
                return image
        return None

    def autosave_now(self) -> Any:
        """Autosave the annotation layer when it changed (the timers' slot).

        The annotation is copied here, on the GUI thread, and written in a worker thread.
        Nothing is written while a restore of the same image is still on offer (the
        autosave of the earlier session is kept until the user restores or discards it).

        Returns
        -------
        FunctionWorker or None
            The worker writing the autosave, or None when nothing was to be saved.
        """
        if not self.autosave_check.isChecked():
            return None
        annotation = self.annotation_picker.layer()
        if annotation is None:
            return None
        image = self._image_for(annotation)
        if image is None or getattr(image, "rgb", False):
            return None
        if self._offer is not None and self._offer[0] is image:
            self.autosave_label.setText("paused until the autosave above is restored or discarded")
            return None
        if self.autosave_worker is not None:
            self._autosave_again = True
            return None
        if not self._autosave_dirty:
            return None
        snapshot = np.array(layer_array(annotation), copy=True)
        self._autosave_dirty = False
        self._autosave_again = False
        store = self.autosave_store
        path, image_data = image_source_path(image), layer_array(image)
        names = class_names_of(annotation) or []
        spacing = tuple(float(s) for s in annotation.scale)
        image_name = image.name

        def save() -> Any:
            return save_snapshot(
                store, autosave_key(path, image_data), snapshot,
                spacing=spacing, class_names=names, image_name=image_name,
            )

        self.autosave_worker = run_function(
            save,
            name="MedSeg autosave",
            on_return=self._on_autosaved,
            on_error=self._on_autosave_error,
            on_finish=self._on_autosave_finished,
        )
        return self.autosave_worker

    def _on_autosaved(self, path: Any) -> None:
        if path is None:
            return
        self.autosave_path = path
        self._autosave_error_shown = False
        self.autosave_label.setText(f"autosaved {time.strftime('%H:%M:%S')}")
        self.autosave_label.setToolTip(str(path))

    def _on_autosave_error(self, exc: BaseException) -> None:
        self._autosave_dirty = True  # try again at the next tick
        self.autosave_label.setText("autosave failed (see the message below)")
        if not self._autosave_error_shown:
            self._autosave_error_shown = True
            report_error(exc, self.status, prefix="autosave failed: ")

    def _on_autosave_finished(self) -> None:
        self.autosave_worker = None
        if self._autosave_again and self.autosave_check.isChecked():
            self._autosave_soon.start()

    def check_autosave(self) -> Any:
        """Look (in a worker thread) for an autosave of the chosen image; offer it back.

        Returns
        -------
        FunctionWorker or None
            The worker looking, or None when there is no image.
        """
        self._check_generation += 1
        generation = self._check_generation
        image = self.image_picker.layer()
        if image is None or getattr(image, "rgb", False):
            self._show_offer(None)
            return None
        if self._offer is not None and self._offer[0] is not image:
            self._show_offer(None)
        store, path, data = self.autosave_store, image_source_path(image), layer_array(image)
        current = self._annotation_layer_of(image)
        # read, not copied, in the worker: only compared, to hide an offer of what is shown
        shown = layer_array(current) if current is not None else None

        def found(result: tuple[str, Any]) -> None:
            if generation != self._check_generation or image not in self.viewer.layers:
                return
            key, entry = result
            self._show_offer((image, key, entry) if entry is not None else None)

        def failed(exc: BaseException) -> None:
            report_error(exc, self.status, prefix="could not look for an autosave: ")

        def done() -> None:
            self.check_worker = None

        self.check_worker = run_function(
            lambda: find_autosave(store, path, data, shown),
            name="MedSeg find autosave",
            on_return=found,
            on_error=failed,
            on_finish=done,
        )
        return self.check_worker

    def _recheck_offer(self, layer: object = None) -> None:
        """Another annotation layer was chosen: hide the offer if it holds the autosave."""
        if self._offer is not None and not self._restoring:
            self.check_autosave()

    def _show_offer(self, offer: tuple[Image, str, Any] | None) -> None:
        self._offer = offer
        if offer is None:
            self.restore_banner.setVisible(False)
            return
        image, _, entry = offer
        self.restore_button.setText(describe_entry(entry))
        self.restore_button.setToolTip(f"{entry.describe()}\n{entry.path}")
        names = ", ".join(entry.class_names) if entry.class_names else "no structure names"
        self.restore_label.setText(
            f"An earlier session left an autosaved annotation of '{image.name}' "
            f"({names}). Autosave of this image waits until you restore or discard it."
        )
        self.restore_banner.setVisible(True)

    @property
    def restore_offered(self) -> bool:
        """True while an autosaved annotation is offered back."""
        return self._offer is not None

    def restore_autosave(self) -> Any:
        """Read the offered autosave (worker thread) and put it into the annotation layer.

        The annotation layer of the image is created when there is none. Replacing the
        data is undoable when small enough (see :data:`UNDO_LIMIT`).

        Returns
        -------
        FunctionWorker or None
            The worker reading the file, or None when nothing is offered.
        """
        if self._offer is None or self.restore_worker is not None:
            return None
        image, key, entry = self._offer
        store, shape = self.autosave_store, layer_array(image).shape
        self.restore_button.setEnabled(False)

        def loaded(array: np.ndarray) -> None:
            self._fill_restored(image, key, entry, array)

        def failed(exc: BaseException) -> None:
            report_error(exc, self.status, prefix="could not restore the autosave: ")

        def done() -> None:
            self.restore_worker = None
            self.restore_button.setEnabled(True)

        self.restore_worker = run_function(
            lambda: store.load(entry, expected_shape=shape),
            name="MedSeg restore autosave",
            on_return=loaded,
            on_error=failed,
            on_finish=done,
        )
        return self.restore_worker

    def _annotation_layer_of(self, image: Image) -> Labels | None:
        """The annotation layer painted on ``image``: the chosen one when it fits."""
        shape = layer_array(image).shape
        chosen = self.annotation_picker.layer()
        if isinstance(chosen, Labels) and layer_array(chosen).shape == shape:
            return chosen
        for layer in reversed(list(self.viewer.layers)):
            if (
                isinstance(layer, Labels)
                and layer.metadata.get("medseg_image") == image.name
                and layer_array(layer).shape == shape
            ):
                return layer
        return None

    def _fill_restored(self, image: Image, key: str, entry: Any, array: np.ndarray) -> None:
        if image not in self.viewer.layers:
            report_error(MedsegInputError(f"'{image.name}' was closed"), self.status)
            return
        layer = self._annotation_layer_of(image)
        if layer is None:
            if entry.class_names:
                self.class_names_edit.setText(", ".join(entry.class_names))
            self.image_picker.set_layer(image)
            self._restoring = True  # keep create_annotation_layer from offering it again
            try:
                layer = self.create_annotation_layer()
            finally:
                self._restoring = False
            if layer is None:
                return
        if np.asarray(array).max(initial=0) > np.iinfo(layer.data.dtype).max:
            layer.data = np.asarray(array)
        else:
            apply_edit(layer, tuple(slice(None) for _ in range(layer.ndim)),
                       np.asarray(array).astype(layer.data.dtype, copy=False))
        names = list(entry.class_names)
        if names and class_names_of(layer) != names:  # the names painted with this data
            layer.metadata[CLASS_NAMES_KEY] = names
            layer.colormap = annotation_color_dict(len(names))
        self._check_generation += 1  # a look started before this must not offer it again
        self.annotation_picker.set_layer(layer)
        if names:
            self.class_names_edit.setText(", ".join(names))
            self._update_legend()
        self._show_offer(None)
        self._autosave_dirty = True
        self.update_slice_list()
        self.status.info(
            f"restored {entry.annotated_voxels:,} annotated voxels into '{layer.name}' "
            f"(autosave of {entry.saved_at:%H:%M})"
        )

    def discard_autosave(self) -> None:
        """Delete the offered autosave; autosaving this image starts again."""
        if self._offer is None:
            return
        image, key, _ = self._offer
        try:
            self.autosave_store.discard(key)
        except (OSError, MedsegError) as exc:
            report_error(exc, self.status, prefix="could not discard the autosave: ")
            return
        self._check_generation += 1
        self._show_offer(None)
        self._autosave_dirty = True
        self.status.info(f"autosave of '{image.name}' discarded")


__all__ = ["AnnotateWidget", "apply_edit", "format_slice_list"]
