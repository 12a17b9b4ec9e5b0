"""The Train widget's rounds: each run kept with its figures, shown, restored after a crash."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._qt.train_widget import TrainWidget

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


def _train(widget, qtbot):
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "kept" in widget.rounds.status.text(), timeout=WAIT_MS)
    return widget.model


def _two_rounds(viewer, qtbot):
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.form.set_values(iterations=2, time_budget=None, device="cpu")
    _train(widget, qtbot)
    annotation = viewer.layers["synthetic annotation"]
    first_painting = annotation.data.copy()
    data = first_painting.copy()
    data[1] = 1  # one more axial slice painted, all background
    annotation.data = data
    _train(widget, qtbot)
    return widget, first_painting


def test_each_run_is_a_round_with_its_figures(synthetic_viewer, qtbot, models):
    widget, first_painting = _two_rounds(synthetic_viewer, qtbot)
    panel = widget.rounds
    assert [r.number for r in panel.rounds] == [1, 2]
    assert panel.rounds[1].slices[0] == panel.rounds[0].slices[0] + 1
    assert panel.table.rowCount() == 2
    assert panel.table.item(1, 2).text().startswith(str(panel.rounds[1].slices[0]))
    # the expert mask is loaded: every round has its Dice, plotted against slices painted
    assert all(r.dice is not None and 0.0 <= r.dice <= 1.0 for r in panel.rounds)
    dice = panel.plot.series()["dice"]
    assert [x for x, _ in dice] == [r.painted for r in panel.rounds]
    assert not panel.plot.isHidden()


def test_a_round_shows_its_segmentation(synthetic_viewer, qtbot, models):
    widget, _ = _two_rounds(synthetic_viewer, qtbot)
    panel = widget.rounds
    panel.select(1)
    worker = panel.show_selected()
    qtbot.waitUntil(lambda: "synthetic round 1 segmentation" in synthetic_viewer.layers,
                    timeout=WAIT_MS)
    del worker
    layer = synthetic_viewer.layers["synthetic round 1 segmentation"]
    stored = panel.store.load_segmentation(panel.rounds[0])
    np.testing.assert_array_equal(layer.data, stored)
    assert tuple(layer.scale) == (2.0, 1.0, 1.0)


def test_rounds_survive_a_crash_and_go_back_restores_one(
    synthetic_viewer, qtbot, models, make_napari_viewer
):
    _, first_painting = _two_rounds(synthetic_viewer, qtbot)
    # "crash": a new viewer and widget on the same image find the rounds on disk
    from napari_medseg._napari.sample import layer_tuples
    from napari_medseg.synthetic import make_synthetic_case
    from napari_medseg.volume import Volume

    case = make_synthetic_case(shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0), seed=0)
    viewer = make_napari_viewer()
    for data, kwargs, kind in layer_tuples(
        "synthetic", Volume(case.image, case.spacing), case.expert_mask,
        list(case.class_names), case.annotation,
    ):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = TrainWidget(viewer)
    panel = widget.rounds
    assert [r.number for r in panel.rounds] == [1, 2]
    assert widget.model is None

    panel.select(1)
    panel.go_back()
    qtbot.waitUntil(lambda: widget.model is not None, timeout=WAIT_MS)
    restored = viewer.layers["synthetic annotation round 1"]
    np.testing.assert_array_equal(restored.data, first_painting)
    assert widget.annotation_picker.layer() is restored
    assert widget.continued_model((16, 32, 32)) is widget.model
    assert "round 1" in widget.model_name
    # the next run continues from the restored model
    widget.form.set_values(iterations=2, time_budget=None, device="cpu")
    model = _train(widget, qtbot)
    assert [r["start"] for r in model.config.history["rounds"]][-1] == "continued"
    assert [r.number for r in panel.rounds] == [1, 2, 3]
