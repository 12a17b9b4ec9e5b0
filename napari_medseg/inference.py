"""Tiled inference of a trained model over a volume of any size.

:func:`predict` is a generator: it yields a :class:`TileProgress` after each finished tile
(with the labels of that region, for a live overlay) and returns a :class:`Prediction`.

It is put together from small pieces, as a sampler and an aggregator are
(:mod:`napari_medseg.tiling`): one tiled pass per plane the model reads
(:func:`~napari_medseg._passes.plane_pass`), averaged (:func:`_all_planes`), wrapped in a
retry with smaller tiles, then on the CPU, when the GPU or the CPU runs out of memory
(:func:`_retrying_on_oom`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ._passes import (
    PassSums,
    PlaneScores,
    PlaneView,
    TileComputer,
    average_passes,
    disagreement,
    plane_pass,
    plane_views,
)
from ._stream import SlabReader, stream_pass
from .device import DeviceName, release_device, resolve_device
from .errors import MedsegError, MedsegInputError
from .model import TrainedModel
from .options import check_choice, option
from .progress import run_to_completion
from .regions import ApartRegions, Regions, apart_after_painting
from .slabs import LabelSink, MemorySink
from .tiling import GridSampler, grown_tile, is_thin, padded_voxels

__all__ = [
    "PredictConfig",
    "Prediction",
    "TileProgress",
    "default_tile_shape",
    "disagreement",
    "predict",
    "predict_volume",
    "tile_overlaps",
    "tile_shape_for",
]


@dataclass
class PredictConfig:
    """Settings of one prediction.

    The Predict widget's form and the options of ``medseg predict`` are built from these
    fields (:mod:`napari_medseg.options`); impossible values raise
    :class:`~napari_medseg.errors.MedsegInputError` here. Why the defaults are what they
    are: ``docs/DEFAULTS.md``.
    """

    device: DeviceName = option(
        "auto", help="where to compute: auto picks CUDA, then Apple MPS, then the CPU"
    )
    overlap: float = option(
        0.25, help="fraction of a tile shared with its neighbour along each axis (0.25: a "
        "quarter; a 2D network's tiles never share slices)",
        min=0.0, max=0.95, step=0.05,
    )  # fmt: skip
    probabilities: bool = option(
        False, help="also return the probability of every class at every voxel"
    )
    regions: Regions = option(
        "all", help="keep every predicted region (all), or only those touching a voxel "
        "painted as their structure (touching: one object painted without a box)",
    )
    tile_shape: tuple[int, int, int] | None = option(
        None, help="tile size in voxels, in array order", none_text="chosen from the model",
        suggest=(64, 128, 128), min=1, max=4096, metavar=("Z", "Y", "X"),
    )  # fmt: skip
    mirror: bool = option(
        False, help="test-time flips: average over mirror images of the in-plane axes (four "
        "forward passes per tile: slower, smoother)",
    )  # fmt: skip
    uncertainty: bool = option(
        False, help="also return where painting one more slice helps most, 0 to 1: where an "
        "ensemble's networks disagree, or where a single network is unsure",
    )  # fmt: skip
    mixed_precision: bool = option(
        True, help="compute in bf16 (or fp16) where the device does so natively: CUDA, and "
        "CPUs with AVX-512 BF16 or AMX", negate=True, flag="full_precision",
        flag_help="compute in float32 even where the device does bf16 natively (a GPU, or a "
        "CPU with AVX-512 BF16 or AMX): slower, the same numbers everywhere",
    )  # fmt: skip

    def __post_init__(self) -> None:
        try:
            check_choice(PredictConfig, "device", self.device)
            check_choice(PredictConfig, "regions", self.regions)
        except ValueError as exc:
            raise MedsegInputError(str(exc)) from None
        if not 0.0 <= self.overlap < 1.0:
            raise MedsegInputError("overlap must be between 0 and 1 (exclusive)")
        if self.tile_shape and any(size <= 0 for size in self.tile_shape):
            raise MedsegInputError(f"tile sizes must be positive, not {tuple(self.tile_shape)}")


@dataclass
class TileProgress:
    """What :func:`predict` yields after each tile: its number, the region it covered (in
    the volume's axis order) and the labels there so far, for a live overlay (``None`` when
    :func:`predict` was told that nobody shows them: ``live=False``)."""

    index: int
    total: int
    region: tuple[slice, ...]
    labels: np.ndarray | None
    elapsed: float
    message: str = ""

    @property
    def fraction(self) -> float:
        """How much of the prediction is done, from 0 to 1."""
        return self.index / max(1, self.total)

    def describe(self) -> str:
        """One line for a progress bar: ``tile 3/12`` and the message, if any."""
        return f"tile {self.index}/{self.total} {self.message}".strip()


@dataclass
class Prediction:
    """The result of :func:`predict`.

    ``labels``: ``0`` background, ``k`` structure ``k``. ``probabilities``: ``(C, *shape)``
    float32 when asked for, else ``None``. ``uncertainty``: ``shape`` float32 in ``[0, 1]``
    when asked for (:func:`disagreement`), else ``None``. ``complete`` is False when stopped
    early (the labels then cover only the finished tiles and must not be used as a result).
    ``kept_voxels``: voxels given the user's painted label afterwards
    (:func:`~napari_medseg.annotation.keep_painted`; 0 when no annotation was applied);
    ``cleared_voxels``: voxels of regions apart from the painting cleared then
    (``PredictConfig.regions``); ``apart``: with an annotation and ``regions="all"``, the
    regions of each structure that touch nothing painted as it
    (:func:`~napari_medseg.regions.apart_from_painting`). ``spacing``: the image's voxel size
    in mm, when it was read from a file (:func:`~napari_medseg.api.predict_file`), else empty.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    complete: bool = True
    device: str = "cpu"
    tile_shape: tuple[int, ...] = ()
    uncertainty: np.ndarray | None = None
    kept_voxels: int = 0
    cleared_voxels: int = 0
    apart: list[ApartRegions] = field(default_factory=list)
    spacing: tuple[float, ...] = ()


