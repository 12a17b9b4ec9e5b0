"""The Predict widget's "Take this slice into my annotation": correct the model, don't repaint.

The segmentation's labels on the slice in view become annotation on its unpainted voxels
(painted voxels keep what was painted), as one undoable edit of the annotation layer; the
user then fixes only the errors with the brush and trains again (continuing from the model).
"""

from __future__ import annotations

from typing import Any

from napari.viewer import Viewer

from ...annotation import take_slice_from
from ...errors import MedsegInputError
from ...painted_slices import axis_name
from .._common import StatusLabel, button
from .._layers import current_slice, layer_array


class TakeSlice:
    """The button, enabled while a complete segmentation and an annotation layer exist."""

    def __init__(self, viewer: Viewer, status: StatusLabel) -> None:
        self.viewer, self.status = viewer, status
        self.segmentation: Any = None
        self.annotation: Any = None
        self.button = button(
            "Take this slice into my annotation",
            "Copy the segmentation of the slice in view into the annotation layer where "
            "nothing is painted; then correct it with the brush and train again",
        )
        self.button.setEnabled(False)
        self.button.clicked.connect(self.take)

    def offer(self, segmentation: Any, annotation: Any) -> None:
        """A complete ``segmentation`` layer and the ``annotation`` layer it may feed."""
        self.segmentation, self.annotation = segmentation, annotation
        self.button.setEnabled(segmentation is not None and annotation is not None)

    def take(self) -> int:
        """Copy the slice in view; returns the voxels set (0 when refused: the reason shows)."""
        layers = self.viewer.layers
        if self.segmentation not in layers or self.annotation not in layers:
            self.status.error("the segmentation or the annotation layer is gone: predict again")
            return 0
        try:
            axis, index = current_slice(self.viewer, self.annotation)
            where, values = take_slice_from(
                layer_array(self.annotation), layer_array(self.segmentation), axis, index
            )
        except MedsegInputError as exc:
            self.status.error(str(exc))
            return 0
        if values.size:
            self.annotation.data_setitem(where, values)  # one step of napari's undo
        name = axis_name(axis, self.annotation.ndim)
        self.status.info(
            f"{values.size:,} voxels of slice {index} ({name}) taken into "
            f"'{self.annotation.name}': fix what is wrong with the brush, then Train "
            "(Ctrl+Z undoes it)"
        )
        return int(values.size)
