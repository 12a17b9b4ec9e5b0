"""Lost runs: one case trained with many seeds at the default settings and one budget.

For each seed a model is trained for ``--budget`` seconds on the CPU (other settings at their
defaults), predicts, and is scored on the voxels nobody painted: mean Dice over the
structures and the Dice of each. A run *misses* a structure when its Dice there is under
0.1; it misses *silently* when the run's own validation did not report that structure as
missed (``history["validation"]["missed"]``), which is what the user would not be told. One
JSON line per run, then a summary: median, worst, worst below the median, silent misses.
Run it alone on the machine: the budget is wall-clock.

    python benchmarks/lost_runs.py breast1 --budget 60 --seeds 0 1 2 3 4 5 6 7 8 9 --arch unet2d
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_table import load_case  # noqa: E402

from napari_medseg.inference import PredictConfig, predict  # noqa: E402
from napari_medseg.metrics import dice  # noqa: E402
from napari_medseg.progress import run_to_completion  # noqa: E402
from napari_medseg.training import TrainConfig, train  # noqa: E402

MISSED_BELOW = 0.1


def run(name: str, seed: int, budget: float, arch: str, ensemble: int = 1) -> dict[str, Any]:
    """One run, scored per structure on the voxels nobody painted."""
    case = load_case(name)
    config = TrainConfig(time_budget=budget, seed=seed, device="cpu", arch=arch,  # type: ignore[arg-type]
                         ensemble=ensemble)
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing,
                                    class_names=case.class_names))
    labels = run_to_completion(predict(model, case.image, PredictConfig(device="cpu"))).labels
    unpainted = case.annotation == 0
    per_structure = [
        float(dice(labels == k, case.expert == k, mask=unpainted))
        for k in range(1, len(case.class_names) + 1)
    ]
    history = model.config.history
    validation = history.get("validation") or {}
    reported = set(validation.get("missed") or [])
    missed = [k for k, d in enumerate(per_structure, start=1) if d < MISSED_BELOW]
    return {
        "case": name, "arch": arch, "ensemble": ensemble, "seed": seed, "budget": budget,
        "dice": round(statistics.fmean(per_structure), 4),
        "per_structure": [round(d, 4) for d in per_structure],
        "steps": history["steps"], "stop_reason": history["stop_reason"],
        "validation": validation.get("score"), "restarted": validation.get("restarted"),
        "missed": missed,
        "silent_misses": [k for k in missed if case.class_names[k - 1] not in reported],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--arch", default="unet3d")
    parser.add_argument("--ensemble", type=int, default=1,
                        help="networks sharing the budget (TrainConfig.ensemble)")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        rows.append(run(args.case, seed, args.budget, args.arch, args.ensemble))
        print(json.dumps(rows[-1]), flush=True)
    scores = [r["dice"] for r in rows]
    median = statistics.median(scores)
    print(json.dumps({
        "summary": True, "case": args.case, "arch": args.arch, "ensemble": args.ensemble,
        "budget": args.budget,
        "seeds": len(rows), "median": round(median, 4), "worst": min(scores),
        "worst_below_median": round(median - min(scores), 4),
        "runs_missing_a_structure": sum(bool(r["missed"]) for r in rows),
        "silent_misses": sum(bool(r["silent_misses"]) for r in rows),
    }))


if __name__ == "__main__":
    main()