def tile_overlaps(model: TrainedModel, overlap: float) -> tuple[float, float, float]:
    """The overlap of the tiles per axis of a pass (its slice axis first): ``overlap`` along
    every axis for the 3D U-Net; none across the slices for a 2D network, which reads each
    slice alone (a slice in two tiles would get the same scores twice)."""
    if model.config.arch == "unet3d":
        return (overlap, overlap, overlap)
    return (0.0, overlap, overlap)


def default_tile_shape(model: TrainedModel, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Tiles twice the training patch per axis (capped by the volume), for fewer seams;
    larger along the long axes of a thin volume (:func:`tile_shape_for`)."""
    divisor = getattr(model.network, "divisor", None)
    return tile_shape_for(model.config.arch, model.config.patch_shape, shape, divisor=divisor)


def tile_shape_for(
    arch: str,
    patch_shape: Sequence[int],
    shape: Sequence[int],
    *,
    divisor: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """The default tile of ``arch`` trained on ``patch_shape`` for a volume of ``shape``:
    twice the patch per axis for the 3D U-Net, 8 slices of up to 256 x 256 for 2D networks,
    each capped by the volume.

    With the network's ``divisor`` (the multiple it pads its input to, per padded axis),
    a volume thinner than it or than 8 voxels (:func:`~napari_medseg.tiling.is_thin`), as
    ``(1, 1, 200000)``, is padded there anyway: its tile grows along the long axes until it
    costs what the uncapped default tile costs, padding included
    (:func:`~napari_medseg.tiling.grown_tile`), instead of thousands of tiny tiles. Other
    volumes keep the capped default tile.
    """
    tile = _capped_default(arch, patch_shape, shape)
    if divisor is None or not is_thin(shape, divisor):
        return tile
    full = _capped_default(arch, patch_shape, (_UNBOUNDED,) * len(shape))
    grown = grown_tile(tile, shape, padded_voxels(full, divisor), divisor)
    return (grown[0], grown[1], grown[2])


_UNBOUNDED = 1 << 40


def _capped_default(
    arch: str, patch_shape: Sequence[int], shape: Sequence[int]
) -> tuple[int, int, int]:
    if arch != "unet3d":
        return (min(shape[0], 8), min(shape[1], 256), min(shape[2], 256))
    z, y, x = (min(s, 2 * p) for s, p in zip(shape, patch_shape))
    return (z, y, x)


def predict(
    model: TrainedModel,
    image: Any,
    config: PredictConfig | None = None,
    *,
    stop: threading.Event | None = None,
    sink: LabelSink | None = None,
    live: bool = True,
) -> Generator[TileProgress, None, Prediction]:
    """Segment a volume tile by tile.

    A model that reads the volume across its first axis only (the 3D U-Net; a 2D network
    trained on axial slices) holds class scores for one slab of the volume at a time
    (:mod:`napari_medseg._stream`): the image may then be lazy (a zarr or dask array, read
    a row of tiles at a time) and the labels may go to a ``sink`` slab by slab (a zarr
    store) instead of an array of the whole volume. A 2D network reading several planes
    needs the whole volume in memory.

    On an out-of-memory error (CUDA's, torch's CPU allocator's, or a ``MemoryError``) the
    run starts again with tiles half the size, then (from a GPU) on the CPU, saying so in the
    next progress message; when even tiles of 8 voxels a side do not fit on the CPU, a
    one-line :class:`~napari_medseg.errors.MedsegError` says so. Nothing partial is
    returned as complete.

    Parameters
    ----------
    model : TrainedModel
        A trained model (from :func:`~napari_medseg.training.train` or ``load_model``).
    image : np.ndarray or array-like
        ``(z, y, x)`` or 2D volume, raw intensities (the model normalises them); or a lazy
        ``(z, y, x)`` array sliceable like numpy (zarr, dask).
    config : PredictConfig, optional
        Settings.
    stop : threading.Event, optional
        Set it to end after the current tile; the returned prediction is then incomplete.
    sink : LabelSink, optional
        Where finished slabs of labels go (a model reading the first axis only); the
        returned prediction's ``labels`` is then the sink's ``array``. A run retried after
        running out of memory writes the sink again from the first slice.
    live : bool
        Give each :class:`TileProgress` the labels of its tile (for a live overlay); without
        a listener, ``False`` saves their arg-max.

    Yields
    ------
    TileProgress
        After each tile.

    Returns
    -------
    Prediction
    """
    settings = config or PredictConfig()
    volume = image if _is_lazy(image) else np.asarray(image)
    flat = volume.ndim == 2
    volume = _checked_volume(volume[np.newaxis] if flat else volume)
    device = resolve_device(settings.device)
    tiles = tuple(settings.tile_shape) if settings.tile_shape else None
    first = _Attempt(tile_shape=tiles, device=device, start=time.perf_counter())
    output = _Output(config=settings, sink=sink, live=live, stop=stop)
    result = yield from _retrying_on_oom(
        lambda attempt: _all_planes(model, volume, attempt, output),
        first,
        default_tile_shape(model, volume.shape),
    )
    return _first_slice(result) if flat else result


def predict_counting_apart(
    model: TrainedModel,
    image: np.ndarray,
    config: PredictConfig | None,
    painted: np.ndarray | None,
    *,
    stop: threading.Event | None = None,
) -> Generator[TileProgress, None, Prediction]:
    """:func:`predict`, then (with ``painted`` and ``regions="all"``) the regions apart from
    the painting counted into ``Prediction.apart`` in the same thread: a GUI runs both in its
    worker, not the count on its own thread (seconds on a CT-sized volume)."""
    prediction = yield from predict(model, image, config, stop=stop)
    regions = (config or PredictConfig()).regions
    if painted is not None and regions == "all" and prediction.complete:
        prediction.apart = apart_after_painting(np.asarray(prediction.labels), painted)
    return prediction

def predict_volume(
    model: TrainedModel, image: np.ndarray, config: PredictConfig | None = None
) -> Prediction:
    """Run :func:`predict` to the end and return its :class:`Prediction`."""
    return run_to_completion(predict(model, image, config, live=False))


def _is_lazy(image: Any) -> bool:
    """Whether ``image`` is an array read on demand (zarr, dask), not one in memory."""
    return not isinstance(image, np.ndarray) and all(
        hasattr(image, name) for name in ("shape", "dtype", "ndim", "__getitem__")
    )


def _checked_volume(volume: Any) -> Any:
    """``volume`` if it is ``(z, y, x)`` with a finite voxel (checked in memory only: a lazy
    volume is not read for it); else why not, raised."""
    if volume.ndim != 3:
        raise MedsegInputError(
            f"image has {volume.ndim} dimensions; napari-medseg segments 2D images and 3D volumes"
        )
    if isinstance(volume, np.ndarray) and not np.isfinite(volume).any():
        raise MedsegInputError("image has no finite voxel (all NaN or infinite)")
    return volume


def _first_slice(result: Prediction) -> Prediction:
    """The prediction of a 2D image (made as a volume of one slice), in place."""
    result.labels = result.labels[0]
    if result.probabilities is not None:
        result.probabilities = result.probabilities[:, 0]
    if result.uncertainty is not None:
        result.uncertainty = result.uncertainty[0]
    return result


# ---- retrying after running out of memory ---------------------------------------------


@dataclass(frozen=True)
class _Attempt:
    """One try at a prediction: its tiles (``None``: each plane's default), its device, when
    the first try started, and the note its first tile shows (why it is a retry)."""

    tile_shape: tuple[int, ...] | None
    device: torch.device
    start: float
    note: str = ""


def _retrying_on_oom(
    run: Callable[[_Attempt], Generator[TileProgress, None, Prediction]],
    attempt: _Attempt,
    default_tiles: tuple[int, ...],
) -> Generator[TileProgress, None, Prediction]:
    """``run(attempt)``, started again by :func:`_after_out_of_memory` whenever it runs out
    of GPU or CPU memory (``default_tiles``: the tiles halved when the attempt names none)."""
    while True:
        try:
            return (yield from run(attempt))
        except (RuntimeError, MemoryError) as exc:
            where = _memory_that_ran_out(exc, attempt.device)
            if where is None:
                raise
        attempt = _after_out_of_memory(attempt, default_tiles, where)


#: How the CPU allocators of torch (and of the C library) say that memory ran out.
_CPU_OUT_OF_MEMORY = ("defaultcpuallocator", "can't allocate memory", "cannot allocate memory")


def _memory_that_ran_out(exc: BaseException, device: torch.device) -> str | None:
    """``"GPU"`` or ``"CPU"`` when ``exc`` says that memory ran out, else None."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "GPU"
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(words in text for words in _CPU_OUT_OF_MEMORY):
        return "CPU"
    if "out of memory" in text:
        return "CPU" if device.type == "cpu" else "GPU"
    return None


def _after_out_of_memory(
    attempt: _Attempt, default_tiles: tuple[int, ...], where: str
) -> _Attempt:
    """The next try after ``where`` ran out of memory: tiles half the size (at least 8),
    then (from a GPU) the CPU; when even that was tried, one clear error."""
    smaller = tuple(max(8, t // 2) for t in attempt.tile_shape or default_tiles)
    if smaller != attempt.tile_shape:
        note = f"{where} out of memory: retrying with smaller tiles {smaller}"
        return replace(attempt, tile_shape=smaller, note=note)
    if attempt.device.type != "cpu":
        note = f"{where} out of memory: retrying on the CPU"
        return replace(attempt, device=torch.device("cpu"), note=note)
    tiles = " x ".join(str(t) for t in smaller)
    raise MedsegError(
        f"not enough memory to predict even with tiles of {tiles} voxels: "
        "close other programs or use a smaller volume"
    ) from None


# ---- one attempt: a pass per plane, averaged -------------------------------------------


@dataclass(frozen=True)
class _Output:
    """A prediction's settings, where its labels go (the ``sink``; ``None``: arrays of the
    whole volume), whether tiles carry ``live`` labels, and the ``stop`` event."""

    config: PredictConfig
    sink: LabelSink | None
    live: bool
    stop: threading.Event | None


def _all_planes(
    model: TrainedModel, volume: Any, attempt: _Attempt, output: _Output
) -> Generator[TileProgress, None, Prediction]:
    """One tiled pass per plane of the model (2D networks may read three), averaged; a
    model that reads the first axis only streams slab by slab (:func:`_streamed`)."""
    planes = _planes_of(model, volume.shape)
    if planes == (0,):
        return (yield from _streamed(model, volume, attempt, output))
    if output.sink is not None:
        raise MedsegInputError(
            "a model reading several planes needs the whole volume in memory: "
            "predict into memory, not into a store"
        )
    normalized = model.config.normalization.apply(np.asarray(volume))
    return (yield from _whole_volume(model, normalized, planes, attempt, output))


def _streamed(
    model: TrainedModel, volume: Any, attempt: _Attempt, output: _Output
) -> Generator[TileProgress, None, Prediction]:
    """One pass across the first axis with class scores held for a slab only."""
    config = output.config
    tiles = attempt.tile_shape or default_tile_shape(model, volume.shape)
    sampler = GridSampler(volume.shape, tiles, tile_overlaps(model, config.overlap))
    counter = _TileCounter(total=len(sampler), start=attempt.start, note=attempt.note)
    sink = output.sink or MemorySink(
        volume.shape, model.config.n_classes,
        probabilities=config.probabilities, uncertainty=config.uncertainty,
    )  # fmt: skip
    try:
        compute = TileComputer.placed(model, attempt.device, config)
        reader = SlabReader(volume, model.config.normalization, attempt.device)
        complete = yield from stream_pass(
            reader, sampler, compute, sink, counter.report, live=output.live, stop=output.stop
        )
    finally:
        release_device(attempt.device)
    memory = sink if isinstance(sink, MemorySink) else None
    return Prediction(
        labels=memory.labels if memory else getattr(sink, "array", None),  # type: ignore[arg-type]
        probabilities=memory.probabilities if memory and complete else None,
        complete=complete,
        device=str(attempt.device),
        tile_shape=tuple(sampler.tile_shape),
        uncertainty=memory.uncertainty if memory and complete else None,
    )


def _whole_volume(
    model: TrainedModel,
    normalized: np.ndarray,
    planes: tuple[int, ...],
    attempt: _Attempt,
    output: _Output,
) -> Generator[TileProgress, None, Prediction]:
    """A pass per plane over the whole volume in memory, averaged; the network is on
    ``attempt.device`` only while the passes run."""
    config = output.config
    planes_views = plane_views(
        normalized,
        planes,
        lambda shape: attempt.tile_shape or default_tile_shape(model, shape),
        tile_overlaps(model, config.overlap),
    )
    counter = _TileCounter(
        total=sum(len(plane.sampler) for plane in planes_views),
        start=attempt.start,
        note=attempt.note,
    )
    sums = PassSums()
    stopped: Prediction | None = None
    try:
        compute = TileComputer.placed(model, attempt.device, config)
        for plane in planes_views:
            done = yield from plane_pass(plane, compute, counter.report, sums.scores, output.stop)
            if not done.complete:
                stopped = _stopped(sums, done, plane, attempt.device)
                break
            sums.add(done, plane.axis)
    finally:
        release_device(attempt.device)
    if stopped is not None:
        return stopped
    return _finished(sums, config, attempt.device, planes_views[0].sampler.tile_shape)


def _planes_of(model: TrainedModel, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes across which the model reads slices (a 2D image: only the first)."""
    if model.config.arch == "unet3d" or shape[0] == 1:
        return (0,)
    return tuple(model.config.planes)


class _TileCounter:
    """Numbers the tiles of an attempt across its passes and makes their progress reports;
    the attempt's ``note`` goes with its first tile only."""

    def __init__(self, *, total: int, start: float, note: str) -> None:
        self.index = 0
        self.total = total
        self.start = start
        self.note = note

    def report(
        self, region: tuple[slice, ...], labels: np.ndarray | None, caption: str
    ) -> TileProgress:
        """The progress of the next tile, which covered ``region`` (volume order)."""
        self.index += 1
        message = " · ".join(m for m in (self.note, caption) if m)
        self.note = ""
        return TileProgress(
            index=self.index,
            total=self.total,
            region=region,
            labels=labels,
            elapsed=time.perf_counter() - self.start,
            message=message,
        )


def _finished(
    sums: PassSums, config: PredictConfig, device: torch.device, tile_shape: tuple[int, ...]
) -> Prediction:
    """The prediction of an attempt whose passes all finished: their average."""
    probabilities, uncertainty = average_passes(sums)
    return Prediction(
        labels=np.argmax(probabilities, axis=0).astype(np.uint8),
        probabilities=probabilities if config.probabilities else None,
        complete=True,
        device=str(device),
        tile_shape=tuple(tile_shape),
        uncertainty=uncertainty,
    )


def _stopped(
    sums: PassSums, current: PlaneScores, plane: PlaneView, device: torch.device
) -> Prediction:
    """What a stopped attempt returns: labels of the finished passes, or of the first
    pass's finished tiles; not a result."""
    if sums.scores is None:
        labels = np.moveaxis(current.scores.labels(), 0, plane.axis)
    else:
        labels = np.argmax(sums.scores, axis=0).astype(np.uint8)
    return Prediction(
        labels=labels,
        probabilities=None,
        complete=False,
        device=str(device),
        tile_shape=tuple(plane.sampler.tile_shape),
    )
