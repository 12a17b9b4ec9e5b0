"""The dock widgets one by one, on a tiny synthetic case (run under ``xvfb-run``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari.sample import layer_tuples, nodules, synthetic
from napari_medseg.annotation import fully_annotated_slices
from napari_medseg.colors import CLASS_NAMES_KEY

WAIT_MS = 60_000


def _dock(viewer, widget_class):
    widget = widget_class(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    return widget


# ----------------------------------------------------------------------------- no display


def test_manifest_declares_reader_writers_samples_and_widgets():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    try:
        manifest = pm.get_manifest("napari-medseg")
    except KeyError:
        pytest.skip("napari-medseg is not installed (pip install -e .)")
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == [
        "1 · Annotate", "2 · Train", "3 · Predict", "4 · Metrics", "DICOM series"
    ]
    assert {s.key for s in contributions.sample_data} == {
        "synthetic", "nodules", "brain1", "brain_tissue"
    }
    patterns = contributions.readers[0].filename_patterns
    assert {"*.nii.gz", "*.nrrd", "*.dcm", "*.npy"} <= set(patterns)
    assert contributions.readers[0].accepts_directories
    assert {tuple(w.layer_types) for w in contributions.writers} == {("labels",), ("image",)}


def test_synthetic_sample_is_deterministic_and_scaled():
    first, second = synthetic(), synthetic()
    assert [t[2] for t in first] == ["image", "labels", "labels"]
    assert [t[1]["name"] for t in first] == [
        "synthetic", "synthetic expert mask", "synthetic annotation"
    ]
    for (a, meta, _), (b, _, _) in zip(first, second):
        np.testing.assert_array_equal(a, b)
        assert len(meta["scale"]) == 3
    annotation = first[2][0]
    assert annotation.dtype == np.uint8 and annotation.max() >= 2 and (annotation == 0).any()
    assert first[0][1]["metadata"][CLASS_NAMES_KEY]


def test_nodules_sample_has_image_mask_and_annotation():
    layers = nodules()
    names = [t[1]["name"] for t in layers]
    assert names == ["nodules", "nodules expert mask", "nodules annotation"]
    mask, annotation = layers[1][0], layers[2][0]
    assert set(np.unique(mask)) == {0, 1} and annotation.max() == 2
    assert layers[0][1]["metadata"][CLASS_NAMES_KEY] == ["nodule"]


def test_brain_sample_has_mri_spacing():
    data = pytest.importorskip("napari_medseg.sample_data")
    try:
        data.sample_data_dir()
    except Exception:  # noqa: BLE001
        pytest.skip("bundled sample data not available")
    from napari_medseg._napari.sample import brain1

    layers = brain1()
    image, meta, kind = layers[0]
    assert kind == "image" and image.ndim == 3
    assert meta["scale"][0] > meta["scale"][1]  # thick slices
    assert layers[1][0].shape == image.shape and layers[1][0].max() == 1


def test_brain_tissue_sample_has_three_tissues_and_slices_on_every_axis():
    from napari_medseg._napari.sample import brain_tissue

    layers = brain_tissue()
    names = [t[1]["name"] for t in layers]
    assert names == ["brain tissue", "brain tissue expert mask", "brain tissue annotation"]
    mask, annotation = layers[1][0], layers[2][0]
    assert set(np.unique(mask)) == {0, 1, 2, 3}
    assert set(np.unique(annotation)) == {0, 1, 2, 3, 4}
    for axis in range(3):  # whole slices painted along z, y and x
        assert fully_annotated_slices(annotation, axis)
    assert layers[0][1]["metadata"][CLASS_NAMES_KEY] == ["CSF", "grey matter", "white matter"]
    assert tuple(layers[0][1]["scale"]) == (2.0, 2.0, 2.0)


# ----------------------------------------------------------------------------- forms


@pytest.mark.gui
def test_config_form_round_trips_train_config(qtbot):
    from napari_medseg._qt._forms import ConfigForm
    from napari_medseg.training import TrainConfig

    form = ConfigForm(TrainConfig, ("arch", "time_budget", "iterations", "device", "seed"))
    qtbot.addWidget(form)
    assert form.config() == TrainConfig()
    assert form.collapsible is not None and "learning_rate" in form.advanced.editors
    form.set_values(arch="fcn", time_budget=None, iterations=7, learning_rate=1e-4,
                    patch_shape=(8, 16, 16), batch_norm=False)
    config = form.config()
    assert (config.arch, config.time_budget, config.iterations) == ("fcn", None, 7)
    assert config.learning_rate == pytest.approx(1e-4)
    assert config.patch_shape == (8, 16, 16) and config.batch_norm is False
    assert "wall-clock" in form.editors["time_budget"].widget.toolTip().lower()


# ----------------------------------------------------------------------------- annotate


@pytest.mark.gui
def test_annotate_refuses_without_image(make_napari_viewer):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    viewer = make_napari_viewer()
    widget = _dock(viewer, AnnotateWidget)
    assert widget.create_annotation_layer() is None
    assert widget.status.is_error and "image" in widget.status.text()
    assert widget.fill_current_slice() == 0 and widget.status.is_error
    assert len(viewer.layers) == 0


@pytest.mark.gui
def test_annotate_creates_layer_on_image_grid(synthetic_viewer):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    viewer = synthetic_viewer
    image = viewer.layers["synthetic"]
    widget = _dock(viewer, AnnotateWidget)
    widget.image_picker.set_layer(image)
    widget.class_names_edit.setText("tube, blob")
    layer = widget.create_annotation_layer()
    assert layer is not None and not widget.status.is_error
    assert layer.data.shape == image.data.shape and layer.data.dtype == np.uint8
    assert not layer.data.any()
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert tuple(layer.scale) == (2.0, 1.0, 1.0)
    assert layer.selected_label == 2 and layer.mode == "paint"
    assert layer.metadata[CLASS_NAMES_KEY] == ["tube", "blob"]
    assert widget.annotation_picker.layer() is layer
    # background grey, structures coloured, 0 transparent
    assert layer.colormap.map(0)[..., 3] == 0
    grey, red = layer.colormap.map(1).ravel(), layer.colormap.map(2).ravel()
    assert np.allclose(grey[0], grey[1], atol=0.1) and red[0] > 0.8 > red[1]
    legend_text = [
        widget.legend_layout.itemAt(i).widget().text()
        for i in range(widget.legend_layout.count())
    ]
    assert "background" in legend_text and "blob" in legend_text


@pytest.mark.gui
def test_fill_slice_works_on_all_three_planes_and_undoes(synthetic_viewer, qtbot):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    viewer = synthetic_viewer
    widget = _dock(viewer, AnnotateWidget)
    widget.image_picker.set_layer(viewer.layers["synthetic"])
    layer = widget.create_annotation_layer()
    layer.data[5, 10:12, 10:12] = 2

    viewer.dims.order = (0, 1, 2)  # axial view: scroll through z
    viewer.dims.set_point(0, 5 * 2.0)  # world mm -> slice 5 (spacing 2)
    assert widget.fill_current_slice() == 32 * 32 - 4
    assert (layer.data[5] > 0).all() and (layer.data[5, 10:12, 10:12] == 2).all()
    assert not layer.data[4].any() and not layer.data[6].any()

    viewer.dims.order = (1, 0, 2)  # coronal: scroll through y
    viewer.dims.set_point(1, 7.0)
    assert widget.fill_current_slice() > 0
    assert (layer.data[:, 7, :] > 0).all()

    viewer.dims.order = (2, 0, 1)  # sagittal: scroll through x
    viewer.dims.set_point(2, 3.0)
    widget.fill_current_slice()
    assert (layer.data[:, :, 3] > 0).all()
    widget.update_slice_list()
    text = widget.slices_label.text()
    # each slice is listed in its own plane only (x = 3 crosses every z slice as a line)
    assert "axis 0 (z): 5\n" in text and "axis 1 (y): 7\n" in text
    assert "axis 2 (x): 3\n" in text
    assert "background" in text and "tube 4" in text

    layer.undo()
    assert not layer.data[:, :, 3].all() and (layer.data[:, 7, :] > 0).all()

    viewer.dims.ndisplay = 3
    assert widget.fill_current_slice() == 0
    assert widget.status.is_error and "2D" in widget.status.text()


@pytest.mark.gui
def test_slice_list_follows_painting(synthetic_viewer, qtbot):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    viewer = synthetic_viewer
    widget = _dock(viewer, AnnotateWidget)
    widget.image_picker.set_layer(viewer.layers["synthetic"])
    layer = widget.create_annotation_layer()
    assert "axis 0 (z): none" in widget.slices_label.text()
    for z in (12, 14):
        index = np.nonzero(np.ones((1, 3, 3), bool))
        layer.data_setitem((index[0] + z, index[1] + 4, index[2] + 4), 2)  # like a brush stroke
    qtbot.waitUntil(lambda: "axis 0 (z): 12, 14" in widget.slices_label.text(), timeout=5000)
    assert "axis 1 (y): none" in widget.slices_label.text()  # strokes drawn on z slices
    assert "tube 18" in widget.slices_label.text()
    layer.undo()  # undo emits no paint event, only a refresh
    qtbot.waitUntil(lambda: "axis 0 (z): 12\n" in widget.slices_label.text(), timeout=5000)


@pytest.mark.gui
def test_roi_box_marks_outside_as_background(synthetic_viewer):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    viewer = synthetic_viewer
    widget = _dock(viewer, AnnotateWidget)
    widget.image_picker.set_layer(viewer.layers["synthetic"])
    layer = widget.create_annotation_layer()
    layer.data[6, 12, 12] = 2
    viewer.dims.set_point(0, 6 * 2.0)
    assert widget.mark_outside_box() == 0 and widget.status.is_error  # no box yet
    shapes = widget.add_box_layer()
    assert shapes.mode == "add_rectangle" and tuple(shapes.scale) == (2.0, 1.0, 1.0)
    shapes.add(np.array([[6, 8, 8], [6, 8, 20], [6, 20, 20], [6, 20, 8]]), shape_type="rectangle")
    widget.from_spin.setValue(3)
    widget.to_spin.setValue(10)
    assert widget.roi_box() == [(3, 11), (8, 21), (8, 21)]
    changed = widget.mark_outside_box()
    assert changed == layer.data.size - 8 * 13 * 13
    assert not layer.data[3:11, 8:21, 8:21][layer.data[3:11, 8:21, 8:21] != 2].any()
    assert (layer.data[:3] == 1).all() and (layer.data[:, :8] == 1).all()
    assert layer.data[6, 12, 12] == 2


# ----------------------------------------------------------------------------- train


@pytest.mark.gui
def test_train_with_empty_annotation_shows_message(synthetic_viewer, models):
    from napari_medseg._qt.train_widget import TrainWidget

    viewer = synthetic_viewer
    empty = viewer.add_labels(np.zeros((16, 32, 32), np.uint8), name="empty annotation",
                              scale=(2.0, 1.0, 1.0))
    widget = _dock(viewer, TrainWidget)
    widget.annotation_picker.set_layer(empty)
    assert widget.start_training() is False
    assert widget.status.is_error and "no annotated voxel" in widget.status.text()
    assert not widget.is_running and len(models) == 0


@pytest.mark.gui
def test_train_widget_imports_the_optimiser_parts_on_the_gui_thread(synthetic_viewer,
                                                                      monkeypatch):
    """What the first optimiser step would import is imported when the widget is made, on the
    GUI thread: in the worker it froze the viewer and raced the GUI thread's imports."""
    import threading

    import napari_medseg.training.optimisation as optimisation
    from napari_medseg._qt.train_widget import TrainWidget

    threads = []
    monkeypatch.setattr(optimisation, "import_optimiser_parts",
                        lambda: threads.append(threading.current_thread()))
    _dock(synthetic_viewer, TrainWidget)
    assert threads == [threading.main_thread()]


