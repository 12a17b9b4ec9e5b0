"""Surface distances between two masks: HD95 and ASSD, in mm (numpy/scipy, no GUI).

Conventions are those of :mod:`napari_medseg.metrics` (which re-exports the public names
here): ``spacing`` is the voxel size per array axis in mm, ``None`` meaning 1 mm; ``mask``
selects the scored voxels. With both masks empty a distance is ``0.0``; with only one
empty it is the image diagonal in mm, ``sqrt(sum((shape * spacing) ** 2))``.

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

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ._metrics_inputs import _diagonal_mm, _prepare, _spacing

__all__ = [
    "average_symmetric_surface_distance",
    "hausdorff95",
    "surface_distances",
]


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
