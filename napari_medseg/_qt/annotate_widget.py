"""Step 1 · Annotate: create a sparse-annotation layer and help painting it.

Conventions (see :mod:`napari_medseg.annotation`): ``0`` not annotated, ``1`` background,
``k + 1`` structure ``k``.

The widget is assembled from small panels (:mod:`napari_medseg._qt.annotate`): the legend
(structure names and colours), the restore banner and the autosave switch (crash
recovery), the painted-slice summary and the region-of-interest box. It keeps the
annotation layer itself: making it, following the chosen one, filling a slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from napari.viewer import Viewer
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..annotation import fill_slice_background
from ..autosave import AutosaveStore
from ..errors import MedsegInputError
from ..painted_slices import axis_name
from ._common import StatusLabel, button, form_layout, separator
from ._layers import annotation_picker, class_names_of, current_slice, image_picker
from ._worker import report_error
from .annotate.autosave_panel import AutosavePanel
from .annotate.edit import add_annotation_layer, apply_edit, check_new_annotation
from .annotate.legend_panel import LegendPanel
from .annotate.restore_panel import RestoreBanner
from .annotate.roi_panel import RoiPanel
from .annotate.slices_panel import SlicesPanel

HINT = (
    "Paint a few slices (any plane): <b>1</b> = background, <b>2, 3 …</b> = "
    "structures, unpainted = unknown."
)


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
        self.status = StatusLabel()
        self.autosave_store = AutosaveStore()
        self.image_picker = image_picker(napari_viewer)
        self.annotation_picker = annotation_picker(napari_viewer)
        self.create_button = button(
            "Create annotation layer",
            "Add an empty Labels layer on the image's grid (same spacing), ready to paint",
        )
        self.fill_button = button(
            "Fill rest of this slice as background",
            "Every not-annotated voxel of the slice shown in the 2D view becomes background "
            "(label 1). Works on any of the three planes.",
        )
        self._make_panels()
        self._build_layout()

        self.create_button.clicked.connect(self.create_annotation_layer)
        self.annotation_picker.layer_changed.connect(self._watch)
        self.fill_button.clicked.connect(self.fill_current_slice)
        self.image_picker.layer_changed.connect(lambda _layer: self.check_autosave())
        self.annotation_picker.layer_changed.connect(self.restore_banner.recheck)
        self._watch(self.annotation_picker.layer())
        self.autosave.timer.start()
        self.check_autosave()

    def _make_panels(self) -> None:
        viewer, status = self.viewer, self.status
        pickers = (self.image_picker, self.annotation_picker)
        self.legend = LegendPanel(viewer, self.annotation_picker)
        self.slices = SlicesPanel(self.annotation_picker, status)
        self.roi = RoiPanel(viewer, self.annotation_picker, self.image_picker, status,
                            edited=self.update_slice_list)
        self.restore_banner = RestoreBanner(
            viewer, self.autosave_store, *pickers, status,
            create_layer=self._create_for_restore,
            restored=self._on_restored,
            discarded=lambda: self.autosave.mark_dirty(),
        )
        self.autosave = AutosavePanel(
            viewer, self.autosave_store, *pickers, status, paused=self.restore_banner.offers
        )
        # the panels' widgets, under the names the widget has always had
        self.class_names_edit = self.legend.names_edit
        self.legend_layout = self.legend.grid
        self.slices_label = self.slices.label
        self.autosave_check, self.autosave_label = self.autosave.check, self.autosave.label
        self.restore_label = self.restore_banner.label
        self.restore_button = self.restore_banner.restore_button
        self.discard_button = self.restore_banner.discard_button
        roi = self.roi
        self.shapes_picker, self.add_box_button = roi.shapes_picker, roi.add_box_button
        self.from_spin, self.to_spin = roi.from_spin, roi.to_spin
        self.from_here, self.to_here = roi.from_here, roi.to_here
        self.roi_axis_label, self.roi_button = roi.axis_label, roi.roi_button

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        layout.addWidget(hint)
        form = form_layout()
        form.addRow("Image", self.image_picker)
        form.addRow("Structures", self.class_names_edit)
        layout.addLayout(form)
        layout.addWidget(self.create_button)
        layout.addWidget(self.restore_banner)
        layout.addWidget(separator())
        form2 = form_layout()
        form2.addRow("Annotation", self.annotation_picker)
        form2.addRow("", self.autosave)
        layout.addLayout(form2)
        layout.addWidget(self.legend)
        layout.addWidget(self.fill_button)
        layout.addWidget(self.slices)
        layout.addWidget(separator())
        layout.addWidget(self.roi)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- annotation layer -------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """Structure names typed by the user (background excluded)."""
        return self.legend.class_names()

    def create_annotation_layer(self) -> Labels | None:
        """Add an empty annotation layer on the chosen image's grid and get it ready to paint.

        Returns
        -------
        napari.layers.Labels or None
            The new layer, or None (with a message) when it cannot be made.
        """
        image, names = self.image_picker.layer(), self.class_names()
        try:
            check_new_annotation(image, names)
        except MedsegInputError as exc:
            report_error(exc, self.status)
            return None
        layer = add_annotation_layer(self.viewer, image, names)
        self.annotation_picker.set_layer(layer)
        self.status.info(
            f"'{layer.name}' ready: painting label 2 ({names[0]}). Press 1 in the layer "
            "controls' label box (or click a legend entry) to paint background."
        )
        if not self.restore_banner.restoring and not self.restore_banner.offers(image):
            self.check_autosave()  # an autosave of this image may be waiting
        return layer

    def _watch(self, layer: Layer | None) -> None:
        """Follow the edits of the chosen annotation layer (slice list, autosave)."""
        watched = layer if isinstance(layer, Labels) else None
        self.slices.follow(watched)
        self.autosave.follow(watched)
        if watched is not None:
            names = class_names_of(watched)
            if names:
                self.legend.show_names(names)
        self.legend.refresh()
        self.update_slice_list()
        self.roi.update_axis()

    def select_label(self, value: int) -> None:
        """Make ``value`` the label painted on the annotation layer (brush mode)."""
        self.legend.select_label(value)

    def update_slice_list(self) -> None:
        """Refresh the "annotated slices" text (see :class:`SlicesPanel`)."""
        self.slices.refresh()

    def fill_current_slice(self) -> int:
        """Mark the unannotated voxels of the shown slice as background.

        Returns
        -------
        int
            Number of voxels changed (0 also when refused, with a message).
        """
        try:
            layer = self.annotation_picker.layer()
            if layer is None:
                raise MedsegInputError("create or choose an annotation layer first")
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

    # -- region of interest (see RoiPanel) --------------------------------------------------
    def add_box_layer(self) -> Shapes | None:
        """Add a Shapes layer (in rectangle mode) to draw the region of interest on."""
        return self.roi.add_box_layer()

    def roi_box(self) -> list[tuple[int, int]]:
        """The region-of-interest box, half-open voxel ranges per axis."""
        return self.roi.roi_box()

    def mark_outside_box(self) -> int:
        """Mark every unannotated voxel outside the box as background; voxels changed."""
        return self.roi.mark_outside_box()

    # -- autosave / crash recovery (see AutosavePanel, RestoreBanner) -----------------------
    @property
    def autosave_worker(self) -> Any:
        """The worker writing an autosave, or None."""
        return self.autosave.worker

    @property
    def autosave_path(self) -> Any:
        """The last autosave file written, or None."""
        return self.autosave.path

    @property
    def check_worker(self) -> Any:
        """The worker looking for an autosave, or None."""
        return self.restore_banner.check_worker

    @property
    def restore_worker(self) -> Any:
        """The worker reading an autosave back, or None."""
        return self.restore_banner.restore_worker

    @property
    def restore_offered(self) -> bool:
        """True while an autosaved annotation is offered back."""
        return self.restore_banner.offered

    def autosave_now(self) -> Any:
        """Autosave the annotation layer when it changed; the worker, or None."""
        return self.autosave.save_now()

    def check_autosave(self) -> Any:
        """Look (worker thread) for an autosave of the chosen image; the worker, or None."""
        return self.restore_banner.check()

    def restore_autosave(self) -> Any:
        """Put the offered autosave back (worker thread); the worker, or None."""
        return self.restore_banner.restore()

    def discard_autosave(self) -> None:
        """Delete the offered autosave; autosaving this image starts again."""
        self.restore_banner.discard()

    def _create_for_restore(self, image: Image, names: list[str]) -> Labels | None:
        if names:
            self.legend.show_names(names)
        self.image_picker.set_layer(image)
        return self.create_annotation_layer()

    def _on_restored(self, names: list[str]) -> None:
        if names:
            self.legend.show_names(names)
            self.legend.refresh()
        self.autosave.mark_dirty()
        self.update_slice_list()


__all__ = ["AnnotateWidget"]
