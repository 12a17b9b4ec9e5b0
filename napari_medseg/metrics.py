"""Segmentation quality metrics: pure numpy/scipy functions, no GUI, no torch.

Conventions
-----------
* Masks are anything that converts to ``bool`` (``True`` = inside the structure).
* Label maps (segmentation, expert reference): ``0`` background, ``k`` structure ``k``.
* ``spacing`` is the voxel size per array axis in mm (``z, y, x``); ``None`` means 1 mm.
* ``mask`` (optional, every function) selects the voxels that are scored. The 3D U-Net
  paper (Çiçek et al. 2016) scores only the voxels that were *not* annotated:
  ``mask = annotation == 0``.

Defined values for empty cases
------------------------------
No function returns NaN or infinity, so every result is JSON-serialisable:

=====================  ===================  ====================
case                   Dice / Jaccard / SA  HD95 / ASSD (mm)
=====================  ===================  ====================
both empty             1.0 / 1.0 / 100.0    0.0 / 0.0
reference empty only   0.0 / 0.0 / 0.0      image diagonal in mm
prediction empty only  0.0 / 0.0 / 0.0      image diagonal in mm
=====================  ===================  ====================

The image diagonal, ``sqrt(sum((shape * spacing) ** 2))``, bounds every distance inside
the image, so it serves as the "worst possible" distance. With an empty prediction and a
non-empty reference, SA follows its formula and gives exactly 0; with an empty reference
and a non-empty prediction the formula would divide by zero, and SA is defined as 0.

Surface distances (HD95, ASSD; their definitions, and how a ``mask`` cuts a surface) live
in :mod:`napari_medseg.metrics_surface`; the result classes of :func:`evaluate` in
:mod:`napari_medseg.metrics_result`. Both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._metrics_inputs import (
    _check_label_map,
    _check_same_shape,
    _overlap_counts,
    _prepare,
    _spacing,
)
from .errors import MedsegInputError
from .metrics_result import ClassMetrics, EvaluationResult, MeanMetrics
from .metrics_surface import (
    _assd_of,
    _empty_distance,
    _hd95_of,
    average_symmetric_surface_distance,
    hausdorff95,
    surface_distances,
)

__all__ = [
    "ClassMetrics",
    "EvaluationResult",
    "MeanMetrics",
    "PerSliceDice",
    "average_symmetric_surface_distance",
    "dice",
    "evaluate",
    "hausdorff95",
    "jaccard",
    "per_slice_dice",
    "segmentation_accuracy",
    "surface_distances",
]


# --------------------------------------------------------------------------- overlap


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice coefficient ``2 |P ∩ R| / (|P| + |R|)``.

    Parameters
    ----------
    pred_mask, ref_mask : np.ndarray
        Binary prediction and reference of the same shape.
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored.

    Returns
    -------
    float
        In ``[0, 1]``; ``1.0`` when both are empty.
    """
    pred, ref, _ = _prepare(pred_mask, ref_mask, mask)
    inter, n_pred, n_ref = _overlap_counts(pred, ref)
    if n_pred + n_ref == 0:
        return 1.0
    return 2.0 * inter / (n_pred + n_ref)