@pytest.mark.gui
def test_train_refuses_bad_settings(synthetic_viewer, models):
    from napari_medseg._qt.train_widget import TrainWidget

    widget = _dock(synthetic_viewer, TrainWidget)
    assert widget.annotation_picker.layer().name == "synthetic annotation"
    widget.form.set_values(time_budget=None, iterations=None)
    assert widget.start_training() is False
    assert "time budget" in widget.status.text() and not widget.is_running


# ----------------------------------------------------------------------------- predict


@pytest.mark.gui
def test_predict_without_model_shows_message(synthetic_viewer, models):
    from napari_medseg._qt.predict_widget import PredictWidget

    widget = _dock(synthetic_viewer, PredictWidget)
    n_layers = len(synthetic_viewer.layers)
    assert widget.start_prediction() is False
    assert widget.status.is_error and "no model" in widget.status.text()
    assert len(synthetic_viewer.layers) == n_layers


@pytest.mark.gui
def test_predict_lists_models_from_registry(synthetic_viewer, models):
    from types import SimpleNamespace

    from napari_medseg._qt.predict_widget import PredictWidget

    widget = _dock(synthetic_viewer, PredictWidget)
    assert widget.model_combo.count() == 0
    config = SimpleNamespace(class_names=["background", "tube"], spacing=(2.0, 1.0, 1.0),
                             arch="unet3d", history={"steps": 3},
                             network=SimpleNamespace(members=1))
    models.add("first", SimpleNamespace(config=config))
    models.add("second", SimpleNamespace(config=config))
    assert [widget.model_combo.itemText(i) for i in range(2)] == ["first", "second"]
    assert widget.model_combo.currentText() == "second"  # newest is chosen
    assert widget.model_info.text() == "unet3d · tube · 2 × 1 × 1 mm · 3 steps"
    ensemble = SimpleNamespace(**{**config.__dict__, "network": SimpleNamespace(members=3)})
    models.add("third", SimpleNamespace(config=ensemble))
    assert widget.model_info.text().startswith("3 × unet3d (ensemble) · tube")
    planes = SimpleNamespace(**{**config.__dict__, "arch": "unet2d", "planes": (0, 1, 2)})
    models.add("fourth", SimpleNamespace(config=planes))
    assert widget.model_info.text().startswith("unet2d on 3 planes · tube")
    grouped = SimpleNamespace(**{**config.__dict__, "network": SimpleNamespace(norm_groups=4)})
    models.add("fifth", SimpleNamespace(config=grouped))
    assert widget.model_info.text().startswith("unet3d · group norm · tube")


