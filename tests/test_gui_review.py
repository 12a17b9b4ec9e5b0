"""The Metrics widget's review: volumes in mL, the per-slice Dice strip, FP/FN layers, CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_medseg.review import slice_dice_strip

WAIT_MS = 60_000

pytestmark = pytest.mark.gui


def _metrics(viewer, qtbot):
    from napari_medseg._qt.metrics_widget import MetricsWidget

    expert = viewer.layers["synthetic expert mask"].data
    segmentation = expert.copy()
    segmentation[9][segmentation[9] == 1] = 0  # axial slice 9 loses the structure
    segmentation[12, :, :16][segmentation[12, :, :16] == 1] = 0  # slice 12 loses a part
    viewer.add_labels(segmentation, name="synthetic segmentation", scale=(2.0, 1.0, 1.0))
    widget = MetricsWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    assert widget.compute() is True
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert not widget.status.is_error, widget.status.text()
    return widget, segmentation, expert


def test_table_has_volumes_in_ml(synthetic_viewer, qtbot):
    widget, segmentation, expert = _metrics(synthetic_viewer, qtbot)
    voxel_ml = 2.0 / 1000
    row = widget.rows[0]
    assert row["volume_ml"] == pytest.approx(np.count_nonzero(segmentation == 1) * voxel_ml)
    assert row["expert_ml"] == pytest.approx(np.count_nonzero(expert == 1) * voxel_ml)
    assert row["volume_diff_pct"] < 0
    table = widget.table
    header = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert "Volume mL" in header and "ΔV %" in header
    column = header.index("Volume mL")
    assert float(widget.table.item(0, column).text()) == pytest.approx(row["volume_ml"], abs=0.01)


def test_strip_follows_the_axis_and_finds_the_worst_slice(synthetic_viewer, qtbot):
    viewer = synthetic_viewer
    widget, segmentation, expert = _metrics(viewer, qtbot)
    panel = widget.review_panel
    assert panel.isEnabled()
    expected = slice_dice_strip(segmentation, expert, 0, [1])
    np.testing.assert_allclose(panel.strip.values, expected)
    assert int(np.nanargmin(expected)) == 9
    assert panel.go_to_worst() == 9
    layer = viewer.layers["synthetic segmentation"]
    assert round(layer.world_to_data(viewer.dims.point)[0]) == 9
    assert panel.strip.current == 9
    assert "9" in panel.worst_button.text()

    panel.strip.slice_clicked.emit(12)  # a click on a cell goes there
    assert round(layer.world_to_data(viewer.dims.point)[0]) == 12

    viewer.dims.order = (2, 0, 1)  # now slicing along x
    np.testing.assert_allclose(panel.strip.values, slice_dice_strip(segmentation, expert, 2, [1]))
    assert panel.strip.values.shape == (32,)
    viewer.dims.ndisplay = 3
    assert panel.strip.values.size == 0 and not panel.worst_button.isEnabled()


def test_error_layers_show_false_positives_and_negatives(synthetic_viewer, qtbot):
    viewer = synthetic_viewer
    widget, segmentation, expert = _metrics(viewer, qtbot)
    widget.review_panel.errors_box.setChecked(True)
    fn_layer = viewer.layers["synthetic segmentation false negatives"]
    fp_layer = viewer.layers["synthetic segmentation false positives"]
    np.testing.assert_array_equal(fn_layer.data > 0, (expert == 1) & (segmentation != 1))
    assert not fp_layer.data.any()
    assert tuple(fn_layer.scale) == (2.0, 1.0, 1.0)
    assert fn_layer.get_color(1) is not None
    assert not np.allclose(fn_layer.get_color(1), fp_layer.get_color(1))
    # the error layers are never taken for the segmentation
    assert widget.segmentation_picker.layer().name == "synthetic segmentation"
    widget.review_panel.errors_box.setChecked(False)
    assert "synthetic segmentation false negatives" not in viewer.layers


def test_csv_is_saved_with_every_column(synthetic_viewer, qtbot, tmp_path):
    from napari_medseg._qt.metrics_widget import COLUMNS

    widget, _, _ = _metrics(synthetic_viewer, qtbot)
    path = tmp_path / "metrics.csv"
    assert widget.save_csv(path) is True
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert tuple(rows[0]) == COLUMNS
    assert rows[-1][0] == "mean / total" and len(rows) == 3
    assert float(rows[1][COLUMNS.index("Volume mL")]) > 0
    assert widget.save_csv(tmp_path / "missing" / "m.csv") is False
    assert widget.status.is_error
