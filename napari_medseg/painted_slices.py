"""Which slices of a volume were painted, and in which planes.

A clinician paints whole 2D slices across any of the three array axes. This module finds
them from the annotation alone (:func:`find_units`), so that cross-validation can hold them
out one by one (:mod:`napari_medseg.crossval`), and summarises them for the Annotate
widget (:func:`painted_in_plane`, :func:`annotation_summary`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .annotation import BACKGROUND, UNKNOWN, annotated_slices
from .errors import MedsegInputError

#: Short names of the array axes ``(z, y, x)``, used in tables and JSON.
AXIS_NAMES: tuple[str, str, str] = ("z", "y", "x")
PLANE_NAMES: tuple[str, str, str] = ("axial", "coronal", "sagittal")  # slices across z, y, x
#: At most this many slice numbers are listed per axis by :func:`format_slice_list`.
MAX_LISTED_SLICES = 24


class SliceUnit(NamedTuple):
    """One painted slice: ``axis`` (0, 1, 2 = z, y, x) and ``index`` along it."""

    axis: int
    index: int  # type: ignore[assignment]  # a field, where tuple has a method of the name

    def label(self) -> str:
        """Short text such as ``"z12"``."""
        return f"{AXIS_NAMES[self.axis]}{self.index}"


def slice_view(array: np.ndarray, unit: SliceUnit) -> np.ndarray:
    """View of one slice of a 3D array."""
    view: np.ndarray = np.moveaxis(array, unit.axis, 0)[unit.index]
    return view


def as_3d(array: np.ndarray, name: str) -> np.ndarray:
    """A 2D array as one slice of a 3D one; 3D as it is; anything else is refused."""
    array = np.asarray(array)
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim != 3:
        raise MedsegInputError(
            f"{name} has {array.ndim} dimensions; napari-medseg segments 2D images and 3D volumes"
        )
    return array


def _run_lengths(annotated: np.ndarray, axis: int) -> np.ndarray:
    """Per annotated voxel, the length of the run of annotated voxels along ``axis`` through it.

    ``0`` on voxels that are not annotated.
    """
    moved = np.moveaxis(annotated, axis, -1)
    n = moved.shape[-1]
    dtype = np.int16 if n < 2**15 - 2 else np.int32
    index = np.arange(n, dtype=dtype)
    before = np.maximum.accumulate(np.where(moved, dtype(-1), index), axis=-1)
    after = np.minimum.accumulate(np.where(moved, dtype(n), index)[..., ::-1], axis=-1)[..., ::-1]
    runs = np.where(moved, after - before - 1, 0).astype(dtype, copy=False)
    return np.moveaxis(runs, -1, axis)


def _unknown_neighbours(unknown: np.ndarray, axis: int) -> np.ndarray:
    """Per voxel, how many of its two neighbours along ``axis`` are unknown (0, 1 or 2)."""
    count = np.zeros(unknown.shape, dtype=np.int8)
    moved_count, moved = np.moveaxis(count, axis, 0), np.moveaxis(unknown, axis, 0)
    moved_count[1:] += moved[:-1]
    moved_count[:-1] += moved[1:]
    return count


def _voted_slices(
    scores: Sequence[np.ndarray], voters: np.ndarray, structure: np.ndarray, larger: bool
) -> list[SliceUnit]:
    """Slices chosen by a per-voxel, per-axis score: a voter votes for the slice across the
    axis whose score beats both others (``larger``: highest, else lowest); slices with a
    vote and a structure voxel are returned."""
    units = []
    for a in range(3):
        others = [scores[b] for b in range(3) if b != a]
        if larger:
            votes = voters & (scores[a] > others[0]) & (scores[a] > others[1])
        else:
            votes = voters & (scores[a] < others[0]) & (scores[a] < others[1])
        rest = tuple(b for b in range(3) if b != a)
        hits = np.any(votes, axis=rest) & np.any(structure, axis=rest)
        units += [SliceUnit(a, int(i)) for i in np.flatnonzero(hits)]
    return units


def _on_units(shape: tuple[int, ...], units: Sequence[SliceUnit]) -> np.ndarray:
    on = np.zeros(shape, dtype=bool)
    for unit in units:
        slice_view(on, unit)[...] = True
    return on


def _greedy_cover(uncovered: np.ndarray) -> list[SliceUnit]:
    """Slices covering every ``True`` voxel, largest first (ties: lower axis, index)."""
    uncovered = uncovered.copy()
    axes = range(3)
    counts = [uncovered.sum(axis=tuple(b for b in axes if b != a), dtype=np.int64) for a in axes]
    chosen: list[SliceUnit] = []
    while True:
        best = max((int(c.max()), -a) for a, c in enumerate(counts))
        if best[0] <= 0:
            return chosen
        axis = -best[1]
        unit = SliceUnit(axis, int(np.argmax(counts[axis])))
        plane = slice_view(uncovered, unit)
        others = [b for b in axes if b != axis]  # plane axis 0 is others[0], 1 is others[1]
        counts[others[0]] -= plane.sum(axis=1, dtype=np.int64)
        counts[others[1]] -= plane.sum(axis=0, dtype=np.int64)
        counts[axis][unit.index] = 0
        plane[...] = False
        chosen.append(unit)


def find_units(annotation: np.ndarray) -> list[SliceUnit]:
    """The painted slices that hold a structure: the units of cross-validation.

    1. Every annotated voxel *votes* for the slice it was painted on: the slice across the
       axis along which more of its two neighbours are unknown than along either other axis
       (inside a painted z slice the z neighbours are unknown, the in-plane ones painted).
    2. Structure voxels on no voted slice (inside a stack of adjacent painted slices) vote
       for the slice across the axis along which their run of annotated voxels is shortest.
    3. Structure voxels still on no unit (e.g. a fully annotated volume) are covered
       greedily by the slices holding most of them; such a slice is dropped again when all
       its structure voxels lie on other units.

    A voted slice is a unit when it holds at least one structure voxel (value ``>= 2``).
    The lines where a painted slice crosses other slices are therefore not units, and
    neither are background-only slices or the faces of a region-of-interest fill (they
    hold no structure).

    Parameters
    ----------
    annotation : np.ndarray
        Sparse annotation, 2D or 3D (``0`` unknown, ``1`` background, ``k + 1`` structure
        ``k``).

    Returns
    -------
    list of SliceUnit
        Sorted by ``(axis, index)``.
    """
    annotation = as_3d(annotation, "annotation")
    structure = annotation >= 2
    if not structure.any():
        return []
    annotated = annotation > 0
    unknown = ~annotated
    # 1. across a painted slice the neighbours are unknown, inside it they are painted
    counts = [_unknown_neighbours(unknown, a) for a in range(3)]
    voted = _voted_slices(counts, annotated, structure, larger=True)
    del counts
    # 2. adjacent painted slices: the run of annotated voxels is shortest across them
    rest = structure & ~_on_units(structure.shape, voted)
    if rest.any():
        runs = [_run_lengths(annotated, a) for a in range(3)]
        voted += _voted_slices(runs, rest, structure, larger=False)
        del runs
        rest &= ~_on_units(structure.shape, voted)
    # 3. whatever structure is left: greedy cover, pruned
    greedy = _greedy_cover(rest)
    coverage = np.zeros(structure.shape, dtype=np.int16)
    for unit in (*voted, *greedy):
        slice_view(coverage, unit)[...] += 1
    kept = [*voted, *greedy]
    for unit in reversed(greedy):  # smallest first
        if np.all(slice_view(coverage, unit)[slice_view(structure, unit)] >= 2):
            slice_view(coverage, unit)[...] -= 1
            kept.remove(unit)
    return sorted(kept)


def axis_name(axis: int, ndim: int) -> str:
    """``"z"``, ``"y"``, ``"x"`` for the axes of a 3D volume, ``"axis k"`` otherwise."""
    if ndim == 3:
        return AXIS_NAMES[axis]
    return f"axis {axis}"


def painted_in_plane(annotation: np.ndarray, axis: int) -> list[int]:
    """Slices along ``axis`` painted *in that plane*.

    A slice counts when it holds a 2 × 2 patch of annotated voxels (any value ``> 0``,
    background included) inside the box around the voxels still unknown, or a 2 × 2 patch
    of a structure anywhere, leaving out the voxels of slices of the other planes painted
    over half their area. So slices painted in another plane (1-voxel lines here, or
    patches where painted slices touch) do not make every slice along ``axis`` look
    annotated, and the background filled outside a region-of-interest box is not slices
    painted. Unlike :func:`find_units`, background-only slices count. For arrays that are
    not 3D (or thinner than 2 voxels in-plane) this is
    :func:`napari_medseg.annotation.annotated_slices`.
    """
    annotation = np.asarray(annotation)
    if annotation.ndim != 3 or min(np.delete(annotation.shape, axis)) < 2:
        return annotated_slices(annotation, axis)
    if min(annotation.shape) < 2:  # one slice thick: no other plane to tell apart
        return [int(i) for i in np.flatnonzero(_has_block(np.moveaxis(annotation > 0, axis, 0)))]
    return painted_per_plane(annotation)[axis]


def painted_per_plane(annotation: np.ndarray) -> list[list[int]]:
    """:func:`painted_in_plane` for every axis of ``annotation`` (3D: in one pass)."""
    annotation = np.asarray(annotation)
    if annotation.ndim != 3 or min(annotation.shape) < 2:
        return [painted_in_plane(annotation, axis) for axis in range(annotation.ndim)]
    unknown = annotation == UNKNOWN
    extent = _extent(unknown) if unknown.any() else [(0, n - 1) for n in annotation.shape]
    box = tuple(slice(low, high + 1) for low, high in extent)
    annotated = annotation[box] > 0
    outside = any(b.stop - b.start < n for b, n in zip(box, annotation.shape, strict=True))
    structure = annotation > BACKGROUND if outside else None  # inside, part of ``annotated``
    free = [np.ones(n, bool) for n in annotation.shape]  # slices not painted over half the box
    for axis in range(3):
        rest = tuple(a for a in range(3) if a != axis)
        area = np.prod([annotated.shape[a] for a in rest])
        dense = np.flatnonzero(np.count_nonzero(annotated, axis=rest) * 2 > area)
        if len(dense) < annotated.shape[axis]:  # all of them: painted throughout, no plane
            free[axis][dense + box[axis].start] = False
    planes = []
    for axis in range(3):
        rows, cols = (a for a in range(3) if a != axis)
        painted = np.zeros(annotation.shape[axis], bool)
        painted[box[axis]] = _has_block(
            np.moveaxis(annotated, axis, 0), free[rows][box[rows]], free[cols][box[cols]]
        )
        if structure is not None:
            painted |= _has_block(np.moveaxis(structure, axis, 0), free[rows], free[cols])
        planes.append([int(i) for i in np.flatnonzero(painted)])
    return planes


def _has_block(
    mask: np.ndarray, rows: np.ndarray | None = None, cols: np.ndarray | None = None
) -> np.ndarray:
    """Per slice along the first axis: does ``mask`` hold a 2 × 2 patch (on the ``rows`` and
    ``cols`` left True, when given)?"""
    pairs = mask[:, :-1, :] & mask[:, 1:, :]
    blocks = pairs[:, :, :-1] & pairs[:, :, 1:]
    if rows is not None:
        blocks &= (rows[:-1] & rows[1:])[None, :, None]
    if cols is not None:
        blocks &= (cols[:-1] & cols[1:])[None, None, :]
    return np.asarray(blocks.any(axis=(1, 2)))


def _extent(mask: np.ndarray) -> list[tuple[int, int]]:
    """First and last index of ``mask``'s true voxels along each axis (``mask.any()``)."""
    extent = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        extent.append((int(hits[0]), int(hits[-1])))
    return extent


