"""Sliding-window tiling: a grid sampler and a Gaussian-weighted aggregator.

Memory stays at the size of the output (class scores and a weight map), whatever the size
of the volume; each tile is computed, blended into the aggregator and dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

#: An axis a network pads is thin, and its tiles mostly padding, below this many voxels
#: (or below the network's divisor there).
THIN_VOXELS = 8


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets along one axis so that tiles of ``tile`` cover ``size`` with overlap."""
    if tile >= size:
        return [0]
    step = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


class GridSampler:
    """Regions of a volume of ``shape`` covered by tiles of ``tile_shape`` with ``overlap``
    (one fraction for every axis, or one per axis).

    Tiles larger than the volume along an axis are clipped to it.
    """

    def __init__(
        self,
        shape: Sequence[int],
        tile_shape: Sequence[int],
        overlap: float | Sequence[float] = 0.5,
    ):
        overlaps = [overlap] * len(shape) if isinstance(overlap, (int, float)) else overlap
        if len(overlaps) != len(shape) or not all(0.0 <= o < 1.0 for o in overlaps):
            raise ValueError("overlap must be in [0, 1), one for every axis or one per axis")
        self.shape = tuple(int(s) for s in shape)
        self.tile_shape = tuple(min(int(t), s) for t, s in zip(tile_shape, self.shape))
        per_axis = [
            tile_starts(s, t, float(o)) for s, t, o in zip(self.shape, self.tile_shape, overlaps)
        ]
        grids = np.meshgrid(*per_axis, indexing="ij")
        self.starts = np.stack([g.reshape(-1) for g in grids], axis=1)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __iter__(self) -> Iterator[tuple[slice, ...]]:
        for start in self.starts:
            yield self._region(start)

    def rows(self) -> list[tuple[int, list[tuple[slice, ...]]]]:
        """The tiles grouped by where they start along the first axis, in increasing order:
        once a row is done, the slices before the next row's start have all their tiles."""
        grouped: dict[int, list[tuple[slice, ...]]] = {}
        for start in self.starts:
            grouped.setdefault(int(start[0]), []).append(self._region(start))
        return sorted(grouped.items())

    def _region(self, start: np.ndarray) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(a) + t) for a, t in zip(start, self.tile_shape))


def padded_voxels(tile_shape: Sequence[int], divisor: Sequence[int] = ()) -> int:
    """Voxels a network computes for a tile: its last ``len(divisor)`` axes padded up to
    multiples of ``divisor`` (at least one), as the networks pad their input; the leading
    axes (the slices a 2D network reads one by one) as they are."""
    lead = len(tile_shape) - len(divisor)
    padded = [max(d, -(-t // d) * d) for t, d in zip(tile_shape[lead:], divisor)]
    return math.prod(tile_shape[:lead]) * math.prod(padded)


def is_thin(shape: Sequence[int], divisor: Sequence[int]) -> bool:
    """Whether a volume of ``shape`` is thinner, along an axis the network pads (the last
    ``len(divisor)``, divisor above 1), than that divisor or :data:`THIN_VOXELS`."""
    lead = len(shape) - len(divisor)
    return any(1 < d and s < max(d, THIN_VOXELS) for s, d in zip(shape[lead:], divisor))


def grown_tile(
    tile_shape: Sequence[int], shape: Sequence[int], budget: int, divisor: Sequence[int] = ()
) -> tuple[int, ...]:
    """``tile_shape`` grown alike along the axes where the volume ``shape`` is longer, as far
    as its :func:`padded_voxels` stay within ``budget``; never beyond the volume.

    A grown axis then takes the whole of its padding (a multiple of the divisor, within the
    volume): the same work, fewer tiles.
    """
    tile = tuple(min(int(t), int(s)) for t, s in zip(tile_shape, shape))

    def scaled(factor: float) -> tuple[int, ...]:
        return tuple(min(s, max(t, math.floor(t * factor + 1e-9))) for t, s in zip(tile, shape))

    low, high = 1.0, max(s / t for s, t in zip(shape, tile))
    if padded_voxels(scaled(high), divisor) <= budget:
        return scaled(high)
    for _ in range(64):  # the largest factor that fits, by bisection
        middle = (low + high) / 2
        if padded_voxels(scaled(middle), divisor) <= budget:
            low = middle
        else:
            high = middle
    grown = scaled(low)
    lead = len(grown) - len(divisor)
    padding = (1,) * lead + tuple(divisor)
    return tuple(
        min(s, -(-g // d) * d) if g > t else g
        for g, t, s, d in zip(grown, tile, shape, padding)
    )


def gaussian_importance(tile_shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian weight map peaking at the tile centre (``sigma = sigma_scale * size``).

    Blending overlapping tiles with it removes seams from less reliable tile borders.
    """
    axes = []
    for size in tile_shape:
        coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        sigma = max(size * sigma_scale, 0.5)
        axes.append(np.exp(-0.5 * (coords / sigma) ** 2))
    weight: npt.NDArray[np.float64] = axes[0]
    for axis in axes[1:]:
        weight = np.multiply.outer(weight, axis)
    weight = weight / weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)


class GaussianAggregator:
    """Accumulates per-class scores of overlapping tiles with Gaussian weights."""

    def __init__(self, n_classes: int, shape: Sequence[int], tile_shape: Sequence[int]):
        self.scores = np.zeros((n_classes, *shape), dtype=np.float32)
        self.weight = np.zeros(tuple(shape), dtype=np.float32)
        self.importance = gaussian_importance(tile_shape)

    def add(self, region: tuple[slice, ...], tile_scores: np.ndarray) -> None:
        """Blend ``(C, *tile)`` scores into ``region``."""
        importance = self.importance[tuple(slice(0, s.stop - s.start) for s in region)]
        self.scores[(slice(None), *region)] += tile_scores * importance
        self.weight[region] += importance

    def labels(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Arg-max labels so far (of ``region``, or of the whole volume)."""
        region = region or tuple(slice(None) for _ in self.weight.shape)
        labels: npt.NDArray[np.uint8] = np.argmax(
            self.scores[(slice(None), *region)], axis=0
        ).astype(np.uint8)
        return labels

    def probabilities(self) -> np.ndarray:
        """Blended per-class probabilities ``(C, *shape)`` (divides in place, call once)."""
        np.divide(self.scores, np.maximum(self.weight, 1e-8), out=self.scores)
        return self.scores
