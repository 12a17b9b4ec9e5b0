"""Make ``docs/screenshot.png``: napari with the four MedSeg widgets after one pass of the loop.

By default opens the bundled brain MRI (File ▸ Open Sample ▸ MedSeg ▸ brain1), adds the
sparse annotation the benchmarks use (three painted axial slices and a region-of-interest
box, :func:`napari_medseg.sample_data.real_case_annotation`), trains the 3D U-Net on the
CPU for 100 steps (seed 0, so the same picture every time; well under a minute on 2 idle
cores, several minutes on a busy machine), predicts, scores the voxels nobody painted against the
expert mask and saves a screenshot of the whole window with the Metrics tab in front
(``--all-tabs`` also saves one per tab). ``--sample synthetic`` uses the synthetic sample
instead (250 steps). ``--time-budget`` trains for a wall-clock time instead of a number of
steps (quicker to predict, but the picture then depends on the machine's load).

Run under an X server::

    xvfb-run -a .venv/bin/python docs/make_screenshot.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_medseg._napari.sample import layer_tuples
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


def _open_brain(viewer) -> str:
    """brain1 from the plugin's sample menu, plus the benchmarks' sparse annotation."""
    from napari_medseg.sample_data import load_real_case, real_case_annotation

    viewer.open_sample("napari-medseg", "brain1")
    case = load_real_case("brain1")
    annotation = real_case_annotation(case)
    data, kwargs, _ = layer_tuples(
        "brain1", case.image, case.label.array, list(case.class_names), annotation
    )[2]
    viewer.add_labels(data, **kwargs)
    return "brain1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "screenshot.png")
    parser.add_argument("--sample", choices=("brain1", "synthetic"), default="brain1")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training steps (default: 100 on brain1, 250 on synthetic)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="train for this many seconds instead of --iterations steps")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--patch", type=int, nargs=3, default=None,
                        help="training patch (default: chosen from the image; synthetic 16 32 32)")
    parser.add_argument("--all-tabs", action="store_true", help="also save one image per tab")
    args = parser.parse_args()
    # autosaves of this run go to a throw-away folder, not the user's cache
    autosave_dir = tempfile.mkdtemp(prefix="medseg-screenshot-")
    os.environ["MEDSEG_AUTOSAVE_DIR"] = autosave_dir

    viewer = napari.Viewer(title="napari-medseg")
    if args.sample == "brain1":
        name = _open_brain(viewer)
        steps = args.iterations or 100
        patch = tuple(args.patch) if args.patch else None
    else:
        viewer.open_sample("napari-medseg", "synthetic")
        name = "synthetic"
        steps = args.iterations or 250
        patch = tuple(args.patch) if args.patch else (16, 32, 32)
    if args.time_budget:
        budget = {"time_budget": args.time_budget, "iterations": None}
    else:
        budget = {"time_budget": None, "iterations": steps}
    widgets = dock_widgets(viewer)
    annotate, train, predict, metrics = widgets.values()
    viewer.window.resize(1500, 950)

    annotation = viewer.layers[f"{name} annotation"]
    annotate.annotation_picker.set_layer(annotation)
    train.annotation_picker.set_layer(annotation)
    train.form.set_values(
        **budget, device="cpu", base_channels=args.base_channels, patch_shape=patch
    )
    train.start_training()
    _wait(train, timeout=3600)
    predict.form.set_values(device="cpu")
    predict.annotation_picker.set_layer(annotation)
    predict.keep_painted_check.setChecked(False)  # score the network, not the painting
    predict.start_prediction()
    _wait(predict)
    metrics.only_unannotated.setChecked(True)  # the voxels nobody painted
    metrics.annotation_picker.set_layer(annotation)
    metrics.compute()
    _wait(metrics)

    # segmentation filled, expert mask as a yellow outline, on a slice nobody painted
    annotation.visible = False
    expert = viewer.layers[f"{name} expert mask"]
    expert.colormap = {None: (1, 1, 0, 1), 0: (0, 0, 0, 0), 1: (1, 1, 0, 1)}
    expert.contour, expert.opacity, expert.visible = 1, 1.0, True
    segmentation = viewer.layers[f"{name} segmentation"]
    segmentation.opacity = 0.55
    viewer.layers.selection.active = segmentation
    per_slice = (expert.data > 0).sum(axis=(1, 2))
    per_slice[(annotation.data > 1).any(axis=(1, 2))] = 0  # slices painted in-plane
    z = int(per_slice.argmax())
    image = viewer.layers[name]
    centre = [z, *(n / 2 for n in image.data.shape[1:])]
    viewer.dims.set_point(0, float(image.data_to_world(centre)[0]))
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
    print(f"saved {args.out} (slice z = {z}; {metrics.status.text()})")
    viewer.close()
    shutil.rmtree(autosave_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
