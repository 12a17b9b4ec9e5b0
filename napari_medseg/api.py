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
from typing import TYPE_CHECKING, Literal

import numpy as np

from .annotation import check_painted, keep_painted
from .checkpoint import TrainedModel, load_model, save_model
from .crossval import CrossValConfig, CrossValProgress, CrossValResult, crossval
from .errors import MedsegError, MedsegInputError
from .export_onnx import export_onnx as export_onnx  # api.export_onnx(model, "model.onnx")
from .inference import PredictConfig, Prediction, TileProgress, predict
from .io import is_zarr, read_volume, write_volume
from .io.segments import Segments, stored_class_names
from .lazy_training import train_from_store
from .metrics import EvaluationResult, evaluate
from .out_of_core import check_streamable, is_store_output, predict_to_store
from .outputs import check_inputs, check_outputs, describe_os_error, rescue_model
from .progress import run_to_completion
from .regions import apart_from_painting, apply_regions
from .training import TrainConfig, TrainProgress, train
from .volume import Volume

if TYPE_CHECKING:
    from .io.dicom_seg import DicomSegSource

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
    init: TrainedModel | None = None,
    stop: threading.Event | None = None,
) -> TrainedModel:
    """Train on an image and its sparse annotation (with geometry checks); with ``init``,
    continue from that model; ``stop`` ends training after the current step, keeping the
    model so far (:func:`~napari_medseg.training.train`)."""
    check_same_geometry(image, annotation, "annotation")
    generator = train(
        image.array, annotation.array, config, spacing=image.spacing, class_names=class_names,
        init=init, stop=stop,
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
    init: PathLike | TrainedModel | None = None,
    stop: threading.Event | None = None,
    series_uid: str | None = None,
) -> TrainedModel:
    """Read an image and its annotation, train, and save the model atomically.

    ``series_uid``: the DICOM series of the image when its folder holds several.

    A zarr image is read lazily: only the region around the painting is read and trained on
    (:func:`~napari_medseg.lazy_training.train_from_store`), for volumes larger than memory.

    ``class_names``: the structure names; by default those stored with the annotation file
    (:mod:`~napari_medseg.io.segments`), if any.

    ``stop``: set it to end training after the current step; the model so far is saved.

    ``init``: a model (or model file) to continue from, a warm start; it may be the file
    ``model_path`` names, which is then replaced only once the new model is complete.

    The inputs must exist and the model file must be writable (checked before anything is
    read: :func:`~napari_medseg.outputs.check_outputs`). Should the save still fail after
    training (a full disk, the folder removed meanwhile), the model is kept in the rescue
    folder (:func:`~napari_medseg.outputs.rescue_model`) and the :class:`MedsegError`
    raised says where.
    """
    inputs = [(image_path, "image"), (annotation_path, "annotation")]
    if init is not None and not isinstance(init, TrainedModel):
        check_inputs([(init, "model to continue from")])
    check_inputs(inputs)
    check_outputs([(model_path, "model", "model")], inputs)
    start = load_model(init) if init is not None and not isinstance(init, TrainedModel) else init
    if is_zarr(image_path):  # read lazily: only the region around the painting
        model = train_from_store(
            image_path, annotation_path, config, class_names=class_names,
            on_progress=on_progress, init=start, stop=stop,
        )  # fmt: skip
    else:
        image = read_volume(image_path, series_uid=series_uid)
        annotation = read_volume(annotation_path)
        class_names = class_names or stored_class_names(annotation.metadata, "annotation")
        model = train_volume(
            image, annotation, config, class_names=class_names, on_progress=on_progress,
            init=start, stop=stop,
        )  # fmt: skip
    try:
        save_model(model_path, model)
    except (OSError, MedsegError) as exc:
        raise rescue_model(model_path, exc, lambda kept: save_model(kept, model)) from exc
    return model


def predict_volume_with_geometry(
    model: TrainedModel,
    image: Volume,
    config: PredictConfig | None = None,
    *,
    on_progress: Callable[[TileProgress], None] | None = None,
    live: bool = False,
) -> Prediction:
    """Segment an image volume; raise if stopped before the end. ``on_progress`` gets each
    tile's labels only with ``live`` (else ``None``: their arg-max is saved)."""
    prediction = run_to_completion(predict(model, image.array, config, live=live), on_progress)
    if not prediction.complete:
        raise MedsegInputError("prediction was stopped before the end; nothing written")
    prediction.spacing = tuple(image.spacing)
    return prediction


