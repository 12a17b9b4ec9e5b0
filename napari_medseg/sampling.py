"""Drawing training patches that contain annotated voxels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .annotation import IGNORE_INDEX


def unknown_region(target: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Bounding box of the voxels not annotated, grown by ``margin`` (``None`` if there are none).

    Outside it every voxel is annotated, so that is where the network's answer matters.
    """
    unknown = target == IGNORE_INDEX
    if not unknown.any():
        return None
    box = []
    for axis, grow in enumerate(margin):
        other = tuple(a for a in range(target.ndim) if a != axis)
        hits = np.flatnonzero(unknown.any(axis=other))
        box.append(slice(max(0, hits[0] - grow), min(target.shape[axis], hits[-1] + 1 + grow)))
    return tuple(box)


def pad_to_patch(
    array: np.ndarray, patch_shape: Sequence[int], fill: float | int | bool, lead: int = 0
) -> np.ndarray:
    """``array`` padded with ``fill``, evenly on both sides, to at least ``patch_shape`` along
    its spatial axes (the ones after the first ``lead``); as it is when already that large."""
    spatial = array.shape[lead:]
    pad = [max(0, p - s) for p, s in zip(patch_shape, spatial)]
    if not any(pad):
        return array
    widths = [(0, 0)] * lead + [(w // 2, w - w // 2) for w in pad]
    return np.pad(array, widths, constant_values=fill)


class AnnotatedPatchSampler:
    """Sample patches centred near annotated voxels, balanced across classes.

    Every patch contains at least one annotated voxel: a class is drawn uniformly among the
    annotated classes (so the few foreground voxels are seen as often as the background), then
    a voxel of that class, and the patch is placed around it with a random offset.

    When the user has annotated everything outside some region (a region-of-interest box, or
    whole slices marked background), half of the background draws are taken near the voxels
    still unknown, where the answer matters; the other half keep covering the whole image.

    Parameters
    ----------
    image : np.ndarray
        ``(C, *spatial)`` normalised image.
    target : np.ndarray
        ``spatial`` int64 target, ``-1`` where not annotated.
    patch_shape : sequence of int
        Spatial patch shape; volumes smaller than a patch are padded (image with its minimum,
        target with ``-1``).
    max_points_per_class : int
        Coordinates kept per class (a random subset when there are more).
    """

    def __init__(
        self,
        image: np.ndarray,
        target: np.ndarray,
        patch_shape: Sequence[int],
        rng: np.random.Generator,
        max_points_per_class: int = 500_000,
    ) -> None:
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.rng = rng
        fill = float(image.min()) if image.size else 0.0
        self.image = pad_to_patch(image, self.patch_shape, fill, lead=1)
        self.target = pad_to_patch(target, self.patch_shape, IGNORE_INDEX)
        self.points: dict[int, np.ndarray] = {}
        flat = self.target.reshape(-1)
        for cls in np.unique(flat):
            if cls == IGNORE_INDEX:
                continue
            idx = np.flatnonzero(flat == cls)
            if idx.size > max_points_per_class:
                idx = rng.choice(idx, max_points_per_class, replace=False)
            self.points[int(cls)] = idx
        self.classes = sorted(self.points)
        self.focus_points = self._focus_background(flat)

    def _focus_background(self, flat: np.ndarray) -> np.ndarray | None:
        """Background voxels inside the (grown) box of unknown voxels, if that box is smaller."""
        margin = [p // 2 for p in self.patch_shape]
        region = unknown_region(self.target, margin)
        if region is None or 0 not in self.points:
            return None
        inside = np.zeros(self.target.shape, dtype=bool)
        inside[region] = True
        if inside.all():
            return None
        idx = np.flatnonzero(inside.reshape(-1) & (flat == 0))
        return idx if idx.size else None

    def sample(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one ``(image_patch, target_patch)`` pair (copies).

        ``rng`` replaces the sampler's own generator for this draw; the sampler's state is
        only read, so threads may draw at once, each with its own generator.
        """
        rng = self.rng if rng is None else rng
        cls = self.classes[int(rng.integers(len(self.classes)))]
        points = self.points[cls]
        if cls == 0 and self.focus_points is not None and rng.random() < 0.5:
            points = self.focus_points
        flat_index = points[int(rng.integers(points.size))]
        centre = np.unravel_index(flat_index, self.target.shape)
        slices = []
        for c, p, s in zip(centre, self.patch_shape, self.target.shape):
            jitter = int(rng.integers(-(p // 3), p // 3 + 1)) if p > 2 else 0
            start = int(np.clip(c - p // 2 + jitter, 0, s - p))
            slices.append(slice(start, start + p))
        region = tuple(slices)
        return self.image[(slice(None), *region)].copy(), self.target[region].copy()

    def batch(
        self, size: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``size`` patches stacked as ``(N, C, *patch)`` and ``(N, *patch)``."""
        pairs = [self.sample(rng) for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