# ----------------------------------------------------------------------------- metrics


@pytest.mark.gui
def test_metrics_table_and_csv(synthetic_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_medseg._qt.metrics_widget import COLUMNS, MetricsWidget

    viewer = synthetic_viewer
    expert = viewer.layers["synthetic expert mask"].data
    segmentation = expert.copy()
    segmentation[:, :, :16][segmentation[:, :, :16] == 1] = 0  # lose half the structure
    viewer.add_labels(segmentation, name="synthetic segmentation", scale=(2.0, 1.0, 1.0))
    widget = _dock(viewer, MetricsWidget)
    assert widget.segmentation_picker.layer().name == "synthetic segmentation"
    assert widget.reference_picker.layer().name == "synthetic expert mask"
    assert widget.compute() is True
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert not widget.status.is_error, widget.status.text()
    assert widget.table.rowCount() == 2  # one structure + mean
    assert widget.table.item(1, 0).text() == "mean / total"
    assert "tube" in widget.table.item(0, 0).text()
    dice = float(widget.table.item(0, 1).text())
    assert 0.0 < dice < 1.0
    assert float(widget.table.item(0, 4).text()) > 0  # HD95 in mm
    text = widget.copy_csv()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert QApplication.clipboard().text() == text

    widget.only_unannotated.setChecked(True)
    assert widget.annotation_picker.layer().name == "synthetic annotation"
    assert widget.compute() is True
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert "not annotated" in widget.status.text()


@pytest.mark.gui
def test_metrics_refuses_mismatched_shapes(synthetic_viewer):
    from napari_medseg._qt.metrics_widget import MetricsWidget

    viewer = synthetic_viewer
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="small segmentation")
    widget = _dock(viewer, MetricsWidget)
    widget.segmentation_picker.set_layer(viewer.layers["small segmentation"])
    assert widget.compute() is False
    assert widget.status.is_error and "shape" in widget.status.text()


