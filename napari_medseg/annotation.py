"""The sparse-annotation convention and helpers around it.

Sparse annotation (what a user paints):
``0`` = not annotated (unknown), ``1`` = background, ``k + 1`` = structure ``k``.

Segmentation and expert mask:
``0`` = background, ``k`` = structure ``k``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import MedsegInputError

UNKNOWN = 0
BACKGROUND = 1
IGNORE_INDEX = -1
#: Most classes a model may have, background included: annotation values up to this
#: (structure ``k`` is painted as ``k + 1``). Model files are held to the same bound.
MAX_CLASSES = 256

_AXES = "zyx"
_CHUNK = 1 << 22  # voxels counted at a time (bounded temporary memory)


def annotation_to_target(annotation: np.ndarray) -> np.ndarray:
    """Convert a sparse annotation to a training target.

    Parameters
    ----------
    annotation : np.ndarray
        Integer array, ``0`` unknown, ``1`` background, ``k + 1`` structure ``k``.

    Returns
    -------
    np.ndarray
        ``int64`` array: ``-1`` (ignored) where unknown, otherwise the class index
        (``0`` background, ``k`` structure ``k``).
    """
    return np.asarray(annotation).astype(np.int64) - 1


def check_painted(annotation: np.ndarray, n_classes: int | None = None) -> None:
    """Refuse an annotation whose painted labels cannot be put into a segmentation.

    Parameters
    ----------
    annotation : np.ndarray
        Sparse annotation (``0`` unknown, ``1`` background, ``k + 1`` structure ``k``).
    n_classes : int, optional
        Classes of the segmentation (background included); painted structures beyond it
        are refused.

    Raises
    ------
    MedsegInputError
        With a one-line reason.
    """
    annotation = np.asarray(annotation)
    if not annotation.size:
        return
    if not np.issubdtype(annotation.dtype, np.integer) and annotation.dtype != np.bool_:
        if not np.all(np.isfinite(annotation)) or not np.all(annotation == np.round(annotation)):
            raise MedsegInputError(
                "annotation must hold whole numbers (0 unknown, 1 background, ...)"
            )
    if float(np.min(annotation)) < 0:
        raise MedsegInputError(
            "annotation holds negative values; expected 0 unknown, 1 background, k+1 structure k"
        )
    top = int(np.max(annotation)) - 1
    if n_classes is not None and top > n_classes - 1:
        raise MedsegInputError(
            f"annotation paints structure {top}; the model knows {n_classes - 1} structure(s)"
        )


def keep_painted(labels: np.ndarray, annotation: np.ndarray) -> int:
    """Give the voxels the user painted the user's label, in place.

    Annotation ``k + 1`` (structure ``k``) becomes label ``k``, annotation ``1``
    (background) label ``0``; unannotated voxels (``0``) keep the prediction.

    Parameters
    ----------
    labels : np.ndarray
        Segmentation (``0`` background, ``k`` structure ``k``), changed in place.
    annotation : np.ndarray
        Sparse annotation of the same shape.

    Returns
    -------
    int
        Number of painted voxels (whether or not their label changed).

    Raises
    ------
    MedsegInputError
        When the shapes differ, the annotation is not one (:func:`check_painted`), or a
        painted label does not fit ``labels``' dtype. ``labels`` is then unchanged.
    """
    annotation = np.asarray(annotation)
    if annotation.shape != labels.shape:
        raise MedsegInputError(
            f"annotation has shape {annotation.shape}, the segmentation {labels.shape}"
        )
    check_painted(annotation)
    painted = annotation > 0
    if not painted.any():
        return 0
    top = int(annotation.max()) - 1
    if np.issubdtype(labels.dtype, np.integer) and top > np.iinfo(labels.dtype).max:
        raise MedsegInputError(f"painted structure {top} does not fit the segmentation's labels")
    labels[painted] = annotation[painted] - 1
    return int(np.count_nonzero(painted))


def declared_classes(class_names: Sequence[str] | None) -> int | None:
    """Number of classes (background included) that the given names declare, if any.

    ``None`` when no names are given; a first name ``background`` (any case) is not a
    structure.
    """
    names = list(class_names or [])
    if not names:
        return None
    return len(names) + (0 if names[0].lower() == "background" else 1)


def painted_counts(annotation: np.ndarray, n_values: int) -> np.ndarray:
    """Voxels per annotation value ``0 .. n_values - 1``, in one pass of bounded memory.

    Every value must be a whole number below ``n_values`` (see :func:`validate_annotation`);
    nothing is allocated by value beyond ``n_values`` counters.
    """
    flat = np.ravel(np.asarray(annotation))
    counts = np.zeros(n_values, np.int64)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK].astype(np.intp, copy=False)
        counts += np.bincount(chunk, minlength=n_values)[:n_values]
    return counts


def _value_text(value: Any) -> str:
    whole = int(value)
    return str(whole) if abs(whole) < 10**20 else f"{float(value):.3g}"


def _voxels_of(annotation: np.ndarray, value: Any) -> str:
    """``annotation value V (N voxels, first at z=.. y=.. x=..)``: where a value is painted."""
    hits = annotation == value
    count = int(np.count_nonzero(hits))
    first = [int(i) for i in np.unravel_index(int(np.argmax(hits)), annotation.shape)]
    if 0 < len(first) <= len(_AXES):
        where = " ".join(f"{a}={i}" for a, i in zip(_AXES[-len(first) :], first))
    else:
        where = f"index {tuple(first)}"
    plural = "" if count == 1 else "s"
    return f"annotation value {_value_text(value)} ({count} voxel{plural}, first at {where})"


def _check_declared(n_classes: int | None) -> None:
    if n_classes is not None and n_classes > MAX_CLASSES:
        raise MedsegInputError(
            f"{n_classes - 1} structures named; a model may have at most {MAX_CLASSES - 1} "
            "structures (plus background)"
        )


def _refuse_beyond(annotation: np.ndarray, top: Any, n_classes: int | None) -> None:
    """Refuse the largest value when it is beyond the declared structures or the bound."""
    if n_classes is not None and top > n_classes:
        raise MedsegInputError(
            f"{_voxels_of(annotation, top)} is outside the {n_classes - 1} declared "
            "structure(s) (structure k is painted as k+1): name every painted structure, "
            "or erase or relabel those voxels"
        )
    if top > MAX_CLASSES:
        raise MedsegInputError(
            f"{_voxels_of(annotation, top)} is beyond the {MAX_CLASSES - 1} structures a "
            "model may have (structure k is painted as k+1): erase or relabel those voxels"
        )


def _runs(values: list[int]) -> str:
    """``3, 5-9``: sorted values as runs (at most four shown)."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = [str(a) if a == b else f"{a}-{b}" for a, b in runs[:4]]
    return ", ".join(text) + (", ..." if len(runs) > 4 else "")


