"""Visual review of a segmentation against an expert mask: volumes, per-slice Dice, errors.

Pure functions over label maps (``0`` background, ``k`` structure ``k``), used by the Metrics
widget's review section and by scripts:

- :func:`volumes_ml`: the volume of each structure in millilitres;
- :func:`slice_dice_strip`: one Dice per slice along an axis (the strip the widget draws);
- :func:`worst_slice`: where that strip is lowest;
- :func:`error_maps`: false positives and false negatives, labelled by structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MedsegInputError

__all__ = [
    "Review",
    "error_maps",
    "review",
    "slice_dice_strip",
    "volume_difference_percent",
    "volumes_ml",
    "worst_slice",
]

MM3_PER_ML = 1000.0


def volumes_ml(
    labels: np.ndarray, spacing: Sequence[float], structures: Sequence[int]
) -> dict[int, float]:
    """Volume of each structure in mL (voxel count times the voxel volume in mm³ / 1000).

    Parameters
    ----------
    labels : np.ndarray
        Label map.
    spacing : sequence of float
        Voxel size per axis in mm.
    structures : sequence of int
        The labels to measure.
    """
    if len(spacing) != labels.ndim:
        raise MedsegInputError(f"{len(spacing)} spacing values for a {labels.ndim}D label map")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=float))) / MM3_PER_ML
    array = np.asarray(labels)
    return {int(k): float(np.count_nonzero(array == k)) * voxel_ml for k in structures}


def volume_difference_percent(segmentation_ml: float, expert_ml: float) -> float | None:
    """``(segmentation - expert) / expert`` in percent; None when the expert volume is 0."""
    if expert_ml <= 0:
        return None
    return 100.0 * (segmentation_ml - expert_ml) / expert_ml


def slice_dice_strip(
    segmentation: np.ndarray,
    reference: np.ndarray,
    axis: int,
    structures: Sequence[int],
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """One Dice per slice along ``axis``: the mean over the structures present on the slice.

    A structure counts on a slice when the segmentation or the expert mask holds it there.
    Slices where no structure is present in either are ``NaN`` (nothing to score).

    Parameters
    ----------
    segmentation, reference : np.ndarray
        Label maps of the same shape.
    axis : int
        The axis the slices are taken along.
    structures : sequence of int
        The labels to score.
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored (e.g. ``annotation == 0``).

    Returns
    -------
    np.ndarray
        ``float64`` of length ``segmentation.shape[axis]``.
    """
    seg, ref = np.asarray(segmentation), np.asarray(reference)
    if seg.shape != ref.shape:
        raise MedsegInputError(f"segmentation {seg.shape} and expert mask {ref.shape} differ")
    if not -seg.ndim <= axis < seg.ndim:
        raise MedsegInputError(f"axis {axis} is out of range for a {seg.ndim}D label map")
    if mask is not None and np.shape(mask) != seg.shape:
        raise MedsegInputError(f"scoring mask {np.shape(mask)} and label maps {seg.shape} differ")
    other = tuple(a for a in range(seg.ndim) if a != axis % seg.ndim)
    total = np.zeros(seg.shape[axis], dtype=np.float64)
    present = np.zeros(seg.shape[axis], dtype=np.int64)
    for k in structures:
        p, r = seg == k, ref == k
        if mask is not None:
            p &= mask
            r &= mask
        n_p = np.count_nonzero(p, axis=other)
        n_r = np.count_nonzero(r, axis=other)
        both = np.count_nonzero(p & r, axis=other)
        here = (n_p + n_r) > 0
        total[here] += 2.0 * both[here] / (n_p[here] + n_r[here])
        present += here
    strip = np.full(seg.shape[axis], np.nan)
    np.divide(total, present, out=strip, where=present > 0)
    return strip


def worst_slice(strip: np.ndarray) -> int | None:
    """The slice with the lowest Dice in a strip (the first of equals); None when all NaN."""
    values = np.asarray(strip, dtype=float)
    if values.size == 0 or np.isnan(values).all():
        return None
    return int(np.nanargmin(values))


def error_maps(
    segmentation: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """False positives and false negatives, each labelled by the structure concerned.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``false_positive`` holds ``k`` where the segmentation says ``k`` and the expert mask
        does not; ``false_negative`` holds ``k`` where the expert mask says ``k`` and the
        segmentation does not. Outside ``mask`` both are 0.
    """
    seg, ref = np.asarray(segmentation), np.asarray(reference)
    if seg.shape != ref.shape:
        raise MedsegInputError(f"segmentation {seg.shape} and expert mask {ref.shape} differ")
    differ = seg != ref
    if mask is not None:
        differ &= np.asarray(mask, dtype=bool)
    false_positive = np.where(differ & (seg > 0), seg, 0)
    false_negative = np.where(differ & (ref > 0), ref, 0)
    return false_positive, false_negative


@dataclass
class Review:
    """Everything the review section shows, computed once in a worker.

    Attributes
    ----------
    segmentation_ml, expert_ml : dict of int to float
        Whole-volume structure volumes in mL (the scoring mask does not apply).
    strips : dict of int to np.ndarray
        :func:`slice_dice_strip` along every axis.
    false_positive, false_negative : np.ndarray
        :func:`error_maps` (within the scoring mask).
    """

    segmentation_ml: dict[int, float]
    expert_ml: dict[int, float]
    strips: dict[int, np.ndarray]
    false_positive: np.ndarray
    false_negative: np.ndarray


def review(
    segmentation: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    structures: Sequence[int],
    mask: np.ndarray | None = None,
) -> Review:
    """Volumes, a Dice strip along each axis and the error maps, in one call."""
    seg, ref = np.asarray(segmentation), np.asarray(reference)
    strips = {
        axis: slice_dice_strip(seg, ref, axis, structures, mask) for axis in range(seg.ndim)
    }
    false_positive, false_negative = error_maps(seg, ref, mask)
    return Review(
        segmentation_ml=volumes_ml(seg, spacing, structures),
        expert_ml=volumes_ml(ref, spacing, structures),
        strips=strips,
        false_positive=false_positive,
        false_negative=false_negative,
    )