def format_slice_list(slices: Sequence[int], limit: int = MAX_LISTED_SLICES) -> str:
    """``[12, 14, 16]`` -> ``"12, 14, 16"``; long lists are shortened; ``"none"`` if empty."""
    if not slices:
        return "none"
    shown = ", ".join(str(s) for s in slices[:limit])
    if len(slices) > limit:
        shown += f", … ({len(slices)} slices)"
    return shown


def annotation_summary(annotation: np.ndarray, class_names: Sequence[str]) -> str:
    """The Annotate widget's "Annotated slices" text: painted slices per axis, voxel counts.

    One line per axis (``"axis 0 (z): 12, 14"``, see :func:`painted_in_plane`), then the
    painted voxels per label (``"painted voxels: background 1,024 · liver 96 (97.5 % not
    annotated)"``); ``class_names[k - 1]`` names structure ``k`` (annotation value
    ``k + 1``), other values are called ``"label v"``.
    """
    annotation = np.asarray(annotation)
    planes = painted_per_plane(annotation)
    lines = [
        f"axis {axis} ({axis_name(axis, annotation.ndim)}): {format_slice_list(planes[axis])}"
        for axis in range(annotation.ndim)
    ]
    counts = np.bincount(annotation.ravel().astype(np.intp, copy=False), minlength=2)
    names = {BACKGROUND: "background"}
    names.update({k + 1: name for k, name in enumerate(class_names, start=1)})
    parts = [
        f"{names.get(value, f'label {value}')} {int(n):,}"
        for value, n in enumerate(counts)
        if value != UNKNOWN and n
    ]
    unknown = 100.0 * counts[UNKNOWN] / max(annotation.size, 1)
    lines.append(
        "painted voxels: " + (" · ".join(parts) if parts else "none")
        + f" ({unknown:.1f} % not annotated)"
    )
    return "\n".join(lines)


