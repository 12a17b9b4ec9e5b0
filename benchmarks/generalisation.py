"""Does the sparse loop generalise? 3D U-Net vs an intensity threshold on unseen volumes.

For synthetic volumes the defaults were never tuned on (seeds other than 0, one and three
structures), train the default 3D U-Net for ``--budget`` seconds on a few annotated slices per
axis, predict, and score Dice on the voxels that were not annotated, beside the intensity
window fitted on the same annotation (``synthetic.threshold_from_annotation``).

    .venv/bin/python benchmarks/generalisation.py --budget 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from napari_medseg.inference import PredictConfig, predict
from napari_medseg.metrics import evaluate
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case, threshold_from_annotation
from napari_medseg.training import TrainConfig, train

CASES = [
    (1, 1, (1, 1, 1)),
    (2, 1, (1, 1, 1)),
    (3, 1, (2, 2, 2)),
    (1, 3, (3, 3, 3)),
    (2, 3, (3, 3, 3)),
]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per case")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    print(f"# generalisation: {' '.join(sys.argv)}")
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}\n"
    )
    print("| seed | structures | slices/axis | steps | 3D U-Net Dice | threshold Dice | margin |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for seed, n_structures, slices in CASES:
        case = make_synthetic_case(n_structures=n_structures, seed=seed, slices_per_axis=slices)
        labels = sorted(int(v) for v in np.unique(case.expert_mask) if v)
        scored = case.annotation == 0
        start = time.perf_counter()
        model = run_to_completion(
            train(
                case.image,
                case.annotation,
                TrainConfig(time_budget=args.budget, device=args.device),
                spacing=case.spacing,
            )
        )
        seg = run_to_completion(
            predict(model, case.image, PredictConfig(device=args.device))
        ).labels
        net = evaluate(seg, case.expert_mask, labels=labels, mask=scored, surface_distances=False)
        base = evaluate(
            threshold_from_annotation(case.image, case.annotation),
            case.expert_mask,
            labels=labels,
            mask=scored,
            surface_distances=False,
        )
        row = {
            "seed": seed,
            "structures": n_structures,
            "slices_per_axis": list(slices),
            "steps": model.config.history["steps"],
            "unet3d_dice": net.mean.dice,
            "threshold_dice": base.mean.dice,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        print(
            f"| {seed} | {n_structures} | {slices} | {row['steps']} | {net.mean.dice:.3f} | "
            f"{base.mean.dice:.3f} | {net.mean.dice - base.mean.dice:+.3f} |",
            flush=True,
        )
    mean_net = float(np.mean([r["unet3d_dice"] for r in rows]))
    mean_base = float(np.mean([r["threshold_dice"] for r in rows]))
    print(f"| mean | | | | {mean_net:.3f} | {mean_base:.3f} | {mean_net - mean_base:+.3f} |")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump({"budget": args.budget, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
