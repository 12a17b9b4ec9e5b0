"""Class scores held for a slab of the volume, not for the whole of it.

Tiles are visited in rows along the first axis (:meth:`~napari_medseg.tiling.GridSampler.rows`):
once a row is done, every slice before the next row's start has received all its tiles.
:class:`SlabAggregator` accumulates the Gaussian-weighted scores of one tile's depth of
slices only; :meth:`SlabAggregator.release` hands the finished slices over as a
:class:`FinishedSlab` and slides the window on. Memory is then bounded by
``classes x tile depth x rows x columns``, whatever the number of slices.

A :class:`LabelSink` receives the finished slabs: :class:`MemorySink` fills arrays of the
whole volume (the result of :func:`~napari_medseg.inference.predict`), a zarr writer
(:class:`~napari_medseg.io.zarr_io.ZarrLabelWriter`) writes them to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .tiling import gaussian_importance

Region = tuple[slice, ...]

#: Slices whose labels are taken at once when a slab is finished.
ARGMAX_SLICES = 8


@runtime_checkable
class LabelSink(Protocol):
    """Where the labels of finished slabs go, in increasing order along the first axis."""

    def write(self, start: int, labels: np.ndarray) -> None:
        """Labels ``(dz, y, x)`` of slices ``start`` to ``start + dz``."""


@dataclass(frozen=True)
class FinishedSlab:
    """Slices ``start`` to ``start + len`` that every tile touching them has been added to:
    their labels, and (when the aggregator keeps a weight) the blended probabilities of
    every class ``(C, dz, y, x)`` and the blended extra channel (uncertainty) ``(dz, y, x)``."""

    start: int
    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


class SlabAggregator:
    """Gaussian-weighted class scores of the slices a row of tiles covers, on ``device``.

    Parameters
    ----------
    n_classes : int
        Channels that hold class scores (the labels are their arg-max).
    shape : sequence of int
        ``(z, y, x)`` of the volume.
    tile_shape : sequence of int
        Tiles added; the window holds ``tile_shape[0]`` slices.
    device : torch.device
        Where the scores are kept (the tiles' device: no copy per tile).
    weighted : bool
        Keep the sum of weights too, to give probabilities (not needed for labels alone).
    extra : int
        Channels besides the class scores (1: an uncertainty map).
    """

    def __init__(
        self,
        n_classes: int,
        shape: Sequence[int],
        tile_shape: Sequence[int],
        device: torch.device,
        *,
        weighted: bool = False,
        extra: int = 0,
    ) -> None:
        self.n_classes = n_classes
        self.shape = tuple(int(s) for s in shape)
        self.depth = min(int(tile_shape[0]), self.shape[0])
        window = (self.depth, *self.shape[1:])
        self.scores = torch.zeros((n_classes + extra, *window), device=device)
        self.weight = torch.zeros(window, device=device) if weighted or extra else None
        importance = gaussian_importance(tile_shape)
        self.importance = torch.from_numpy(importance).to(device)
        self.start = 0

    def add(self, region: Region, tile_scores: torch.Tensor) -> None:
        """Blend ``(channels, *tile)`` scores into ``region`` (volume coordinates)."""
        local = self._local(region)
        importance = self.importance[tuple(slice(0, s.stop - s.start) for s in region)]
        self.scores[(slice(None), *local)].addcmul_(tile_scores, importance)
        if self.weight is not None:
            self.weight[local].add_(importance)

    def labels(self, region: Region) -> np.ndarray:
        """Arg-max labels so far in ``region`` (volume coordinates), for a live overlay."""
        scores = self.scores[(slice(0, self.n_classes), *self._local(region))]
        labels: np.ndarray = channel_argmax(scores).cpu().numpy()
        return labels

    def release(self, until: int) -> FinishedSlab:
        """Hand over slices ``start`` to ``until`` (all tiles touching them added) and slide
        the window to begin at ``until``."""
        count = until - self.start
        if not 0 < count <= self.depth:
            raise ValueError(f"cannot release slices {self.start}..{until} of a window of "
                             f"{self.depth} slices")  # fmt: skip
        finished = self._finished(count)
        keep = self.depth - count
        for index in range(keep):  # slice by slice, front to back: no copy of the window
            self.scores[:, index] = self.scores[:, index + count]
            if self.weight is not None:
                self.weight[index] = self.weight[index + count]
        self.scores[:, keep:] = 0
        if self.weight is not None:
            self.weight[keep:] = 0
        self.start = until
        return finished

    def release_all(self) -> FinishedSlab:
        """Hand over every slice of the window that lies in the volume."""
        return self.release(min(self.start + self.depth, self.shape[0]))

    def _finished(self, count: int) -> FinishedSlab:
        scores = self.scores[:, :count]
        classes = scores[: self.n_classes]
        labels = np.concatenate([  # a few slices at a time: small temporaries
            channel_argmax(classes[:, start : start + ARGMAX_SLICES]).cpu().numpy()
            for start in range(0, count, ARGMAX_SLICES)
        ])  # fmt: skip
        if self.weight is None:
            return FinishedSlab(self.start, labels)
        weight = self.weight[:count].clamp_min(1e-8)
        probabilities = (classes / weight).cpu().numpy()
        extra = scores[self.n_classes :]
        uncertainty = (extra[0] / weight).cpu().numpy() if extra.shape[0] else None
        return FinishedSlab(self.start, labels, probabilities, uncertainty)

    def _local(self, region: Region) -> Region:
        z = region[0]
        start, stop = z.start - self.start, z.stop - self.start
        if start < 0 or stop > self.depth:
            raise ValueError(f"tile slices {z.start}..{z.stop} lie outside the window "
                             f"{self.start}..{self.start + self.depth}")  # fmt: skip
        return (slice(start, stop), *region[1:])


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``uint8`` index of the largest of ``scores`` along the first axis (the first one on a
    tie, as ``argmax``): a running maximum over the channels, several times faster than
    torch's ``argmax`` over a leading axis on a CPU."""
    best = scores[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    for channel in range(1, scores.shape[0]):
        labels.masked_fill_(scores[channel] > best, channel)
        torch.maximum(best, scores[channel], out=best)
    return labels


class MemorySink:
    """Finished slabs gathered into arrays of the whole volume: labels ``uint8``, and when
    asked for, probabilities ``(C, *shape)`` and uncertainty ``shape`` (float32)."""

    def __init__(
        self,
        shape: Sequence[int],
        n_classes: int,
        *,
        probabilities: bool = False,
        uncertainty: bool = False,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.probabilities = (
            np.zeros((n_classes, *shape), dtype=np.float32) if probabilities else None
        )
        self.uncertainty = np.zeros(shape, dtype=np.float32) if uncertainty else None

    def write(self, start: int, labels: np.ndarray) -> None:
        """Labels of slices ``start`` to ``start + len(labels)``."""
        self.labels[start : start + labels.shape[0]] = labels

    def take(self, slab: FinishedSlab) -> None:
        """Everything a finished slab holds that this sink keeps."""
        self.write(slab.start, slab.labels)
        stop = slab.start + slab.labels.shape[0]
        if self.probabilities is not None and slab.probabilities is not None:
            self.probabilities[:, slab.start : stop] = slab.probabilities
        if self.uncertainty is not None and slab.uncertainty is not None:
            self.uncertainty[slab.start : stop] = slab.uncertainty
