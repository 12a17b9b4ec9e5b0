"""Does a run's own validation figure follow its true accuracy?

Trains one case (CPU, defaults, ``--iterations`` steps so the machine's speed does not
matter) and, each time the run scores itself on its held-out painted voxels, also scores the
same weights on the voxels nobody painted against the expert mask (the same windowed
scoring, up to ``--windows`` windows of the unknown region). One JSON line per score
(``step``, ``validation``, ``truth``), then a line with the kept weights' step and figures,
the Dice of the saved model's full prediction, and the Spearman correlation of the two
curves.

    python benchmarks/validation_tracking.py brain1 --iterations 1600 --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_table import load_case, mean_dice  # noqa: E402

from napari_medseg.inference import PredictConfig, predict  # noqa: E402
from napari_medseg.progress import run_to_completion  # noqa: E402
from napari_medseg.training import TrainConfig, train  # noqa: E402
from napari_medseg.training import guard as guard_module  # noqa: E402
from napari_medseg.training import validation as validation_module  # noqa: E402
from napari_medseg.training.loop import plane_patch  # noqa: E402


def _truth_set(case, plan_config: TrainConfig, windows: int):
    """Windows over the unknown voxels, scored against the expert mask."""
    from napari_medseg.training.plan import plan_training

    plan = plan_training(case.image, case.annotation, plan_config, spacing=case.spacing,
                         class_names=case.class_names)
    normalized = plan.normalization.apply(case.image)[np.newaxis]
    patch = plane_patch(plan, 0, case.image.shape)
    saved = validation_module.MAX_WINDOWS
    validation_module.MAX_WINDOWS = windows
    try:
        vset, _ = validation_module.ValidationSet.build(
            normalized, case.expert.astype(np.int64), case.annotation == 0, patch,
            plan.n_classes, np.random.default_rng(0),
        )
    finally:
        validation_module.MAX_WINDOWS = saved
    return vset


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--iterations", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=96)
    args = parser.parse_args()
    case = load_case(args.case)
    config = TrainConfig(time_budget=None, iterations=args.iterations, seed=args.seed,
                         device="cpu")
    truth = _truth_set(case, config, args.windows)
    rows: list[dict[str, float]] = []
    measure = guard_module.Guard.measure

    def tracked(self, predict_fn, snapshot, step, seconds_per_step):
        result = measure(self, predict_fn, snapshot, step, seconds_per_step)
        true = validation_module.score(predict_fn, truth, step)
        rows.append({"step": step, "validation": round(result.score, 4),
                     "truth": round(true.score, 4)})
        print(json.dumps(rows[-1]), flush=True)
        return result

    guard_module.Guard.measure = tracked  # type: ignore[method-assign]
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing,
                                    class_names=case.class_names))
    labels = run_to_completion(predict(model, case.image, PredictConfig(device="cpu"))).labels
    kept = model.config.history["validation"]
    best_truth = max(rows, key=lambda r: r["truth"])
    print(json.dumps({
        "summary": True, "case": args.case, "seed": args.seed, "iterations": args.iterations,
        "held_out": kept["held_out"], "kept_step": kept.get("step"),
        "kept_validation": kept.get("score"),
        "model_dice": mean_dice(labels, case, case.annotation == 0),
        "last_truth": rows[-1]["truth"], "best_truth": best_truth["truth"],
        "best_truth_step": best_truth["step"],
        "spearman": round(_spearman([r["validation"] for r in rows],
                                    [r["truth"] for r in rows]), 3),
    }))


if __name__ == "__main__":
    main()
