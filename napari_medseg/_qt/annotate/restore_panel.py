"""The Annotate widget's restore banner: an earlier session's autosave, offered back.

When an image is chosen, a worker thread looks for its autosave
(:func:`napari_medseg.autosave_keys.find_autosave`); when there is one (and it is not what
the annotation layer already shows), a banner offers to restore or discard it. Until the
user decides, the widget does not autosave that image (it would overwrite the offer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout

from ...autosave import AutosaveStore
from ...autosave_keys import describe_entry, find_autosave, image_source_path
from ...colors import CLASS_NAMES_KEY, annotation_color_dict
from ...errors import MedsegError, MedsegInputError
from .._common import StatusLabel, button
from .._layers import LayerPicker, class_names_of, layer_array
from .._worker import report_error, run_function
from .edit import apply_edit, whole

BANNER_STYLE = (
    "QFrame#medseg_restore_banner { border: 1px solid #d9a400; border-radius: 4px; "
    "background-color: rgba(217, 164, 0, 40); }"
)
#: ``(image layer, autosave key, AutosaveEntry)`` of the autosave on offer.
Offer = tuple[Image, str, Any]


def annotation_layer_of(viewer: Viewer, image: Image, chosen: Any) -> Labels | None:
    """The annotation layer painted on ``image``: ``chosen`` when it fits, else the newest
    Labels layer made for it (same shape, ``metadata["medseg_image"]``), else None."""
    shape = layer_array(image).shape
    if isinstance(chosen, Labels) and layer_array(chosen).shape == shape:
        return chosen
    for layer in reversed(list(viewer.layers)):
        if (
            isinstance(layer, Labels)
            and layer.metadata.get("medseg_image") == image.name
            and layer_array(layer).shape == shape
        ):
            return layer
    return None


class RestoreBanner(QFrame):
    """Offers the autosave of the chosen image back: Restore or Discard.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    store : AutosaveStore
        Where autosaves are.
    image_picker, annotation_picker : LayerPicker
        The widget's pickers.
    status : StatusLabel
        Where messages are shown.
    create_layer : callable
        ``create_layer(image, names)`` makes the annotation layer of ``image`` (names: the
        autosave's structure names, maybe empty); returns it, or None when refused.
    restored : callable
        Called with the structure names after an autosave was put back.
    discarded : callable
        Called after an autosave was deleted.
    """

    def __init__(
        self,
        viewer: Viewer,
        store: AutosaveStore,
        image_picker: LayerPicker,
        annotation_picker: LayerPicker,
        status: StatusLabel,
        *,
        create_layer: Callable[[Image, list[str]], Labels | None],
        restored: Callable[[list[str]], None],
        discarded: Callable[[], None],
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self.image_picker = image_picker
        self.annotation_picker = annotation_picker
        self.status = status
        self._create_layer = create_layer
        self._restored = restored
        self._discarded = discarded
        self._offer: Offer | None = None
        self._generation = 0
        self.check_worker: Any = None
        self.restore_worker: Any = None
        self.restoring = False
        self.setObjectName("medseg_restore_banner")
        self.setStyleSheet(BANNER_STYLE)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.restore_button = button(
            "Restore autosaved annotation",
            "Put the autosaved annotation back into the annotation layer (created if needed)",
        )
        self.discard_button = button("Discard", "Delete the autosave of this image")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.label)
        row = QHBoxLayout()
        row.addWidget(self.restore_button, 3)
        row.addWidget(self.discard_button, 1)
        layout.addLayout(row)
        self.setVisible(False)
        self.restore_button.clicked.connect(self.restore)
        self.discard_button.clicked.connect(self.discard)

    @property
    def offered(self) -> bool:
        """True while an autosaved annotation is offered back."""
        return self._offer is not None

    def offers(self, image: Any) -> bool:
        """True while the autosave of ``image`` is offered back."""
        return self._offer is not None and self._offer[0] is image

    def check(self) -> Any:
        """Look (in a worker thread) for an autosave of the chosen image; offer it back.

        Returns
        -------
        FunctionWorker or None
            The worker looking, or None when there is no image.
        """
        self._generation += 1
        generation = self._generation
        image = self.image_picker.layer()
        if image is None or getattr(image, "rgb", False):
            self.show_offer(None)
            return None
        if self._offer is not None and self._offer[0] is not image:
            self.show_offer(None)
        store, path, data = self.store, image_source_path(image), layer_array(image)
        current = annotation_layer_of(self.viewer, image, self.annotation_picker.layer())
        # read, not copied, in the worker: only compared, to hide an offer of what is shown
        shown = layer_array(current) if current is not None else None

        def found(result: tuple[str, Any]) -> None:
            if generation != self._generation or image not in self.viewer.layers:
                return
            key, entry = result
            self.show_offer((image, key, entry) if entry is not None else None)

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

    def recheck(self, layer: object = None) -> None:
        """Another annotation layer was chosen: hide the offer if it holds the autosave."""
        if self._offer is not None and not self.restoring:
            self.check()

    def show_offer(self, offer: Offer | None) -> None:
        """Offer ``offer`` back (show the banner), or hide the banner (None)."""
        self._offer = offer
        if offer is None:
            self.setVisible(False)
            return
        image, _, entry = offer
        self.restore_button.setText(describe_entry(entry))
        self.restore_button.setToolTip(f"{entry.describe()}\n{entry.path}")
        names = ", ".join(entry.class_names) if entry.class_names else "no structure names"
        self.label.setText(
            f"An earlier session left an autosaved annotation of '{image.name}' "
            f"({names}). Autosave of this image waits until you restore or discard it."
        )
        self.setVisible(True)

    def restore(self) -> Any:
        """Read the offered autosave (worker thread) and put it into the annotation layer.

        The annotation layer of the image is created when there is none. Replacing the
        data is undoable when small enough (see :data:`.edit.UNDO_LIMIT`).

        Returns
        -------
        FunctionWorker or None
            The worker reading the file, or None when nothing is offered.
        """
        if self._offer is None or self.restore_worker is not None:
            return None
        image, key, entry = self._offer
        store, shape = self.store, layer_array(image).shape
        self.restore_button.setEnabled(False)

        def loaded(array: np.ndarray) -> None:
            self._fill(image, entry, array)

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

    def _layer_to_fill(self, image: Image, entry: Any) -> Labels | None:
        layer = annotation_layer_of(self.viewer, image, self.annotation_picker.layer())
        if layer is not None:
            return layer
        self.restoring = True  # keep the new layer from offering the autosave again
        try:
            return self._create_layer(image, list(entry.class_names))
        finally:
            self.restoring = False

    def _fill(self, image: Image, entry: Any, array: np.ndarray) -> None:
        if image not in self.viewer.layers:
            report_error(MedsegInputError(f"'{image.name}' was closed"), self.status)
            return
        layer = self._layer_to_fill(image, entry)
        if layer is None:
            return
        if np.asarray(array).max(initial=0) > np.iinfo(layer.data.dtype).max:
            layer.data = np.asarray(array)
        else:
            apply_edit(layer, whole(layer), np.asarray(array).astype(layer.data.dtype, copy=False))
        names = list(entry.class_names)
        if names and class_names_of(layer) != names:  # the names painted with this data
            layer.metadata[CLASS_NAMES_KEY] = names
            layer.colormap = annotation_color_dict(len(names))
        self._generation += 1  # a look started before this must not offer it again
        self.annotation_picker.set_layer(layer)
        self.show_offer(None)
        self._restored(names)
        self.status.info(
            f"restored {entry.annotated_voxels:,} annotated voxels into '{layer.name}' "
            f"(autosave of {entry.saved_at:%H:%M})"
        )

    def discard(self) -> None:
        """Delete the offered autosave; autosaving this image starts again."""
        if self._offer is None:
            return
        image, key, _ = self._offer
        try:
            self.store.discard(key)
        except (OSError, MedsegError) as exc:
            report_error(exc, self.status, prefix="could not discard the autosave: ")
            return
        self._generation += 1
        self.show_offer(None)
        self._discarded()
        self.status.info(f"autosave of '{image.name}' discarded")
