"""Make ``docs/uncertainty.png``: an ensemble's disagreement on brain1, in the Predict widget.

Opens the bundled brain MRI with its shipped annotation, loads an ensemble model (``--model``;
without one, trains ``TrainConfig(time_budget=180, ensemble=3, seed=0)`` first, three minutes
on 2 idle cores), predicts with *Uncertainty* ticked, shows axial slice 13 and saves a
screenshot of the window with the Predict tab in front.

Run under an X server::

    xvfb-run -a -s "-screen 0 1600x1100x24" .venv/bin/python docs/make_uncertainty_screenshot.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_medseg._napari.sample import brain1
from napari_medseg._qt._state import MODELS
from napari_medseg._qt.launch import dock_widgets
from napari_medseg.checkpoint import save_model
from napari_medseg.io import read_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.sample_data import sample_data_dir
from napari_medseg.training import TrainConfig, train

HERE = Path(__file__).resolve().parent


def _wait(app: QApplication, done, seconds: float = 600.0) -> None:
    end = time.monotonic() + seconds
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.05)


def _ensemble(folder: Path) -> Path:
    image = read_volume(sample_data_dir() / "brain1_image.nrrd")
    annotation = read_volume(sample_data_dir() / "brain1_annotation.nrrd")
    config = TrainConfig(time_budget=180, ensemble=3, seed=0)
    model = run_to_completion(train(image.array, annotation.array, config, spacing=image.spacing))
    return save_model(folder / "brain1_ensemble.safetensors", model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an ensemble model file")
    parser.add_argument("--out", type=Path, default=HERE / "uncertainty.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model or _ensemble(Path(folder))
        viewer = napari.Viewer(show=True)
        for data, kwargs, kind in brain1():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        image = viewer.layers["brain1"]
        annotation = read_volume(sample_data_dir() / "brain1_annotation.nrrd")
        viewer.add_labels(
            annotation.array, name="brain1 annotation", scale=image.scale,
            translate=image.translate, units=image.units, visible=False,
        )  # fmt: skip
        viewer.layers["brain1 expert mask"].visible = False
        predict = dock_widgets(viewer)["3 · Predict"]
        app = QApplication.instance()
        predict.load_model_file(model_path)
        _wait(app, lambda: len(MODELS) > 0)
        predict.form.set_values(uncertainty=True, device="cpu")
        if not predict.start_prediction():
            raise SystemExit(predict.status.text())
        _wait(app, lambda: not predict.is_running)
        viewer.dims.set_point(0, float(image.data_to_world([13, 0, 0])[0]))
        viewer.window._qt_window.resize(1600, 1050)
        dock = predict
        while dock is not None and type(dock).__name__ != "QtViewerDockWidget":
            dock = dock.parent()
        if dock is not None:
            dock.raise_()
        _wait(app, lambda: True)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        viewer.screenshot(str(args.out), canvas_only=False)
        print(f"saved {args.out}: {predict.status.text()}")
        viewer.close()


if __name__ == "__main__":
    main()