def jaccard(pred_mask: np.ndarray, ref_mask: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Jaccard index (intersection over union) ``|P ∩ R| / |P ∪ R|``.

    Parameters
    ----------
    pred_mask, ref_mask : np.ndarray
        Binary prediction and reference of the same shape.
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored.

    Returns
    -------
    float
        In ``[0, 1]``; ``1.0`` when both are empty.
    """
    pred, ref, _ = _prepare(pred_mask, ref_mask, mask)
    inter, n_pred, n_ref = _overlap_counts(pred, ref)
    union = n_pred + n_ref - inter
    if union == 0:
        return 1.0
    return inter / union


def segmentation_accuracy(
    pred_mask: np.ndarray, ref_mask: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Segmentation accuracy of the 3D U-Net seed paper, in percent.

    ``SA = (1 - (|FP| + |FN|) / |R|) * 100``: 100 is perfect, 0 means as many errors as
    reference voxels, and it becomes negative with more errors than that.

    Parameters
    ----------
    pred_mask, ref_mask : np.ndarray
        Binary prediction and reference of the same shape.
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored.

    Returns
    -------
    float
        SA in percent. With an empty reference the ratio is undefined: ``100.0`` when the
        prediction is empty too, ``0.0`` otherwise.
    """
    pred, ref, _ = _prepare(pred_mask, ref_mask, mask)
    inter, n_pred, n_ref = _overlap_counts(pred, ref)
    if n_ref == 0:
        return 100.0 if n_pred == 0 else 0.0
    errors = (n_pred - inter) + (n_ref - inter)
    return (1.0 - errors / n_ref) * 100.0


# --------------------------------------------------------------------------- per slice


@dataclass
class PerSliceDice:
    """Dice of one label on every slice along an axis.

    Attributes
    ----------
    dice : np.ndarray
        ``float64``, one value per slice; ``1.0`` where both prediction and reference are
        empty on that slice (never NaN).
    has_reference : np.ndarray
        ``bool``, whether the reference has the label on that slice.
    has_prediction : np.ndarray
        ``bool``, whether the prediction has the label on that slice.
    """

    dice: np.ndarray
    has_reference: np.ndarray
    has_prediction: np.ndarray

    def mean_over_reference(self) -> float:
        """Mean Dice over the slices where the reference holds the label (1.0 if none)."""
        if not self.has_reference.any():
            return 1.0
        return float(self.dice[self.has_reference].mean())


def per_slice_dice(
    pred: np.ndarray,
    ref: np.ndarray,
    label: int = 1,
    axis: int = 0,
    mask: np.ndarray | None = None,
) -> PerSliceDice:
    """Dice of one label computed separately on each slice along ``axis``.

    Parameters
    ----------
    pred, ref : np.ndarray
        Label maps (``0`` background, ``k`` structure ``k``) of the same shape.
    label : int
        The structure to score.
    axis : int
        The axis the slices are taken along (``0`` = axial for ``z, y, x`` volumes).
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored.

    Returns
    -------
    PerSliceDice
        Per-slice Dice and which slices hold the label in reference / prediction.
    """
    p, r, _ = _prepare(np.asarray(pred) == label, np.asarray(ref) == label, mask)
    if not -p.ndim <= axis < p.ndim:
        raise MedsegInputError(f"axis {axis} is out of range for a {p.ndim}D array")
    other = tuple(a for a in range(p.ndim) if a != axis % p.ndim)
    inter = np.count_nonzero(p & r, axis=other).astype(np.float64)
    n_pred = np.count_nonzero(p, axis=other).astype(np.float64)
    n_ref = np.count_nonzero(r, axis=other).astype(np.float64)
    total = n_pred + n_ref
    values = np.ones_like(total)
    np.divide(2.0 * inter, total, out=values, where=total > 0)
    return PerSliceDice(values, n_ref > 0, n_pred > 0)


# --------------------------------------------------------------------------- evaluate


def _default_labels(segmentation: np.ndarray, reference: np.ndarray) -> list[int]:
    values = np.union1d(np.unique(segmentation), np.unique(reference))
    return [int(v) for v in values if v != 0]


def _class_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    mask: np.ndarray | None,
    with_surfaces: bool,
) -> ClassMetrics:
    hd95 = assd = None
    if with_surfaces:
        dists = surface_distances(pred, ref, spacing, mask)
        if dists is None:
            hd95 = assd = _empty_distance(pred, ref, spacing, mask)
        else:
            hd95, assd = _hd95_of(dists), _assd_of(dists)
    p, r, _ = _prepare(pred, ref, mask)
    return ClassMetrics(
        dice=dice(p, r),
        jaccard=jaccard(p, r),
        sa=segmentation_accuracy(p, r),
        hd95_mm=hd95,
        assd_mm=assd,
        n_reference=int(np.count_nonzero(r)),
        n_predicted=int(np.count_nonzero(p)),
    )


def _names_dict(
    class_names: Mapping[int, str] | Sequence[str] | None, labels: Sequence[int]
) -> dict[int, str]:
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    names = list(class_names)  # names[k - 1] is the name of structure k
    return {k: names[k - 1] for k in labels if 0 < k <= len(names)}


def evaluate(
    segmentation: np.ndarray,
    reference: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    surface_distances: bool = True,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
) -> EvaluationResult:
    """Score a label map against a reference label map, structure by structure.

    Parameters
    ----------
    segmentation, reference : np.ndarray
        Label maps (``0`` background, ``k`` structure ``k``) of the same shape.
    spacing : sequence of float, optional
        Voxel size per array axis in mm, e.g. ``(z, y, x)``; ``None`` (default) means 1 mm
        per axis.
    labels : sequence of int, optional
        Structures to score; default: every nonzero label present in either map.
    mask : np.ndarray, optional
        Boolean array of the voxels to score, e.g. ``annotation == 0``.
    surface_distances : bool
        Compute HD95 and ASSD (otherwise they are ``None``).
    class_names : mapping or sequence of str, optional
        Display names: ``{label: name}`` or a sequence whose item ``k - 1`` names label ``k``.

    Returns
    -------
    EvaluationResult
        Per-structure metrics and their means.

    Raises
    ------
    MedsegInputError
        When the shapes differ, the spacing does not fit, or a map is not a label map
        (values that are not whole non-negative numbers, e.g. an intensity image).
    """
    seg = np.asarray(segmentation)
    ref = np.asarray(reference)
    _check_label_map(seg, "segmentation")
    _check_label_map(ref, "reference")
    _check_same_shape(seg, ref, "segmentation and reference")
    if mask is not None:
        _check_same_shape(np.asarray(mask), ref, "scoring mask and reference")
    sampling = _spacing(spacing, ref.ndim)
    chosen = _default_labels(seg, ref) if labels is None else [int(k) for k in labels]
    classes = {
        k: _class_metrics(seg == k, ref == k, sampling, mask, surface_distances) for k in chosen
    }
    if classes:
        mean = MeanMetrics(
            dice=float(np.mean([m.dice for m in classes.values()])),
            jaccard=float(np.mean([m.jaccard for m in classes.values()])),
            sa=float(np.mean([m.sa for m in classes.values()])),
        )
    else:
        mean = MeanMetrics(1.0, 1.0, 100.0)
    return EvaluationResult(classes, mean, _names_dict(class_names, chosen))
