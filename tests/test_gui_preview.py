"""The Train widget's live preview of the slice in view while the network trains."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._qt._preview_layer import LivePreviewLayer
from napari_medseg._qt.train_widget import TrainWidget
from napari_medseg.training import preview as preview_module

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


def test_the_preview_follows_the_slice_in_view_and_goes_when_training_ends(
    synthetic_viewer, qtbot, models, monkeypatch, tmp_path
):
    monkeypatch.setattr(preview_module, "PREVIEW_SECONDS", 0.0)
    monkeypatch.setattr(preview_module, "PREVIEW_SHARE", 1e9)  # a preview after every step
    viewer = synthetic_viewer
    annotation = viewer.layers["synthetic annotation"]
    viewer.layers.selection.active = annotation  # the user is painting
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    viewer.window.show()
    viewer.dims.set_point(0, 2.0 * 5)  # axial slice 5 (z spacing 2 mm)
    widget.form.set_values(iterations=40, time_budget=None, device="cpu")
    seen = []
    show = LivePreviewLayer.show

    def watch(self, preview):
        show(self, preview)
        layer = self.layer
        painted = np.moveaxis(layer.data, preview.axis, 0)[preview.index]
        seen.append((preview.axis, preview.index, np.array_equal(painted, preview.labels),
                     int(np.count_nonzero(layer.data)), viewer.layers.selection.active))
        if len(seen) == 3:
            viewer.dims.set_point(0, 2.0 * 9)  # the user moves to slice 9
            from imageio.v3 import imwrite

            imwrite(tmp_path / "preview.png", viewer.screenshot(canvas_only=False))

    monkeypatch.setattr(LivePreviewLayer, "show", watch)
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert seen and seen[0][:2] == (0, 5) and all(ok for _, _, ok, _, _ in seen)
    assert any(index == 9 for _, index, _, _, _ in seen[3:])  # it followed the view
    assert all(active is annotation for *_, active in seen)  # painting was not interrupted
    layer = viewer.layers["synthetic preview"]  # hidden and empty once the model is ready
    assert not layer.visible and not layer.data.any()
