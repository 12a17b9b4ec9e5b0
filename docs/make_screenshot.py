"""Make ``docs/screenshot.png``: napari with the four MedSeg widgets after one pass of the loop.

Opens the synthetic sample (as ``medseg gui`` does), trains a small 3D U-Net on the CPU
(250 steps, 8 base channels, 16 x 32 x 32 patches: a few minutes on 2 cores),
predicts, computes the metrics and saves a screenshot of the whole window with the
Metrics tab in front (``--all-tabs`` also saves one per tab).

Run under an X server::

    xvfb-run -a .venv/bin/python docs/make_screenshot.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_medseg._qt.launch import dock_widgets

HERE = Path(__file__).resolve().parent


def _wait(widget, timeout: float = 600.0) -> None:
    app = QApplication.instance()
    end = time.monotonic() + timeout
    while widget.is_running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def _close_toasts() -> None:
    """Close napari's pop-up notifications so that they do not hide the canvas."""
    for widget in QApplication.allWidgets():
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def _show_tab(widget) -> None:
    """Bring the dock tab holding ``widget`` to the front."""
    dock = widget
    while dock is not None and dock.__class__.__name__ != "QtViewerDockWidget":
        dock = dock.parent()
    if dock is not None:
        dock.raise_()
    for _ in range(10):
        QApplication.instance().processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "screenshot.png")
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--patch", type=int, nargs=3, default=(16, 32, 32))
    parser.add_argument("--all-tabs", action="store_true", help="also save one image per tab")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-medseg")
    viewer.open_sample("napari-medseg", "synthetic")
    widgets = dock_widgets(viewer)
    annotate, train, predict, metrics = widgets.values()
    viewer.window.resize(1500, 950)

    annotate.annotation_picker.set_layer(viewer.layers["synthetic annotation"])
    train.annotation_picker.set_layer(viewer.layers["synthetic annotation"])
    train.form.set_values(
        time_budget=None, iterations=args.iterations, device="cpu",
        base_channels=args.base_channels, patch_shape=tuple(args.patch),
    )
    train.start_training()
    _wait(train)
    predict.form.set_values(device="cpu")
    predict.start_prediction()
    _wait(predict)
    metrics.compute()
    _wait(metrics)

    # segmentation filled, expert mask as a yellow outline, on a slice nobody painted
    annotation = viewer.layers["synthetic annotation"]
    annotation.visible = False
    expert = viewer.layers["synthetic expert mask"]
    expert.colormap = {None: (1, 1, 0, 1), 0: (0, 0, 0, 0), 1: (1, 1, 0, 1)}
    expert.contour, expert.opacity, expert.visible = 1, 1.0, True
    viewer.layers.selection.active = viewer.layers["synthetic segmentation"]
    per_slice = (expert.data > 0).sum(axis=(1, 2))
    per_slice[(annotation.data > 0).all(axis=(1, 2))] = 0
    z = int(per_slice.argmax())
    viewer.dims.set_point(0, z * viewer.layers["synthetic"].scale[0])
    viewer.reset_view()
    _close_toasts()

    if args.all_tabs:
        for i, widget in enumerate((annotate, train, predict, metrics), start=1):
            _show_tab(widget)
            path = args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")
            viewer.screenshot(path=str(path), canvas_only=False, flash=False)
            print(f"saved {path}")
    _show_tab(metrics)
    viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    print(f"saved {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
