"""Paired measure of batch-norm calibration: the same 3D U-Net with and without it.

Each run trains the default 3D U-Net (``calibrate_batch_norm=False``) on a case's sparse
annotation, scores it on the unannotated voxels, then re-estimates its batch-norm statistics
(:func:`napari_medseg.models.calibration.recalibrate_batch_norm`) on tiles of the region where
prediction decides (what ``calibrate_batch_norm=True`` does after training) and of the whole
image, and scores each. One JSON line per run. Runs are sequential; run it alone.

    .venv/bin/python benchmarks/batch_norm_calibration.py --cases brain_tissue --seeds 0,1,2
    .venv/bin/python benchmarks/batch_norm_calibration.py --cases brain1 --budget 180 --seeds 0,1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
from paper_table import load_case  # benchmarks/ is on the path when run as a script

from napari_medseg.annotation import annotation_to_target
from napari_medseg.inference import PredictConfig, predict
from napari_medseg.metrics import evaluate
from napari_medseg.models.calibration import recalibrate_batch_norm
from napari_medseg.progress import run_to_completion
from napari_medseg.sampling import unknown_region
from napari_medseg.training import TrainConfig, train

CASES = ("brain1", "breast1", "prostate_phantom", "brain_tissue", "synthetic0", "synthetic1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="brain_tissue", help=f"comma-separated: {CASES}")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    for name in args.cases.split(","):
        case = load_case(name)
        image, annotation, expert, spacing = (
            case.image, case.annotation, case.expert, case.spacing
        )
        labels = [int(v) for v in np.unique(expert) if v]
        scored = annotation == 0

        def dice(model, image=image, expert=expert, labels=labels, scored=scored) -> float:
            seg = run_to_completion(predict(model, image, PredictConfig())).labels
            return evaluate(seg, expert, labels=labels, mask=scored, surface_distances=False)

        for seed in (int(s) for s in args.seeds.split(",")):
            config = TrainConfig(time_budget=args.budget, seed=seed, calibrate_batch_norm=False)
            model = run_to_completion(train(image, annotation, config, spacing=spacing))
            normalized = model.config.normalization.apply(image)[np.newaxis]
            patch = model.config.patch_shape
            target = annotation_to_target(annotation)
            whole = tuple(slice(0, n) for n in target.shape)
            decided = unknown_region(target, [p // 2 for p in patch]) or whole
            row = {"case": name, "budget": args.budget, "seed": seed,
                   "steps": model.config.history["steps"]}
            row["as_trained"] = dice(model).mean.dice
            for key, box in (("decided_region", decided), ("whole_image", whole)):
                calibrated = copy.deepcopy(model)
                tiles = recalibrate_batch_norm(
                    calibrated.network, normalized[(slice(None), *box)], patch
                )
                calibrated.network.eval()
                row[key] = dice(calibrated).mean.dice
                row[f"tiles_{key}"] = tiles
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
