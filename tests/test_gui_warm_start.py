"""The Train widget continues from its last model by default, and says so."""

from __future__ import annotations

import pytest

from napari_medseg._qt.train_widget import TrainWidget

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


def _train(widget, qtbot):
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    return widget.model


def test_train_again_continues_from_the_last_model(synthetic_viewer, qtbot, models):
    widget = TrainWidget(synthetic_viewer)
    synthetic_viewer.window.add_dock_widget(widget, area="right")
    widget.form.set_values(iterations=2, time_budget=None, device="cpu")
    assert widget.continue_box.isHidden()

    first = _train(widget, qtbot)
    assert [r["start"] for r in first.config.history["rounds"]] == ["scratch"]
    assert not widget.continue_box.isHidden() and widget.continue_box.isChecked()
    assert widget.model_name in widget.continue_box.text()

    annotation = synthetic_viewer.layers["synthetic annotation"]
    data = annotation.data.copy()
    data[1] = 1  # one more slice painted, all background
    annotation.data = data
    second = _train(widget, qtbot)
    assert [r["start"] for r in second.config.history["rounds"]] == ["scratch", "continued"]
    assert second.config.normalization == first.config.normalization

    widget.continue_box.setChecked(False)  # from scratch again
    third = _train(widget, qtbot)
    assert [r["start"] for r in third.config.history["rounds"]] == ["scratch"]


def test_a_continued_round_gets_the_short_budget_unless_one_is_chosen(synthetic_viewer):
    from napari_medseg.training import TrainConfig
    from napari_medseg.training.warm import WARM_START_BUDGET, with_warm_budget

    assert with_warm_budget(TrainConfig()).time_budget == WARM_START_BUDGET
    assert with_warm_budget(TrainConfig(time_budget=90.0)).time_budget == 90.0
    assert with_warm_budget(TrainConfig(time_budget=None, iterations=5)).time_budget is None


def test_a_different_image_trains_from_scratch(synthetic_viewer, qtbot, models):
    import numpy as np

    widget = TrainWidget(synthetic_viewer)
    widget.form.set_values(iterations=2, time_budget=None, device="cpu")
    _train(widget, qtbot)
    image = synthetic_viewer.layers["synthetic"]
    synthetic_viewer.add_image(np.asarray(image.data)[:, :, :30].copy(), name="cropped")
    assert widget.continued_model((16, 32, 30)) is None
    widget._image_name = "synthetic"
    assert widget.continued_model((16, 32, 32)) is widget.model


def test_another_network_in_the_form_trains_from_scratch(synthetic_viewer, qtbot, models):
    widget = TrainWidget(synthetic_viewer)
    widget.form.set_values(iterations=2, time_budget=None, device="cpu")
    _train(widget, qtbot)
    widget.form.set_values(ensemble=2)  # the user asks for an ensemble now
    second = _train(widget, qtbot)
    assert second.config.network.members == 2
    assert [r["start"] for r in second.config.history["rounds"]] == ["scratch"]


def test_what_makes_a_network_differ():
    from napari_medseg.progress import run_to_completion
    from napari_medseg.synthetic import make_synthetic_case
    from napari_medseg.training import TrainConfig, train
    from napari_medseg.training.warm import network_differs

    case = make_synthetic_case(shape=(16, 24, 24), seed=0)
    config = TrainConfig(iterations=1, time_budget=None, device="cpu", base_channels=4)
    model = run_to_completion(train(case.image, case.annotation, config))
    assert network_differs(config, model) == []
    assert network_differs(TrainConfig(base_channels=4, seed=3, learning_rate=1e-3), model) == []
    assert network_differs(TrainConfig(arch="unet2d", base_channels=4), model) == ["arch"]
    assert network_differs(TrainConfig(), model) == ["base_channels"]


def test_the_run_draws_its_loss_and_validation_and_reports_the_figure(
    synthetic_viewer, qtbot, models, tmp_path
):
    widget = TrainWidget(synthetic_viewer)
    synthetic_viewer.window.add_dock_widget(widget, area="right")
    synthetic_viewer.window.show()
    widget.form.set_values(iterations=60, time_budget=None, device="cpu")
    assert widget.curves.isHidden()
    model = _train(widget, qtbot)
    figure = model.config.history["validation"]["score"]
    assert widget.curves.isVisible() and len(widget.curves.loss) == 60
    assert widget.curves.validation[-1][1] == pytest.approx(figure, abs=1e-4)
    assert f"validation Dice {figure:.3f}" in widget.progress.label.text()
    assert "held out" in widget.status.toolTip()
    shot = synthetic_viewer.screenshot(canvas_only=False)
    assert shot.ndim == 3
    from imageio.v3 import imwrite

    imwrite(tmp_path / "train_curves.png", shot)  # to look at by hand
    widget.start_training()  # a new run starts with empty curves
    assert widget.curves.loss == [] or widget.curves.loss[0][0] == 1
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
