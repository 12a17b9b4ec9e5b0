"""Label maps: telling a label map from an image, and the integer type that stores one.

A label map (segmentation, mask, annotation) holds a few non-negative integer values;
:func:`looks_like_labels` guesses from the data (and a file or layer name) whether an
array is one, and :func:`as_label_type` converts it losslessly to the smallest unsigned
integer type that holds its values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import MedsegInputError
from .volume import Volume

__all__ = ["as_label_type", "looks_like_labels"]

_LABEL_HINTS = ("label", "mask", "seg", "annotation", "annot")
_MAX_LABEL_VALUES = 64


def looks_like_labels(volume: Volume | npt.NDArray[Any], name: str | None = None) -> bool:
    """Guess whether a volume is a label map (segmentation, mask) rather than an image.

    Parameters
    ----------
    volume : Volume or np.ndarray
        The data.
    name : str, optional
        File or layer name; ``label``, ``mask``, ``seg``, ``annotation`` are hints. Taken
        from ``volume.metadata["path"]`` when not given.

    Returns
    -------
    bool
        True for boolean data, or integer data (integral floats when the name hints at
        labels) with few distinct non-negative values on a subsample.
    """
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    if name is None and isinstance(volume, Volume):
        name = str(volume.metadata.get("path", ""))
    hinted = any(h in Path(name or "").name.lower() for h in _LABEL_HINTS)
    if array.dtype.kind == "b":
        return True
    if array.dtype.kind not in "iuf" or array.size == 0:
        return False
    sample = _subsample(array)
    if array.dtype.kind == "f" and not (
        hinted and np.all(np.isfinite(sample)) and np.all(sample == np.round(sample))
    ):
        return False
    if sample.min() < 0:
        return False
    limit = _MAX_LABEL_VALUES * (16 if hinted else 1)
    return len(np.unique(sample)) <= limit


def _subsample(array: npt.NDArray[Any], target: int = 1_000_000) -> npt.NDArray[Any]:
    step = max(1, int(round((array.size / target) ** (1 / max(array.ndim, 1)))))
    return np.asarray(array[(slice(None, None, step),) * array.ndim]).ravel()


def as_label_type(array: npt.NDArray[Any], name: str) -> npt.NDArray[Any]:
    """``array`` as the smallest integer type holding its values (unsigned first).

    Parameters
    ----------
    array : np.ndarray
        Boolean, integer, or integral float values.
    name : str
        The file being saved, for the error messages.

    Returns
    -------
    np.ndarray
        uint8 for booleans and empty arrays, else the first of uint8, uint16, uint32,
        int16, int32, int64 that holds every value (no copy when the type is unchanged).

    Raises
    ------
    MedsegInputError
        Non-integral or non-finite floats, a non-numeric type, or values out of range.
    """
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise MedsegInputError(f"cannot save {name} as labels: values are not integers")
    elif array.dtype.kind not in "iu":
        raise MedsegInputError(f"cannot save {name} as labels: voxel type {array.dtype}")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = array.min(), array.max()
    for dtype in (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype, copy=False)
    raise MedsegInputError(f"cannot save {name} as labels: values out of range")
