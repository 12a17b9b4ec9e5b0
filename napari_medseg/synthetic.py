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

The module also provides the slice-picking and annotation helpers used by tests and
benchmarks on the real cases, and two intensity-threshold baselines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .annotation import BACKGROUND, validate_annotation
from .errors import MedsegInputError

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
        self.extent = np.array([n * s for n, s in zip(self.shape, self.spacing)])
        self.scale = float(self.extent.min())

    def point(self, fractions: Sequence[float]) -> np.ndarray:
        """Position in mm of a point given as fractions of the extent."""
        return np.asarray(fractions, dtype=float) * self.extent

    def sq_dist(
        self, centre: np.ndarray, semi_axes: Sequence[float] = (1.0, 1.0, 1.0)
    ) -> np.ndarray:
        """Squared ellipsoidal distance ``sum(((x - c) / a) ** 2)`` on the grid."""
        total = np.zeros(self.shape, dtype=np.float32)
        for grid, c, a in zip(self.coords, centre, semi_axes):
            total += ((grid - np.float32(c)) / np.float32(a)) ** 2
        return total


def _low_frequency(
    rng: np.random.Generator, space: _Space, n_waves: int, cycles: float
) -> np.ndarray:
    """A smooth random field, sum of plane cosine waves, roughly unit amplitude."""
    field_ = np.zeros(space.shape, dtype=np.float32)
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * cycles * rng.uniform(0.5, 1.0) * 2 * math.pi / space.scale
        phase = rng.uniform(0, 2 * math.pi)
        arg = sum(np.float32(ki) * g for ki, g in zip(k, space.coords)) + np.float32(phase)
        field_ += np.cos(arg).astype(np.float32)
    return field_ / np.float32(math.sqrt(n_waves / 2))


def _texture(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / np.float32(max(float(noise.std()), 1e-6))


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
    image = ndimage.gaussian_filter(clean, _BLUR_SIGMA)
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
        spacing=tuple(float(s) for s in spacing),
        class_names=tuple(class_names),
        annotated_slices=slices,
    )


# --------------------------------------------------------------------------- slices


