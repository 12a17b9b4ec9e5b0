"""Does more compute help? The same case and seed trained at 1x and 4x a budget.

For each case and seed a model is trained with ``--budget`` seconds and with four times
that (or, with ``--iterations N``, N and 4N steps and no time limit, which does not depend on
the machine's speed), on the CPU with the other settings at their defaults. Each is scored by
its mean Dice over the structures on the voxels nobody painted. One JSON line per run (with
the steps taken, why the run ended and the run's own validation figure when it has one), then
a summary line: per case the median at 1x and 4x and the worst 4x - 1x difference. Run it
alone on the machine: the budgets are wall-clock.

    python benchmarks/compute_scaling.py --cases brain1 breast1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_table import load_case, mean_dice  # noqa: E402

from napari_medseg.inference import PredictConfig, predict  # noqa: E402
from napari_medseg.progress import run_to_completion  # noqa: E402
from napari_medseg.training import TrainConfig, train  # noqa: E402


def run(name: str, seed: int, scale: int, budget: float, iterations: int | None,
        arch: str, ensemble: int | None = None) -> dict[str, Any]:
    """One training run at ``scale`` times the budget, scored on the unpainted voxels."""
    case = load_case(name)
    chosen: dict[str, Any] = {} if ensemble is None else {"ensemble": ensemble}
    if iterations:
        config = TrainConfig(time_budget=None, iterations=iterations * scale, seed=seed,
                             device="cpu", arch=arch, **chosen)  # type: ignore[arg-type]
    else:
        config = TrainConfig(time_budget=budget * scale, seed=seed, device="cpu",
                             arch=arch, **chosen)  # type: ignore[arg-type]
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing,
                                    class_names=case.class_names))
    labels = run_to_completion(predict(model, case.image, PredictConfig(device="cpu"))).labels
    history = model.config.history
    validation = history.get("validation") or {}
    return {
        "case": name, "arch": arch, "ensemble": history["ensemble"], "seed": seed,
        "scale": scale,
        "dice": mean_dice(labels, case, case.annotation == 0),
        "steps": history["steps"], "seconds": history["seconds"],
        "stop_reason": history["stop_reason"],
        "validation": validation.get("score"),
        "validation_step": validation.get("step"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["brain1", "breast1", "prostate_phantom",
                                                       "synthetic0", "synthetic1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--arch", default="unet3d")
    parser.add_argument("--ensemble", type=int, default=None,
                        help="networks per run (default: the product's default)")
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        for seed in args.seeds:
            for scale in (1, 4):
                rows.append(run(name, seed, scale, args.budget, args.iterations, args.arch,
                                args.ensemble))
                print(json.dumps(rows[-1]), flush=True)
    summary: dict[str, Any] = {"summary": True, "budget": args.budget,
                               "iterations": args.iterations, "arch": args.arch}
    for name in args.cases:
        mine = {(r["seed"], r["scale"]): r["dice"] for r in rows if r["case"] == name}
        ones = [mine[(s, 1)] for s in args.seeds]
        fours = [mine[(s, 4)] for s in args.seeds]
        summary[name] = {
            "median_1x": statistics.median(ones), "median_4x": statistics.median(fours),
            "worst_gain": round(min(f - o for f, o in zip(fours, ones)), 4),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
