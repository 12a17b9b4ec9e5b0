"""Tiled inference of a trained model over a volume of any size.

:func:`predict` is a generator: it yields a :class:`TileProgress` after each finished tile
(with the labels of that region, for a live overlay) and returns a :class:`Prediction`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .checkpoint import TrainedModel
from .device import autocast_dtype, memory_format_for, resolve_device
from .errors import MedsegError, MedsegInputError
from .models import Ensemble
from .progress import run_to_completion
from .tiling import GaussianAggregator, GridSampler


@dataclass
class PredictConfig:
    """Settings of one prediction (the Predict widget's form is built from these fields).

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "mps"}
        Where to compute; ``auto`` picks CUDA, then MPS, then the CPU.
    overlap : float
        Fraction of a tile shared with its neighbour (0.5 = half).
    probabilities : bool
        Also return per-class probabilities.
    tile_shape : tuple of int or None
        Tile size in voxels (array order); ``None`` picks one from the model's patch.
    mirror : bool
        Test-time augmentation: average over flips of the in-plane axes (4x the work).
    uncertainty : bool
        Also return where an ensemble's networks disagree (:func:`disagreement`): high
        where the painted slices left the answer open, which is where painting one more
        slice helps most. Needs a model trained as an ensemble.
    mixed_precision : bool
        Compute in bf16 (or fp16) where the device does so natively: CUDA, and CPUs with
        AVX-512 BF16 or AMX (:func:`~napari_medseg.device.autocast_dtype`). ``False``:
        float32 everywhere (``benchmarks/cpu_bf16.py`` measures the speed and agreement).
    """

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    overlap: float = 0.5
    probabilities: bool = False
    tile_shape: tuple[int, int, int] | None = None
    mirror: bool = False
    uncertainty: bool = False
    mixed_precision: bool = True


@dataclass
class TileProgress:
    """What :func:`predict` yields after each tile."""

    index: int
    total: int
    region: tuple[slice, ...]
    labels: np.ndarray
    elapsed: float
    message: str = ""


@dataclass
class Prediction:
    """The result of :func:`predict`.

    ``labels``: ``0`` background, ``k`` structure ``k``. ``probabilities``: ``(C, *shape)``
    float32 when asked for, else ``None``. ``uncertainty``: ``shape`` float32 in ``[0, 1]``
    when asked for (:func:`disagreement`), else ``None``. ``complete`` is False when stopped
    early (the labels then cover only the finished tiles and must not be used as a result).
    ``kept_voxels``: voxels given the user's painted label afterwards
    (:func:`~napari_medseg.annotation.keep_painted`; 0 when no annotation was applied).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    complete: bool = True
    device: str = "cpu"
    tile_shape: tuple[int, ...] = ()
    uncertainty: np.ndarray | None = None
    kept_voxels: int = 0