def paint_slices_per_axis(
    mask: np.ndarray, slices_per_axis: Sequence[int]
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Paint ``slices_per_axis[a]`` whole slices along each axis ``a``, through the structures.

    The slices are chosen by :func:`pick_slices` and painted from ``mask`` by
    :func:`sparse_annotation_from_mask`.

    Returns
    -------
    (np.ndarray, dict of int to list of int)
        The ``uint8`` annotation and the painted slices per axis.
    """
    mask = np.asarray(mask)
    if len(slices_per_axis) != mask.ndim:
        raise MedsegInputError(f"slices_per_axis needs {mask.ndim} values")
    slices = {a: pick_slices(mask, a, int(n)) for a, n in enumerate(slices_per_axis) if n}
    return sparse_annotation_from_mask(mask, slices), slices



def pick_slices(mask: np.ndarray, axis: int, n: int) -> list[int]:
    """Choose ``n`` slices along ``axis``, evenly spread over the slices with foreground.

    Of the ``L`` slices holding foreground (any nonzero voxel), the ``i``-th chosen one is
    number ``floor((2 i + 1) L / (2 n))``: the centres of ``n`` equal parts. For example,
    foreground on slices 11-17 and ``n = 3`` gives 12, 14, 16. When the mask is empty the
    slices are spread over the whole axis instead.

    Parameters
    ----------
    mask : np.ndarray
        Label map or binary mask.
    axis : int
        Axis the slices are taken along.
    n : int
        Number of slices wanted; fewer come back when fewer slices exist.

    Returns
    -------
    list of int
        Sorted, distinct slice indices.
    """
    mask = np.asarray(mask)
    if not -mask.ndim <= axis < mask.ndim:
        raise MedsegInputError(f"axis {axis} is out of range for a {mask.ndim}D mask")
    if n <= 0:
        return []
    other = tuple(a for a in range(mask.ndim) if a != axis % mask.ndim)
    candidates = np.flatnonzero(np.any(mask != 0, axis=other))
    if candidates.size == 0:
        candidates = np.arange(mask.shape[axis])
    count = candidates.size
    n = min(n, count)
    positions = [((2 * i + 1) * count) // (2 * n) for i in range(n)]
    return sorted({int(candidates[p]) for p in positions})


def sparse_annotation_from_mask(
    mask: np.ndarray, slices: Mapping[int, Sequence[int]]
) -> np.ndarray:
    """Paint full slices of an expert mask as a sparse annotation.

    Parameters
    ----------
    mask : np.ndarray
        Label map: ``0`` background, ``k`` structure ``k`` (at most 254).
    slices : mapping of int to sequence of int
        Slice indices to paint, per axis, e.g. ``{0: [12, 14], 2: [30]}``.

    Returns
    -------
    np.ndarray
        ``uint8`` annotation: ``mask + 1`` on the painted slices, ``0`` elsewhere.
    """
    mask = np.asarray(mask)
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 254):
        raise MedsegInputError("mask values must lie in 0..254 to be painted as an annotation")
    painted = np.zeros(mask.shape, dtype=bool)
    for axis, indices in slices.items():
        if not -mask.ndim <= axis < mask.ndim:
            raise MedsegInputError(f"axis {axis} is out of range for a {mask.ndim}D mask")
        for index in indices:
            if not -mask.shape[axis] <= index < mask.shape[axis]:
                raise MedsegInputError(
                    f"slice {index} is outside axis {axis} of size {mask.shape[axis]}"
                )
            np.moveaxis(painted, axis, 0)[index] = True
    annotation = np.zeros(mask.shape, dtype=np.uint8)
    annotation[painted] = mask[painted].astype(np.uint8) + 1
    return annotation


# --------------------------------------------------------------------------- baselines


@dataclass
class ThresholdBaseline:
    """Best intensity window per structure and the Dice it reaches.

    Attributes
    ----------
    dice : dict of int to float
        Dice of ``low <= image < high`` against structure ``k`` on the scored voxels.
    windows : dict of int to (float, float)
        The chosen half-open window ``[low, high)`` per structure. A window that reaches the
        lowest (highest) scored intensity is open on that side: ``low = -inf``
        (``high = inf``, i.e. a plain threshold ``image >= low``).
    """

    dice: dict[int, float]
    windows: dict[int, tuple[float, float]]

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the structures (1.0 when there is none)."""
        return float(np.mean(list(self.dice.values()))) if self.dice else 1.0


def _best_window(
    values: np.ndarray, target: np.ndarray, n_bins: int, window: bool
) -> tuple[float, float, float]:
    """Window ``[low, high)`` over quantile bins maximising Dice of ``values`` vs ``target``.

    Returns ``(dice, low, high)``.
    """
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(edges.size - 2, 0))
    n_b = max(edges.size - 1, 1)
    all_counts = np.bincount(bins, minlength=n_b).astype(np.float64)
    hit_counts = np.bincount(bins, weights=target.astype(np.float64), minlength=n_b)
    cum_all = np.concatenate([[0.0], np.cumsum(all_counts)])
    cum_hit = np.concatenate([[0.0], np.cumsum(hit_counts)])
    n_target = cum_hit[-1]
    # window = bins i..j-1 : rows i, columns j
    highs = np.arange(1, n_b + 1) if window else np.array([n_b])
    tp = cum_hit[highs][None, :] - cum_hit[:-1][:, None]
    pred = cum_all[highs][None, :] - cum_all[:-1][:, None]
    denom = pred + n_target
    scores = np.where(
        (highs[None, :] > np.arange(n_b)[:, None]) & (denom > 0),
        2.0 * tp / np.maximum(denom, 1e-12),
        -1.0,
    )
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    top = int(highs[j])
    low = float(edges[i]) if i > 0 else -math.inf
    high = float(edges[top]) if top < n_b else math.inf
    return float(scores[i, j]), low, high


