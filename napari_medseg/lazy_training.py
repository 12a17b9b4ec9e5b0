"""Training on a volume larger than memory (a zarr store, read lazily).

Training patches always hold painted voxels (:mod:`napari_medseg.sampling`), so only the
region around the painting is ever sampled: :func:`train_from_store` scans the annotation
slab by slab for the box of its painted voxels, grows it by one training patch on every side
(every patch that holds a painted voxel lies inside), reads that box of the image and of the
annotation into memory, and trains there. The intensity normalisation is fitted on slices
spread through the whole volume, not on the box, so that prediction over the whole volume
normalises as training did.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import MedsegInputError
from .io._checks import DEFAULT_MAX_VOXELS
from .model import TrainedModel
from .normalization import IntensityNormalization
from .out_of_core import open_image
from .progress import run_to_completion
from .training import TrainConfig, TrainProgress, train
from .training.defaults import patch_shape_for

PathLike = str | os.PathLike[str]
Region = tuple[slice, ...]

#: Slices read to fit the intensity normalisation of a lazy volume.
NORMALIZATION_SLICES = 32


def painted_box(annotation: Any, slab: int = 64) -> Region | None:
    """The smallest box holding every painted (non-zero) voxel of ``annotation`` (in memory
    or lazy, read ``slab`` slices at a time); ``None`` when nothing is painted."""
    low = np.full(3, np.iinfo(np.int64).max)
    high = np.full(3, -1)
    for start in range(0, annotation.shape[0], slab):
        part = np.asarray(annotation[start : start + slab])
        found = np.nonzero(part)
        if found[0].size == 0:
            continue
        for axis, coordinates in enumerate(found):
            offset = start if axis == 0 else 0
            low[axis] = min(low[axis], int(coordinates.min()) + offset)
            high[axis] = max(high[axis], int(coordinates.max()) + offset)
    if high[0] < 0:
        return None
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high))


def grown(box: Region, margin: Sequence[int], shape: Sequence[int]) -> Region:
    """``box`` grown by ``margin`` voxels on each side, within ``shape``."""
    return tuple(
        slice(max(0, b.start - m), min(s, b.stop + m)) for b, m, s in zip(box, margin, shape)
    )


def fit_on_slices(image: Any, count: int = NORMALIZATION_SLICES) -> IntensityNormalization:
    """An intensity normalisation fitted on ``count`` slices spread evenly through a lazy
    volume (every voxel would mean reading all of it)."""
    picked = np.unique(np.linspace(0, image.shape[0] - 1, min(count, image.shape[0])).astype(int))
    return IntensityNormalization.fit(np.stack([np.asarray(image[int(k)]) for k in picked]))


def train_from_store(
    image_path: PathLike,
    annotation_path: PathLike,
    config: TrainConfig | None = None,
    *,
    class_names: Sequence[str] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    init: TrainedModel | None = None,
    stop: threading.Event | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> TrainedModel:
    """Train on a zarr image (read lazily) and its annotation (a zarr store or a file of
    the same shape), reading only the region around the painting; ``init``, ``stop`` as
    :func:`~napari_medseg.training.train`'s.

    Raises
    ------
    MedsegInputError
        One line: the shapes differ, nothing is painted, or the region around the painting
        holds more than ``max_voxels`` voxels (paint within a smaller region).
    """
    settings = config or TrainConfig()
    image, annotation = open_image(image_path), open_image(annotation_path)
    if tuple(image.shape) != tuple(annotation.shape):
        raise MedsegInputError(
            f"annotation shape {tuple(annotation.shape)} differs from image shape "
            f"{tuple(image.shape)}"
        )
    box = painted_box(annotation.array)
    if box is None:
        raise MedsegInputError("the annotation has no painted voxel: paint some slices first")
    patch = patch_shape_for(settings, image.shape, image.spacing)
    region = grown(box, patch, image.shape)
    voxels = math.prod(r.stop - r.start for r in region)
    if voxels > max_voxels:
        raise MedsegInputError(
            f"the region around the painting holds {voxels:,} voxels, more than the "
            f"{max_voxels:,} trained on at once: paint within a smaller region"
        )
    z, y, x = (int(p) for p in patch)
    crop = replace(settings, patch_shape=(z, y, x))  # the patch planned for the whole volume
    generator = train(
        np.asarray(image.array[region]), np.asarray(annotation.array[region]), crop,
        spacing=image.spacing, class_names=class_names, init=init, stop=stop,
        normalization=fit_on_slices(image.array) if init is None else None,
    )  # fmt: skip
    return run_to_completion(generator, on_progress)
