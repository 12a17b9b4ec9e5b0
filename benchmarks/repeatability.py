"""How far two trainings with the same seed differ, on a CPU or a GPU.

Trains one case several times with the same seed and a fixed number of steps (a time budget
would stop runs after different step counts), predicts, and prints for each run its loss and
Dice, and against the first run: the largest weight difference, the largest loss difference
over all steps, the share of voxels labelled differently and the Dice difference. With
``--deterministic`` it repeats this with cuDNN's deterministic algorithms
(``torch.backends.cudnn.deterministic`` and ``torch.use_deterministic_algorithms``), to show
what they cost and whether they close the gap.

    .venv/bin/python benchmarks/repeatability.py --case synthetic0 --iterations 100
    python benchmarks/repeatability.py --case brain1 --device cuda --iterations 600 --deterministic
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from paper_table import CASES, Case, _score, load_case, machine_info

from napari_medseg.inference import PredictConfig, predict
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train


def _set_deterministic(on: bool) -> None:
    if on:
        # cuBLAS needs a fixed workspace for deterministic matrix products
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


def _one_run(case: Case, config: TrainConfig) -> dict:
    losses: list[float] = []
    start = time.perf_counter()
    model = run_to_completion(
        train(
            case.image, case.annotation, config, spacing=case.spacing, class_names=case.class_names
        ),
        lambda progress: losses.append(progress.loss),
    )
    seconds = time.perf_counter() - start
    labels = run_to_completion(predict(model, case.image, PredictConfig(device=config.device)))
    _, dice, _ = _score(case, labels.labels)
    weights = {k: v.detach().float().clone() for k, v in model.network.state_dict().items()}
    return {
        "losses": np.asarray(losses),
        "seconds": seconds,
        "dice": dice,
        "labels": labels.labels,
        "weights": weights,
    }


def _compare(first: dict, other: dict) -> tuple[float, float, float, float]:
    weight_diff = max(
        float((first["weights"][k] - other["weights"][k]).abs().max()) for k in first["weights"]
    )
    steps = min(len(first["losses"]), len(other["losses"]))
    loss_diff = float(np.abs(first["losses"][:steps] - other["losses"][:steps]).max())
    changed = float(np.mean(first["labels"] != other["labels"]))
    return weight_diff, loss_diff, changed, other["dice"] - first["dice"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="synthetic0", choices=CASES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--deterministic", action="store_true", help="also run with deterministic algorithms"
    )
    args = parser.parse_args(argv)
    info = machine_info(args.device)
    print(f"# repeatability: {' '.join(sys.argv)}")
    print(", ".join(f"{k} {v}" for k, v in info.items()) + "\n")
    case = load_case(args.case)
    print(
        "| mode | run | steps | seconds | final loss | Dice | max weight diff | max loss diff "
        "| voxels relabelled | Dice diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    modes = [False, True] if args.deterministic else [False]
    for deterministic in modes:
        _set_deterministic(deterministic)
        config = TrainConfig(
            iterations=args.iterations, time_budget=None, device=args.device, seed=args.seed
        )
        runs = [_one_run(case, config) for _ in range(args.runs)]
        mode = "deterministic" if deterministic else "default"
        for index, run in enumerate(runs):
            diffs = ("", "", "", "")
            if index:
                w, loss, changed, dice = _compare(runs[0], run)
                diffs = (f"{w:.2e}", f"{loss:.2e}", f"{changed:.2e}", f"{dice:+.4f}")
            print(
                f"| {mode} | {index} | {len(run['losses'])} | {run['seconds']:.1f} "
                f"| {np.mean(run['losses'][-10:]):.4f} | {run['dice']:.4f} | "
                + " | ".join(diffs)
                + " |",
                flush=True,
            )
    _set_deterministic(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
