"""The Python API: the same loop as the ``medseg`` command, on files or arrays.

>>> from napari_medseg import api
>>> model = api.train_files("ct.nii.gz", "ct_annotation.nii.gz", "model.safetensors")
>>> api.predict_file("model.safetensors", "ct.nii.gz", "ct_seg.nii.gz")
>>> result = api.evaluate_files("ct_seg.nii.gz", "ct_expert.nii.gz")
>>> result.to_dict()["mean"]["dice"]
>>> api.crossval_files("ct.nii.gz", "ct_annotation.nii.gz").format_table()
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .annotation import check_painted, keep_painted
from .checkpoint import TrainedModel, load_model, save_model
from .crossval import CrossValConfig, CrossValProgress, CrossValResult, crossval
from .errors import MedsegInputError
from .inference import PredictConfig, Prediction, TileProgress, predict
from .io import read_volume, write_volume
from .metrics import EvaluationResult, evaluate
from .progress import run_to_completion
from .training import TrainConfig, TrainProgress, train
from .volume import Volume

PathLike = str | os.PathLike[str]


def check_same_geometry(image: Volume, other: Volume, what: str, reference: str = "image") -> None:
    """Refuse a label volume whose grid differs from its image's.

    Raises
    ------
    MedsegInputError
        When shapes differ, or spacing / origin differ by more than 1e-3 relative.
    """
    if image.shape != other.shape:
        raise MedsegInputError(
            f"{what} shape {other.shape} differs from {reference} shape {image.shape}"
        )
    if not np.allclose(image.spacing, other.spacing, rtol=1e-3, atol=1e-4):
        raise MedsegInputError(
            f"{what} spacing {_fmt(other.spacing)} differs from {reference} spacing "
            f"{_fmt(image.spacing)}"
        )
    if not np.allclose(image.direction_matrix, other.direction_matrix, atol=1e-3):
        raise MedsegInputError(f"{what} orientation (direction) differs from the {reference}'s")
    scale = max(1.0, float(np.max(np.abs(image.spacing))))
    if not np.allclose(image.origin, other.origin, atol=1e-2 * scale):
        raise MedsegInputError(
            f"{what} origin {_fmt(other.origin)} differs from {reference} origin "
            f"{_fmt(image.origin)}"
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def train_volume(
    image: Volume,
    annotation: Volume,
    config: TrainConfig | None = None,
    *,
    class_names: list[str] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainedModel:
    """Train on an image and its sparse annotation (with geometry checks)."""
    check_same_geometry(image, annotation, "annotation")
    generator = train(
        image.array, annotation.array, config, spacing=image.spacing, class_names=class_names
    )
    return run_to_completion(generator, on_progress)


def train_files(
    image_path: PathLike,
    annotation_path: PathLike,
    model_path: PathLike,
    config: TrainConfig | None = None,
    *,
    class_names: list[str] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainedModel:
    """Read an image and its annotation, train, and save the model atomically."""
    image = read_volume(image_path)
    annotation = read_volume(annotation_path)
    model = train_volume(
        image, annotation, config, class_names=class_names, on_progress=on_progress
    )
    save_model(model_path, model)
    return model


def predict_volume_with_geometry(
    model: TrainedModel,
    image: Volume,
    config: PredictConfig | None = None,
    *,
    on_progress: Callable[[TileProgress], None] | None = None,
) -> Prediction:
    """Segment an image volume; raise if stopped before the end."""
    prediction = run_to_completion(predict(model, image.array, config), on_progress)
    if not prediction.complete:
        raise MedsegInputError("prediction was stopped before the end; nothing written")
    return prediction


def predict_file(
    model_path: PathLike,
    image_path: PathLike,
    out_path: PathLike,
    config: PredictConfig | None = None,
    *,
    probabilities_path: PathLike | None = None,
    uncertainty_path: PathLike | None = None,
    annotation: PathLike | Volume | None = None,
    on_progress: Callable[[TileProgress], None] | None = None,
) -> Prediction:
    """Load a model, segment an image file and write the label map with the image's geometry.

    Probabilities (when ``probabilities_path`` is given) are written as ``(C, z, y, x)`` float32:
    a ``.npy`` array, or for medical formats a multi-component image with the image's geometry.
    The uncertainty map (``uncertainty_path``; an ensemble model only) is written as a float32
    volume in ``[0, 1]`` with the image's geometry. With ``annotation`` (the sparse
    annotation the model was trained on: a file, or a volume already read), painted voxels
    keep their painted label in the written segmentation, as the Predict widget does
    (:func:`~.annotation.keep_painted`); it is checked before anything is computed.
    """
    model = load_model(model_path)
    image = read_volume(image_path)
    if annotation is not None:
        if not isinstance(annotation, Volume):
            annotation = read_volume(annotation)
        check_same_geometry(image, annotation, "annotation")
        check_painted(annotation.array, model.config.n_classes)
    config = replace(
        config or PredictConfig(),
        probabilities=probabilities_path is not None,
        uncertainty=uncertainty_path is not None,
    )
    prediction = predict_volume_with_geometry(model, image, config, on_progress=on_progress)
    if annotation is not None:
        prediction.kept_voxels = keep_painted(prediction.labels, annotation.array)
    write_volume(out_path, prediction.labels, reference=image)
    if probabilities_path is not None and prediction.probabilities is not None:
        write_probabilities(probabilities_path, prediction.probabilities, image)
    if uncertainty_path is not None and prediction.uncertainty is not None:
        write_volume(uncertainty_path, prediction.uncertainty.astype(np.float32), reference=image)
    return prediction


def write_probabilities(path: PathLike, probabilities: np.ndarray, reference: Volume) -> None:
    """Write per-class probabilities ``(C, *shape)`` keeping the reference geometry."""
    path = Path(path)
    if path.suffix == ".npy":
        from ._atomic import atomic_write

        with atomic_write(path, "wb") as handle:
            np.save(handle, probabilities.astype(np.float32), allow_pickle=False)
        return
    direction = np.eye(probabilities.ndim)
    direction[1:, 1:] = reference.direction
    write_volume(
        path,
        probabilities.astype(np.float32),
        spacing=(1.0, *reference.spacing),
        origin=(0.0, *reference.origin),
        direction=direction,
    )


def crossval_files(
    image_path: PathLike,
    annotation_path: PathLike,
    config: CrossValConfig | None = None,
    *,
    class_names: list[str] | None = None,
    on_progress: Callable[[CrossValProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> CrossValResult:
    """Read an image and its annotation and cross-validate over the annotated slices
    (:func:`~napari_medseg.crossval.crossval`; ``stop`` ends it after the current step,
    with the folds finished so far)."""
    image = read_volume(image_path)
    annotation = read_volume(annotation_path)
    check_same_geometry(image, annotation, "annotation")
    generator = crossval(
        np.asarray(image.array),
        np.asarray(annotation.array),
        config,
        spacing=image.spacing,
        class_names=class_names,
        stop=stop,
    )
    return run_to_completion(generator, on_progress)


def evaluate_files(
    segmentation_path: PathLike,
    expert_path: PathLike,
    *,
    exclude_annotation: PathLike | None = None,
    surface_distances: bool = True,
) -> EvaluationResult:
    """Score a segmentation file against an expert mask (spacing from the expert mask).

    With ``exclude_annotation``, only voxels where that annotation is 0 (not annotated) count.
    """
    segmentation = read_volume(segmentation_path)
    expert = read_volume(expert_path)
    check_same_geometry(expert, segmentation, "segmentation", "expert mask")
    mask = None
    if exclude_annotation is not None:
        annotation = read_volume(exclude_annotation)
        check_same_geometry(expert, annotation, "annotation", "expert mask")
        mask = np.asarray(annotation.array) == 0
        if not mask.any():
            raise MedsegInputError("every voxel is annotated: nothing is left to score")
    return evaluate(
        np.asarray(segmentation.array),
        np.asarray(expert.array),
        spacing=expert.spacing,
        mask=mask,
        surface_distances=surface_distances,
    )
