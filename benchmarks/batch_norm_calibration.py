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

from napari_medseg.annotation import annotation_to_target
from napari_medseg.inference import PredictConfig, predict
from napari_medseg.metrics import evaluate
from napari_medseg.models.calibration import recalibrate_batch_norm
from napari_medseg.progress import run_to_completion
from napari_medseg.sampling import unknown_region
from napari_medseg.training import TrainConfig, train

CASES = ("brain1", "breast1", "prostate_phantom", "brain_tissue", "synthetic0", "synthetic1")


def load(name: str):
    """(image, annotation, expert mask, spacing) of a case."""
    if name.startswith("synthetic"):
        from napari_medseg.synthetic import make_synthetic_case

        n, slices = (1, (1, 1, 1)) if name == "synthetic0" else (3, (3, 2, 1))
        case = make_synthetic_case(n_structures=n, seed=int(name[-1]), slices_per_axis=slices)
        return case.image, case.annotation, case.expert_mask, case.spacing
    from napari_medseg.sample_data import (
        BRAIN_TISSUE,
        load_real_case,
        real_case_annotation,
        slices_per_axis_annotation,
    )

    real = load_real_case(name)
    painted = slices_per_axis_annotation if name == BRAIN_TISSUE else real_case_annotation
    image, label = np.asarray(real.image.array), np.asarray(real.label.array)
    return image, painted(real), label, real.spacing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="brain_tissue", help=f"comma-separated: {CASES}")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    for name in args.cases.split(","):
        image, annotation, expert, spacing = load(name)
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
