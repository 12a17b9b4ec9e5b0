"""How long does training take to end after the user presses Stop?

Trains with the default :class:`~napari_medseg.training.TrainConfig` on the default
synthetic case (48 x 64 x 64) in a worker thread, as the napari widget does, sets the stop
event from the main thread at a random moment inside a step, and measures the wall time
from ``stop.set()`` to the generator returning its model. The promise is "after the current
step", so the latency should stay below one step's duration (plus the short wrap-up that
moves the network to the CPU and writes its config).

Usage::

    python benchmarks/stop_latency.py [--repeats 3] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

from napari_medseg.checkpoint import TrainedModel
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, TrainProgress, train


@dataclass
class Run:
    """One measurement."""

    latency: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    steps_before: int = 0
    steps_after: int = 0
    device: str = ""


def measure_once(
    config: TrainConfig, warm_steps: int, rng: random.Random, shape: tuple[int, int, int]
) -> Run:
    """Train in a thread, stop mid-step after ``warm_steps`` steps, time the return.

    Parameters
    ----------
    config : TrainConfig
        Training settings (the defaults, apart from the time budget).
    warm_steps : int
        Steps to run before stopping (the first steps are slower: allocation, planning).
    rng : random.Random
        Chooses where inside the next step the stop lands.
    shape : tuple of int
        Shape of the synthetic volume.

    Returns
    -------
    Run
        Latency from ``stop.set()`` to the generator's return, and the step times.
    """
    case = make_synthetic_case(shape=shape, seed=0)
    stop = threading.Event()
    run = Run()
    progressed = threading.Condition()
    stamps: list[float] = []
    result: dict[str, TrainedModel] = {}

    def on_item(item: TrainProgress) -> None:
        with progressed:
            stamps.append(time.perf_counter())
            if stop.is_set():
                run.steps_after += 1
            else:
                run.steps_before += 1
            progressed.notify_all()

    def worker() -> None:
        gen = train(case.image, case.annotation, config, spacing=case.spacing, stop=stop)
        result["model"] = run_to_completion(gen, on_item)

    start = time.perf_counter()
    thread = threading.Thread(target=worker, name="train")
    thread.start()
    with progressed:
        progressed.wait_for(lambda: len(stamps) >= warm_steps or not thread.is_alive())
    if len(stamps) >= 2:
        typical = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    else:
        typical = stamps[0] - start if stamps else 0.0
    time.sleep(rng.uniform(0.1, 0.9) * typical)  # land inside the next step
    stop_at = time.perf_counter()
    stop.set()
    thread.join()
    run.latency = time.perf_counter() - stop_at
    run.step_seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    run.device = str(result["model"].config.history.get("device", "?"))
    return run


def main(argv: list[str] | None = None) -> int:
    """Measure and print the stop latency; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm-steps", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(time_budget=3600.0, device=args.device)  # defaults otherwise
    rng = random.Random(args.seed)
    runs = [
        measure_once(config, args.warm_steps, rng, tuple(args.shape)) for _ in range(args.repeats)
    ]
    steps = [s for r in runs for s in r.step_seconds]
    latencies = [r.latency for r in runs]
    print(
        f"stop latency, TrainConfig() defaults on a {'x'.join(map(str, args.shape))} synthetic "
        f"volume, device {runs[0].device}, {torch.get_num_threads()} CPU thread(s):"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"  run {i}: {r.latency:6.3f} s after stop.set() "
            f"({r.steps_before} steps before, {r.steps_after} after)"
        )
    print(
        f"  median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s; "
        f"one step takes {statistics.median(steps):.3f} s (median)"
        if steps
        else f"  median {statistics.median(latencies):.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