@pytest.mark.gui
def test_layer_picker_follows_layer_list(synthetic_viewer):
    from napari_medseg._qt._layers import labels_picker

    viewer = synthetic_viewer
    picker = labels_picker(viewer, prefer=("annotation",))
    assert picker.layer().name == "synthetic annotation"
    newer = viewer.add_labels(np.zeros((16, 32, 32), np.uint8), name="other annotation")
    assert picker.layer() is newer  # newest preferred layer while the user chose none
    picker.set_layer(viewer.layers["synthetic expert mask"])
    viewer.add_labels(np.zeros((16, 32, 32), np.uint8), name="third annotation")
    assert picker.layer().name == "synthetic expert mask"  # the user's choice stays
    viewer.layers["synthetic expert mask"].name = "renamed mask"
    assert picker.currentText() == "renamed mask"
    viewer.layers.remove("renamed mask")
    assert picker.layer().name == "third annotation"
    picker.deleteLater()


def test_layer_tuples_keep_names_and_colors():
    from napari_medseg.volume import Volume

    image = Volume(np.zeros((4, 5, 6), np.float32), (3.0, 1.0, 1.0), (1.0, 2.0, 3.0))
    layers = layer_tuples("case", image, np.zeros((4, 5, 6), np.uint8), ["a", "b"])
    assert [t[1]["name"] for t in layers] == ["case", "case expert mask"]
    assert layers[0][1]["scale"] == (3.0, 1.0, 1.0)
    assert layers[0][1]["translate"] == (1.0, 2.0, 3.0)
    assert set(layers[1][1]["colormap"]) >= {0, 1, 2}