def _refuse_gaps(annotation: np.ndarray, counts: np.ndarray, top: int, known: int) -> None:
    """With no names, the structures are the values painted (and the ``known`` classes):
    none may be skipped."""
    missing = [v for v in range(max(BACKGROUND, known) + 1, top) if counts[v] == 0]
    if missing:
        n = len(missing)
        raise MedsegInputError(
            f"{_voxels_of(annotation, top)} leaves {n} structure{'' if n == 1 else 's'} "
            f"never painted (value{'' if n == 1 else 's'} {_runs(missing)}): name the "
            "structures, or relabel so that structures 1, 2, ... are painted as 2, 3, ... "
            "with none skipped"
        )


def validate_annotation(
    annotation: np.ndarray,
    image_shape: Sequence[int],
    n_classes: int | None = None,
    *,
    known: int = 0,
) -> int:
    """Check that an annotation can be trained on, and return the number of classes.

    The classes are the ones declared (``n_classes``, from the structure names), else the
    values painted, which must then run ``2, 3, ...`` without a gap; either way at most
    :data:`MAX_CLASSES`. A value beyond them is refused with its voxel count and first
    position. The check reads every voxel a few times and allocates nothing by value.

    Parameters
    ----------
    annotation : np.ndarray
        Sparse annotation (``0`` unknown, ``1`` background, ``k + 1`` structure ``k``).
    image_shape : sequence of int
        Shape of the image it annotates.
    n_classes : int, optional
        Declared number of classes including background; values above it are refused.
    known : int
        Classes already known (background included; a warm start's model): without
        ``n_classes``, these may go unpainted, and painted values may go beyond them.

    Returns
    -------
    int
        The number of classes, background included (at least 2).

    Raises
    ------
    MedsegInputError
        With a one-line reason when training on it would be meaningless.
    """
    annotation = np.asarray(annotation)
    if tuple(annotation.shape) != tuple(image_shape):
        raise MedsegInputError(
            f"annotation shape {tuple(annotation.shape)} differs from image shape "
            f"{tuple(image_shape)}"
        )
    _check_declared(n_classes)
    check_painted(annotation)
    top = annotation.max() if annotation.size else 0  # the array's type: compared exactly
    if top <= 0:
        raise MedsegInputError("annotation has no annotated voxel: paint at least one slice")
    _refuse_beyond(annotation, top, n_classes)
    counts = painted_counts(annotation, int(top) + 1)
    painted = np.flatnonzero(counts[1:]) + 1
    if painted.size == 1:
        only = int(painted[0])
        what = "background" if only == 1 else f"structure {only - 1}"
        raise MedsegInputError(
            f"annotation holds only one class ({what}): paint background and at least one structure"
        )
    if n_classes is not None:
        return int(n_classes)
    _refuse_gaps(annotation, counts, int(top), known)
    return max(int(top), 2)


