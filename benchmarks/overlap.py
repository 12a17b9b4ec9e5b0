"""Does the tiles' overlap change the segmentation? Dice against the expert mask (voxels
nobody painted) of one trained model per case, predicted with several overlaps and tile
sizes, and the seconds each prediction took; one JSON line per case and setting.

Usage (alone on the machine)::

    .venv/bin/python benchmarks/overlap.py [--budget 60] [--cases brain1,breast1,brain_tissue]
        [--overlaps 0.5,0.33,0.25] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from paper_table import load_case  # benchmarks/ is on the path when run as a script

from napari_medseg.inference import PredictConfig, predict
from napari_medseg.metrics import evaluate
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train


def mean_dice(case, labels: np.ndarray) -> float:
    structures = sorted(int(v) for v in np.unique(case.expert) if v)
    result = evaluate(labels, case.expert, labels=structures,
                      mask=case.annotation == 0, surface_distances=False)  # fmt: skip
    return round(float(result.mean.dice), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60)
    parser.add_argument("--cases", default="brain1,breast1,brain_tissue")
    parser.add_argument("--overlaps", default="0.5,0.33,0.25")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    for name in args.cases.split(","):
        case = load_case(name)
        for seed in map(int, args.seeds.split(",")):
            config = TrainConfig(time_budget=args.budget, seed=seed)
            model = run_to_completion(train(case.image, case.annotation, config))
            for overlap in map(float, args.overlaps.split(",")):
                settings = PredictConfig(overlap=overlap)
                start = time.perf_counter()
                result = run_to_completion(predict(model, case.image, settings, live=False))
                seconds = time.perf_counter() - start
                print(json.dumps({
                    "case": name, "seed": seed, "overlap": overlap,
                    "tile_shape": list(result.tile_shape), "dice": mean_dice(case, result.labels),
                    "seconds": round(seconds, 2), "shape": list(case.image.shape),
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
