"""A synthetic case that only 3D context solves: nodules among vessels.

On one slice of a lung CT, a nodule and a vessel crossing the slice are the same bright
disc; only the neighbouring slices tell a ball from a tube. This volume has that ambiguity
on purpose: a few lumpy balls (the structure, label 1) among curved tubes running in every
direction (background), of the same intensity and texture and of overlapping cross-section
size. On one slice only the disc's size and the tube's slant tell them apart; a few slices
at once show the whole shape (how the networks fare: ``docs/RESULTS.md``). It complements
:func:`napari_medseg.synthetic.make_synthetic_case`, whose distractors already differ from
the structures within a slice.

Same rendering as the other synthetic volumes (texture, partial-volume blur, bias field,
noise) and the same sparse annotation: fully painted slices through the nodules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .errors import MedsegInputError
from .synthetic import SyntheticCase, _low_frequency, _render, _Space, painted_case

#: Name of the structure, label 1.
NODULE_NAME = "nodule"


def _nodules(rng: np.random.Generator, space: _Space, count: int) -> np.ndarray:
    """Lumpy balls of radius 5.5-8.5 % of the smallest extent, apart from each other."""
    mask = np.zeros(space.shape, dtype=bool)
    centres: list[np.ndarray] = []
    wobble = _low_frequency(rng, space, 5, 4.0)
    attempts = 0
    while len(centres) < count and attempts < 50 * count:
        attempts += 1
        radius = space.scale * rng.uniform(0.055, 0.085)
        centre = space.point(rng.uniform(0.2, 0.8, size=3))
        if any(np.linalg.norm(centre - c) < 0.25 * space.scale for c in centres):
            continue
        centres.append(centre)
        mask |= np.sqrt(space.sq_dist(centre, (radius,) * 3)) < 1.0 + 0.1 * wobble
    return mask


def _vessel(rng: np.random.Generator, space: _Space) -> np.ndarray:
    """A gently curved tube of near-constant radius (4-6 %) in a random direction."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    side = np.cross(direction, rng.normal(size=3))
    side /= np.linalg.norm(side)
    start = space.point(rng.uniform(0.3, 0.7, size=3)) - 0.6 * space.scale * direction
    radius = space.scale * rng.uniform(0.04, 0.06)
    t = np.linspace(0.0, 1.0, 40)
    bend = 0.08 * space.scale * np.sin(2 * math.pi * (rng.uniform(0.3, 0.7) * t + rng.uniform()))
    ratio = np.full(space.shape, np.inf, dtype=np.float32)
    for ti, bi in zip(t, bend):
        centre = start + 1.2 * space.scale * ti * direction + bi * side
        np.minimum(ratio, space.sq_dist(centre, (radius,) * 3), out=ratio)
    return ratio < 1.0


def make_nodule_case(
    shape: Sequence[int] = (48, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    slices_per_axis: Sequence[int] = (2, 2, 2),
    n_nodules: int = 5,
    n_vessels: int = 10,
) -> SyntheticCase:
    """Make a deterministic nodules-among-vessels case.

    Parameters
    ----------
    shape : sequence of 3 int
        Array shape ``(z, y, x)``; every size at least 16.
    spacing : sequence of 3 float
        Voxel size in mm per axis (shapes are laid out in mm).
    seed : int
        Seed of ``np.random.default_rng``; same arguments give identical arrays.
    slices_per_axis : sequence of 3 int
        Fully painted slices per axis, spread over the slices through nodules.
    n_nodules, n_vessels : int
        How many balls (the structure) and tubes (background).

    Returns
    -------
    SyntheticCase
        Image, expert mask (``1`` nodule), annotation and metadata.

    Raises
    ------
    MedsegInputError
        For a shape under 16 voxels, a non-positive spacing or negative counts.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise MedsegInputError(f"shape {tuple(shape)} must be 3D with every size >= 16")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise MedsegInputError(f"spacing {tuple(spacing)} must be 3 positive numbers")
    if n_nodules < 1 or n_vessels < 0 or len(slices_per_axis) != 3 or min(slices_per_axis) < 0:
        raise MedsegInputError("need at least one nodule, and non-negative counts")
    rng = np.random.default_rng(seed)
    space = _Space(shape, spacing)
    body = space.sq_dist(space.point((0.5, 0.5, 0.5)), 0.47 * space.extent) < 1.0
    nodules = _nodules(rng, space, n_nodules) & body
    apart = ndimage.binary_dilation(nodules, iterations=2)
    vessels = np.zeros(space.shape, dtype=bool)
    for _ in range(n_vessels):
        vessels |= _vessel(rng, space)
    vessels &= body & ~apart
    labels = nodules.astype(np.uint8)
    image = _render(rng, space, body, labels, [vessels], 1)
    return painted_case(image, labels, spacing, (NODULE_NAME,), slices_per_axis)
