"""Whole slices painted without a region-of-interest box.

A real case is painted on whole axial slices from its expert label (structure and
background), and nothing else: the rest of the volume, far from the structure too, stays
unknown. One model is trained per case and seed (CPU, defaults, ``--budget`` seconds or
``--iterations`` steps) and scored on the whole volume with the painted voxels keeping their
labels, as the GUI shows it, and on the voxels nobody painted, and on the whole volume again
with only the predicted regions that touch a painted voxel of their structure kept
(``PredictConfig.keep_regions="touching painted"``). One JSON line per run, then the medians.

    python benchmarks/no_box.py --cases brain1:12,14,16 breast1:8,10 --seeds 0 1 2
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

from napari_medseg.annotation import keep_painted  # noqa: E402
from napari_medseg.inference import PredictConfig, predict  # noqa: E402
from napari_medseg.progress import run_to_completion  # noqa: E402
from napari_medseg.regions import keep_touching_painted  # noqa: E402
from napari_medseg.sample_data import real_case_annotation  # noqa: E402
from napari_medseg.training import TrainConfig, train  # noqa: E402


def run(name: str, slices: list[int], seed: int, budget: float | None,
        iterations: int | None) -> dict[str, Any]:
    """One case painted on ``slices`` without a box, trained once, scored twice."""
    case = load_case(name)
    annotation = real_case_annotation(name, axial_slices=slices, roi_margin=None)
    config = TrainConfig(time_budget=budget, iterations=iterations, seed=seed, device="cpu")
    model = run_to_completion(train(case.image, annotation, config, spacing=case.spacing,
                                    class_names=case.class_names))
    labels = run_to_completion(predict(model, case.image, PredictConfig(device="cpu"))).labels
    painted = annotation > 0
    kept = labels.copy()
    keep_painted(kept, annotation)
    validation = model.config.history.get("validation") or {}
    touching = kept.copy()
    keep_touching_painted(touching, annotation)
    return {
        "case": name, "slices": slices, "seed": seed,
        "whole_volume_dice": mean_dice(kept, case),
        "unpainted_dice": mean_dice(labels, case, ~painted),
        "touching_painted_dice": mean_dice(touching, case),
        "predicted_voxels": int((labels > 0).sum()), "expert_voxels": int((case.expert > 0).sum()),
        "steps": model.config.history["steps"], "validation": validation.get("score"),
        "held_out": validation.get("held_out"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["brain1:12,14,16", "breast1:8,10"],
                        help="CASE:z,z,... axial slices to paint")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args()
    budget = None if args.iterations else args.budget
    rows = []
    for spec in args.cases:
        name, _, zs = spec.partition(":")
        for seed in args.seeds:
            rows.append(run(name, [int(z) for z in zs.split(",")], seed, budget,
                            args.iterations))
            print(json.dumps(rows[-1]), flush=True)
    summary: dict[str, Any] = {"summary": True, "budget": budget, "iterations": args.iterations}
    for spec in args.cases:
        name = spec.partition(":")[0]
        mine = [r["whole_volume_dice"] for r in rows if r["case"] == name]
        summary[name] = statistics.median(mine)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