def default_tile_shape(model: TrainedModel, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Tiles twice the training patch per axis (capped by the volume), for fewer seams."""
    return tile_shape_for(model.config.arch, model.config.patch_shape, shape)


def tile_shape_for(
    arch: str, patch_shape: Sequence[int], shape: Sequence[int]
) -> tuple[int, int, int]:
    """The default tile of ``arch`` trained on ``patch_shape`` for a volume of ``shape``:
    twice the patch per axis for the 3D U-Net, 8 slices of up to 256 x 256 for 2D networks,
    each capped by the volume."""
    if arch != "unet3d":
        return (min(shape[0], 8), *(min(s, 256) for s in shape[1:]))  # type: ignore[return-value]
    return tuple(min(s, 2 * p) for s, p in zip(shape, patch_shape))  # type: ignore[return-value]


def disagreement(member_probabilities: torch.Tensor) -> torch.Tensor:
    """How much an ensemble's networks disagree, per voxel, from 0 (agree) to 1.

    The mutual information between the networks' predictions and the class (the entropy of
    their mean minus their mean entropy), divided by its largest value, ``log(C)``. It is
    high where the networks are each sure but of different classes, and stays low where
    they agree, however unsure: at every boundary one network is unsure, but only where the
    annotation leaves the answer open do the networks part ways.

    Parameters
    ----------
    member_probabilities : torch.Tensor
        ``(M, N, C, *spatial)`` class probabilities of M networks.

    Returns
    -------
    torch.Tensor
        ``(N, *spatial)``.
    """

    def entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)

    n_classes = member_probabilities.shape[2]
    mean = member_probabilities.mean(0)
    information = entropy(mean, 1) - entropy(member_probabilities, 2).mean(0)
    return (information / math.log(n_classes)).clamp(0.0, 1.0)


def _mirrored_softmax(network: torch.nn.Module, x: torch.Tensor, mirror: bool) -> torch.Tensor:
    probs = torch.softmax(network(x).float(), dim=1)
    if mirror:
        for dims in ((3,), (4,), (3, 4)):
            probs += torch.softmax(network(x.flip(dims)).float(), dim=1).flip(dims)
        probs /= 4.0
    return probs


@torch.inference_mode()
def _forward(
    network: torch.nn.Module,
    x: torch.Tensor,
    amp: torch.dtype | None,
    mirror: bool,
    uncertainty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Inference mode is entered per tile, never held across a yield: it is thread-wide state
    # and would leak into whatever the consumer of the generator does between tiles.
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        if not uncertainty:
            return _mirrored_softmax(network, x, mirror), None
        members = torch.stack([_mirrored_softmax(m, x, mirror) for m in network.members])
        return members.mean(0), disagreement(members)


def predict(
    model: TrainedModel,
    image: np.ndarray,
    config: PredictConfig | None = None,
    *,
    stop: threading.Event | None = None,
) -> Generator[TileProgress, None, Prediction]:
    """Segment a volume tile by tile.

    On a CUDA out-of-memory error the run starts again with tiles half the size, then on the
    CPU, saying so in the next progress message; nothing partial is returned as complete.

    Parameters
    ----------
    model : TrainedModel
        A trained model (from :func:`~napari_medseg.training.train` or ``load_model``).
    image : np.ndarray
        ``(z, y, x)`` or 2D volume, raw intensities (the model normalises them).
    config : PredictConfig, optional
        Settings.
    stop : threading.Event, optional
        Set it to end after the current tile; the returned prediction is then incomplete.

    Yields
    ------
    TileProgress
        After each tile.

    Returns
    -------
    Prediction
    """
    config = config or PredictConfig()
    if not 0.0 <= config.overlap < 1.0:
        raise MedsegInputError("overlap must be between 0 and 1 (exclusive)")
    if config.uncertainty and not isinstance(model.network, Ensemble):
        raise MedsegInputError(
            "uncertainty needs a model trained as an ensemble (train with --ensemble 2 or more)"
        )
    volume = np.asarray(image)
    squeeze = volume.ndim == 2
    if squeeze:
        volume = volume[np.newaxis]
    if volume.ndim != 3:
        raise MedsegInputError(
            f"image has {volume.ndim} dimensions; napari-medseg segments 2D images and 3D volumes"
        )
    if not np.isfinite(volume).any():
        raise MedsegInputError("image has no finite voxel (all NaN or infinite)")
    device = resolve_device(config.device)
    normalized = model.config.normalization.apply(volume)
    tile_shape = tuple(config.tile_shape) if config.tile_shape else None
    start = time.perf_counter()
    message = ""
    while True:
        try:
            result = yield from _predict_tiles(
                model, normalized, tile_shape, config, device, stop, start, message
            )
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            tiles = tile_shape or default_tile_shape(model, volume.shape)
            smaller = tuple(max(8, t // 2) for t in tiles)
            if smaller != tile_shape:
                tile_shape = smaller
                message = f"GPU out of memory: retrying with smaller tiles {tile_shape}"
            elif device.type != "cpu":
                device = torch.device("cpu")
                message = "GPU out of memory: retrying on the CPU"
            else:  # pragma: no cover - CUDA errors cannot come from the CPU
                raise MedsegError("out of memory during inference") from None
    if squeeze:
        result.labels = result.labels[0]
        if result.probabilities is not None:
            result.probabilities = result.probabilities[:, 0]
        if result.uncertainty is not None:
            result.uncertainty = result.uncertainty[0]
    return result


def _planes_of(model: TrainedModel, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes across which the model reads slices (a 2D image: only the first)."""
    if model.config.arch == "unet3d" or shape[0] == 1:
        return (0,)
    return tuple(model.config.planes)


def _to_volume_order(region: tuple[slice, ...], axis: int) -> tuple[slice, ...]:
    """A region of the view with ``axis`` moved first, in the volume's axis order."""
    rest = list(region[1:])
    rest.insert(axis, region[0])
    return tuple(rest)