def predict_file(
    model_path: PathLike | TrainedModel,
    image_path: PathLike,
    out_path: PathLike,
    config: PredictConfig | None = None,
    *,
    probabilities_path: PathLike | None = None,
    uncertainty_path: PathLike | None = None,
    annotation: PathLike | Volume | None = None,
    on_progress: Callable[[TileProgress], None] | None = None,
    series_uid: str | None = None,
    dicom_seg_path: PathLike | None = None,
) -> Prediction:
    """Load a model (or take one already loaded), segment an image file and write the label
    map with the image's geometry.

    A ``.zarr`` output is written slab by slab with class scores held for one slab only,
    and a zarr image is read lazily (:mod:`~napari_medseg.out_of_core`): volumes larger than
    memory. Probabilities, uncertainty, an annotation and a DICOM SEG do not go with it.

    The model's structure names and colours go with it (:mod:`~napari_medseg.io.segments`:
    Slicer's fields in a ``.seg.nrrd``, else an ITK-SNAP ``.label.txt`` beside the file).

    Probabilities (when ``probabilities_path`` is given) are written as ``(C, z, y, x)`` float32:
    a ``.npy`` array, or for medical formats a multi-component image with the image's geometry.
    The uncertainty map (``uncertainty_path``: an ensemble's disagreement, or a single
    network's doubt) is written as a float32 volume in ``[0, 1]`` with the image's geometry.
    With ``annotation`` (the sparse annotation the model was trained on: a file, or a volume
    already read), painted voxels keep their painted label in the written segmentation, as
    the Predict widget does (:func:`~.annotation.keep_painted`), and ``config.regions``
    applies; it is checked before anything is computed.
    ``series_uid`` chooses the DICOM series of the image when its folder holds several.
    ``dicom_seg_path`` (a DICOM image only) also writes a DICOM SEG referencing the source
    series, one segment per structure named after the model's classes
    (:mod:`~napari_medseg.io.dicom_seg`, needs highdicom).

    Inputs and outputs are checked before anything is read
    (:func:`check_predict_paths`). Should the probabilities or the uncertainty fail to
    save after the segmentation was written, the :class:`MedsegError` says what was
    written and what not.
    """
    path = None if isinstance(model_path, TrainedModel) else model_path
    check_predict_paths(
        path, image_path, out_path, probabilities_path,
        uncertainty_path, annotation=None if isinstance(annotation, Volume) else annotation,
    )  # fmt: skip
    if is_store_output(out_path):
        check_streamable(
            probabilities_path=probabilities_path, uncertainty_path=uncertainty_path,
            annotation=annotation, dicom_seg_path=dicom_seg_path,
        )  # fmt: skip
        model = _loaded(model_path)
        settings = replace(config or PredictConfig(), probabilities=False, uncertainty=False)
        return predict_to_store(
            model, image_path, out_path, settings, on_progress=on_progress, series_uid=series_uid
        )
    source = _dicom_seg_source(image_path, dicom_seg_path, series_uid)
    model = _loaded(model_path)
    image = read_volume(image_path, series_uid=series_uid)
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
        _apply_painting(prediction, annotation.array, config)
    names = Segments.of_structures(model.config.class_names[1:], "segmentation")
    write_volume(out_path, prediction.labels, reference=image, segments=names)
    more = _dicom_seg_write(dicom_seg_path, source, prediction, model, image)
    _write_extras(prediction, image, out_path, probabilities_path, uncertainty_path, more)
    return prediction


def _apply_painting(prediction: Prediction, painted: np.ndarray, config: PredictConfig) -> None:
    """The painted voxels' labels into the segmentation, then ``config.regions``; with
    ``"all"``, the regions apart from the painting are counted first."""
    prediction.kept_voxels = keep_painted(prediction.labels, painted)
    if config.regions == "all":
        prediction.apart = apart_from_painting(prediction.labels, painted)
    prediction.cleared_voxels = apply_regions(prediction.labels, painted, config.regions)


def _loaded(model: PathLike | TrainedModel) -> TrainedModel:
    return model if isinstance(model, TrainedModel) else load_model(model)


def _dicom_seg_source(
    image_path: PathLike, dicom_seg_path: PathLike | None, series_uid: str | None
) -> DicomSegSource | None:
    """The source series of the DICOM SEG asked for, checked before any work."""
    if dicom_seg_path is None:
        return None
    from .io.dicom_seg import check_dicom_seg

    return check_dicom_seg(image_path, dicom_seg_path, series_uid)


