"""Correct, don't repaint: the model's answer on one slice taken into the annotation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._qt.predict_widget import PredictWidget
from napari_medseg._qt.train_widget import TrainWidget
from napari_medseg.annotation import take_slice_from
from napari_medseg.errors import MedsegInputError

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


def test_only_unpainted_voxels_of_the_slice_take_the_labels():
    annotation = np.zeros((4, 5, 6), np.uint8)
    annotation[2, 0, :] = 1
    annotation[2, 1, 1] = 2
    labels = np.zeros_like(annotation)
    labels[2, :, 3:] = 1
    labels[1] = 1  # another slice: untouched
    where, values = take_slice_from(annotation, labels, 0, 2)
    edited = annotation.copy()
    edited[where] = values
    assert (edited[2] > 0).all() and (edited[[0, 1, 3]] == 0).all()
    assert (edited[2, 0] == 1).all() and edited[2, 1, 1] == 2  # painted voxels win
    assert edited[2, 3, 4] == 2 and edited[2, 3, 0] == 1
    with pytest.raises(MedsegInputError):
        take_slice_from(annotation, labels, 1, 9)


def test_take_the_predicted_slice_then_undo(synthetic_viewer, qtbot, models):
    viewer = synthetic_viewer
    train, predict = TrainWidget(viewer), PredictWidget(viewer)
    viewer.window.add_dock_widget(train, area="right")
    viewer.window.add_dock_widget(predict, area="right")
    train.form.set_values(iterations=30, time_budget=None, device="cpu")
    assert train.start_training()
    qtbot.waitUntil(lambda: not train.is_running, timeout=WAIT_MS)
    predict.select_model(train.model_name)
    predict.form.set_values(device="cpu")
    assert not predict.take_slice.button.isEnabled()
    assert predict.start_prediction()
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    assert predict.take_slice.button.isEnabled()

    annotation = viewer.layers["synthetic annotation"]
    segmentation = viewer.layers["synthetic segmentation"]
    before = annotation.data.copy()
    z = int(np.argmin((before > 0).sum(axis=(1, 2))))  # the least painted axial slice
    viewer.dims.set_point(0, 2.0 * z)
    predict.take_slice.button.click()
    unpainted = before[z] == 0
    assert unpainted.any() and (annotation.data[z] > 0).all()
    assert np.array_equal(annotation.data[z][unpainted], segmentation.data[z][unpainted] + 1)
    assert np.array_equal(annotation.data[z][~unpainted], before[z][~unpainted])
    others = np.delete(np.arange(before.shape[0]), z)
    assert np.array_equal(annotation.data[others], before[others])
    assert f"slice {z} (z)" in predict.status.text()
    annotation.undo()
    assert np.array_equal(annotation.data, before)
