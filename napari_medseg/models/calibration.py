"""Batch-norm statistics re-estimated on the image as prediction sees it.

During training, batch normalisation keeps running means and variances of the *training
patches*: drawn class-balanced around the few painted voxels, then augmented (intensity
scale and shift, elastic deformation). Prediction sweeps the whole volume, mostly tissue
nobody painted, un-augmented. The network is then applied with statistics of another
distribution, which shifts every decision boundary a little; thin structures (a one-voxel
rim of CSF around the brain) are lost first.

:func:`recalibrate_batch_norm` runs the trained network in training mode (no gradients)
over tiles covering the training image, un-augmented, and replaces the running statistics
by their average over those tiles ("precise BN", computed on the distribution the model will
be applied to). The weights are untouched. No Qt, no GUI.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from ..tiling import GridSampler

#: Most tiles used to re-estimate the statistics (spread evenly over the volume when it
#: holds more): enough for stable means on every volume tried, and seconds on a CPU.
MAX_CALIBRATION_TILES = 64


def batch_norm_layers(network: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of a network that keep running statistics."""
    return [
        m
        for m in network.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _running_stats(
    layer: torch.nn.modules.batchnorm._BatchNorm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Running mean, variance and batch count of a layer that keeps running statistics."""
    mean, var, count = layer.running_mean, layer.running_var, layer.num_batches_tracked
    # buffers registered when track_running_stats (see batch_norm_layers)
    assert mean is not None and var is not None and count is not None
    return mean, var, count


def _snapshot(
    layer: torch.nn.modules.batchnorm._BatchNorm,
) -> tuple[float | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's momentum and a copy of its running statistics."""
    mean, var, count = _running_stats(layer)
    return layer.momentum, mean.clone(), var.clone(), count.clone()


def calibration_regions(
    shape: Sequence[int], tile_shape: Sequence[int], max_tiles: int = MAX_CALIBRATION_TILES
) -> list[tuple[slice, ...]]:
    """Non-overlapping tiles covering ``shape`` (at most ``max_tiles``, evenly chosen)."""
    regions = list(GridSampler(shape, tile_shape, overlap=0.0))
    if len(regions) > max_tiles:
        picks = np.unique(np.linspace(0, len(regions) - 1, max_tiles).round().astype(int))
        regions = [regions[i] for i in picks]
    return regions


def _padded_tile(image: np.ndarray, region: tuple[slice, ...], tile_shape: Sequence[int],
                 fill: float) -> np.ndarray:
    """The tile at ``region``, padded to ``tile_shape`` with ``fill`` as training pads."""
    tile = image[(slice(None), *region)]
    pad = [max(0, int(t) - s) for t, s in zip(tile_shape, tile.shape[1:])]
    if any(pad):
        widths = [(0, 0)] + [(p // 2, p - p // 2) for p in pad]
        tile = np.pad(tile, widths, constant_values=fill)
    return np.ascontiguousarray(tile, dtype=np.float32)


def recalibrate_batch_norm(
    network: torch.nn.Module,
    image: np.ndarray,
    tile_shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    amp_dtype: torch.dtype | None = None,
    max_tiles: int = MAX_CALIBRATION_TILES,
    stop: threading.Event | None = None,
) -> int:
    """Replace a network's batch-norm running statistics by their average over image tiles.

    Parameters
    ----------
    network : torch.nn.Module
        A trained network on ``device``; left in the mode it was in.
    image : np.ndarray
        ``(C, z, y, x)`` normalised image, un-augmented (what prediction will see).
    tile_shape : sequence of int
        Spatial tile, normally the training patch (smaller volumes are padded to it with
        their minimum, as training pads them).
    device, memory_format, amp_dtype
        Where and how to run the forward passes (as training does).
    max_tiles : int
        Most tiles to use.
    stop : threading.Event, optional
        When set, no further tile is run; the statistics of the tiles already seen are kept,
        or the old statistics if there were none.

    Returns
    -------
    int
        Number of tiles the statistics now come from (0: unchanged, e.g. no batch norm).
    """
    layers = batch_norm_layers(network)
    if not layers or max_tiles < 1:
        return 0
    image = np.asarray(image, dtype=np.float32)
    tile_shape = tuple(int(t) for t in tile_shape)
    regions = calibration_regions(image.shape[1:], tile_shape, max_tiles)
    fill = float(image.min()) if image.size else 0.0
    saved = [_snapshot(layer) for layer in layers]
    was_training = network.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the tiles
    network.train()
    used = 0
    try:
        with torch.no_grad(), torch.autocast(
            torch.device(device).type, dtype=amp_dtype or torch.float32,
            enabled=amp_dtype is not None,
        ):
            for region in regions:
                if stop is not None and stop.is_set():
                    break
                tile = torch.from_numpy(_padded_tile(image, region, tile_shape, fill))[None]
                network(tile.to(device).contiguous(memory_format=memory_format))
                used += 1
    finally:
        for layer, (momentum, mean, var, count) in zip(layers, saved):
            layer.momentum = momentum
            if used == 0:
                running_mean, running_var, batches = _running_stats(layer)
                running_mean.copy_(mean)
                running_var.copy_(var)
                batches.copy_(count)
        network.train(was_training)
    return used