def test_widgets_never_import_torch():
    from pathlib import Path

    import napari_medseg._qt as qt

    sources = sorted(Path(qt.__file__).parent.rglob("*.py"))
    assert any(source.parent.name == "annotate" for source in sources)  # the panels too
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert "import torch" not in text and "from torch" not in text, source.name


@pytest.mark.gui
def test_launch_gui_opens_files_and_docks_the_widgets(qtbot, monkeypatch, tmp_path, models):
    import napari_medseg._qt.launch as launch

    def no_fallback(path):
        raise AssertionError(f"{path} was not found through the plugin manifest")

    monkeypatch.setattr(launch, "_widget_class", no_fallback)
    volume = tmp_path / "scan.npy"
    np.save(volume, np.zeros((8, 16, 16), np.float32))
    missing = tmp_path / "missing.nii.gz"
    viewer = launch.launch_gui([str(volume), str(missing)], run=False)
    try:
        assert [layer.name for layer in viewer.layers] == ["scan"]
        widgets = launch.dock_widgets(viewer)  # already docked: the same widgets come back
        assert list(widgets) == ["1 · Annotate", "2 · Train", "3 · Predict", "4 · Metrics"]
        assert widgets["2 · Train"].image_picker.layer().name == "scan"
    finally:
        viewer.close()


@pytest.mark.gui
def test_launch_gui_without_files_opens_the_synthetic_sample(qtbot, models):
    from napari_medseg._qt.launch import launch_gui

    viewer = launch_gui([], run=False)
    try:
        names = [layer.name for layer in viewer.layers]
        assert names == ["synthetic", "synthetic expert mask", "synthetic annotation"]
        assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
    finally:
        viewer.close()
