"""Predicting into a zarr store: volumes larger than memory.

:func:`predict_to_store` reads the image lazily when it is a zarr / OME-Zarr store
(:func:`~napari_medseg.io.zarr_io.open_zarr`: a row of tiles at a time), holds class scores
for one slab (:mod:`napari_medseg.slabs`) and writes each finished slab of labels to an
OME-Zarr store (:class:`~napari_medseg.io.zarr_io.ZarrLabelWriter`), which appears at its
path only once complete and read back. Memory is then bounded by a slab of the volume, not
by the volume. Used by :func:`napari_medseg.api.predict_file` when the output is ``.zarr``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MedsegInputError
from .inference import PredictConfig, Prediction, TileProgress, predict
from .io import read_volume
from .io.segments import Segments
from .io.zarr_io import LazyVolume, ZarrLabelWriter, is_zarr, open_zarr
from .model import TrainedModel
from .progress import run_to_completion
from .volume import Volume

PathLike = str | os.PathLike[str]

#: What a prediction into a store cannot give (it holds one slab of scores at a time).
_NOT_STREAMED = {
    "probabilities_path": "--probabilities",
    "uncertainty_path": "--uncertainty",
    "annotation": "--annotation",
    "dicom_seg_path": "--dicom-seg",
}


def is_store_output(path: PathLike) -> bool:
    """Whether a segmentation at ``path`` is written as a zarr store, slab by slab."""
    return Path(path).name.lower().endswith(".zarr")


def check_streamable(**extras: object) -> None:
    """Refuse, in one line, an extra output or input that a prediction into a store cannot
    give (``extras``: the :func:`~napari_medseg.api.predict_file` keywords set)."""
    asked = [flag for name, flag in _NOT_STREAMED.items() if extras.get(name) is not None]
    if asked:
        raise MedsegInputError(
            f"{', '.join(asked)} cannot go with a .zarr segmentation (written slab by slab): "
            "write the segmentation to a file format, or leave them out"
        )


def open_image(image_path: PathLike, series_uid: str | None = None) -> Volume | LazyVolume:
    """A zarr store lazily; any other image read into memory."""
    if is_zarr(image_path):
        return open_zarr(image_path)
    return read_volume(image_path, series_uid=series_uid)


def predict_to_store(
    model: TrainedModel,
    image_path: PathLike,
    out_path: PathLike,
    config: PredictConfig,
    *,
    on_progress: Callable[[TileProgress], None] | None = None,
    series_uid: str | None = None,
) -> Prediction:
    """Segment ``image_path`` into the OME-Zarr store ``out_path``, slab by slab.

    The store carries the image's spacing and origin and the model's structure names and
    colours. Its ``labels`` in the returned prediction are the written zarr array.

    Raises
    ------
    MedsegInputError
        The model reads several planes (it needs the whole volume in memory), or the
        prediction was stopped (nothing is written then).
    """
    image = open_image(image_path, series_uid)
    if len(image.shape) != 3:
        raise MedsegInputError(f"a .zarr segmentation needs a 3D image, not {len(image.shape)}D")
    names = Segments.of_structures(model.config.class_names[1:], "segmentation")
    # committed (checked, then renamed into place) when the block ends without an error
    with ZarrLabelWriter(out_path, image.shape, reference=image, segments=names) as writer:
        source: Any = image.array
        prediction = run_to_completion(
            predict(model, source, config, sink=writer, live=False), on_progress
        )
        if not prediction.complete:
            raise MedsegInputError("prediction was stopped before the end; nothing written")
    prediction.labels = writer.array
    prediction.spacing = tuple(float(s) for s in image.spacing)
    return prediction


def label_counts(labels: Any, minimum: int, slab: int = 64) -> np.ndarray:
    """Voxels of each label value of ``labels`` (in memory, or a zarr array read ``slab``
    slices at a time)."""
    counts = np.zeros(minimum, dtype=np.int64)
    for start in range(0, labels.shape[0], slab):
        part = np.bincount(np.asarray(labels[start : start + slab]).ravel(), minlength=minimum)
        if part.size > counts.size:
            part[: counts.size] += counts
            counts = part
        else:
            counts[: part.size] += part
    return counts
