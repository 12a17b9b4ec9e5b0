"""Make the README's workflow pictures from the real app, on the bundled brain MRI.

``docs/images/live_preview.png``: the Train tab while a 3D U-Net trains, with the live
preview on an unpainted slice and the loss / validation chart. Then two more rounds, each
after one more slice is painted from the expert mask (a continued 20 s round):
``rounds.png`` shows the Rounds panel and its effort plot. ``suggestions.png``: the Predict
tab after a prediction with *Uncertainty*, the view turned to the first suggested slice.
``review.png``: the Metrics tab's review (per-slice Dice strip at the worst slice, false
positive / negative layers).

Run under an X server, alone on the machine (about four minutes on 2 cores)::

    xvfb-run -a .venv/bin/python docs/make_workflow_screenshots.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from make_screenshot import _close_toasts, _open_brain, _show_tab, _wait
from qtpy.QtWidgets import QApplication

from napari_medseg._qt.launch import dock_widgets

HERE = Path(__file__).resolve().parent
UNPAINTED_SLICE = 13  # through the tumour; the annotation paints 12, 14 and 16


def _pump(seconds: float) -> None:
    app, end = QApplication.instance(), time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _go_to(viewer, image, z: int) -> None:
    viewer.dims.order = (0, 1, 2)
    viewer.dims.set_point(0, float(image.data_to_world([z, 0, 0])[0]))
    viewer.reset_view()


def _save(viewer, widget, path: Path) -> None:
    _show_tab(widget)
    _close_toasts()
    _pump(0.3)
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print(f"saved {path}")


def _paint_from_expert(annotation, expert, z: int) -> None:
    """Paint axial slice ``z`` in full as a user would: the expert's structures, the rest
    background (structure k -> k + 1)."""
    data = annotation.data
    data[z] = np.asarray(expert.data[z]) + 1
    annotation.data = data
    annotation.refresh()


def _live_preview(viewer, train, image, out: Path) -> None:
    train.form.set_values(time_budget=60.0, iterations=None, device="cpu", seed=0)
    _go_to(viewer, image, UNPAINTED_SLICE)
    assert train.start_training(), train.status.text()
    end = time.monotonic() + 50
    while train.is_running and time.monotonic() < end:
        _pump(0.5)
        layer = train.preview.layer
        if layer is not None and time.monotonic() > end - 25 and layer.data.any():
            break
    _save(viewer, train, out / "live_preview.png")
    _wait(train, timeout=600)


def _more_rounds(viewer, train, image, annotation, expert, out: Path) -> None:
    for z in (15, 11):  # one more tumour slice per round
        _paint_from_expert(annotation, expert, z)
        train.form.set_values(time_budget=20.0, device="cpu", seed=0)
        assert train.start_training(), train.status.text()
        _wait(train, timeout=600)
        _pump(3.0)  # the round is written and scored in a worker
    _go_to(viewer, image, UNPAINTED_SLICE)
    viewer.layers.selection.active = annotation
    _save(viewer, train, out / "rounds.png")


def _suggestions(viewer, predict, annotation, out: Path) -> None:
    _show_tab(predict)
    predict.form.set_values(device="cpu", uncertainty=True)
    predict.annotation_picker.set_layer(annotation)
    assert predict.start_prediction(), predict.status.text()
    _wait(predict)
    predict.show_next_suggestion()
    _save(viewer, predict, out / "suggestions.png")


def _review(viewer, metrics, image, annotation, out: Path) -> None:
    _show_tab(metrics)
    viewer.layers["brain1 uncertainty"].visible = False
    _go_to(viewer, image, UNPAINTED_SLICE)
    metrics.annotation_picker.set_layer(annotation)
    metrics.compute()
    _wait(metrics)
    review = metrics.review_panel
    review.errors_box.setChecked(True)
    review.go_to_worst()
    annotation.visible = False
    _save(viewer, metrics, out / "review.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()
    autosave_dir = tempfile.mkdtemp(prefix="medseg-screenshots-")
    os.environ["MEDSEG_AUTOSAVE_DIR"] = autosave_dir  # rounds and autosaves: thrown away
    viewer = napari.Viewer(title="napari-medseg")
    name = _open_brain(viewer)
    annotate, train, predict, metrics = dock_widgets(viewer).values()
    viewer.window.resize(1500, 1000)
    image, annotation = viewer.layers[name], viewer.layers[f"{name} annotation"]
    expert = viewer.layers[f"{name} expert mask"]
    expert.visible = False
    for widget in (annotate, train, predict):
        widget.annotation_picker.set_layer(annotation)
    _show_tab(train)
    _live_preview(viewer, train, image, args.out)
    _more_rounds(viewer, train, image, annotation, expert, args.out)
    _suggestions(viewer, predict, annotation, args.out)
    _review(viewer, metrics, image, annotation, args.out)
    viewer.close()
    shutil.rmtree(autosave_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