def annotated_slices(annotation: np.ndarray, axis: int) -> list[int]:
    """Indices of the slices along ``axis`` that hold at least one annotated voxel."""
    annotation = np.asarray(annotation)
    other = tuple(a for a in range(annotation.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(np.any(annotation > 0, axis=other))]


def fully_annotated_slices(annotation: np.ndarray, axis: int) -> list[int]:
    """Indices of the slices along ``axis`` in which every voxel is annotated."""
    annotation = np.asarray(annotation)
    other = tuple(a for a in range(annotation.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(np.all(annotation > 0, axis=other))]


def fill_slice_background(annotation: np.ndarray, axis: int, index: int) -> int:
    """Mark every unannotated voxel of one slice as background, in place.

    Returns
    -------
    int
        The number of voxels that changed.
    """
    view = np.moveaxis(annotation, axis, 0)[index]
    unknown = view == UNKNOWN
    count = int(unknown.sum())
    view[unknown] = BACKGROUND
    return count


def mark_outside_box_background(annotation: np.ndarray, box: Sequence[tuple[int, int]]) -> int:
    """Mark every unannotated voxel outside a region-of-interest box as background, in place.

    Parameters
    ----------
    annotation : np.ndarray
        Sparse annotation, modified in place.
    box : sequence of (start, stop)
        Half-open voxel ranges per axis; the inside stays as it was.

    Returns
    -------
    int
        The number of voxels that changed.
    """
    outside = np.ones(annotation.shape, dtype=bool)
    inside = tuple(slice(max(0, int(a)), max(0, int(b))) for a, b in box)
    outside[inside] = False
    change = outside & (annotation == UNKNOWN)
    annotation[change] = BACKGROUND
    return int(change.sum())


def rectangle_axis(points: np.ndarray) -> int | None:
    """The axis a drawn rectangle lies across, or None when that is not clear.

    ``points`` are the rectangle's vertices in the annotation's data coordinates, one row
    per vertex: the rectangle lies across the one axis along which they spread by less
    than half a voxel. None when no axis, or more than one, is that flat.
    """
    points = np.asarray(points, dtype=float)
    flat = [a for a in range(points.shape[1]) if np.ptp(points[:, a]) < 0.5]
    return flat[0] if len(flat) == 1 else None


def box_from_rectangle(
    points: np.ndarray,
    shape: Sequence[int],
    across: int,
    slice_range: tuple[int, int],
) -> list[tuple[int, int]]:
    """The region-of-interest box (half-open voxel ranges per axis) of a drawn rectangle.

    In-plane, the box holds the voxels whose centre lies inside the rectangle (vertices
    within 1e-6 of a voxel centre count as on it); across the rectangle, it holds the
    slices of ``slice_range`` (inclusive, either order). The box is clipped to ``shape``.

    Parameters
    ----------
    points : np.ndarray
        The rectangle's vertices in data coordinates, one row per vertex.
    shape : sequence of int
        Shape of the annotation.
    across : int
        The axis the rectangle was drawn across (see :func:`rectangle_axis`).
    slice_range : (int, int)
        First and last slice along ``across``.

    Raises
    ------
    MedsegInputError
        When the box does not overlap the annotation.
    """
    points = np.asarray(points, dtype=float)
    box: list[tuple[int, int]] = []
    for axis in range(len(shape)):
        if axis == across:
            low, high = sorted(slice_range)
            box.append((max(0, low), min(shape[axis], high + 1)))
        else:
            low = int(np.ceil(points[:, axis].min() - 1e-6))
            high = int(np.floor(points[:, axis].max() + 1e-6)) + 1
            box.append((max(0, low), min(shape[axis], high)))
    if any(b <= a for a, b in box):
        raise MedsegInputError("the box does not overlap the annotation")
    return box


def content_checksum(annotation: np.ndarray) -> str:
    """Cheap checksum of an annotation's content: CRC-32, type and shape (tells one round's
    or one autosave's painting from another's)."""
    data = np.ascontiguousarray(annotation)
    crc = zlib.crc32(data.data.cast("B")) if data.size else 0
    return f"{crc:08x}-{data.dtype.str}-{'x'.join(map(str, data.shape))}"


def take_slice_from(
    annotation: np.ndarray, labels: np.ndarray, axis: int, index: int
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The model's answer on one slice, as annotation edits: the slice's unpainted voxels
    (full-array indices) and the values that give them the segmentation's labels (structure
    ``k`` -> ``k + 1``, background -> ``1``). Painted voxels are left as painted.

    Raises
    ------
    MedsegInputError
        When the shapes differ or the slice is outside the volume.
    """
    if annotation.shape != labels.shape:
        raise MedsegInputError(
            f"the segmentation has shape {labels.shape}, the annotation {annotation.shape}"
        )
    if not 0 <= axis < annotation.ndim or not 0 <= index < annotation.shape[axis]:
        raise MedsegInputError(f"slice {index} across axis {axis} is outside the annotation")
    picked = [slice(None)] * annotation.ndim
    picked[axis] = slice(index, index + 1)
    region = tuple(picked)
    where = np.nonzero(annotation[region] == UNKNOWN)
    full = tuple(w + (index if a == axis else 0) for a, w in enumerate(where))
    values = labels[full].astype(np.int64) + 1
    return full, values
