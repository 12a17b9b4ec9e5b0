"""Connected regions of a segmentation and the painted voxels they touch (numpy + scipy).

A network trained on a few painted slices may mark tissue far from anything painted, on
slices nobody looked at, as the structure. :func:`apart_from_painting` counts, per structure,
the predicted regions that touch nothing painted as it (the user is told: without a
region-of-interest box they can be most of the prediction); :func:`keep_touching_painted`
keeps only the regions that touch the painting: for one object (a tumour, a lesion, an organ)
painted on a few slices, not for tissue classes or structures of many separate pieces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from .annotation import keep_painted
from .errors import MedsegInputError

Regions = Literal["all", "touching"]
#: Voxels touching by a face, an edge or a corner are one region.
FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
#: The share of a structure's predicted voxels, in regions apart from the painting, from
#: which the user is told of them (:func:`describe_apart`).
APART_SHARE_TO_MENTION = 0.1


@dataclass(frozen=True)
class ApartRegions:
    """Predicted regions of ``structure`` that touch no voxel painted as it: how many, their
    voxels, and the structure's predicted voxels in all."""

    structure: int
    regions: int
    voxels: int
    total: int

    @property
    def share(self) -> float:
        """The fraction of the structure's predicted voxels lying apart from the painting."""
        return self.voxels / self.total if self.total else 0.0


def _spatial(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 3 else array[np.newaxis]


def _apart_masks(
    labels: np.ndarray, annotation: np.ndarray
) -> Iterator[tuple[int, int, np.ndarray, int]]:
    """Per predicted structure with painted voxels: ``(k, regions apart, their mask, the
    structure's predicted voxels)``."""
    spatial, painted = _spatial(labels), _spatial(annotation)
    for k in np.unique(spatial):
        if k == 0 or not (painted == k + 1).any():
            continue
        structure = spatial == k
        regions, count = ndimage.label(structure, structure=FULL_CONNECTIVITY)
        touched = np.unique(regions[(painted == k + 1) & (regions > 0)])
        touched = touched[touched > 0]
        apart = (regions > 0) & ~np.isin(regions, touched)
        yield int(k), count - touched.size, apart, int(np.count_nonzero(structure))


def apart_from_painting(labels: np.ndarray, annotation: np.ndarray) -> list[ApartRegions]:
    """The regions of each structure (painted at least once) that touch nothing painted as
    it; structures with none are left out."""
    return [
        ApartRegions(k, regions, int(apart.sum()), total)
        for k, regions, apart, total in _apart_masks(labels, annotation)
        if regions
    ]


def apart_after_painting(labels: np.ndarray, annotation: np.ndarray) -> list[ApartRegions]:
    """:func:`apart_from_painting` of ``labels`` once the painted voxels have their painted
    labels (``labels`` itself is left as it is): what a front end that keeps the painting
    later will show, counted where the work may run (a GUI's worker thread)."""
    kept = np.array(labels, copy=True)
    try:
        keep_painted(kept, annotation)
    except MedsegInputError:  # shapes or labels that differ: the front end says so itself
        return []
    return apart_from_painting(kept, annotation)


def describe_apart(
    apart: Sequence[ApartRegions], class_names: Sequence[str], setting: str
) -> str:
    """One line naming the structures with at least :data:`APART_SHARE_TO_MENTION` of their
    predicted voxels apart from the painting ("" when none): what to check, and ``setting``
    (as the front end names ``regions="touching"``), which clears them if the structure is
    one object."""
    parts = [
        f"{_name(a.structure, class_names)}: {a.regions:,} region(s), {a.share:.0%} of its "
        "voxels" for a in apart if a.share >= APART_SHARE_TO_MENTION
    ]
    if not parts:
        return ""
    return (
        f"apart from the painting ({'; '.join(parts)}): check them, or if the structure is one "
        f"object keep only the regions touching it ({setting})"
    )


def _name(k: int, class_names: Sequence[str]) -> str:
    return class_names[k - 1] if 0 < k <= len(class_names) else f"structure {k}"


def keep_touching_painted(labels: np.ndarray, annotation: np.ndarray) -> int:
    """Keep, of each structure, only the predicted regions that touch a voxel painted as that
    structure; the others become background, in place. Returns the voxels cleared.

    A structure with nothing painted keeps all its regions.
    """
    cleared = 0
    spatial = _spatial(labels)
    for _, _, drop, _ in _apart_masks(labels, annotation):  # one structure at a time
        spatial[drop] = 0
        cleared += int(drop.sum())
    return cleared


def apply_regions(labels: np.ndarray, annotation: np.ndarray, regions: Regions) -> int:
    """The ``regions`` setting of :class:`~napari_medseg.inference.PredictConfig` applied to
    ``labels`` in place; returns the voxels cleared."""
    return keep_touching_painted(labels, annotation) if regions == "touching" else 0
