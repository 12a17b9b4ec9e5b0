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

Surface-distance definitions: HD95 is the larger of the two directed 95th percentiles
(as in MedPy's ``hd95``); ASSD is the mean over the surface voxels of *both* masks of
the distance to the other surface. Surfaces use 6-connectivity; the image border counts
as outside.

Surface distances with a ``mask``
---------------------------------
Both masks are first restricted to the scored voxels. A voxel of a restricted mask is a
*surface* voxel when one of its 6-neighbours is a scored voxel outside that mask (or lies
outside the image). Neighbours that are not scored do not make a surface: cutting the
structure with an annotated slice does not create artificial faces that would match
trivially in both masks. A restricted mask whose voxels are all interior in that sense
(possible only when it is surrounded by unscored voxels) uses all its voxels as surface.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import MedsegInputError

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


# --------------------------------------------------------------------------- helpers


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "prediction and reference") -> None:
    if tuple(np.shape(a)) != tuple(np.shape(b)):
        raise MedsegInputError(
            f"{what} shapes differ: {tuple(np.shape(a))} vs {tuple(np.shape(b))}"
        )


def _prepare(
    pred_mask: np.ndarray, ref_mask: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate shapes and return boolean prediction/reference restricted to ``mask``."""
    pred = np.asarray(pred_mask).astype(bool, copy=False)
    ref = np.asarray(ref_mask).astype(bool, copy=False)
    _check_same_shape(pred, ref)
    if mask is None:
        return pred, ref, None
    scored = np.asarray(mask).astype(bool, copy=False)
    _check_same_shape(scored, ref, "scoring mask and reference")
    return pred & scored, ref & scored, scored


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise MedsegInputError(f"spacing {values} has {len(values)} values for a {ndim}D array")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise MedsegInputError(f"spacing {values} must hold positive finite numbers (mm)")
    return values


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _overlap_counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """Return ``(|pred & ref|, |pred|, |ref|)``."""
    return (
        int(np.count_nonzero(pred & ref)),
        int(np.count_nonzero(pred)),
        int(np.count_nonzero(ref)),
    )


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


# --------------------------------------------------------------------------- surfaces


def _surface(region: np.ndarray, scored: np.ndarray | None) -> np.ndarray:
    """Surface voxels of ``region`` (see the module docstring for the masked case)."""
    if not region.any():
        return region
    structure = ndimage.generate_binary_structure(region.ndim, 1)
    solid = region if scored is None else region | ~scored
    interior = ndimage.binary_erosion(solid, structure=structure, border_value=0)
    surface = region & ~interior
    return surface if surface.any() else region


def _crop_box(pred: np.ndarray, ref: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``pred | ref`` expanded by ``margin`` voxels, clipped to the array."""
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(np.any(union, axis=other))
        box.append(slice(max(0, hits[0] - margin), min(union.shape[axis], hits[-1] + 1 + margin)))
    return tuple(box)


def surface_distances(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed surface distances between two non-empty masks, in mm.

    Parameters
    ----------
    pred_mask, ref_mask : np.ndarray
        Binary prediction and reference of the same shape.
    spacing : sequence of float, optional
        Voxel size per array axis in mm (default 1 mm).
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored.

    Returns
    -------
    tuple of np.ndarray or None
        ``(pred_to_ref, ref_to_pred)``: for each surface voxel of one mask, the distance to
        the nearest surface voxel of the other. ``None`` when either mask is empty (after
        restriction to ``mask``).
    """
    pred, ref, scored = _prepare(pred_mask, ref_mask, mask)
    sampling = _spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        return None
    box = _crop_box(pred, ref)
    pred, ref = pred[box], ref[box]
    scored = None if scored is None else scored[box]
    surf_pred, surf_ref = _surface(pred, scored), _surface(ref, scored)
    to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=sampling)
    return to_ref[surf_pred], to_pred[surf_ref]


def _empty_distance(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None, mask: np.ndarray | None
) -> float:
    """Defined distance when at least one mask is empty: 0 if both, else the diagonal."""
    p, r, _ = _prepare(pred, ref, mask)
    if not p.any() and not r.any():
        return 0.0
    return _diagonal_mm(p.shape, _spacing(spacing, p.ndim))


def _hd95_of(dists: tuple[np.ndarray, np.ndarray]) -> float:
    return float(max(np.percentile(dists[0], 95), np.percentile(dists[1], 95)))


def _assd_of(dists: tuple[np.ndarray, np.ndarray]) -> float:
    return float(dists[0].sum() + dists[1].sum()) / (dists[0].size + dists[1].size)


def hausdorff95(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    The larger of the two directed 95th percentiles (prediction surface to reference
    surface and back), as in MedPy's ``hd95``.

    Parameters
    ----------
    pred_mask, ref_mask : np.ndarray
        Binary prediction and reference of the same shape.
    spacing : sequence of float, optional
        Voxel size per array axis in mm (default 1 mm).
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored (see the module docstring).

    Returns
    -------
    float
        Distance in mm; ``0.0`` when both are empty, the image diagonal in mm when only
        one is.
    """
    dists = surface_distances(pred_mask, ref_mask, spacing, mask)
    if dists is None:
        return _empty_distance(pred_mask, ref_mask, spacing, mask)
    return _hd95_of(dists)


def average_symmetric_surface_distance(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Average symmetric surface distance (ASSD) in mm.

    The mean over the surface voxels of both masks of the distance to the other mask's
    surface: ``(sum d(P->R) + sum d(R->P)) / (|S_P| + |S_R|)``.

    Parameters
    ----------
    pred_mask, ref_mask : np.ndarray
        Binary prediction and reference of the same shape.
    spacing : sequence of float, optional
        Voxel size per array axis in mm (default 1 mm).
    mask : np.ndarray, optional
        Boolean array: only these voxels are scored (see the module docstring).

    Returns
    -------
    float
        Distance in mm; ``0.0`` when both are empty, the image diagonal in mm when only
        one is.
    """
    dists = surface_distances(pred_mask, ref_mask, spacing, mask)
    if dists is None:
        return _empty_distance(pred_mask, ref_mask, spacing, mask)
    return _assd_of(dists)


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


@dataclass
class ClassMetrics:
    """Metrics of one structure.

    ``hd95_mm`` and ``assd_mm`` are ``None`` when surface distances were not computed.
    """

    dice: float
    jaccard: float
    sa: float
    hd95_mm: float | None
    assd_mm: float | None
    n_reference: int
    n_predicted: int

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain, JSON-serialisable dictionary."""
        return {
            "dice": float(self.dice),
            "jaccard": float(self.jaccard),
            "sa": float(self.sa),
            "hd95_mm": None if self.hd95_mm is None else float(self.hd95_mm),
            "assd_mm": None if self.assd_mm is None else float(self.assd_mm),
            "n_reference": int(self.n_reference),
            "n_predicted": int(self.n_predicted),
        }


@dataclass
class MeanMetrics:
    """Unweighted means over the structures (``1, 1, 100`` when there is none)."""

    dice: float
    jaccard: float
    sa: float

    def to_dict(self) -> dict[str, float]:
        """Plain, JSON-serialisable dictionary."""
        return {"dice": float(self.dice), "jaccard": float(self.jaccard), "sa": float(self.sa)}


@dataclass
class EvaluationResult:
    """Metrics of every structure of a segmentation against a reference.

    Attributes
    ----------
    classes : dict of int to ClassMetrics
        One entry per structure label.
    mean : MeanMetrics
        Means of Dice, Jaccard and SA over the structures.
    class_names : dict of int to str
        Optional display names per label.
    """

    classes: dict[int, ClassMetrics]
    mean: MeanMetrics
    class_names: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict]:
        """``{"classes": {"1": {...}, ...}, "mean": {"dice", "jaccard", "sa"}}``, JSON-ready."""
        return {
            "classes": {str(k): m.to_dict() for k, m in sorted(self.classes.items())},
            "mean": self.mean.to_dict(),
        }

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = [
            "class",
            "name",
            "Dice",
            "Jaccard",
            "SA %",
            "HD95 mm",
            "ASSD mm",
            "n_ref",
            "n_pred",
        ]
        rows = []
        for k, m in sorted(self.classes.items()):
            rows.append(
                [
                    str(k),
                    self.class_names.get(k, f"structure {k}"),
                    f"{m.dice:.4f}",
                    f"{m.jaccard:.4f}",
                    f"{m.sa:.2f}",
                    _fmt_mm(m.hd95_mm),
                    _fmt_mm(m.assd_mm),
                    str(m.n_reference),
                    str(m.n_predicted),
                ]
            )
        mean = self.mean
        rows.append(
            [
                "mean",
                "",
                f"{mean.dice:.4f}",
                f"{mean.jaccard:.4f}",
                f"{mean.sa:.2f}",
                "",
                "",
                "",
                "",
            ]
        )
        return header, rows

    def to_markdown(self) -> str:
        """A Markdown table: one row per structure and a final row of means."""
        header, rows = self._rows()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def format_table(self) -> str:
        """A plain-text table with aligned columns, for terminals and log files."""
        header, rows = self._rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*row) for row in rows]
        return "\n".join(line.rstrip() for line in lines)


def _fmt_mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _check_label_map(array: np.ndarray, what: str) -> None:
    """Refuse anything but whole non-negative numbers (an image given instead of a mask)."""
    kind = array.dtype.kind
    if kind == "b" or array.size == 0:
        return
    if kind not in "iuf":
        raise MedsegInputError(f"the {what} is not a label map: voxel type {array.dtype}")
    if kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise MedsegInputError(
                f"the {what} is not a label map: it holds NaN or infinite values"
            )
        fractional = array != np.floor(array)
        if fractional.any():
            value = array[fractional].flat[0]
            raise MedsegInputError(
                f"the {what} is not a label map: value {value:g} is not a whole number "
                "(an intensity image given instead of a mask?)"
            )
    low = array.min()
    if low < 0:
        raise MedsegInputError(
            f"the {what} is not a label map: it holds negative values (e.g. {low:g}); "
            "labels are 0 (background) and 1, 2 ... (structures)"
        )


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