def _predict_tiles(
    model: TrainedModel,
    normalized: np.ndarray,
    tile_shape: tuple[int, ...] | None,
    config: PredictConfig,
    device: torch.device,
    stop: threading.Event | None,
    start: float,
    message: str,
) -> Generator[TileProgress, None, Prediction]:
    """One tiled pass per plane of the model (2D networks may read three); the passes'
    probabilities are averaged. ``tile_shape`` None: the default for each plane's view."""
    memory_format = memory_format_for(model.network)
    network = model.network.to(device, memory_format=memory_format).eval()
    planes = _planes_of(model, normalized.shape)
    n_classes = model.config.n_classes
    passes = []
    for axis in planes:
        view = np.moveaxis(normalized, axis, 0)
        tiles = tile_shape or default_tile_shape(model, view.shape)
        passes.append((axis, view, GridSampler(view.shape, tiles, config.overlap)))
    total = sum(len(sampler) for _, _, sampler in passes)
    summed = summed_spread = None  # sums over the finished passes (several planes only)
    amp = autocast_dtype(device, config.mixed_precision)
    pin = device.type == "cuda"
    complete = True
    index = 0
    try:
        for number, (axis, view, sampler) in enumerate(passes, start=1):
            plane = (
                f"slices across {'zyx'[axis]} ({number}/{len(planes)})" if len(planes) > 1 else ""
            )
            aggregator = GaussianAggregator(n_classes, view.shape, sampler.tile_shape)
            spread = None
            if config.uncertainty:
                spread = GaussianAggregator(1, view.shape, sampler.tile_shape)
            for region in sampler:
                if stop is not None and stop.is_set():
                    complete = False
                    break
                tile = torch.from_numpy(np.ascontiguousarray(view[region]))[None, None]
                if pin:
                    tile = tile.pin_memory()
                tile = tile.to(device, non_blocking=pin).contiguous(memory_format=memory_format)
                scores, disagree = _forward(network, tile, amp, config.mirror, config.uncertainty)
                aggregator.add(region, scores[0].cpu().numpy())
                if spread is not None and disagree is not None:
                    spread.add(region, disagree.cpu().numpy())
                index += 1
                where = _to_volume_order(region, axis)
                yield TileProgress(
                    index,
                    total,
                    where,
                    _live_labels(aggregator, region, axis, summed, where),
                    time.perf_counter() - start,
                    " · ".join(m for m in (message, plane) if m),
                )
                message = ""
            if not complete:
                break
            if len(planes) == 1:
                probabilities = aggregator.probabilities()
                uncertainty = spread.probabilities()[0] if spread is not None else None
                break
            summed = _add_pass(summed, aggregator, axis)
            if spread is not None:
                summed_spread = _add_pass(summed_spread, spread, axis)
    finally:
        network.to("cpu", memory_format=torch.contiguous_format)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not complete:  # labels of the finished tiles (or passes) only; not a result
        if summed is None:
            labels = np.moveaxis(aggregator.labels(), 0, axis)
        else:
            labels = np.argmax(summed, axis=0).astype(np.uint8)
        return Prediction(labels, None, False, str(device), tuple(sampler.tile_shape))
    if len(planes) > 1:
        probabilities = np.divide(summed, np.float32(len(planes)), out=summed)  # in place
        uncertainty = None
        if summed_spread is not None:
            uncertainty = np.divide(summed_spread[0], np.float32(len(planes)))
    labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    return Prediction(
        labels,
        probabilities if config.probabilities else None,
        True,
        str(device),
        tuple(passes[0][2].tile_shape),
        uncertainty,
    )


def _add_pass(summed: np.ndarray | None, aggregator: GaussianAggregator, axis: int) -> np.ndarray:
    """Add a finished pass's probabilities (in its view's order) to the running sum."""
    probabilities = np.moveaxis(aggregator.probabilities(), 1, axis + 1)
    if summed is None:
        return np.ascontiguousarray(probabilities)
    summed += probabilities
    return summed


def _live_labels(
    aggregator: GaussianAggregator,
    region: tuple[slice, ...],
    axis: int,
    summed: np.ndarray | None,
    where: tuple[slice, ...],
) -> np.ndarray:
    """Labels of a finished tile for the live overlay, in the volume's axis order: this
    pass's so far, plus the finished passes' (when the model reads several planes)."""
    if summed is None:
        return np.moveaxis(aggregator.labels(region), 0, axis)
    weight = np.maximum(aggregator.weight[region], 1e-8)
    current = np.moveaxis(aggregator.scores[(slice(None), *region)] / weight, 1, axis + 1)
    return np.argmax(summed[(slice(None), *where)] + current, axis=0).astype(np.uint8)


def predict_volume(
    model: TrainedModel, image: np.ndarray, config: PredictConfig | None = None
) -> Prediction:
    """Run :func:`predict` to the end and return its :class:`Prediction`."""
    return run_to_completion(predict(model, image, config))
