"""How responsive the viewer stays while the network trains (with the live preview) and
while it predicts (with the live overlay).

Opens a shown napari viewer with brain1 and its annotation in a window the size of the
Xvfb screen, docks the Train and Predict widgets as tabs, and ticks a 10 ms Qt timer on the
GUI thread; the longest gap between two ticks is how long the user would wait for the GUI
to react. (a) trains for ``--budget`` seconds with the live preview following axial slice
14; (b) predicts with the model. Each reports its longest gap, split into the click's (its
handler and the first redraw of the layer it makes) and the run's after it. Needs a display
(``xvfb-run -a``); run it alone on the machine. Prints one JSON line:
``{"train_max_gap_ms": .., "train_click_gap_ms": .., "train_run_max_gap_ms": ..,
"predict_max_gap_ms": .., ...}``.

    xvfb-run -a python benchmarks/ui_latency.py --budget 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

SCREEN = (1280, 1024)  # xvfb-run's default screen


class Ticks:
    """Timestamps of a 10 ms timer's ticks while ``recording``."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.recording = False
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        if self.recording:
            self.times.append(time.perf_counter())



def _wait_until_idle(widget) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(50)
    poll.timeout.connect(lambda: loop.quit() if not widget.is_running else None)
    poll.start()
    loop.exec()
    poll.stop()


def _measured(ticks: Ticks, widget, start) -> dict[str, float]:
    """Longest gap of the click (its handler and the redraw it asks for: new layers compile
    their shaders) and of the run after it, and the 99th percentile of all gaps."""
    ticks.times.clear()
    ticks.recording = True
    assert start(), widget.status.text()
    clicked = time.perf_counter()
    _wait_until_idle(widget)
    ticks.recording = False
    times = np.asarray(ticks.times)
    gaps = np.diff(times) * 1000.0
    after = np.flatnonzero(times[:-1] >= clicked)
    first_run_gap = int(after[0]) + 1 if after.size else len(gaps)
    click, run = gaps[:first_run_gap], gaps[first_run_gap:]
    worst = np.argsort(gaps)[-5:][::-1]
    print(
        "longest gaps (ms at s):",
        [(round(float(gaps[i])), round(float(times[i] - times[0]), 2)) for i in worst],
        file=sys.stderr,
    )
    return {
        "max_gap_ms": round(float(gaps.max()), 1),
        "click_gap_ms": round(float(click.max()), 1) if click.size else 0.0,
        "run_max_gap_ms": round(float(run.max()), 1) if run.size else 0.0,
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=20.0)
    args = parser.parse_args()

    import napari

    from napari_medseg._napari.sample import layer_tuples
    from napari_medseg._qt.predict_widget import PredictWidget
    from napari_medseg._qt.train_widget import TrainWidget
    from napari_medseg.sample_data import load_real_case, real_case_annotation

    case = load_real_case("brain1")
    viewer = napari.Viewer(show=True)
    for data, kwargs, kind in layer_tuples("brain1", case.image, case.label.array,
                                           list(case.class_names),
                                           real_case_annotation("brain1")):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    train = TrainWidget(viewer)
    predict = PredictWidget(viewer)
    train_dock = viewer.window.add_dock_widget(train, area="right")
    # as tabs: stacked, the two need a window 1,500 px high
    predict_dock = viewer.window.add_dock_widget(predict, area="right", tabify=True)
    viewer.window._qt_window.resize(*SCREEN)  # the Xvfb screen (napari restores a saved size)
    viewer.dims.set_point(0, float(viewer.layers["brain1"].data_to_world([14, 0, 0])[0]))
    train.form.set_values(time_budget=args.budget, device="cpu")
    ticks = Ticks()
    train_dock.raise_()  # the widget at work is the one shown, as for a user
    training = _measured(ticks, train, train.start_training)
    predict.select_model(train.model_name)
    predict.form.set_values(device="cpu")
    predict_dock.raise_()
    predicting = _measured(ticks, predict, predict.start_prediction)
    size = viewer.window._qt_window.size()
    print(
        json.dumps(
            {
                **{f"train_{k}": v for k, v in training.items()},
                **{f"predict_{k}": v for k, v in predicting.items()},
                "budget_s": args.budget,
                "window": [size.width(), size.height()],
            }
        )
    )
    viewer.close()


if __name__ == "__main__":
    main()
