"""The scores of a cross-validation run: per fold and structure, and their means.

:func:`napari_medseg.crossval.crossval` returns a :class:`CrossValResult` holding one
:class:`FoldResult` per finished fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .painted_slices import SliceUnit


@dataclass
class FoldResult:
    """Scores of one fold on its held-out voxels.

    Attributes
    ----------
    fold : int
        Fold index, from 0.
    held_out : list of SliceUnit
        The slices held out (scored) in this fold.
    n_scored : int
        Number of held-out (scored) voxels.
    iou, dice : dict of int to float
        Per structure ``k >= 1``.
    n_reference, n_predicted : dict of int to int
        Voxels of structure ``k`` in the reference / prediction, among the scored voxels.
    background_iou, background_dice : float
        Scores of the background class (not part of the means).
    train_steps : int
        Optimisation steps the fold's training made.
    train_seconds, predict_seconds : float
        Wall-clock time of the fold's training and prediction.
    """

    fold: int
    held_out: list[SliceUnit]
    n_scored: int
    iou: dict[int, float]
    dice: dict[int, float]
    n_reference: dict[int, int]
    n_predicted: dict[int, int]
    background_iou: float
    background_dice: float
    train_steps: int = 0
    train_seconds: float = 0.0
    predict_seconds: float = 0.0

    @property
    def mean_iou(self) -> float:
        """Unweighted mean IoU over the structures."""
        return float(np.mean(list(self.iou.values()))) if self.iou else 1.0

    @property
    def mean_dice(self) -> float:
        """Unweighted mean Dice over the structures."""
        return float(np.mean(list(self.dice.values()))) if self.dice else 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dictionary."""
        return {
            "fold": self.fold,
            "held_out": [u.label() for u in self.held_out],
            "n_scored": int(self.n_scored),
            "classes": {
                str(k): {
                    "iou": float(self.iou[k]),
                    "dice": float(self.dice[k]),
                    "n_reference": int(self.n_reference[k]),
                    "n_predicted": int(self.n_predicted[k]),
                }
                for k in sorted(self.iou)
            },
            "background": {"iou": float(self.background_iou), "dice": float(self.background_dice)},
            "mean": {"iou": self.mean_iou, "dice": self.mean_dice},
            "train_steps": int(self.train_steps),
            "train_seconds": round(float(self.train_seconds), 3),
            "predict_seconds": round(float(self.predict_seconds), 3),
        }


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation; ``(None, None)`` for no value."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())


@dataclass
class CrossValResult:
    """The result of :func:`crossval`.

    Attributes
    ----------
    folds : list of FoldResult
        The folds that finished, in order.
    n_folds : int
        Number of folds planned.
    structures : list of int
        Structure labels scored (``1..K``).
    class_names : dict of int to str
        Display name per structure.
    units : list of SliceUnit
        Every unit found in the annotation.
    complete : bool
        ``False`` when the run was stopped before every fold finished.
    config : dict
        The settings (:class:`CrossValConfig` as a dictionary).
    seconds : float
        Wall-clock duration of the run.
    """

    folds: list[FoldResult]
    n_folds: int
    structures: list[int]
    class_names: dict[int, str]
    units: list[SliceUnit]
    complete: bool
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def name(self, k: int) -> str:
        """Display name of structure ``k``."""
        return self.class_names.get(k, f"structure {k}")

    def iou_mean_std(self, k: int | None = None) -> tuple[float | None, float | None]:
        """Mean and std over the folds of structure ``k``'s IoU (``None``: the fold means)."""
        return _mean_std([f.mean_iou if k is None else f.iou[k] for f in self.folds])

    def dice_mean_std(self, k: int | None = None) -> tuple[float | None, float | None]:
        """Mean and std over the folds of structure ``k``'s Dice (``None``: the fold means)."""
        return _mean_std([f.mean_dice if k is None else f.dice[k] for f in self.folds])

    @property
    def mean_iou(self) -> float | None:
        """Mean over the folds of the per-fold mean IoU (``None`` when no fold finished)."""
        return self.iou_mean_std()[0]

    @property
    def mean_dice(self) -> float | None:
        """Mean over the folds of the per-fold mean Dice (``None`` when no fold finished)."""
        return self.dice_mean_std()[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dictionary.

        Keys: ``complete``, ``n_folds``, ``folds_done``, ``units``, ``class_names``,
        ``folds`` (one :meth:`FoldResult.to_dict` each), ``summary`` (per structure and
        ``mean``: IoU and Dice mean and std over the folds), ``config``, ``seconds``.
        """
        summary: dict[str, dict[str, float | None]] = {}
        for key, k in [*((str(k), k) for k in self.structures), ("mean", None)]:
            iou_m, iou_s = self.iou_mean_std(k)
            dice_m, dice_s = self.dice_mean_std(k)
            summary[key] = {"iou": iou_m, "iou_std": iou_s, "dice": dice_m, "dice_std": dice_s}
        return {
            "complete": self.complete,
            "n_folds": self.n_folds,
            "folds_done": len(self.folds),
            "units": [u.label() for u in self.units],
            "class_names": {str(k): self.name(k) for k in self.structures},
            "folds": [f.to_dict() for f in self.folds],
            "summary": summary,
            "config": self.config,
            "seconds": round(float(self.seconds), 3),
        }

    def format_table(self) -> str:
        """A plain-text table: IoU per fold and structure, mean ± std of IoU and Dice."""
        lines = [
            f"cross-validation, {self.n_folds} folds over {len(self.units)} annotated slices"
            + ("" if self.complete else f" (stopped: {len(self.folds)} fold(s) done)")
        ]
        for f in self.folds:
            held = ", ".join(u.label() for u in f.held_out)
            lines.append(f"  fold {f.fold + 1}: held out {held} ({f.n_scored} voxels)")
        if not self.folds:
            lines.append("no fold finished")
            return "\n".join(lines)
        header = ["structure", *(f"IoU f{f.fold + 1}" for f in self.folds), "IoU", "Dice"]
        rows = []

        def pm(pair: tuple[float | None, float | None]) -> str:
            mean, std = pair
            return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"

        for k in self.structures:
            rows.append(
                [
                    self.name(k),
                    *(f"{f.iou[k]:.3f}" for f in self.folds),
                    pm(self.iou_mean_std(k)),
                    pm(self.dice_mean_std(k)),
                ]
            )
        rows.append(
            [
                "mean",
                *(f"{f.mean_iou:.3f}" for f in self.folds),
                pm(self.iou_mean_std()),
                pm(self.dice_mean_std()),
            ]
        )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines += ["", fmt.format(*header), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*row) for row in rows]
        return "\n".join(line.rstrip() for line in lines)
