"""Deterministic synthetic volumes with an expert mask and a sparse annotation.

The volumes are made so that a plain intensity threshold is clearly imperfect while a 3D
network can learn the answer from a few painted slices:

* the structures are smooth, irregular 3D shapes — structure 1 a curved tube of varying
  radius (a union of spheres along a wiggling path), structure 2 a lumpy ellipsoid,
  structure 3 a thick hollow shell — with textured interiors;
* the background holds *distractors* of the same intensity as the structures but another
  shape: small spheres and thin flat discs ("sheets"); they are background in the mask;
* the image has a smooth multiplicative bias field, partial-volume blurring (Gaussian,
  sigma 1 voxel) and Gaussian noise; the structures' intensity ranges overlap each other.

Everything is drawn from ``np.random.default_rng(seed)``: the same arguments always give
the same arrays. Generation of a 48 x 64 x 64 case takes well under a second.

The slice-picking and annotation helpers (:mod:`napari_medseg.slice_painting`) and the
intensity baselines (:mod:`napari_medseg.baselines`) used by tests and benchmarks are
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .baselines import (
    ThresholdBaseline,
    best_threshold_dice,
    nearest_mean_from_annotation,
    threshold_from_annotation,
)
from .errors import MedsegInputError
from .slice_painting import paint_slices_per_axis, pick_slices, sparse_annotation_from_mask

__all__ = [
    "STRUCTURE_NAMES",
    "SyntheticCase",
    "ThresholdBaseline",
    "best_threshold_dice",
    "make_synthetic_case",
    "nearest_mean_from_annotation",
    "paint_slices_per_axis",
    "pick_slices",
    "sparse_annotation_from_mask",
    "threshold_from_annotation",
]

#: Names of the synthetic structures, item ``k - 1`` for structure ``k``.
STRUCTURE_NAMES: tuple[str, ...] = ("tube", "blob", "shell")

_AIR, _TISSUE = 0.05, 0.35
_STRUCTURE_INTENSITY = (0.66, 0.58, 0.76)
_NOISE_STD = 0.06
_BLUR_SIGMA = 1.0

#: A 3-vector in mm or in fractions of the extent: a sequence or a float64 array.
_Vector = Sequence[float] | npt.NDArray[np.float64]
_Field = npt.NDArray[np.float32]  # a float32 volume on the grid of a _Space


@dataclass
class SyntheticCase:
    """A synthetic volume with its expert mask and a sparse annotation.

    Attributes
    ----------
    image : np.ndarray
        ``float32`` intensities, axes ``(z, y, x)``.
    expert_mask : np.ndarray
        ``uint8``: ``0`` background, ``k`` structure ``k``.
    annotation : np.ndarray
        ``uint8`` sparse annotation: ``0`` unknown, ``1`` background, ``k + 1`` structure
        ``k`` on a few fully painted slices per axis.
    spacing : tuple of float
        Voxel size per array axis in mm.
    class_names : tuple of str
        Item ``k - 1`` names structure ``k``.
    annotated_slices : dict of int to list of int
        The painted slices, per axis.
    """

    image: np.ndarray
    expert_mask: np.ndarray
    annotation: np.ndarray
    spacing: tuple[float, float, float]
    class_names: tuple[str, ...]
    annotated_slices: dict[int, list[int]] = field(default_factory=dict)


# --------------------------------------------------------------------------- fields


class _Space:
    """Open grids of voxel-centre coordinates in mm, and the volume's extent."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.coords = [
            (np.arange(n, dtype=np.float32) * s).reshape(
                tuple(n if a == i else 1 for a in range(3))
            )
            for i, (n, s) in enumerate(zip(self.shape, self.spacing))
        ]
        self.extent: npt.NDArray[np.float64] = np.array(
            [n * s for n, s in zip(self.shape, self.spacing)]
        )
        self.scale = float(self.extent.min())

    def point(self, fractions: _Vector) -> npt.NDArray[np.float64]:
        """Position in mm of a point given as fractions of the extent."""
        return np.asarray(fractions, dtype=float) * self.extent

    def sq_dist(self, centre: _Vector, semi_axes: _Vector = (1.0, 1.0, 1.0)) -> _Field:
        """Squared ellipsoidal distance ``sum(((x - c) / a) ** 2)`` on the grid."""
        total: _Field = np.zeros(self.shape, dtype=np.float32)
        for grid, c, a in zip(self.coords, centre, semi_axes):
            total += ((grid - np.float32(c)) / np.float32(a)) ** 2
        return total