def planes_to_paint(
    uncertainty: np.ndarray, annotation: np.ndarray | None = None, count: int = 3
) -> list[tuple[int, int]]:
    """The slices of a 3D volume, in any of its three planes, where painting next would
    settle the most: most uncertainty on voxels not yet painted.

    Every slice along every axis scores the sum of ``uncertainty`` over its voxels that
    ``annotation`` leaves at 0. Returns at most ``count`` ``(axis, index)`` pairs, best first,
    with a positive score. The volume is read one axial slice at a time (no full-size copy:
    this runs on the GUI thread for large scans too).
    """
    uncertainty = np.asarray(uncertainty)
    if uncertainty.ndim != 3:
        raise MedsegInputError(f"slices to paint need a 3D volume, not {uncertainty.ndim}D")
    if annotation is not None and np.shape(annotation) != uncertainty.shape:
        raise MedsegInputError(
            f"annotation shape {np.shape(annotation)} differs from {uncertainty.shape}"
        )
    scores = [np.zeros(n) for n in uncertainty.shape]
    for k, plane in enumerate(uncertainty):
        weights = np.asarray(plane, dtype=np.float64)
        if annotation is not None:
            weights = np.where(np.asarray(annotation[k]) == 0, weights, 0.0)
        scores[0][k] = weights.sum()
        scores[1] += weights.sum(axis=1)
        scores[2] += weights.sum(axis=0)
    ranked = sorted(
        ((float(s), axis, index) for axis in range(3) for index, s in enumerate(scores[axis])),
        key=lambda item: -item[0],
    )
    return [(axis, index) for score, axis, index in ranked[:count] if score > 0]


def describe_slices(slices: Sequence[tuple[int, int]]) -> str:
    """``"axial slice 14, sagittal slice 120"`` for ``[(0, 14), (2, 120)]``."""
    return ", ".join(f"{PLANE_NAMES[axis]} slice {index}" for axis, index in slices)
