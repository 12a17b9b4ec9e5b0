"""The Metrics widget's "Estimate accuracy from my annotation" section (cross-validation).

Tiny synthetic case, 2 training steps per fold, 4 base channels: seconds on a 2-core CPU.
Run under an X server: ``xvfb-run -a pytest tests/test_gui_crossval.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

WAIT_MS = 120_000
FAST = {"iterations": 2, "time_budget": None, "device": "cpu", "base_channels": 4,
        "patch_shape": (8, 16, 16), "augment": False}


@pytest.fixture
def tiny_viewer(make_napari_viewer):
    from napari_medseg._napari.sample import layer_tuples
    from napari_medseg.synthetic import make_synthetic_case
    from napari_medseg.volume import Volume

    case = make_synthetic_case(shape=(12, 24, 24), slices_per_axis=(2, 2, 2), seed=0)
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in layer_tuples(
        "tiny", Volume(case.image, case.spacing), case.expert_mask, list(case.class_names),
        case.annotation,
    ):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


def _panel(viewer):
    from napari_medseg._qt.metrics_widget import MetricsWidget

    widget = MetricsWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    panel = widget.crossval
    assert panel.image_picker.layer().name == "tiny"
    assert panel.annotation_picker.layer().name == "tiny annotation"
    assert panel.folds_spin.value() == 3  # the paper's choice
    return panel


def test_crossval_table_from_the_annotation(tiny_viewer, qtbot):
    panel = _panel(tiny_viewer)
    assert not panel.table.isVisibleTo(panel)
    panel.form.set_values(**FAST, arch="unet3d")
    assert panel.run() is True
    assert panel.run() is False  # one at a time
    assert not panel.run_button.isEnabled() and panel.stop_button.isEnabled()
    seen: list[str] = []
    panel.worker.yielded.connect(lambda p: seen.append(p.describe()))
    qtbot.waitUntil(lambda: not panel.is_running, timeout=WAIT_MS)
    assert not panel.status.is_error, panel.status.text()
    assert any(text.startswith("fold 2/3 train step 2") for text in seen), seen
    assert any(text.startswith("fold 3/3 predict tile 1") for text in seen), seen

    result = panel.result
    assert result.complete and len(result.folds) == 3
    assert panel.progress.fraction == 1.0
    assert panel.table.isVisibleTo(panel)
    header = [panel.table.horizontalHeaderItem(c).text() for c in range(panel.table.columnCount())]
    assert header == ["Structure", "IoU f1", "IoU f2", "IoU f3", "IoU", "Dice"]
    assert panel.table.rowCount() == len(result.structures) + 1
    assert panel.table.item(0, 0).text() == "tube"
    assert panel.table.item(panel.table.rowCount() - 1, 0).text() == "mean"
    for r in range(panel.table.rowCount()):
        for c in (1, 2, 3):
            assert 0.0 <= float(panel.table.item(r, c).text()) <= 1.0
        assert " ± " in panel.table.item(r, 4).text() and " ± " in panel.table.item(r, 5).text()
    mean = float(panel.table.item(panel.table.rowCount() - 1, 4).text().split(" ± ")[0])
    assert mean == pytest.approx(result.mean_iou, abs=5e-4)
    assert "incomplete" not in panel.title.text() and "3 folds" in panel.title.text()
    assert "held out" in panel.title.toolTip()
    assert "mean IoU" in panel.status.text()
    assert panel.copy_text() == result.format_table()
    assert panel.run_button.isEnabled() and not panel.stop_button.isEnabled()


def test_crossval_stop_shows_the_partial_result(tiny_viewer, qtbot, monkeypatch):
    import napari_medseg.crossval as crossval_module

    real = crossval_module.crossval

    def stop_in_fold_two(*args, stop=None, **kwargs):
        """The real generator; the Stop event is set as soon as fold 2 begins (no race)."""
        generator = real(*args, stop=stop, **kwargs)
        while True:
            try:
                progress = next(generator)
            except StopIteration as done:
                return done.value
            if progress.fold == 1:
                stop.set()
            yield progress

    monkeypatch.setattr(crossval_module, "crossval", stop_in_fold_two)
    panel = _panel(tiny_viewer)
    panel.form.set_values(**FAST)
    assert panel.run() is True
    qtbot.waitUntil(lambda: not panel.is_running, timeout=WAIT_MS)
    assert not panel.status.is_error, panel.status.text()
    result = panel.result
    assert not result.complete and len(result.folds) == 1
    assert "incomplete" in panel.title.text() and "1 of 3 folds" in panel.title.text()
    assert "incomplete" in panel.status.text()
    header = [panel.table.horizontalHeaderItem(c).text() for c in range(panel.table.columnCount())]
    assert header == ["Structure", "IoU f1", "IoU", "Dice"]
    assert panel.table.isVisibleTo(panel) and panel.progress.fraction < 1.0
    assert "stopped" in panel.progress.label.text()


def test_crossval_stop_button_before_any_fold(tiny_viewer, qtbot):
    panel = _panel(tiny_viewer)
    panel.form.set_values(**{**FAST, "iterations": None, "time_budget": 120.0})
    assert panel.run() is True
    qtbot.waitUntil(lambda: "fold 1/3 train" in panel.progress.label.text(), timeout=WAIT_MS)
    panel.stop_button.click()
    qtbot.waitUntil(lambda: not panel.is_running, timeout=WAIT_MS)
    assert not panel.status.is_error, panel.status.text()
    assert not panel.result.complete and panel.result.folds == []
    assert "incomplete" in panel.title.text() and "no estimate" in panel.status.text()
    assert not panel.table.isVisibleTo(panel) and not panel.copy_button.isEnabled()


def test_crossval_refusals(tiny_viewer, qtbot):
    panel = _panel(tiny_viewer)
    panel.form.set_values(**FAST)
    small = tiny_viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="small annotation")
    panel.annotation_picker.set_layer(small)
    assert panel.run() is False
    assert panel.status.is_error and "shape" in panel.status.text()

    # one painted slice cannot make three folds: the core refuses before any training
    one = np.zeros((12, 24, 24), np.uint8)
    one[6] = tiny_viewer.layers["tiny expert mask"].data[6] + 1
    single = tiny_viewer.add_labels(one, name="single annotation")
    panel.annotation_picker.set_layer(single)
    assert panel.run() is True
    qtbot.waitUntil(lambda: not panel.is_running, timeout=WAIT_MS)
    assert panel.status.is_error and "3 annotated slices" in panel.status.text()
    assert panel.run_button.isEnabled()
