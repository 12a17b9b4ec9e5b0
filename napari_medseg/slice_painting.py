"""Paint whole slices of an expert mask as a sparse annotation (numpy only, no GUI).

:func:`pick_slices` chooses slices evenly through the structures,
:func:`sparse_annotation_from_mask` paints given slices, and :func:`paint_slices_per_axis`
does both for every axis. Used by the synthetic cases, the real sample cases, tests and
benchmarks; re-exported by :mod:`napari_medseg.synthetic`, where they used to live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import MedsegInputError

__all__ = ["paint_slices_per_axis", "pick_slices", "sparse_annotation_from_mask"]


def paint_slices_per_axis(
    mask: np.ndarray, slices_per_axis: Sequence[int]
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Paint ``slices_per_axis[a]`` whole slices along each axis ``a``, through the structures.

    The slices are chosen by :func:`pick_slices` and painted from ``mask`` by
    :func:`sparse_annotation_from_mask`.

    Returns
    -------
    (np.ndarray, dict of int to list of int)
        The ``uint8`` annotation and the painted slices per axis.
    """
    mask = np.asarray(mask)
    if len(slices_per_axis) != mask.ndim:
        raise MedsegInputError(f"slices_per_axis needs {mask.ndim} values")
    slices = {a: pick_slices(mask, a, int(n)) for a, n in enumerate(slices_per_axis) if n}
    return sparse_annotation_from_mask(mask, slices), slices


def pick_slices(mask: np.ndarray, axis: int, n: int) -> list[int]:
    """Choose ``n`` slices along ``axis``, evenly spread over the slices with foreground.

    Of the ``L`` slices holding foreground (any nonzero voxel), the ``i``-th chosen one is
    number ``floor((2 i + 1) L / (2 n))``: the centres of ``n`` equal parts. For example,
    foreground on slices 11-17 and ``n = 3`` gives 12, 14, 16. When the mask is empty the
    slices are spread over the whole axis instead.

    Parameters
    ----------
    mask : np.ndarray
        Label map or binary mask.
    axis : int
        Axis the slices are taken along.
    n : int
        Number of slices wanted; fewer come back when fewer slices exist.

    Returns
    -------
    list of int
        Sorted, distinct slice indices.
    """
    mask = np.asarray(mask)
    if not -mask.ndim <= axis < mask.ndim:
        raise MedsegInputError(f"axis {axis} is out of range for a {mask.ndim}D mask")
    if n <= 0:
        return []
    other = tuple(a for a in range(mask.ndim) if a != axis % mask.ndim)
    candidates = np.flatnonzero(np.any(mask != 0, axis=other))
    if candidates.size == 0:
        candidates = np.arange(mask.shape[axis])
    count = candidates.size
    n = min(n, count)
    positions = [((2 * i + 1) * count) // (2 * n) for i in range(n)]
    return sorted({int(candidates[p]) for p in positions})


def sparse_annotation_from_mask(
    mask: np.ndarray, slices: Mapping[int, Sequence[int]]
) -> np.ndarray:
    """Paint full slices of an expert mask as a sparse annotation.

    Parameters
    ----------
    mask : np.ndarray
        Label map: ``0`` background, ``k`` structure ``k`` (at most 254).
    slices : mapping of int to sequence of int
        Slice indices to paint, per axis, e.g. ``{0: [12, 14], 2: [30]}``.

    Returns
    -------
    np.ndarray
        ``uint8`` annotation: ``mask + 1`` on the painted slices, ``0`` elsewhere.
    """
    mask = np.asarray(mask)
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 254):
        raise MedsegInputError("mask values must lie in 0..254 to be painted as an annotation")
    painted = np.zeros(mask.shape, dtype=bool)
    for axis, indices in slices.items():
        if not -mask.ndim <= axis < mask.ndim:
            raise MedsegInputError(f"axis {axis} is out of range for a {mask.ndim}D mask")
        for index in indices:
            if not -mask.shape[axis] <= index < mask.shape[axis]:
                raise MedsegInputError(
                    f"slice {index} is outside axis {axis} of size {mask.shape[axis]}"
                )
            np.moveaxis(painted, axis, 0)[index] = True
    annotation = np.zeros(mask.shape, dtype=np.uint8)
    annotation[painted] = mask[painted].astype(np.uint8) + 1
    return annotation
