"""Cross-validation over the user's own annotated slices (no expert mask needed).

This is the *semi-automatic* evaluation of Çiçek et al. 2016 (3D U-Net): the annotated
slices are split into ``k`` folds (the paper used 3); for each fold a network is trained on
the annotation of the other folds and scored on the annotated voxels of the held-out
slices, which it has not seen. The mean over the folds estimates how well the network
segments the slices nobody painted, from nothing but the user's sparse annotation.

Units (what is held out)
------------------------
A *unit* is one painted slice (of axis 0, 1 or 2) that holds at least one structure voxel
(annotation value ``>= 2``). Painted slices are told apart from the lines where a painted
slice of another axis crosses a slice by the voxels' neighbours: inside a painted slice the
neighbours across the slice are unknown, the ones in the slice are painted (details in
:func:`find_units`). With full slices painted, as in the paper, the units are exactly the
painted slices that show a structure.

Slices painted only with background, and background filled in by a region-of-interest box
(:func:`~napari_medseg.annotation.mark_outside_box_background`), are never units: they stay
in every training fold. On a held-out slice, a background voxel whose neighbour(s) across
the slice are annotated background lying on no unit is region fill, not painting: it stays
in training and is not scored (at test time the fill is there too).

Folds
-----
Units are sorted by ``(axis, index)`` and unit ``i`` goes to fold ``i % k``, so each fold
gets slices from every plane that was painted. Where slices of different axes cross, the
crossing voxels belong to both: every annotated voxel of a held-out slice (region fill
excepted) is held out (set to ``0`` = unknown in that fold's training annotation), even
when it also lies on a training slice; every other annotated voxel is kept.

Scores
------
On the held-out voxels, the reference is ``annotation - 1`` (``0`` background, ``k``
structure ``k``) and the prediction is the fold's network output. IoU (Jaccard) and Dice
are computed per structure with :func:`~napari_medseg.metrics.jaccard` and
:func:`~napari_medseg.metrics.dice` (a structure absent from both reference and prediction
scores ``1.0``, present in only one ``0.0``, as everywhere in :mod:`napari_medseg.metrics`).
The fold's score is the unweighted mean over the structures, as the paper's IoU; background
is reported too but is not part of the mean.

Time
----
Each fold trains with :attr:`CrossValConfig.train` (seed ``train.seed + fold``), so the
time budget ``train.time_budget`` is *per fold*: a run takes about
``folds * (time_budget + prediction time)``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .annotation import BACKGROUND, validate_annotation
from .checkpoint import TrainedModel
from .errors import MedsegInputError
from .inference import PredictConfig, Prediction, TileProgress, predict
from .metrics import dice, jaccard
from .options import option
from .painted_slices import AXIS_NAMES, SliceUnit, as_3d, find_units, slice_view
from .progress import relay
from .training import TrainConfig, TrainProgress, train

__all__ = [
    "AXIS_NAMES",
    "CrossValConfig",
    "CrossValProgress",
    "CrossValResult",
    "FoldResult",
    "SliceUnit",
    "assign_folds",
    "crossval",
    "find_units",
    "fold_annotation",
    "held_out_mask",
]

#: Share of a fold's progress given to training (the rest is prediction).
_TRAIN_SHARE = 0.9


@dataclass
class CrossValConfig:
    """Settings of a cross-validation run: the folds, and the training and prediction of each.

    ``train.time_budget`` and ``train.iterations`` apply to *each* fold; fold ``f`` uses the
    seed ``train.seed + f``. ``predict=None`` uses ``PredictConfig(device=train.device)``.
    """

    folds: int = option(
        3, help="number of folds k (the paper used 3); needs at least k painted slices "
        "that show a structure", min=2, max=100, metavar="K",
    )
    train: TrainConfig = option(default_factory=TrainConfig, help="training of every fold")
    predict: PredictConfig | None = option(None, help="prediction of every fold")

    def __post_init__(self) -> None:
        if int(self.folds) != self.folds or self.folds < 2:
            raise MedsegInputError(f"crossval needs at least 2 folds, not {self.folds}")

    def predict_config(self) -> PredictConfig:
        """The prediction settings actually used (labels only)."""
        base = self.predict or PredictConfig(device=self.train.device)
        return replace(base, probabilities=False)


@dataclass
class CrossValProgress:
    """What :func:`crossval` yields after every training step and every predicted tile.

    Attributes
    ----------
    fold : int
        Fold being run, from 0.
    folds : int
        Number of folds.
    phase : {"train", "predict"}
        What the fold is doing.
    step : int
        Training step, or predicted tile (from 1).
    loss : float or None
        Training loss of the step (``None`` while predicting).
    fraction : float
        Overall fraction done, 0..1 (each fold counts equally; within a fold training is
        90 %, prediction 10 %).
    elapsed : float
        Seconds since the run started.
    message : str
        A note from training or prediction (e.g. divergence, out-of-memory retry).
    """

    fold: int
    folds: int
    phase: Literal["train", "predict"]
    step: int
    loss: float | None
    fraction: float
    elapsed: float
    message: str = ""

    def describe(self) -> str:
        """One line for a progress bar: fold, phase, step or tile, seconds and any message."""
        if self.phase == "train":
            text = f"fold {self.fold + 1}/{self.folds} train step {self.step} loss {self.loss:.3f}"
        else:
            text = f"fold {self.fold + 1}/{self.folds} predict tile {self.step}"
        return f"{text} {self.elapsed:4.0f}s {self.message}".strip()


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


def assign_folds(units: Sequence[SliceUnit], folds: int) -> list[list[SliceUnit]]:
    """Interleave units over folds: after sorting by ``(axis, index)``, unit ``i`` -> ``i % k``.

    Parameters
    ----------
    units : sequence of SliceUnit
        The units (see :func:`find_units`).
    folds : int
        Number of folds ``k``.

    Returns
    -------
    list of list of SliceUnit
        ``k`` lists that partition the units, each sorted.

    Raises
    ------
    MedsegInputError
        When there are fewer units than folds.
    """
    ordered = sorted(SliceUnit(int(a), int(i)) for a, i in units)
    if len(ordered) < folds:
        raise MedsegInputError(
            f"crossval needs at least {folds} annotated slices with a structure; "
            f"found {len(ordered)}"
        )
    return [ordered[f::folds] for f in range(folds)]


def held_out_mask(
    annotation: np.ndarray, held_out: Sequence[SliceUnit], units: Sequence[SliceUnit]
) -> np.ndarray:
    """The annotated voxels of the held-out slices, less region fill.

    Parameters
    ----------
    annotation : np.ndarray
        Sparse annotation (3D, or 2D taken as one z slice).
    held_out : sequence of SliceUnit
        The slices of the fold being held out.
    units : sequence of SliceUnit
        Every unit of the annotation (decides what counts as region fill).

    Returns
    -------
    np.ndarray
        Boolean, the annotation's shape: the voxels to hide from training and to score.
        A background voxel whose neighbours across its held-out slice are annotated
        background on no unit is region fill (e.g. a region-of-interest box) and is not
        held out.
    """
    original_shape = np.shape(annotation)
    annotation = as_3d(annotation, "annotation")
    on_unit = np.zeros(annotation.shape, dtype=bool)
    for unit in units:
        slice_view(on_unit, SliceUnit(*unit))[...] = True
    fill_like = (annotation == BACKGROUND) & ~on_unit
    mask = np.zeros(annotation.shape, dtype=bool)
    for unit in (SliceUnit(int(a), int(i)) for a, i in held_out):
        values = slice_view(annotation, unit)
        size = annotation.shape[unit.axis]
        neighbours = [
            slice_view(fill_like, SliceUnit(unit.axis, j))
            for j in (unit.index - 1, unit.index + 1)
            if 0 <= j < size
        ]
        fill = values == BACKGROUND
        if neighbours:
            for neighbour in neighbours:
                fill &= neighbour
        else:
            fill[...] = False
        slice_view(mask, unit)[...] |= (values > 0) & ~fill
    return mask.reshape(original_shape)


def fold_annotation(annotation: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """The training annotation of a fold: ``annotation`` with the held-out voxels unknown.

    Parameters
    ----------
    annotation : np.ndarray
        Sparse annotation.
    held_out : np.ndarray
        Boolean mask from :func:`held_out_mask`.

    Returns
    -------
    np.ndarray
        A copy with ``0`` on the held-out voxels, every other voxel unchanged.
    """
    training = np.array(annotation, copy=True)
    training[np.asarray(held_out, dtype=bool)] = 0
    return training


# --------------------------------------------------------------------------- run


def _structure_names(class_names: Sequence[str] | None, n_structures: int) -> dict[int, str]:
    names = list(class_names or [])
    if names and names[0].strip().lower() == "background":
        names = names[1:]
    return {
        k: names[k - 1] if k <= len(names) else f"structure {k}" for k in range(1, n_structures + 1)
    }


def _check_fold(annotation: np.ndarray, held_out: np.ndarray, fold: int) -> None:
    """Refuse a fold whose training annotation lacks background or every structure."""
    kept = annotation[~held_out]
    if not np.any(kept == BACKGROUND) or not np.any(kept > BACKGROUND):
        what = "background" if not np.any(kept == BACKGROUND) else "structure"
        raise MedsegInputError(
            f"crossval fold {fold + 1}: without its held-out slices the annotation has no "
            f"{what} to train on; paint {what} on more slices or use fewer folds"
        )


def _score_fold(
    fold: int,
    held: list[SliceUnit],
    mask: np.ndarray,
    annotation: np.ndarray,
    labels: np.ndarray,
    n_structures: int,
) -> FoldResult:
    reference = annotation.astype(np.int64) - BACKGROUND
    iou, dsc, n_ref, n_pred = {}, {}, {}, {}
    for k in range(1, n_structures + 1):
        p, r = labels == k, reference == k
        iou[k] = float(jaccard(p, r, mask))
        dsc[k] = float(dice(p, r, mask))
        n_ref[k] = int(np.count_nonzero(r & mask))
        n_pred[k] = int(np.count_nonzero(p & mask))
    p, r = labels == 0, reference == 0
    return FoldResult(
        fold=fold,
        held_out=list(held),
        n_scored=int(np.count_nonzero(mask)),
        iou=iou,
        dice=dsc,
        n_reference=n_ref,
        n_predicted=n_pred,
        background_iou=float(jaccard(p, r, mask)),
        background_dice=float(dice(p, r, mask)),
    )


def _fold_progress(
    fold: int, folds: int, start: float, item: TrainProgress | TileProgress
) -> CrossValProgress:
    """A fold's training step or predicted tile as the whole run's progress (each fold counts
    equally; within a fold training is :data:`_TRAIN_SHARE` of it)."""
    elapsed = time.perf_counter() - start
    if isinstance(item, TrainProgress):
        done = _TRAIN_SHARE * item.fraction
        return CrossValProgress(
            fold=fold, folds=folds, phase="train", step=item.step, loss=item.loss,
            fraction=(fold + done) / folds, elapsed=elapsed, message=item.message,
        )
    done = _TRAIN_SHARE + (1 - _TRAIN_SHARE) * item.index / max(1, item.total)
    return CrossValProgress(
        fold=fold, folds=folds, phase="predict", step=item.index, loss=None,
        fraction=(fold + done) / folds, elapsed=elapsed, message=item.message,
    )


def crossval(
    image: np.ndarray,
    annotation: np.ndarray,
    config: CrossValConfig | None = None,
    *,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    stop: threading.Event | None = None,
) -> Generator[CrossValProgress, None, CrossValResult]:
    """Estimate segmentation accuracy by k-fold cross-validation over the annotated slices.

    Parameters
    ----------
    image : np.ndarray
        ``(z, y, x)`` (or 2D) intensity volume.
    annotation : np.ndarray
        Same shape; ``0`` not annotated, ``1`` background, ``k + 1`` structure ``k``.
    config : CrossValConfig, optional
        Folds and per-fold training settings (the time budget is per fold).
    spacing : sequence of float, optional
        Voxel size in mm, array order (passed to training).
    class_names : sequence of str, optional
        Names of the structures (background may be included first).
    stop : threading.Event, optional
        Set it to end after the current training step or tile; the folds finished so far
        are returned in a result marked incomplete.

    Yields
    ------
    CrossValProgress
        After every training step and every predicted tile.

    Returns
    -------
    CrossValResult
        Per-fold, per-structure IoU and Dice on the held-out voxels, and their means.

    Raises
    ------
    MedsegInputError
        For unusable input or settings, or fewer units than folds (raised at the first
        ``next()``, before any training).
    """
    config = config or CrossValConfig()
    image = as_3d(image, "image")
    annotation = as_3d(annotation, "annotation")
    n_structures = validate_annotation(annotation, image.shape) - 1
    units = find_units(annotation)
    plan = assign_folds(units, config.folds)
    for fold, held in enumerate(plan):  # refuse before any training, not in fold 3
        _check_fold(annotation, held_out_mask(annotation, held, units), fold)
    names = _structure_names(class_names, n_structures)
    predict_config = config.predict_config()
    settings = {
        "folds": config.folds,
        "train": asdict(config.train),
        "predict": asdict(predict_config),
    }
    k = config.folds
    start = time.perf_counter()
    results: list[FoldResult] = []
    complete = True

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    for fold, held in enumerate(plan):
        if stopped():
            complete = False
            break
        mask = held_out_mask(annotation, held, units)
        training = fold_annotation(annotation, mask)
        fold_config = replace(config.train, seed=config.train.seed + fold)
        train_start = time.perf_counter()
        trainer = train(
            image, training, fold_config, spacing=spacing, class_names=class_names, stop=stop
        )
        report = functools.partial(_fold_progress, fold, k, start)
        model: TrainedModel = yield from relay(trainer, report)
        train_seconds = time.perf_counter() - train_start
        if stopped():
            complete = False
            break
        predict_start = time.perf_counter()
        predictor = predict(model, image, predict_config, stop=stop)
        prediction: Prediction = yield from relay(predictor, report)
        if not prediction.complete or stopped():
            complete = False
            break
        result = _score_fold(fold, held, mask, annotation, prediction.labels, n_structures)
        result.train_steps = int(model.config.history.get("steps", 0))
        result.train_seconds = train_seconds
        result.predict_seconds = time.perf_counter() - predict_start
        results.append(result)

    seconds = time.perf_counter() - start
    return CrossValResult(
        folds=results,
        n_folds=k,
        structures=list(range(1, n_structures + 1)),
        class_names=names,
        units=units,
        complete=complete and len(results) == k,
        config=settings,
        seconds=seconds,
    )
