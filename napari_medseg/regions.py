"""Connected regions of a segmentation and the painted voxels they touch (numpy + scipy).

A network trained on a few painted slices may mark tissue far from anything painted, on
slices nobody looked at, as the structure. :func:`keep_touching_painted` keeps only the
regions that touch the painting: for one object (a tumour, a lesion, an organ) painted on a
few slices, not for tissue classes or structures of many separate pieces.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

Regions = Literal["all", "touching"]
#: Voxels touching by a face, an edge or a corner are one region.
FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def keep_touching_painted(labels: np.ndarray, annotation: np.ndarray) -> int:
    """Keep, of each structure, only the predicted regions that touch a voxel painted as that
    structure; the others become background, in place. Returns the voxels cleared.

    A structure with nothing painted keeps all its regions.
    """
    cleared = 0
    spatial = labels if labels.ndim == 3 else labels[np.newaxis]
    painted = annotation if annotation.ndim == 3 else annotation[np.newaxis]
    for k in np.unique(spatial):
        if k == 0 or not (painted == k + 1).any():
            continue
        regions, _ = ndimage.label(spatial == k, structure=FULL_CONNECTIVITY)
        touched = np.unique(regions[(painted == k + 1) & (regions > 0)])
        drop = (regions > 0) & ~np.isin(regions, touched)
        spatial[drop] = 0
        cleared += int(drop.sum())
    return cleared


def apply_regions(labels: np.ndarray, annotation: np.ndarray, regions: Regions) -> int:
    """The ``regions`` setting of :class:`~napari_medseg.inference.PredictConfig` applied to
    ``labels`` in place; returns the voxels cleared."""
    return keep_touching_painted(labels, annotation) if regions == "touching" else 0
