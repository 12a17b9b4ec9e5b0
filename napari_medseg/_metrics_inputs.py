"""Input checks shared by the metrics modules: shapes, spacing, label maps, counts.

Private helpers of :mod:`napari_medseg.metrics` and :mod:`napari_medseg.metrics_surface`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import MedsegInputError


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
