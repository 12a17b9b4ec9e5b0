"""A simulated annotator: how many painted slices and compute seconds reach a given Dice?

Starts from one whole axial slice through the middle of the structures, painted from the
expert mask (structures and background, no region-of-interest box). Each round trains (the
first cold for ``--first`` seconds, the later ones continuing from the last model for
``--warm`` seconds), predicts, scores, then paints one more whole slice from the expert mask:

- ``suggested``: the unpainted slice, in any of the three planes, where the model is least
  sure (the sum over the slice of one minus the top class probability);
- ``even``: the axial slice through the structures farthest from every painted one.

One JSON line per round: slices painted, compute seconds so far, Dice on the whole volume
(painted voxels keep their labels, as the GUI shows them) and on the unpainted voxels, and
the run's own validation figure. A summary line gives, per strategy, the slices and
seconds first reaching whole-volume Dice 0.85 and 0.90. With matplotlib installed
(``pip install matplotlib``), ``--png`` draws the curves.

    python benchmarks/effort.py synthetic0 --rounds 8 --png docs/images/effort_synthetic0.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_table import load_case, mean_dice  # noqa: E402

from napari_medseg.annotation import keep_painted  # noqa: E402
from napari_medseg.inference import PredictConfig, predict  # noqa: E402
from napari_medseg.painted_slices import planes_to_paint  # noqa: E402
from napari_medseg.progress import run_to_completion  # noqa: E402
from napari_medseg.training import TrainConfig, train  # noqa: E402

TARGETS = (0.85, 0.90)


def paint(annotation: np.ndarray, expert: np.ndarray, axis: int, index: int) -> None:
    """Paint one whole slice from the expert mask (structure k -> k + 1, the rest 1)."""
    np.moveaxis(annotation, axis, 0)[index] = np.moveaxis(expert, axis, 0)[index] + 1


def first_slice(expert: np.ndarray) -> int:
    """The axial slice through the middle of the structures."""
    zs = np.flatnonzero((expert > 0).any(axis=(1, 2)))
    return int(zs[len(zs) // 2])


def suggested(probabilities: np.ndarray, annotation: np.ndarray) -> tuple[int, int] | None:
    """The slice (any plane) the product suggests: most doubt on voxels nobody painted."""
    best = planes_to_paint(1.0 - probabilities.max(axis=0), annotation, count=1)
    return best[0] if best else None


def evenly(expert: np.ndarray, annotation: np.ndarray) -> tuple[int, int]:
    """The axial slice through the structures farthest from every painted axial slice."""
    zs = np.flatnonzero((expert > 0).any(axis=(1, 2)))
    painted = np.flatnonzero((annotation > 0).reshape(annotation.shape[0], -1).mean(1) > 0.5)
    gaps = [min(abs(int(z) - int(p)) for p in painted) if painted.size else 1 for z in zs]
    return 0, int(zs[int(np.argmax(gaps))])


def simulate(case: Any, strategy: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """All rounds of one strategy on one case."""
    annotation = np.zeros(case.expert.shape, np.uint8)
    paint(annotation, case.expert, 0, first_slice(case.expert))
    model, seconds, rows = None, 0.0, []
    for round_ in range(1, args.rounds + 1):
        budget = args.first if model is None else args.warm
        config = TrainConfig(time_budget=budget, seed=args.seed, device="cpu")
        began = time.perf_counter()
        model = run_to_completion(train(case.image, annotation, config, spacing=case.spacing,
                                        class_names=case.class_names, init=model))
        seconds += time.perf_counter() - began
        result = run_to_completion(predict(model, case.image,
                                           PredictConfig(device="cpu", probabilities=True)))
        painted = annotation > 0
        kept = result.labels.copy()
        keep_painted(kept, annotation)
        rows.append({
            "case": args.case, "strategy": strategy, "round": round_, "slices": round_,
            "seconds": round(seconds, 1), "whole_volume_dice": mean_dice(kept, case),
            "unpainted_dice": mean_dice(result.labels, case, ~painted),
            "validation": (model.config.history.get("validation") or {}).get("score"),
        })
        print(json.dumps(rows[-1]), flush=True)
        pick = suggested(result.probabilities, annotation) if strategy == "suggested" else None
        axis, index = pick or evenly(case.expert, annotation)
        paint(annotation, case.expert, axis, index)
    return rows


def reached(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """Slices and seconds of the first round at or above ``target``."""
    for row in rows:
        if row["whole_volume_dice"] >= target:
            return {"slices": row["slices"], "seconds": row["seconds"]}
    return None


def plot(rows: list[dict[str, Any]], path: str, case: str) -> None:
    """Whole-volume Dice against slices painted, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for strategy in ("suggested", "even"):
        mine = [r for r in rows if r["strategy"] == strategy]
        if mine:
            axes.plot([r["slices"] for r in mine], [r["whole_volume_dice"] for r in mine],
                      marker="o", label=strategy)
    for target in TARGETS:
        axes.axhline(target, color="grey", linewidth=0.5, linestyle="--")
    axes.set(xlabel="slices painted", ylabel="whole-volume Dice", title=case, ylim=(0, 1))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--first", type=float, default=60.0)
    parser.add_argument("--warm", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=["suggested", "even"])
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    case = load_case(args.case)
    rows = []
    for strategy in args.strategies:
        rows.extend(simulate(case, strategy, args))
    summary: dict[str, Any] = {"summary": True, "case": args.case, "seed": args.seed}
    for strategy in args.strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        summary[strategy] = {f"dice_{t:.2f}": reached(mine, t) for t in TARGETS}
    print(json.dumps(summary))
    if args.png:
        plot(rows, args.png, args.case)


if __name__ == "__main__":
    main()
