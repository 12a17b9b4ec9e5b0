"""One tiled pass over the volume's first axis with memory bounded by a slab.

The volume is read a row of tiles at a time (:class:`SlabReader`: lazily from a zarr or
dask array, or from memory), normalised there and moved to the device once per row; the
tiles' class scores are blended on the device into a :class:`~napari_medseg.slabs.SlabAggregator`
and each finished slab goes to the sink. Tiles whose input is one constant value (the
padding around a reconstruction circle, the zeroed background of a masked scan) give the
same scores wherever they lie: they are computed once per value (:class:`CachedTiles`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import numpy as np
import torch

from ._passes import TileComputer
from .normalization import IntensityNormalization
from .slabs import FinishedSlab, LabelSink, MemorySink, SlabAggregator
from .tiling import GridSampler

T = TypeVar("T")
Region = tuple[slice, ...]
#: Slices of the volume read and normalised at once.
READ_SLICES = 16
#: ``report(region, labels or None, caption)``: what the pass yields after each tile.
Report = Callable[[Region, "np.ndarray | None", str], T]


class SlabReader:
    """Normalised slabs ``(dz, y, x)`` of ``source`` (any array sliceable like numpy: numpy,
    zarr, dask), as float32 tensors on ``device``."""

    def __init__(
        self, source: Any, normalization: IntensityNormalization, device: torch.device
    ) -> None:
        self.source = source
        self.normalization = normalization
        self.device = device

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Slices ``start`` to ``stop``, read, normalised and placed on the device; read
        :data:`READ_SLICES` at a time, so that the raw voxels never take a whole slab."""
        stop = min(stop, int(self.source.shape[0]))
        slab = torch.empty((stop - start, *self.source.shape[1:]), device=self.device)
        for first in range(start, stop, READ_SLICES):
            part = self.source[first : min(first + READ_SLICES, stop)]
            if hasattr(part, "compute"):  # dask: read here, without a pool of threads
                part = part.compute(scheduler="synchronous")
            normalized = torch.from_numpy(self.normalization.apply(np.asarray(part)))
            slab[first - start : first - start + normalized.shape[0]] = normalized
        return slab


class CachedTiles:
    """A :class:`~napari_medseg._passes.TileComputer` that computes a tile of one constant
    value once: the network is a function of its input alone, so every such tile of the same
    value and shape has the same scores (exactly what computing it again would give)."""

    def __init__(self, compute: TileComputer) -> None:
        self.compute = compute
        self.cache: dict[tuple[float, tuple[int, ...]], torch.Tensor] = {}
        self.reused = 0

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        """``(channels, *tile)`` scores: class probabilities, then the uncertainty if asked."""
        low, high = torch.aminmax(tile)
        if bool(low != high):
            return self._scores(tile)
        key = (float(low), tuple(tile.shape))
        if key in self.cache:
            self.reused += 1
        else:
            self.cache[key] = self._scores(tile)
        return self.cache[key]

    def _scores(self, tile: torch.Tensor) -> torch.Tensor:
        probabilities, disagree = self.compute.on_device(tile)
        if disagree is None:
            return probabilities
        return torch.cat([probabilities, disagree.to(probabilities.dtype)])


def stream_pass(
    reader: SlabReader,
    sampler: GridSampler,
    compute: TileComputer,
    sink: LabelSink,
    report: Report[T],
    *,
    live: bool = True,
    stop: threading.Event | None = None,
) -> Generator[T, None, bool]:
    """Tile the volume row by row, yielding ``report(region, live labels or None, "")``
    after each tile and sending each finished slab to ``sink``; returns whether every tile
    was done (``False``: ``stop`` was set; the finished tiles' labels are in the sink)."""
    keep_scores = isinstance(sink, MemorySink) and sink.probabilities is not None
    aggregator = SlabAggregator(
        compute.n_classes, sampler.shape, sampler.tile_shape, compute.device,
        weighted=keep_scores, extra=1 if compute.uncertainty else 0,
    )  # fmt: skip
    tiles = CachedTiles(compute)
    rows = sampler.rows()
    depth = sampler.tile_shape[0]
    for number, (start, regions) in enumerate(rows):
        slab = reader.read(start, start + depth)
        for region in regions:
            if stop is not None and stop.is_set():
                _deliver(sink, aggregator.release_all())
                return False
            aggregator.add(region, tiles(slab[(slice(None), *region[1:])]))
            yield report(region, aggregator.labels(region) if live else None, "")
        following = rows[number + 1][0] if number + 1 < len(rows) else sampler.shape[0]
        _deliver(sink, aggregator.release(following))
    return True


def _deliver(sink: LabelSink, slab: FinishedSlab) -> None:
    if isinstance(sink, MemorySink):
        sink.take(slab)
    else:
        sink.write(slab.start, slab.labels)

