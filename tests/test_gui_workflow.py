"""The whole loop through the four docked widgets: annotate → train → predict → metrics.

Tiny volumes and a few training steps keep it to seconds on a 2-core CPU; run under
``xvfb-run -a pytest tests/test_gui_workflow.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

pytestmark = pytest.mark.gui

WAIT_MS = 120_000
FAST = {"iterations": 3, "time_budget": None, "device": "cpu", "base_channels": 4,
        "patch_shape": (8, 16, 16), "augment": False}


@pytest.fixture
def widgets(synthetic_viewer):
    """The four widgets docked the way ``medseg gui`` docks them (through the manifest)."""
    from napari_medseg._qt.launch import dock_widgets

    docked = dock_widgets(synthetic_viewer)
    return [docked[name] for name in ("1 · Annotate", "2 · Train", "3 · Predict", "4 · Metrics")]


def _train_model(widget, qtbot, models, **values):
    widget.form.set_values(**{**FAST, **values})
    assert widget.start_training() is True, widget.status.text()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    # a model is ready; a run of a few steps may be warned about (it found nothing yet)
    assert "ready" in widget.status.text(), widget.status.text()
    return models.latest()


def test_full_loop(synthetic_viewer, widgets, qtbot, models, monkeypatch):
    viewer = synthetic_viewer
    annotate, train, predict, metrics = widgets
    image = viewer.layers["synthetic"]
    painted = viewer.layers["synthetic annotation"].data.copy()

    # 1 · Annotate: a new layer on the image grid, "painted" like brush strokes would
    annotate.image_picker.set_layer(image)
    annotate.class_names_edit.setText("tube")
    annotation = annotate.create_annotation_layer()
    index = np.nonzero(painted)
    annotation.data_setitem(index, painted[index])
    viewer.dims.set_point(0, 2 * 2.0)
    assert annotate.fill_current_slice() > 0
    qtbot.waitUntil(lambda: "axis 0 (z): none" not in annotate.slices_label.text(), timeout=5000)

    # 2 · Train on it (the Train widget picked the newest annotation layer by itself)
    assert train.annotation_picker.layer() == annotation
    entry = _train_model(train, qtbot, models)
    assert entry is not None and entry.model.config.class_names == ["background", "tube"]
    assert entry.model.config.spacing == (2.0, 1.0, 1.0)
    assert train.progress.fraction == 1.0 and "after 3 steps" in train.progress.label.text()
    assert train.save_button.isEnabled()

    # 3 · Predict with small tiles: the layer is filled live, tile after tile
    assert predict.selected_model() is entry
    refreshed: list[str] = []
    original_refresh = Labels.refresh

    def counting_refresh(self, *args, **kwargs):
        refreshed.append(self.name)
        return original_refresh(self, *args, **kwargs)

    monkeypatch.setattr(Labels, "refresh", counting_refresh)
    predict.form.set_values(tile_shape=(8, 16, 16), overlap=0.25, device="cpu")
    assert predict.start_prediction() is True
    segmentation = viewer.layers["synthetic segmentation"]  # exists from the start
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    assert not predict.status.is_error, predict.status.text()
    assert segmentation.name == "synthetic segmentation"
    assert segmentation.data.shape == image.data.shape
    np.testing.assert_allclose(segmentation.scale, image.scale)
    assert segmentation.data.any()
    assert predict.tiles_shown > 1 and predict.redraws > 1
    assert refreshed.count("synthetic segmentation") > 1
    assert predict.save_button.isEnabled()

    # 4 · Metrics against the expert mask
    assert metrics.segmentation_picker.layer() == segmentation
    assert metrics.reference_picker.layer().name == "synthetic expert mask"
    assert metrics.compute() is True
    qtbot.waitUntil(lambda: not metrics.is_running, timeout=WAIT_MS)
    assert not metrics.status.is_error, metrics.status.text()
    assert metrics.table.rowCount() >= 2
    for row in range(metrics.table.rowCount()):
        assert 0.0 <= float(metrics.table.item(row, 1).text()) <= 1.0


def test_stop_during_training_returns_the_model(synthetic_viewer, widgets, qtbot, models):
    train = widgets[1]
    train.form.set_values(**{**FAST, "iterations": None, "time_budget": 120.0})
    assert train.start_training() is True
    qtbot.waitUntil(lambda: train._last_progress is not None, timeout=WAIT_MS)
    train.stop_button.click()
    qtbot.waitUntil(lambda: not train.is_running, timeout=WAIT_MS)
    entry = models.latest()
    assert entry is not None and entry.model is train.model
    history = entry.model.config.history
    assert history["stop_reason"] == "stopped" and history["steps"] >= 1
    assert history["seconds"] < 120
    assert "stopped" in train.progress.label.text()


def test_stopped_prediction_is_marked(synthetic_viewer, widgets, qtbot, models):
    train, predict = widgets[1], widgets[2]
    _train_model(train, qtbot, models, iterations=2)
    predict.form.set_values(tile_shape=(4, 8, 8), device="cpu")
    assert predict.start_prediction() is True
    predict.stop_prediction()  # before the first tile: nothing complete can come back
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    names = [layer.name for layer in synthetic_viewer.layers]
    assert "synthetic segmentation (stopped)" in names
    assert "synthetic segmentation" not in names
    assert not predict.save_button.isEnabled()
    # predicting again reuses the layer and gives it back its name
    predict.form.set_values(tile_shape=None)
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    names = [layer.name for layer in synthetic_viewer.layers]
    assert "synthetic segmentation" in names and "synthetic segmentation (stopped)" not in names


def test_probabilities_layers(synthetic_viewer, widgets, qtbot, models):
    train, predict = widgets[1], widgets[2]
    _train_model(train, qtbot, models, iterations=2)
    predict.form.set_values(probabilities=True, device="cpu")
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    layer = synthetic_viewer.layers["synthetic p(tube)"]
    assert layer.data.shape == (16, 32, 32)
    assert 0.0 <= float(layer.data.min()) and float(layer.data.max()) <= 1.0
    np.testing.assert_allclose(layer.scale, (2.0, 1.0, 1.0))


def test_ensemble_model_shows_where_its_networks_disagree(synthetic_viewer, widgets, qtbot, models):
    train, predict = widgets[1], widgets[2]
    single = _train_model(train, qtbot, models, iterations=2)
    predict.select_model(single.name)
    uncertainty = predict.form.editors["uncertainty"]
    assert uncertainty.widget.isEnabled()  # one network: its own doubt
    assert "unsure" in uncertainty.widget.toolTip()

    entry = _train_model(train, qtbot, models, iterations=2, ensemble=2)
    assert entry.name.startswith("2 × unet3d")
    assert entry.model.config.history["member_steps"] == [2, 2]
    predict.select_model(entry.name)
    assert uncertainty.widget.isEnabled()
    predict.form.set_values(uncertainty=True, device="cpu")
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    layer = synthetic_viewer.layers["synthetic uncertainty"]
    assert layer.data.shape == (16, 32, 32) and predict.uncertainty_layer.name == layer.name
    assert 0.0 <= float(layer.data.min()) and float(layer.data.max()) <= 1.0
    np.testing.assert_allclose(layer.scale, (2.0, 1.0, 1.0))
    # the status names the slices to paint next, in any plane, none of them painted in full
    annotation = synthetic_viewer.layers["synthetic annotation"].data
    assert predict.suggested_slices
    for axis, index in predict.suggested_slices:
        assert (np.moveaxis(annotation, axis, 0)[index] == 0).any()
    assert "paint one of them next" in predict.status.text()
    # each click turns the view to the suggestion's plane and moves to its slice
    assert not predict.suggest_button.isHidden()
    axis, index = predict.suggested_slices[0]
    assert f"slice {index} " in predict.suggest_button.text()
    for turn, (axis, index) in enumerate(predict.suggested_slices):
        if turn == 0:
            assert predict.show_next_suggestion() == (axis, index)
        else:
            predict.suggest_button.click()
        assert synthetic_viewer.dims.not_displayed == (axis,)
        assert synthetic_viewer.dims.point[axis] == pytest.approx((2.0, 1.0, 1.0)[axis] * index)

    predict.select_model(single.name)  # back to one network: its own doubt, still offered
    assert uncertainty.widget.isEnabled() and "unsure" in uncertainty.widget.toolTip()
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    assert predict.suggested_slices and "least sure" in predict.status.text()


def test_suggestions_turn_the_view_to_their_plane(synthetic_viewer, widgets):
    predict = widgets[2]
    image = synthetic_viewer.layers["synthetic"]
    predict.suggestions.offer([(2, 5), (1, 3), (0, 7)], image)
    assert predict.suggest_button.text().startswith("Go to sagittal slice 5 to paint (1 of 3)")
    for axis, index in [(2, 5), (1, 3), (0, 7), (2, 5)]:  # round and round
        predict.suggest_button.click()
        assert synthetic_viewer.dims.not_displayed == (axis,)
        assert synthetic_viewer.dims.displayed == tuple(a for a in range(3) if a != axis)
        assert synthetic_viewer.dims.point[axis] == pytest.approx((2.0, 1.0, 1.0)[axis] * index)
    predict.suggestions.offer([], image)
    assert predict.suggest_button.isHidden()


def test_save_and_load_model(synthetic_viewer, widgets, qtbot, models, tmp_path):
    train, predict = widgets[1], widgets[2]
    _train_model(train, qtbot, models, iterations=2)
    path = tmp_path / "tiny.safetensors"
    worker = train.save_model(path)
    qtbot.waitUntil(lambda: path.exists() and not worker.is_running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "saved" in train.status.text(), timeout=WAIT_MS)
    predict.load_model_file(path)
    qtbot.waitUntil(lambda: len(models) == 2, timeout=WAIT_MS)
    assert predict.selected_model().name == "tiny"
    assert predict.selected_model().source == str(path)

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    predict.load_model_file(bad)
    qtbot.waitUntil(lambda: predict.status.is_error, timeout=WAIT_MS)
    assert len(models) == 2


def test_save_segmentation_keeps_geometry(synthetic_viewer, widgets, qtbot, models, tmp_path):
    pytest.importorskip("napari_medseg._napari.writer")
    from napari_medseg.io import read_volume

    train, predict = widgets[1], widgets[2]
    _train_model(train, qtbot, models, iterations=2)
    predict.form.set_values(device="cpu")
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    path = tmp_path / "seg.nii.gz"
    predict.save_segmentation(path)
    qtbot.waitUntil(lambda: "saved" in predict.status.text() or predict.status.is_error,
                    timeout=WAIT_MS)
    assert not predict.status.is_error, predict.status.text()
    volume = read_volume(path)
    assert volume.shape == (16, 32, 32)
    np.testing.assert_allclose(volume.spacing, (2.0, 1.0, 1.0))
    saved = synthetic_viewer.layers["synthetic segmentation"].data
    np.testing.assert_array_equal(volume.array, saved)


def test_a_dicom_seg_is_refused_for_an_image_not_read_from_dicom(
    synthetic_viewer, widgets, qtbot, models, tmp_path
):
    train, predict = widgets[1], widgets[2]
    _train_model(train, qtbot, models, iterations=1)
    predict.form.set_values(device="cpu")
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    predict.save_segmentation(tmp_path / "seg.dcm")  # the .dcm filter: a DICOM SEG
    qtbot.waitUntil(lambda: predict.status.is_error, timeout=WAIT_MS)
    assert "made on a DICOM series" in predict.status.text()
    assert not (tmp_path / "seg.dcm").exists()


def test_errors_in_the_worker_are_shown_not_raised(synthetic_viewer, widgets, qtbot, models,
                                                   monkeypatch):
    import napari_medseg.inference as inference
    import napari_medseg.training as training
    from napari_medseg.errors import MedsegInputError

    train, predict = widgets[1], widgets[2]

    def failing_train(*args, **kwargs):
        raise MedsegInputError("spacing (0, 1, 1) must be three positive numbers")
        yield  # a generator, like the real one

    monkeypatch.setattr(training, "train", failing_train)
    assert train.start_training() is True
    qtbot.waitUntil(lambda: not train.is_running, timeout=WAIT_MS)
    assert train.status.is_error and "three positive numbers" in train.status.text()
    assert len(models) == 0 and train.train_button.isEnabled()

    models.add("fake", _FakeModel())

    def failing_predict(model, image, config=None, *, stop=None):
        yield from ()
        raise RuntimeError("CUDA error: device-side assert triggered")  # torch's kind of error

    monkeypatch.setattr(inference, "predict", failing_predict)
    n_layers = len(synthetic_viewer.layers)
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    assert predict.status.is_error and "RuntimeError: CUDA error" in predict.status.text()
    assert len(synthetic_viewer.layers) == n_layers  # the unfinished layer was removed
    assert predict.predict_button.isEnabled()


class _FakeModel:
    class config:  # noqa: N801 - mimics TrainedModel.config
        class_names = ["background", "tube"]
        spacing = (2.0, 1.0, 1.0)
        arch = "unet3d"
        history: dict = {}


def test_painting_while_training_keeps_the_stroke(synthetic_viewer, widgets, qtbot, models):
    train = widgets[1]
    layer = synthetic_viewer.layers["synthetic annotation"]
    assert train.annotation_picker.layer() is layer
    snapshot = np.array(layer.data, copy=True)
    expected_counts = [int(np.count_nonzero(snapshot == c + 1)) for c in range(2)]
    z = int(np.argmin((snapshot > 0).sum(axis=(1, 2))))  # a slice not painted in-plane
    free = np.argwhere(snapshot[z, 1:-1, 1:-1] == 0) + 1  # room for a dab in this slice
    dab_y, dab_x = (int(v) for v in free[len(free) // 2])
    train.form.set_values(**{**FAST, "iterations": None, "time_budget": 30.0})
    assert train.start_training() is True
    qtbot.waitUntil(lambda: train._last_progress is not None, timeout=WAIT_MS)

    # the user goes on painting while the worker trains: a block set like a brush stroke,
    # and a real brush dab through the layer's paint API
    ys, xs = np.nonzero(snapshot[z] == 0)
    stroke = (np.full(12, z), ys[:12], xs[:12])
    layer.data_setitem(stroke, 2)
    layer.brush_size = 1
    layer.paint((z, dab_y, dab_x), 1)
    assert train.is_running  # painted while training ran
    assert not train.annotation_picker.isEnabled()
    painted = np.array(layer.data, copy=True)
    assert (painted[stroke] == 2).all() and painted[z, dab_y, dab_x] == 1
    qtbot.wait(300)  # a few more training steps with the new strokes on screen
    train.stop_button.click()
    qtbot.waitUntil(lambda: not train.is_running, timeout=WAIT_MS)

    assert not train.status.is_error, train.status.text()
    np.testing.assert_array_equal(layer.data, painted)  # nothing was lost or overwritten
    history = models.latest().model.config.history
    assert history["stop_reason"] == "stopped"
    # the model learnt from the annotation as it was when Train was pressed
    assert history["class_voxel_counts"] == expected_counts
    now = [int(np.count_nonzero(painted == c + 1)) for c in range(2)]
    assert now != expected_counts


def test_predict_keeps_painted_voxels(synthetic_viewer, widgets, qtbot, models):
    viewer = synthetic_viewer
    train, predict = widgets[1], widgets[2]
    _train_model(train, qtbot, models, iterations=2)
    annotation = viewer.layers["synthetic annotation"]
    assert predict.keep_painted_check.isChecked()
    assert predict.annotation_picker.layer() is annotation  # "<image> annotation"
    viewer.add_labels(np.zeros((16, 32, 32), np.uint8), name="other annotation")
    assert predict.annotation_picker.layer() is annotation  # the image's one stays chosen
    # paint a structure block and a background block where the user knows better
    annotation.data[8, 2:6, 2:6] = 2
    annotation.data[9, 20:24, 20:24] = 1
    painted = np.array(annotation.data) > 0

    predict.form.set_values(device="cpu")
    predict.keep_painted_check.setChecked(False)
    assert not predict.annotation_picker.isEnabled()
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    plain = np.array(viewer.layers["synthetic segmentation"].data, copy=True)
    assert predict.kept_voxels == 0

    predict.keep_painted_check.setChecked(True)
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    assert not predict.status.is_error, predict.status.text()
    kept = viewer.layers["synthetic segmentation"].data
    expected = np.array(annotation.data, dtype=np.int16) - 1
    np.testing.assert_array_equal(kept[painted], expected[painted])
    np.testing.assert_array_equal(kept[~painted], plain[~painted])  # the rest: the network's
    assert predict.kept_voxels == int(painted.sum())
    assert "painted voxels kept" in predict.status.text()
    assert kept[8, 3, 3] == 1 and kept[9, 21, 21] == 0

    # a newer "<image> annotation [2]" (made by the Annotate widget) becomes the choice
    newer = viewer.add_labels(np.zeros((16, 32, 32), np.uint8), name="synthetic annotation [2]")
    assert predict.annotation_picker.layer() is newer
    wrong = viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="wrong annotation")
    predict.annotation_picker.set_layer(wrong)  # the user's choice, of another shape: refused
    assert predict.start_prediction() is False
    assert predict.status.is_error and "Keep my painted voxels" in predict.status.text()


def test_three_plane_2d_model_fills_the_layer_pass_after_pass(
    synthetic_viewer, widgets, qtbot, models
):
    train, predict = widgets[1], widgets[2]
    entry = _train_model(train, qtbot, models, iterations=2, arch="unet2d", planes="three")
    assert entry.model.config.planes == (0, 1, 2)
    messages: list[str] = []
    original = predict._on_tile

    def watch(tile):
        messages.append(tile.message)
        original(tile)

    predict._on_tile = watch
    predict.form.set_values(tile_shape=(4, 16, 16), device="cpu")
    assert predict.start_prediction() is True
    qtbot.waitUntil(lambda: not predict.is_running, timeout=WAIT_MS)
    assert not predict.status.is_error, predict.status.text()
    layer = synthetic_viewer.layers["synthetic segmentation"]
    assert layer.data.shape == (16, 32, 32)
    assert [m for m in dict.fromkeys(messages)] == [
        "slices across z (1/3)",
        "slices across y (2/3)",
        "slices across x (3/3)",
    ]
    assert predict.tiles_shown == len(messages)
