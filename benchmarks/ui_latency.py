"""How responsive the viewer stays while the network trains (with the live preview) and
while it predicts (with the live overlay).

Opens a shown napari viewer with brain1 and its annotation, docks the Train and Predict
widgets, and ticks a 10 ms Qt timer on the GUI thread; the longest gap between two ticks is
how long the user would wait for the GUI to react. (a) trains for ``--budget`` seconds with
the live preview following axial slice 14; (b) predicts with the model. Needs a display
(``xvfb-run -a``); run it alone on the machine. Prints one JSON line:
``{"train_max_gap_ms": .., "train_p99_gap_ms": .., "predict_max_gap_ms": .., ...}``.

    xvfb-run -a python benchmarks/ui_latency.py --budget 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


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

    def gaps_ms(self) -> np.ndarray:
        return np.diff(np.asarray(self.times)) * 1000.0 if len(self.times) > 1 else np.zeros(1)


def _wait_until_idle(widget) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(50)
    poll.timeout.connect(lambda: loop.quit() if not widget.is_running else None)
    poll.start()
    loop.exec()
    poll.stop()


def _measured(ticks: Ticks, widget, start) -> tuple[float, float]:
    ticks.times.clear()
    ticks.recording = True
    assert start(), widget.status.text()
    _wait_until_idle(widget)
    ticks.recording = False
    gaps = ticks.gaps_ms()
    times = np.asarray(ticks.times) - ticks.times[0] if ticks.times else np.zeros(1)
    worst = np.argsort(gaps)[-5:][::-1]
    print("longest gaps (ms at s):", [(round(float(gaps[i])), round(float(times[i]), 2))
                                      for i in worst], file=sys.stderr)
    return round(float(gaps.max()), 1), round(float(np.percentile(gaps, 99)), 1)


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
    viewer.window.add_dock_widget(train, area="right")
    viewer.window.add_dock_widget(predict, area="right")
    viewer.dims.set_point(0, float(viewer.layers["brain1"].data_to_world([14, 0, 0])[0]))
    train.form.set_values(time_budget=args.budget, device="cpu")
    ticks = Ticks()
    train_max, train_p99 = _measured(ticks, train, train.start_training)
    predict.select_model(train.model_name)
    predict.form.set_values(device="cpu")
    predict_max, predict_p99 = _measured(ticks, predict, predict.start_prediction)
    print(json.dumps({
        "train_max_gap_ms": train_max, "train_p99_gap_ms": train_p99,
        "predict_max_gap_ms": predict_max, "predict_p99_gap_ms": predict_p99,
        "budget_s": args.budget,
    }))
    viewer.close()


if __name__ == "__main__":
    main()