def _low_frequency(rng: np.random.Generator, space: _Space, n_waves: int, cycles: float) -> _Field:
    """A smooth random field, sum of plane cosine waves, roughly unit amplitude."""
    field_: _Field = np.zeros(space.shape, dtype=np.float32)
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * cycles * rng.uniform(0.5, 1.0) * 2 * math.pi / space.scale
        phase = rng.uniform(0, 2 * math.pi)
        arg = sum(np.float32(ki) * g for ki, g in zip(k, space.coords)) + np.float32(phase)
        field_ += np.cos(arg).astype(np.float32)
    field_ = field_ / np.float32(math.sqrt(n_waves / 2))
    return field_


def _texture(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> _Field:
    """Gaussian-filtered white noise, unit standard deviation."""
    noise: _Field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    noise = noise / np.float32(max(float(noise.std()), 1e-6))
    return noise


# --------------------------------------------------------------------------- shapes


def _tube(rng: np.random.Generator, space: _Space, y_fraction: float) -> np.ndarray:
    """A curved tube of varying radius running along x: a union of spheres on a path."""
    t = np.linspace(0.0, 1.0, 28)
    x = 0.12 + 0.76 * t
    y = y_fraction + 0.08 * np.sin(2 * math.pi * (rng.uniform(0.6, 1.0) * t + rng.uniform()))
    z = 0.5 + 0.14 * np.sin(2 * math.pi * (rng.uniform(0.5, 0.9) * t + rng.uniform()))
    radius = space.scale * (0.085 + 0.025 * np.sin(2 * math.pi * (1.3 * t + rng.uniform())))
    ratio = np.full(space.shape, np.inf, dtype=np.float32)
    for zi, yi, xi, ri in zip(z, y, x, radius):
        centre = space.point((zi, yi, xi))
        np.minimum(ratio, space.sq_dist(centre, (ri, ri, ri)), out=ratio)
    wobble = _low_frequency(rng, space, 6, 3.0)
    return np.sqrt(ratio) < 1.0 + 0.12 * wobble


def _blob(rng: np.random.Generator, space: _Space, y_fraction: float) -> np.ndarray:
    """A lumpy ellipsoid: the ellipsoid's radius is modulated by a smooth field."""
    centre = space.point((rng.uniform(0.42, 0.58), y_fraction, rng.uniform(0.35, 0.65)))
    semi = space.scale * np.array([0.17, 0.13, 0.16]) * rng.uniform(0.9, 1.1, size=3)
    wobble = _low_frequency(rng, space, 6, 2.5)
    return np.sqrt(space.sq_dist(centre, semi)) < 1.0 + 0.22 * wobble


def _shell(rng: np.random.Generator, space: _Space, y_fraction: float) -> np.ndarray:
    """A thick hollow ellipsoidal shell with a lumpy outer surface."""
    centre = space.point((rng.uniform(0.42, 0.58), y_fraction, rng.uniform(0.35, 0.65)))
    semi = space.scale * np.array([0.16, 0.14, 0.17]) * rng.uniform(0.9, 1.1, size=3)
    radial = np.sqrt(space.sq_dist(centre, semi))
    wobble = _low_frequency(rng, space, 5, 2.0)
    return (radial < 1.0 + 0.12 * wobble) & (radial > 0.6 + 0.06 * wobble)


_LAYOUT = {  # n_structures -> y position (fraction of the extent) of each structure
    1: (0.5,),
    2: (0.62, 0.24),
    3: (0.5, 0.2, 0.8),
}
_MAKERS = (_tube, _blob, _shell)


def _structures(rng: np.random.Generator, space: _Space, n: int) -> np.ndarray:
    """Label map of the structures; an earlier structure wins where two would overlap."""
    labels = np.zeros(space.shape, dtype=np.uint8)
    for k, (maker, y) in enumerate(zip(_MAKERS, _LAYOUT[n]), start=1):
        region = maker(rng, space, y)
        labels[region & (labels == 0)] = k
    return labels


def _distractors(
    rng: np.random.Generator,
    space: _Space,
    body: np.ndarray,
    forbidden: np.ndarray,
    n_spheres: int,
    n_sheets: int,
) -> list[np.ndarray]:
    """Small spheres and thin discs inside the body, away from the structures."""
    shapes = []
    for _ in range(n_spheres):
        centre = space.point(rng.uniform(0.15, 0.85, size=3))
        radius = space.scale * rng.uniform(0.035, 0.055)
        shapes.append(space.sq_dist(centre, (radius,) * 3) < 1.0)
    thickness = 2.0 * min(space.spacing)
    for _ in range(n_sheets):
        centre = space.point(rng.uniform(0.2, 0.8, size=3))
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        height = sum(
            np.float32(n) * (g - np.float32(c)) for n, g, c in zip(normal, space.coords, centre)
        )
        radius = space.scale * rng.uniform(0.16, 0.24)
        in_plane = space.sq_dist(centre) - height**2 < radius**2
        shapes.append((np.abs(height) < thickness / 2) & in_plane)
    return [s & body & ~forbidden for s in shapes]


# --------------------------------------------------------------------------- case


def _render(
    rng: np.random.Generator,
    space: _Space,
    body: np.ndarray,
    labels: np.ndarray,
    distractors: Sequence[np.ndarray],
    n_structures: int,
) -> np.ndarray:
    """Intensities: textured regions, partial-volume blur, bias field, then noise."""
    clean = np.where(body, np.float32(_TISSUE), np.float32(_AIR))
    clean *= 1.0 + 0.08 * _texture(rng, space.shape, 2.0)
    texture = 1.0 + 0.12 * _texture(rng, space.shape, 1.2)
    for k in range(1, n_structures + 1):
        region = labels == k
        clean[region] = _STRUCTURE_INTENSITY[k - 1] * texture[region]
    for region in distractors:  # same intensity as a randomly chosen structure
        level = _STRUCTURE_INTENSITY[int(rng.integers(n_structures))]
        clean[region] = level * texture[region]
    image: _Field = ndimage.gaussian_filter(clean, _BLUR_SIGMA)
    image *= np.exp(0.2 * _low_frequency(rng, space, 4, 0.7))
    image += rng.normal(0.0, _NOISE_STD, size=space.shape).astype(np.float32)
    return image.astype(np.float32, copy=False)


def _check_case_args(
    shape: Sequence[int],
    spacing: Sequence[float],
    n_structures: int,
    slices_per_axis: Sequence[int],
) -> None:
    if len(shape) != 3 or min(shape) < 8:
        raise MedsegInputError(f"synthetic shape {tuple(shape)} must be 3D with every size >= 8")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise MedsegInputError(f"synthetic spacing {tuple(spacing)} must be 3 positive numbers")
    if n_structures not in _LAYOUT:
        raise MedsegInputError(f"n_structures must be 1, 2 or 3, not {n_structures}")
    if len(slices_per_axis) != 3 or min(slices_per_axis) < 0:
        raise MedsegInputError(
            f"slices_per_axis {tuple(slices_per_axis)} must be 3 non-negative counts"
        )


def make_synthetic_case(
    shape: Sequence[int] = (48, 64, 64),
    n_structures: int = 1,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    slices_per_axis: Sequence[int] = (1, 1, 1),
    n_spheres: int | None = None,
    n_sheets: int | None = None,
) -> SyntheticCase:
    """Make a deterministic synthetic case: image, expert mask and sparse annotation.

    Parameters
    ----------
    shape : sequence of 3 int
        Array shape ``(z, y, x)``; every size at least 8.
    n_structures : int
        1, 2 or 3 structures (tube, blob, shell).
    spacing : sequence of 3 float
        Voxel size in mm per array axis. Shapes are laid out in mm, so they keep their
        physical form under anisotropic spacing.
    seed : int
        Seed of ``np.random.default_rng``; same arguments give identical arrays.
    slices_per_axis : sequence of 3 int
        How many fully painted slices the annotation gets along each axis, chosen by
        :func:`pick_slices` through the structures.
    n_spheres, n_sheets : int, optional
        Number of distractor spheres and flat discs (default ``6 + 4 n`` and ``2 + n``).

    Returns
    -------
    SyntheticCase
        The image (``float32``), expert mask and annotation (``uint8``) and metadata.
    """
    _check_case_args(shape, spacing, n_structures, slices_per_axis)
    rng = np.random.default_rng(seed)
    space = _Space(shape, spacing)
    centre = space.point((0.5, 0.5, 0.5))
    body = space.sq_dist(centre, 0.47 * space.extent) < 1.0
    labels = _structures(rng, space, n_structures)
    labels[~body] = 0
    forbidden = ndimage.binary_dilation(labels > 0, iterations=2)
    n_spheres = 6 + 4 * n_structures if n_spheres is None else n_spheres
    n_sheets = 2 + n_structures if n_sheets is None else n_sheets
    distractors = _distractors(rng, space, body, forbidden, n_spheres, n_sheets)

    image = _render(rng, space, body, labels, distractors, n_structures)
    return painted_case(image, labels, spacing, STRUCTURE_NAMES[:n_structures], slices_per_axis)


def painted_case(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    class_names: Sequence[str],
    slices_per_axis: Sequence[int],
) -> SyntheticCase:
    """A :class:`SyntheticCase` whose annotation paints ``slices_per_axis`` slices per axis
    through the structures (:func:`paint_slices_per_axis`)."""
    annotation, slices = paint_slices_per_axis(labels, slices_per_axis)
    return SyntheticCase(
        image=image,
        expert_mask=labels,
        annotation=annotation,
        spacing=cast(tuple[float, float, float], tuple(float(s) for s in spacing)),  # 3D
        class_names=tuple(class_names),
        annotated_slices=slices,
    )
