"""The run's own accuracy estimate: painted voxels held out of training and scored on.

:func:`hold_out` chooses what a run keeps out of training: whole painted slices when the
user painted enough of them (the protocol of Çiçek et al. 2016), otherwise blocks of painted
voxels around the structures, so that every structure keeps most of its voxels for training.
:class:`ValidationSet` cuts a patch-sized window around each held-out block, and
:func:`score` runs a network on them and gives the Dice of each structure. The guard that
uses it during training is :mod:`.guard`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..annotation import IGNORE_INDEX
from ..painted_slices import SliceUnit, find_units, slice_view
from ..sampling import pad_to_patch, unknown_region

#: Painted slices needed before whole slices are held out (fewer: blocks of voxels).
MIN_SLICES = 5
#: Share of the painted slices held out (at least one).
SLICE_SHARE = 0.2
#: Share of each structure's painted voxels held out as blocks, and the most ever held out.
BLOCK_SHARE, MAX_SHARE = 0.15, 0.4
#: Voxels of a structure that held-out slices showing it must hold: a slice grazing a
#: structure's end (3 to 8 voxels of a synthetic tube) says nothing of whether the network
#: finds it, and missing them there was reported as a missed structure.
MIN_SHOWN_VOXELS = 20
#: Windows scored at most (one per held-out block); a patch each.
MAX_WINDOWS = 32


@dataclass(frozen=True)
class HeldOut:
    """Painted voxels kept out of training (``mask``, array order) and how they were chosen."""

    mask: np.ndarray
    kind: Literal["slices", "blocks"]
    units: tuple[SliceUnit, ...] = ()

    def describe(self) -> str:
        """Such as ``"2 painted slices (z12, x30)"`` or ``"1,234 painted voxels in 9 blocks"``."""
        voxels = int(np.count_nonzero(self.mask))
        if self.kind == "slices":
            names = ", ".join(unit.label() for unit in self.units)
            return f"{len(self.units)} painted slice{'s' * (len(self.units) > 1)} ({names})"
        return f"{voxels:,} painted voxels in blocks"


def _candidates(target: np.ndarray) -> np.ndarray:
    """Painted voxels where a prediction is needed: inside the box of unknown voxels (all of
    them when everything is painted); outside a region-of-interest box all is background
    and says nothing."""
    painted: np.ndarray = np.asarray(target != IGNORE_INDEX)
    box = unknown_region(target, [0] * target.ndim)
    if box is None:
        return painted
    inside = np.zeros_like(painted)
    inside[box] = True
    chosen: np.ndarray = painted & inside
    return chosen


def _keeps_enough(
    target: np.ndarray, mask: np.ndarray, n_classes: int, min_shown: int = 1
) -> bool:
    """Every class keeps at least ``1 - MAX_SHARE`` of its painted voxels for training, and
    the held-out voxels show at least one structure, each one they show on at least
    ``min_shown`` voxels."""
    total = np.bincount(target[target >= 0], minlength=n_classes)
    held = np.bincount(target[mask & (target >= 0)], minlength=n_classes)
    shown = held[1:][held[1:] > 0]
    if shown.size == 0 or shown.min() < min_shown:
        return False
    return bool(np.all(held <= MAX_SHARE * total + (total == 0)))


def _hold_slices(
    annotation: np.ndarray, target: np.ndarray, candidates: np.ndarray, n_classes: int,
    rng: np.random.Generator,
) -> HeldOut | None:
    """Whole painted slices (their voxels near the unknown region), or ``None`` when there
    are too few, or no draw leaves every structure enough to learn from and shows each
    structure it holds on :data:`MIN_SHOWN_VOXELS` voxels."""
    units = find_units(annotation)
    if len(units) < MIN_SLICES:
        return None
    count = max(1, round(SLICE_SHARE * len(units)))
    for _ in range(20):
        chosen = [units[i] for i in sorted(rng.choice(len(units), count, replace=False))]
        mask = np.zeros(target.shape, dtype=bool)
        for unit in chosen:
            slice_view(mask, unit)[...] = True
        mask &= candidates
        if _keeps_enough(target, mask, n_classes, MIN_SHOWN_VOXELS):
            return HeldOut(mask, "slices", tuple(chosen))
    return None


def cell_ids(shape: Sequence[int], cell: Sequence[int]) -> np.ndarray:
    """Each voxel's block number on a grid of ``cell``-sized blocks."""
    grids = [np.arange(s) // c for s, c in zip(shape, cell)]
    counts = [int(g[-1]) + 1 for g in grids]
    ids = np.ravel_multi_index(np.meshgrid(*grids, indexing="ij"), counts)
    return np.asarray(ids)


def _pick_blocks(
    ids: np.ndarray, target: np.ndarray, candidates: np.ndarray, n_classes: int,
    rng: np.random.Generator,
) -> set[int]:
    """Blocks for each class, rarest first, until ``BLOCK_SHARE`` of its candidate voxels
    are held out (never over ``MAX_SHARE`` of any class's painted voxels; background last,
    from blocks of background only)."""
    cls, cell = target[candidates], ids[candidates]
    n_cells = int(ids.max()) + 1
    per_cell = np.bincount(cell * n_classes + cls, minlength=n_cells * n_classes)
    per_cell = per_cell.reshape(n_cells, n_classes)
    total = np.bincount(target[target >= 0], minlength=n_classes)
    ceiling = MAX_SHARE * total + (total == 0)
    wanted = BLOCK_SHARE * np.bincount(cls, minlength=n_classes)
    background_only = per_cell[:, 0] * (per_cell[:, 1:].sum(1) == 0)
    held = np.zeros(n_classes, dtype=np.int64)
    chosen: set[int] = set()
    for k in [*sorted(range(1, n_classes), key=lambda k: total[k]), 0]:
        for c in rng.permutation(np.flatnonzero(per_cell[:, k] if k else background_only)):
            if held[k] >= wanted[k] or len(chosen) >= MAX_WINDOWS:
                break
            if int(c) not in chosen and np.all(held + per_cell[c] <= ceiling):
                chosen.add(int(c))
                held += per_cell[c]
    return chosen


def _hold_blocks(
    target: np.ndarray, candidates: np.ndarray, patch_shape: Sequence[int], n_classes: int,
    rng: np.random.Generator,
) -> HeldOut | None:
    """Blocks of painted voxels, a quarter of a patch wide (smaller for a structure too small
    for one), or ``None`` when none can be spared."""
    cell = [max(1, p // 4) for p in patch_shape]
    while True:
        ids = cell_ids(target.shape, cell)
        chosen = _pick_blocks(ids, target, candidates, n_classes, rng)
        mask = candidates & np.isin(ids, sorted(chosen))
        if _keeps_enough(target, mask, n_classes):
            return HeldOut(mask, "blocks")
        if all(c == 1 for c in cell):
            return None
        cell = [max(1, c // 2) for c in cell]


def hold_out(
    annotation: np.ndarray, patch_shape: Sequence[int], n_classes: int, rng: np.random.Generator
) -> HeldOut | None:
    """What a run keeps out of training to measure itself on (``None``: nothing can be
    spared, e.g. a structure painted on a handful of voxels).

    ``annotation`` is 3D (``0`` unknown, ``1`` background, ``k + 1`` structure ``k``);
    ``patch_shape`` the training patch in array order.
    """
    target = annotation.astype(np.int64) - 1
    candidates = _candidates(target)
    held = _hold_slices(annotation, target, candidates, n_classes, rng)
    return held or _hold_blocks(target, candidates, patch_shape, n_classes, rng)


@dataclass
class ValidationSet:
    """Windows of the normalised image around the held-out voxels, and what each scores.

    ``images``: ``(W, C, *patch)``; ``voxels[w]``: flat indices into window ``w`` of the
    voxels it scores; ``labels[w]``: their painted classes.
    """

    images: np.ndarray
    voxels: list[np.ndarray]
    labels: list[np.ndarray]
    n_classes: int

    @classmethod
    def build(
        cls, image: np.ndarray, target: np.ndarray, mask: np.ndarray,
        patch_shape: Sequence[int], n_classes: int, rng: np.random.Generator,
    ) -> tuple[ValidationSet, np.ndarray]:
        """Windows of ``image`` ``(C, *spatial)``, one per half-patch block of held-out voxels
        (at most :data:`MAX_WINDOWS`, drawn at random, those showing a structure first), and
        the held-out voxels they score (the rest of ``mask`` can go back to training).
        ``target`` holds the painted classes, ``mask`` the held-out voxels, all one view."""
        patch = tuple(int(p) for p in patch_shape)
        ids = cell_ids(mask.shape, [max(1, p // 2) for p in patch])
        showing = np.unique(ids[mask & (target > 0)])
        others = np.setdiff1d(np.unique(ids[mask]), showing)
        order = [*rng.permutation(showing), *rng.permutation(others)]
        blocks = np.sort(np.asarray(order[:MAX_WINDOWS], dtype=ids.dtype))
        used = mask & np.isin(ids, blocks)
        image = pad_to_patch(image, patch, float(image.min()) if image.size else 0.0, lead=1)
        padded = pad_to_patch(used, patch, False)
        ids, target = pad_to_patch(ids, patch, -1), pad_to_patch(target, patch, IGNORE_INDEX)
        images, voxels, labels = [], [], []
        for block in blocks:
            where = np.argwhere(padded & (ids == block))
            centre = (where.min(0) + where.max(0)) // 2
            start = [
                int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, ids.shape)
            ]
            images.append(image[(slice(None), *(slice(a, a + p) for a, p in zip(start, patch)))])
            voxels.append(np.ravel_multi_index(tuple((where - np.asarray(start)).T), patch))
            labels.append(target[tuple(where.T)])
        return cls(np.stack(images).astype(np.float32), voxels, labels, n_classes), used


@dataclass(frozen=True)
class ValidationScore:
    """Dice of each structure on the held-out voxels after ``step`` steps; ``score`` is their
    mean, ``found`` whether the network marked any held-out voxel of each structure right."""

    step: int
    score: float
    dice: tuple[float, ...]
    found: tuple[bool, ...]
    present: tuple[bool, ...]


def score(
    predict: Callable[[np.ndarray], np.ndarray], vset: ValidationSet, step: int, batch: int = 4
) -> ValidationScore:
    """Score a network (``predict``: ``(B, C, *patch)`` images to ``(B, *patch)`` classes)."""
    n = vset.n_classes
    confusion = np.zeros(n * n, dtype=np.int64)
    for first in range(0, len(vset.voxels), batch):
        predicted = predict(vset.images[first:first + batch])
        for i, classes in enumerate(predicted, start=first):
            guess = classes.reshape(-1)[vset.voxels[i]]
            confusion += np.bincount(vset.labels[i] * n + guess, minlength=n * n)
    table = confusion.reshape(n, n)  # rows: painted, columns: predicted
    hits = np.diag(table)
    dice = 2 * hits / np.maximum(table.sum(0) + table.sum(1), 1)
    present = table.sum(1) > 0
    structures = [k for k in range(1, n) if present[k]]
    mean = float(np.mean(dice[structures])) if structures else float("nan")
    return ValidationScore(
        step=step,
        score=mean,
        dice=tuple(float(d) for d in dice[1:]),
        found=tuple(bool(h > 0) for h in hits[1:]),
        present=tuple(bool(p) for p in present[1:]),
    )
