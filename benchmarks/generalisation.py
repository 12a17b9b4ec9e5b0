"""Does the sparse loop generalise? 3D U-Net vs 2D U-Net and a threshold on unseen volumes.

For synthetic volumes with real 3D structure that the defaults were never tuned on (seeds
other than 0, one and three structures), train the default 3D U-Net and the 2D U-Net for
``--budget`` seconds each on a few annotated slices per axis, predict, and score Dice on the
voxels that were not annotated, beside the intensity window fitted on the same annotation
(``synthetic.threshold_from_annotation``). Runs are sequential (never two trainings at once).

``--cases nodules`` uses ``synthetic_nodules.make_nodule_case`` instead: nodules among vessels
of the same intensity, where one slice cannot tell a ball from a tube seen across.
``--cases brain`` uses the bundled three-tissue brain (``brain_tissue``: the MNI ICBM152
template at 2 mm, CSF, grey and white matter) painted on 3 slices per axis. Beside the
threshold, a nearest-class-mean intensity classifier fitted on the same annotation
(``synthetic.nearest_mean_from_annotation``) is scored.

    .venv/bin/python benchmarks/generalisation.py --budget 60
    .venv/bin/python benchmarks/generalisation.py --budget 120 --cases nodules
    .venv/bin/python benchmarks/generalisation.py --budget 120 --cases brain
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
from napari_medseg.sample_data import BRAIN_TISSUE, load_real_case
from napari_medseg.synthetic import (
    make_synthetic_case,
    nearest_mean_from_annotation,
    painted_case,
    threshold_from_annotation,
)
from napari_medseg.synthetic_nodules import make_nodule_case
from napari_medseg.training import TrainConfig, train

#: ``--cases synthetic``: (volume seed, structures, painted slices per axis) of
#: ``make_synthetic_case``.
CASES = [
    (1, 1, (1, 1, 1)),
    (2, 1, (1, 1, 1)),
    (3, 1, (2, 2, 2)),
    (1, 3, (3, 3, 3)),
    (2, 3, (3, 3, 3)),
]
#: ``--cases nodules``: (volume seed, painted slices per axis) of ``make_nodule_case``, where
#: a nodule and a vessel seen across are the same disc on a slice.
NODULE_CASES = [
    (1, (1, 1, 1)),
    (2, (2, 2, 2)),
    (3, (3, 3, 3)),
]
#: ``--cases brain``: painted slices per axis of the bundled three-tissue brain.
BRAIN_SLICES = (3, 3, 3)


def _cases(which: str):
    """(seed, structures, slices per axis, case) of each volume of ``--cases``."""
    if which in ("synthetic", "all"):
        for seed, n_structures, slices in CASES:
            case = make_synthetic_case(n_structures=n_structures, seed=seed, slices_per_axis=slices)
            yield seed, n_structures, slices, case
    if which in ("nodules", "all"):
        for seed, slices in NODULE_CASES:
            yield seed, "nodules", slices, make_nodule_case(seed=seed, slices_per_axis=slices)
    if which in ("brain", "all"):
        real = load_real_case(BRAIN_TISSUE)
        case = painted_case(
            np.asarray(real.image.array),
            np.asarray(real.label.array),
            real.spacing,
            real.class_names,
            BRAIN_SLICES,
        )
        yield "-", "brain tissue", BRAIN_SLICES, case


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


ARCH_NAMES = {"unet3d": "3D U-Net", "unet2d": "2D U-Net", "fcn": "FCN-8s"}


def _train_and_score(
    case,
    labels,
    arch: str,
    budget: float,
    device: str,
    seed: int,
    flips: str = "auto",
    planes: str = "one",
):
    """Train ``arch`` on the case's annotation, predict, and score unannotated voxels."""
    model = run_to_completion(
        train(
            case.image,
            case.annotation,
            TrainConfig(
                arch=arch,
                time_budget=budget,
                device=device,
                seed=seed,
                flips=flips,
                planes=planes,
            ),
            spacing=case.spacing,
        )
    )
    seg = run_to_completion(predict(model, case.image, PredictConfig(device=device))).labels
    scored = case.annotation == 0
    result = evaluate(seg, case.expert_mask, labels=labels, mask=scored, surface_distances=False)
    return result.mean.dice, int(model.config.history["steps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument(
        "--archs",
        default="unet3d,unet2d",
        help="networks to train, comma-separated; the first is compared with the others",
    )
    parser.add_argument(
        "--cases",
        choices=["synthetic", "nodules", "brain", "all"],
        default="synthetic",
        help="volumes: tube/blob/shell structures, nodules among vessels, the three-tissue "
        "brain template, or all of them",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--flips",
        choices=["auto", "on", "off"],
        default="auto",
        help="TrainConfig.flips for every run (mirror flips and right-angle rotations)",
    )
    parser.add_argument(
        "--planes",
        choices=["one", "three"],
        default="one",
        help="TrainConfig.planes for the 2D networks (slices of the first axis or of all three)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCH_NAMES]
    if not archs or unknown:
        parser.error(f"--archs: choose from {', '.join(ARCH_NAMES)}")
    print(f"# generalisation: {' '.join(sys.argv)}")
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}\n"
    )
    first = archs[0]
    header = ["seed", "structures", "slices/axis"]
    header += [f"{ARCH_NAMES[a]} steps" for a in archs]
    header += [f"{ARCH_NAMES[a]} Dice" for a in archs]
    header += ["threshold Dice", "nearest-mean Dice", f"{ARCH_NAMES[first]} - threshold"]
    header += [f"{ARCH_NAMES[first]} - {ARCH_NAMES[a]}" for a in archs[1:]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    for seed, n_structures, slices, case in _cases(args.cases):
        labels = sorted(int(v) for v in np.unique(case.expert_mask) if v)
        start = time.perf_counter()
        dice: dict[str, float] = {}
        steps: dict[str, int] = {}
        for arch in archs:
            dice[arch], steps[arch] = _train_and_score(
                case, labels, arch, args.budget, args.device, args.seed, args.flips, args.planes
            )
        base, nearest = (
            evaluate(
                baseline(case.image, case.annotation),
                case.expert_mask,
                labels=labels,
                mask=case.annotation == 0,
                surface_distances=False,
            ).mean.dice
            for baseline in (threshold_from_annotation, nearest_mean_from_annotation)
        )
        row = {
            "seed": seed,
            "structures": n_structures,
            "slices_per_axis": list(slices),
            "steps": steps,
            "dice": dice,
            "threshold_dice": base,
            "nearest_mean_dice": nearest,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        cells = [str(seed), str(n_structures), str(slices)]
        cells += [str(steps[a]) for a in archs]
        cells += [f"{dice[a]:.3f}" for a in archs]
        cells += [f"{base:.3f}", f"{nearest:.3f}", f"{dice[first] - base:+.3f}"]
        cells += [f"{dice[first] - dice[a]:+.3f}" for a in archs[1:]]
        print("| " + " | ".join(cells) + " |", flush=True)
    means = {a: float(np.mean([r["dice"][a] for r in rows])) for a in archs}
    mean_base = float(np.mean([r["threshold_dice"] for r in rows]))
    mean_nearest = float(np.mean([r["nearest_mean_dice"] for r in rows]))
    cells = ["mean", "", ""] + [""] * len(archs)
    cells += [f"{means[a]:.3f}" for a in archs]
    cells += [f"{mean_base:.3f}", f"{mean_nearest:.3f}", f"{means[first] - mean_base:+.3f}"]
    cells += [f"{means[first] - means[a]:+.3f}" for a in archs[1:]]
    print("| " + " | ".join(cells) + " |")
    if args.json_out:
        payload = {
            "budget": args.budget,
            "archs": archs,
            "seed": args.seed,
            "flips": args.flips,
            "planes": args.planes,
            "cases": args.cases,
            "rows": rows,
        }
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
