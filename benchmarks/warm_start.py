"""Warm start against a cold start after one more painted slice.

For each case and seed: a model is trained cold on the annotation with one painted axial
slice left out (``--budget`` seconds); then the slice is painted and three runs compete on
the full annotation: a cold run of ``--budget`` seconds, a warm round of ``--warm`` seconds
continuing from the first model, and a cold run of ``--warm`` seconds. Each is scored by its
mean Dice over the structures, on the voxels nobody painted. One JSON line per case and seed,
then a summary line (medians). Run it alone on the machine: the budgets are wall-clock.

    python benchmarks/warm_start.py --cases brain1 breast1 prostate_phantom synthetic1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_table import REAL, load_case  # noqa: E402

from napari_medseg.inference import PredictConfig, predict  # noqa: E402
from napari_medseg.metrics import evaluate  # noqa: E402
from napari_medseg.painted_slices import find_units  # noqa: E402
from napari_medseg.progress import run_to_completion  # noqa: E402
from napari_medseg.sample_data import DEFAULT_AXIAL_SLICES, real_case_annotation  # noqa: E402
from napari_medseg.training import TrainConfig, train  # noqa: E402


def _one_slice_less(name: str, annotation: np.ndarray) -> tuple[np.ndarray, int]:
    """The annotation with its middle painted axial slice (one showing a structure) left
    out, and that slice's index. A real scan is painted again on the other slices, with the
    same region-of-interest box; a synthetic volume loses the slice."""
    painted = [unit.index for unit in find_units(annotation) if unit.axis == 0]
    if len(painted) < 2:
        raise SystemExit(f"{name} needs at least two painted axial slices with a structure")
    left_out = painted[len(painted) // 2]
    if name in REAL:
        others = [z for z in DEFAULT_AXIAL_SLICES[name] if z != left_out]
        return real_case_annotation(name, axial_slices=others), left_out
    fewer = annotation.copy()
    fewer[left_out] = 0
    return fewer, left_out


def _dice(model, case, scored: np.ndarray) -> float:
    labels = run_to_completion(predict(model, case.image, PredictConfig(device="cpu"))).labels
    result = evaluate(labels, case.expert, spacing=case.spacing, mask=scored,
                      surface_distances=False)
    return float(result.to_dict()["mean"]["dice"])


def _train(case, annotation, seconds: float, seed: int, init=None, ensemble=None):
    chosen = {} if ensemble is None else {"ensemble": ensemble}
    config = TrainConfig(time_budget=seconds, seed=seed, device="cpu", **chosen)
    return run_to_completion(
        train(case.image, annotation, config, spacing=case.spacing,
              class_names=case.class_names, init=init)
    )


def run(name: str, seed: int, budget: float, warm: float,
        ensemble: int | None = None) -> dict[str, object]:
    """One case and seed: the three runs' Dice on the voxels nobody painted."""
    case = load_case(name)
    fewer, left_out = _one_slice_less(name, case.annotation)
    scored = case.annotation == 0
    earlier = _train(case, fewer, budget, seed, ensemble=ensemble)
    cold = _train(case, case.annotation, budget, seed, ensemble=ensemble)
    warm_model = _train(case, case.annotation, warm, seed, init=earlier)  # its networks
    short = _train(case, case.annotation, warm, seed, ensemble=ensemble)
    return {
        "case": name, "seed": seed, "slice_added": left_out,
        "ensemble": cold.config.history["ensemble"],
        "before": round(_dice(earlier, case, scored), 4),
        f"cold_{budget:g}s": round(_dice(cold, case, scored), 4),
        f"warm_{warm:g}s": round(_dice(warm_model, case, scored), 4),
        f"cold_{warm:g}s": round(_dice(short, case, scored), 4),
        "steps": {"cold": cold.config.history["steps"],
                  "warm": warm_model.config.history["steps"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["brain1", "breast1", "prostate_phantom",
                                                       "synthetic1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--warm", type=float, default=20.0)
    parser.add_argument("--ensemble", type=int, default=None,
                        help="networks per run (default: the product's default)")
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        for seed in args.seeds:
            rows.append(run(name, seed, args.budget, args.warm, args.ensemble))
            print(json.dumps(rows[-1]), flush=True)
    summary: dict[str, object] = {"summary": True}
    for name in args.cases:
        mine = [r for r in rows if r["case"] == name]
        for key in (f"cold_{args.budget:g}s", f"warm_{args.warm:g}s", f"cold_{args.warm:g}s"):
            summary[f"{name}_{key}"] = statistics.median(float(r[key]) for r in mine)  # type: ignore[arg-type]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
