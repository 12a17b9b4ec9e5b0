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
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from .annotation import BACKGROUND, validate_annotation
from .crossval_results import CrossValResult, FoldResult
from .errors import MedsegInputError
from .inference import PredictConfig, Prediction, TileProgress, predict
from .metrics import dice, jaccard
from .model import TrainedModel
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


@dataclass(frozen=True)
class _Case:
    """What every fold of a run shares."""

    image: np.ndarray
    annotation: np.ndarray
    units: list[SliceUnit]
    n_structures: int
    spacing: Sequence[float] | None
    class_names: Sequence[str] | None


def _is_set(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _run_fold(
    case: _Case,
    config: CrossValConfig,
    fold: int,
    held: list[SliceUnit],
    stop: threading.Event | None,
    start: float,
) -> Generator[CrossValProgress, None, FoldResult | None]:
    """Train on the other folds, predict, score the held-out voxels (``None``: stopped)."""
    mask = held_out_mask(case.annotation, held, case.units)
    fold_config = replace(config.train, seed=config.train.seed + fold)
    report = functools.partial(_fold_progress, fold, config.folds, start)
    train_start = time.perf_counter()
    trainer = train(
        case.image,
        fold_annotation(case.annotation, mask),
        fold_config,
        spacing=case.spacing,
        class_names=case.class_names,
        stop=stop,
    )
    model: TrainedModel = yield from relay(trainer, report)
    train_seconds = time.perf_counter() - train_start
    if _is_set(stop):
        return None
    predict_start = time.perf_counter()
    predictor = predict(model, case.image, config.predict_config(), stop=stop)
    prediction: Prediction = yield from relay(predictor, report)
    if not prediction.complete or _is_set(stop):
        return None
    result = _score_fold(
        fold, held, mask, case.annotation, prediction.labels, case.n_structures
    )
    result.train_steps = int(model.config.history.get("steps", 0))
    result.train_seconds = train_seconds
    result.predict_seconds = time.perf_counter() - predict_start
    return result


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
    start = time.perf_counter()
    # every fold trains for all the structures, even one its training slices lack
    case = _Case(image, annotation, units, n_structures, spacing, list(names.values()))
    results: list[FoldResult] = []
    for fold, held in enumerate(plan):
        if _is_set(stop):
            break
        result = yield from _run_fold(case, config, fold, held, stop, start)
        if result is None:
            break
        results.append(result)

    return CrossValResult(
        folds=results,
        n_folds=config.folds,
        structures=list(range(1, n_structures + 1)),
        class_names=names,
        units=units,
        complete=len(results) == config.folds,
        config=_settings(config),
        seconds=time.perf_counter() - start,
    )


def _settings(config: CrossValConfig) -> dict[str, Any]:
    """The settings a result records: folds, training, prediction."""
    return {
        "folds": config.folds,
        "train": asdict(config.train),
        "predict": asdict(config.predict_config()),
    }