def best_threshold_dice(
    image: np.ndarray,
    mask: np.ndarray,
    scored: np.ndarray | None = None,
    *,
    window: bool = True,
    n_bins: int = 256,
) -> ThresholdBaseline:
    """The best global intensity window per structure, chosen knowing the truth.

    An *oracle* baseline: for each structure ``k`` the window ``[low, high)`` (or, with
    ``window=False``, the threshold ``image >= low``) that maximises Dice against
    ``mask == k`` on the scored voxels, searched over ``n_bins`` intensity quantiles.

    Parameters
    ----------
    image : np.ndarray
        Intensities.
    mask : np.ndarray
        Expert label map (``0`` background, ``k`` structure ``k``), same shape.
    scored : np.ndarray, optional
        Boolean array of the voxels to score (default: all).
    window : bool
        Search two-sided windows; ``False`` searches only lower thresholds.
    n_bins : int
        Number of quantile bins the window edges are chosen from.

    Returns
    -------
    ThresholdBaseline
        Dice and window per structure.
    """
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape != mask.shape:
        raise MedsegInputError(f"image shape {image.shape} differs from mask shape {mask.shape}")
    sel = np.ones(mask.shape, bool) if scored is None else np.asarray(scored, dtype=bool)
    values, truth = image[sel].astype(np.float64), mask[sel]
    result = ThresholdBaseline({}, {})
    if values.size == 0:
        return result
    for k in (int(v) for v in np.unique(mask) if v != 0):
        score, low, high = _best_window(values, truth == k, n_bins, window)
        result.dice[k] = score
        result.windows[k] = (low, high)
    return result


def threshold_from_annotation(
    image: np.ndarray, annotation: np.ndarray, *, window: bool = True, n_bins: int = 256
) -> np.ndarray:
    """A fair threshold baseline that sees only what the user painted.

    For each structure ``k`` the intensity window that best separates the voxels annotated
    ``k + 1`` from the other annotated voxels (highest Dice on the annotated voxels) is
    applied to the whole volume. Where windows of several structures overlap, a voxel goes
    to the structure whose annotated median intensity is closest.

    Parameters
    ----------
    image : np.ndarray
        Intensities.
    annotation : np.ndarray
        Sparse annotation: ``0`` unknown, ``1`` background, ``k + 1`` structure ``k``.
    window : bool
        Two-sided windows (``True``) or lower thresholds only.
    n_bins : int
        Number of quantile bins the window edges are chosen from.

    Returns
    -------
    np.ndarray
        ``uint8`` segmentation: ``0`` background, ``k`` structure ``k``.
    """
    image, annotation = np.asarray(image), np.asarray(annotation)
    n_classes = validate_annotation(annotation, image.shape)
    known = annotation > 0
    labels = annotation.astype(np.int64) - BACKGROUND  # -1 unknown, 0 bg, k structure
    baseline = best_threshold_dice(
        image, np.where(known, labels, 0), known, window=window, n_bins=n_bins
    )
    segmentation = np.zeros(image.shape, dtype=np.uint8)
    best = np.full(image.shape, np.inf)
    for k in range(1, n_classes):
        if k not in baseline.windows:
            continue
        low, high = baseline.windows[k]
        centre = float(np.median(image[labels == k]))
        distance = np.abs(image - centre)
        take = (image >= low) & (image < high) & (distance < best)
        segmentation[take] = k
        best[take] = distance[take]
    return segmentation


def nearest_mean_from_annotation(image: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """Nearest-class-mean intensity classifier fitted on what the user painted.

    Each voxel goes to the class (background included) whose mean annotated intensity is
    closest: the plain intensity classifier the networks are compared with.

    Parameters
    ----------
    image : np.ndarray
        Intensities.
    annotation : np.ndarray
        Sparse annotation: ``0`` unknown, ``1`` background, ``k + 1`` structure ``k``.

    Returns
    -------
    np.ndarray
        ``uint8`` segmentation: ``0`` background, ``k`` structure ``k`` (a class nobody
        painted is never chosen).
    """
    image, annotation = np.asarray(image), np.asarray(annotation)
    n_classes = validate_annotation(annotation, image.shape)
    means = np.full(n_classes, np.inf)
    for k in range(n_classes):
        painted = image[annotation == k + BACKGROUND]
        if painted.size:
            means[k] = float(np.mean(painted, dtype=np.float64))
    segmentation = np.zeros(image.shape, dtype=np.uint8)
    best = np.full(image.shape, np.inf)
    values = image.astype(np.float64, copy=False)
    for k in np.flatnonzero(np.isfinite(means)):
        distance = np.abs(values - means[k])
        closer = distance < best
        segmentation[closer] = k
        best[closer] = distance[closer]
    return segmentation