def _dicom_seg_write(
    dicom_seg_path: PathLike | None,
    source: DicomSegSource | None,
    prediction: Prediction,
    model: TrainedModel,
    image: Volume,
) -> list[tuple[Path, str, Callable[[Path], object]]]:
    """The DICOM SEG write to do after the segmentation, if one was asked for."""
    if dicom_seg_path is None or source is None:
        return []
    from .io.dicom_seg import write_dicom_seg

    names = list(model.config.class_names[1:])
    labels = prediction.labels
    return [
        (
            Path(dicom_seg_path),
            "DICOM SEG",
            lambda path: write_dicom_seg(path, labels, source, names, reference=image),
        )
    ]


def check_predict_paths(
    model_path: PathLike | None,
    image_path: PathLike,
    out_path: PathLike,
    probabilities_path: PathLike | None = None,
    uncertainty_path: PathLike | None = None,
    *,
    annotation: PathLike | None = None,
) -> None:
    """Refuse, before anything is read, a missing input of :func:`predict_file` or an output
    it could not write (:func:`~napari_medseg.outputs.check_outputs`)."""
    inputs = [(model_path, "model file"), (image_path, "image"), (annotation, "annotation")]
    check_inputs(inputs)
    outputs: list[tuple[PathLike | None, str, Literal["volume"]]] = [
        (out_path, "segmentation", "volume"),
        (probabilities_path, "probabilities", "volume"),
        (uncertainty_path, "uncertainty", "volume"),
    ]
    check_outputs(outputs, inputs)


def _write_extras(
    prediction: Prediction,
    image: Volume,
    out_path: PathLike,
    probabilities_path: PathLike | None,
    uncertainty_path: PathLike | None,
    more: Sequence[tuple[Path, str, Callable[[Path], object]]] = (),
) -> None:
    """Write the probabilities and the uncertainty asked for, then ``more`` (path, what,
    write), after the segmentation; on a failure, one line says what was written and what
    not."""
    writes: list[tuple[Path, str, Callable[[Path], object]]] = []
    if probabilities_path is not None and prediction.probabilities is not None:
        probabilities = prediction.probabilities
        writes.append(
            (
                Path(probabilities_path),
                "probabilities",
                lambda path: write_probabilities(path, probabilities, image),
            )
        )
    if uncertainty_path is not None and prediction.uncertainty is not None:
        uncertainty = prediction.uncertainty.astype(np.float32)
        writes.append(
            (
                Path(uncertainty_path),
                "uncertainty",
                lambda path: write_volume(path, uncertainty, reference=image),
            )
        )
    writes.extend(more)
    saved = [f"the segmentation {Path(out_path)}"]
    for number, (path, what, write) in enumerate(writes):
        try:
            write(path)
        except (OSError, MedsegError) as exc:
            raise _partly_saved(saved, exc, path, writes[number + 1 :]) from exc
        saved.append(f"the {what} {path}")


def _partly_saved(
    saved: list[str],
    failure: OSError | MedsegError,
    path: Path,
    left: Sequence[tuple[Path, str, object]],
) -> MedsegError:
    """One line: what was saved, why ``path`` was not, and what was not tried."""
    if isinstance(failure, OSError):
        why = f"could not save {path}: {describe_os_error(failure, path.parent)}"
    else:
        why = " ".join(str(failure).split())
    not_tried = "".join(f"; the {what} {p} not written either" for p, what, _ in left)
    return MedsegError(f"saved {' and '.join(saved)}; {why}{not_tried}")


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
    series_uid: str | None = None,
) -> CrossValResult:
    """Read an image and its annotation and cross-validate over the annotated slices
    (:func:`~napari_medseg.crossval.crossval`; ``stop`` ends it after the current step,
    with the folds finished so far). Both inputs must exist before the first is read.
    ``series_uid`` chooses the DICOM series of the image when its folder holds several."""
    check_inputs([(image_path, "image"), (annotation_path, "annotation")])
    image = read_volume(image_path, series_uid=series_uid)
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
    Every input must exist before the first is read.
    """
    check_inputs(
        [(segmentation_path, "segmentation"), (expert_path, "expert mask"),
         (exclude_annotation, "annotation")]
    )  # fmt: skip
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
