"""Data augmentation of training patches (numpy + scipy.ndimage; no torch, no GUI).

Follows Çiçek et al. 2016 ("rotation, scaling and gray value augmentation" and a smooth
dense deformation): besides flips, 90-degree rotations and intensity changes, a random
scaling, a small rotation and a smooth elastic deformation are drawn per patch. The
deformation is made of random displacement vectors on a coarse grid
(``elastic_grid_points`` per axis, normal with standard deviation
``elastic_sigma_voxels``), interpolated to every voxel with cubic B-splines, and applied
to the image (linear interpolation) and the target (nearest neighbour). The scaling and
the small rotation are folded into the same resampling pass.

Spacing-aware: 90-degree rotations only happen in planes whose two axes have the same
spacing and size; displacements are isotropic in millimetres (``elastic_sigma_voxels`` is
measured in voxels of the finest axis), so a thick-slice axis moves by fewer voxels;
rotations only happen in a plane of equal spacing, and scaling only along the finest axes
(in plane for a thick-slice scan, every axis for an isotropic one).

The target uses ``-1`` for unknown (ignored) voxels; voxels whose deformed position falls
outside the patch also become ``-1``. Labels are never interpolated.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

IGNORE = -1

FloatArray = npt.NDArray[np.float32]  # image patches (C, D, H, W)
IntArray = npt.NDArray[np.int64]  # targets (D, H, W), -1 = ignored
Float64Array = npt.NDArray[np.float64]  # displacement fields, coordinates, matrices


@dataclass
class AugmentConfig:
    """Which augmentations :func:`augment` applies, and how strongly.

    Parameters
    ----------
    flips : bool
        Flip each spatial axis with probability 0.5.
    rotate90 : bool
        Rotate by a random multiple of 90 degrees in every plane whose two axes have equal
        spacing and equal size.
    intensity_scale : float
        Multiply each channel by ``1 + U(-s, s)`` (0 = off).
    intensity_shift : float
        Add ``U(-t, t)`` to each channel (images are normalised, so in units of the
        normalised intensity; 0 = off).
    gamma : float
        Gamma correction with exponent ``exp(U(-g, g))`` on the min-max-rescaled channel
        (0 = off, the default).
    elastic : bool
        Apply the elastic deformation (with ``elastic_probability``).
    elastic_probability : float
        Probability of an elastic deformation per patch.
    elastic_sigma_voxels : float
        Standard deviation of the random displacement vectors, in voxels of the finest axis
        (the paper: 4 voxels); other axes get the same displacement in millimetres.
    elastic_grid_points : int
        Control points of the coarse displacement grid per axis (the paper: 3).
    rotation_degrees : float
        Maximum angle of a random rotation in a plane of equal spacing (0 = off).
    rotation_probability : float
        Probability of that rotation per patch.
    scale_range : tuple of 2 floats
        Zoom factors ``(low, high)``; a factor drawn log-uniformly in it magnifies (> 1) or
        shrinks (< 1) the patch content along the finest axes, so that a structure is also
        seen larger and smaller than where it was painted. ``(1, 1)`` = off.
    scale_probability : float
        Probability of that scaling per patch.
    noise_std : float
        Standard deviation of additive Gaussian noise (0 = off).
    """

    flips: bool = True
    rotate90: bool = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma: float = 0.0
    elastic: bool = True
    elastic_probability: float = 0.5
    elastic_sigma_voxels: float = 4.0
    elastic_grid_points: int = 3
    rotation_degrees: float = 15.0
    rotation_probability: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.25)
    scale_probability: float = 0.5
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "intensity_scale",
            "intensity_shift",
            "gamma",
            "elastic_sigma_voxels",
            "rotation_degrees",
            "noise_std",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        low, high = (float(v) for v in self.scale_range)
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range!r}")
        for name in ("elastic_probability", "rotation_probability", "scale_probability"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.intensity_scale >= 1:
            raise ValueError(f"intensity_scale must be < 1, got {self.intensity_scale!r}")
        if not isinstance(self.elastic_grid_points, int) or self.elastic_grid_points < 2:
            raise ValueError(
                f"elastic_grid_points must be an int >= 2, got {self.elastic_grid_points!r}"
            )


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-3)


def rot90_planes(shape: Sequence[int], spacing: Sequence[float]) -> list[tuple[int, int]]:
    """Spatial planes ``(a, b)`` in which a 90-degree rotation keeps shape and spacing."""
    return [
        (a, b)
        for a, b in itertools.combinations(range(len(shape)), 2)
        if shape[a] == shape[b] and shape[a] > 1 and _same(spacing[a], spacing[b])
    ]


def rotation_planes(shape: Sequence[int], spacing: Sequence[float]) -> list[tuple[int, int]]:
    """Spatial planes ``(a, b)`` of equal spacing (both axes longer than 1) for rotations."""
    return [
        (a, b)
        for a, b in itertools.combinations(range(len(shape)), 2)
        if shape[a] > 1 and shape[b] > 1 and _same(spacing[a], spacing[b])
    ]


@functools.lru_cache(maxsize=64)
def _spline_matrix(size: int, points: int) -> Float64Array:
    """``(size, points)`` matrix: cubic B-spline interpolation of ``points`` control values
    spread evenly over ``size`` voxels (first and last voxel on the end points)."""
    if size == 1:
        return np.full((1, points), 1.0 / points)
    eye = np.eye(points)
    cols = [
        ndimage.zoom(eye[i], size / points, order=3, mode="nearest", grid_mode=False)
        for i in range(points)
    ]
    matrix = np.stack(cols, axis=1)
    if matrix.shape[0] != size:  # zoom's rounding of the output size; never expected
        raise RuntimeError(f"spline matrix has {matrix.shape[0]} rows, expected {size}")
    matrix.setflags(write=False)
    return matrix


def smooth_displacement(shape: Sequence[int], coarse: Float64Array) -> Float64Array:
    """Interpolate a coarse ``(3, g, g, g)`` displacement grid to ``(3, *shape)``.

    Separable cubic B-spline interpolation, the same as ``scipy.ndimage.zoom(order=3)`` of
    each component onto the patch (end control points on the first and last voxel),
    computed as three small matrix products.
    """
    g = coarse.shape[1]
    mz, my, mx = (_spline_matrix(int(s), g) for s in shape)
    field: Float64Array = np.einsum("nabc,wc->nabw", coarse, mx)  # (3, g, g, W)
    field = np.einsum("nabw,hb->nahw", field, my)  # (3, g, H, W)
    field = np.einsum("nahw,da->ndhw", field, mz)  # (3, D, H, W)
    return field


def random_displacement(
    shape: Sequence[int],
    rng: np.random.Generator,
    sigma_voxels: float,
    points: int = 3,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Float64Array:
    """Random smooth displacement field ``(3, D, H, W)`` in voxels.

    Control vectors on a ``points``-per-axis grid are drawn from a normal distribution
    with standard deviation ``sigma_voxels`` voxels of the finest axis, i.e. the same
    distance in millimetres along every axis (fewer voxels along thick-slice axes), and
    zero along axes of size 1.
    """
    finest = min(spacing)
    scale = np.array(
        [0.0 if s == 1 else sigma_voxels * finest / sp for s, sp in zip(shape, spacing)]
    )
    coarse = rng.standard_normal((3, points, points, points)) * scale[:, None, None, None]
    return smooth_displacement(shape, coarse)


def scaling_axes(shape: Sequence[int], spacing: Sequence[float]) -> list[int]:
    """Axes that random scaling zooms: those of the finest spacing (longer than 1 voxel)."""
    active = [sp for sp, n in zip(spacing, shape) if n > 1]
    if not active:
        return []
    finest = min(active)
    return [a for a, (sp, n) in enumerate(zip(spacing, shape)) if n > 1 and _same(sp, finest)]


def _scaling_matrix(axes: Sequence[int], zoom: float) -> Float64Array:
    """Matrix on output coordinates that magnifies the content ``zoom`` times along ``axes``."""
    m = np.eye(3)
    for a in axes:
        m[a, a] = 1.0 / zoom
    return m


def _rotation_matrix(plane: tuple[int, int], angle: float) -> Float64Array:
    m = np.eye(3)
    a, b = plane
    c, s = math.cos(angle), math.sin(angle)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def resample(
    image: FloatArray,
    target: IntArray,
    coords: Float64Array,
) -> tuple[FloatArray, IntArray]:
    """Sample ``image`` (linear) and ``target`` (nearest) at voxel coordinates ``coords``.

    Parameters
    ----------
    image : np.ndarray
        ``(C, D, H, W)`` float32; outside the patch the nearest edge value is used.
    target : np.ndarray
        ``(D, H, W)`` int64; positions outside the patch become ``-1``.
    coords : np.ndarray
        ``(3, D, H, W)`` positions (in input voxels) to sample for every output voxel.

    Returns
    -------
    image, target : np.ndarray
        Resampled, same shapes and dtypes.
    """
    shape = target.shape
    out_image = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        ndimage.map_coordinates(
            image[c], coords, output=out_image[c], order=1, mode="nearest", prefilter=False
        )
    idx = np.rint(coords).astype(np.intp)
    inside = np.ones(shape, dtype=bool)
    for axis, size in enumerate(shape):
        inside &= (idx[axis] >= 0) & (idx[axis] < size)
        np.clip(idx[axis], 0, size - 1, out=idx[axis])
    out_target = target[idx[0], idx[1], idx[2]]
    out_target[~inside] = IGNORE
    return out_image, out_target


def elastic_coordinates(
    shape: tuple[int, int, int],
    displacement: Float64Array | None = None,
    linear: Float64Array | None = None,
) -> Float64Array:
    """Sampling coordinates ``(3, D, H, W)``: identity grid, transformed about the centre
    (rotation, scaling), then displaced.

    Parameters
    ----------
    shape : 3 ints
        Patch shape.
    displacement : np.ndarray, optional
        ``(3, D, H, W)`` displacement in voxels.
    linear : np.ndarray, optional
        ``(3, 3)`` matrix (rotation, scaling) acting on voxel coordinates about the centre.
    """
    grid = np.indices(shape, dtype=np.float64)
    if linear is not None:
        centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
        rel = grid - centre[:, None, None, None]
        grid = np.einsum("ij,jdhw->idhw", linear, rel) + centre[:, None, None, None]
    if displacement is not None:
        grid += displacement
    return grid


def _intensity(image: FloatArray, rng: np.random.Generator, cfg: AugmentConfig) -> FloatArray:
    for c in range(image.shape[0]):
        channel = image[c]
        if cfg.gamma > 0:
            lo, hi = float(channel.min()), float(channel.max())
            if hi > lo:
                exponent = math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
                unit = (channel - lo) / (hi - lo)
                channel = (np.power(unit, exponent) * (hi - lo) + lo).astype(np.float32)
        if cfg.intensity_scale > 0:
            channel = channel * np.float32(
                1 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale)
            )
        if cfg.intensity_shift > 0:
            channel = channel + np.float32(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift))
        if cfg.noise_std > 0:
            noise = rng.standard_normal(channel.shape, dtype=np.float32)
            channel = channel + noise * np.float32(cfg.noise_std)
        image[c] = channel
    return image


def _checked_inputs(
    image: npt.ArrayLike, target: npt.ArrayLike, spacing: Sequence[float]
) -> tuple[FloatArray, IntArray, tuple[float, float, float]]:
    """``image`` as float32, ``target`` as int64 and ``spacing`` as 3 floats, or ValueError."""
    image = np.asarray(image)
    target = np.asarray(target)
    if image.ndim != 4 or target.ndim != 3 or image.shape[1:] != target.shape:
        raise ValueError(
            f"expected image (C, D, H, W) and target (D, H, W) of the same spatial shape, got "
            f"{image.shape} and {target.shape}"
        )
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be 3 positive numbers, got {values!r}")
    return (
        image.astype(np.float32, copy=False),
        target.astype(np.int64, copy=False),
        (values[0], values[1], values[2]),
    )


def _random_flips(
    image: FloatArray, target: IntArray, rng: np.random.Generator
) -> tuple[FloatArray, IntArray]:
    """Flip each spatial axis with probability 0.5 (one draw per axis)."""
    axes = [a for a in range(3) if rng.random() < 0.5]
    if axes:
        image = np.flip(image, axis=tuple(a + 1 for a in axes))
        target = np.flip(target, axis=tuple(axes))
    return image, target


def _random_rot90(
    image: FloatArray, target: IntArray, rng: np.random.Generator, spacing: Sequence[float]
) -> tuple[FloatArray, IntArray]:
    """Rotate by a random multiple of 90 degrees in every plane that keeps shape and spacing."""
    for a, b in rot90_planes(target.shape, spacing):
        k = int(rng.integers(4))
        if k:
            image = np.rot90(image, k, axes=(a + 1, b + 1))
            target = np.rot90(target, k, axes=(a, b))
    return image, target


def _random_elastic(
    shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig, spacing: Sequence[float]
) -> Float64Array | None:
    """The elastic displacement field, drawn with ``cfg.elastic_probability``, or ``None``."""
    if cfg.elastic and cfg.elastic_sigma_voxels > 0 and rng.random() < cfg.elastic_probability:
        return random_displacement(
            shape, rng, cfg.elastic_sigma_voxels, cfg.elastic_grid_points, spacing
        )
    return None


def _random_rotation(
    shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig, spacing: Sequence[float]
) -> Float64Array | None:
    """A small rotation in a plane of equal spacing, with ``cfg.rotation_probability``."""
    planes = rotation_planes(shape, spacing)
    if cfg.rotation_degrees > 0 and planes and rng.random() < cfg.rotation_probability:
        # anisotropic scans: only the in-plane (y, x); isotropic: a random plane
        plane = planes[int(rng.integers(len(planes)))]
        angle = math.radians(rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees))
        return _rotation_matrix(plane, angle)
    return None


def _random_scaling(
    shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig, spacing: Sequence[float]
) -> Float64Array | None:
    """A log-uniform zoom along the finest axes, with ``cfg.scale_probability``."""
    low, high = cfg.scale_range
    axes = scaling_axes(shape, spacing)
    if (low, high) != (1.0, 1.0) and axes and rng.random() < cfg.scale_probability:
        zoom = math.exp(rng.uniform(math.log(low), math.log(high)))
        return _scaling_matrix(axes, zoom)
    return None


def _random_linear(
    shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig, spacing: Sequence[float]
) -> Float64Array | None:
    """Rotation, then scaling, folded into one ``(3, 3)`` matrix (``None``: neither drawn)."""
    rotation = _random_rotation(shape, rng, cfg, spacing)
    scaling = _random_scaling(shape, rng, cfg, spacing)
    if scaling is None:
        return rotation
    return scaling if rotation is None else rotation @ scaling


def augment(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[FloatArray, IntArray]:
    """Randomly augment one training patch and its target, consistently.

    Order: flips, 90-degree rotations, elastic deformation + small rotation + scaling (one
    resampling pass), then intensity changes (gamma, scale, shift, noise) on the image only.

    Parameters
    ----------
    image : np.ndarray
        ``(C, D, H, W)`` image patch (converted to float32).
    target : np.ndarray
        ``(D, H, W)`` integer target, ``-1`` = unknown / ignored.
    rng : np.random.Generator
        Source of all randomness: the same generator state gives the same result.
    cfg : AugmentConfig
        What to apply.
    spacing : 3 floats
        Voxel spacing ``(z, y, x)`` in mm of the patch.

    Returns
    -------
    image : np.ndarray
        ``(C, D, H, W)`` float32, C-contiguous, a new array.
    target : np.ndarray
        ``(D, H, W)`` int64, C-contiguous, a new array; values are a subset of the input's
        values plus ``-1``.

    Raises
    ------
    ValueError
        If the shapes do not match or the spacing is not 3 positive numbers.
    """
    image, target, spacing = _checked_inputs(image, target, spacing)
    if cfg.flips:
        image, target = _random_flips(image, target, rng)
    if cfg.rotate90:
        image, target = _random_rot90(image, target, rng, spacing)
    shape = target.shape
    displacement = _random_elastic(shape, rng, cfg, spacing)
    linear = _random_linear(shape, rng, cfg, spacing)
    if displacement is not None or linear is not None:
        coords = elastic_coordinates(shape, displacement, linear)
        image, target = resample(np.ascontiguousarray(image), target, coords)  # new arrays
    else:
        image = np.array(image, dtype=np.float32, order="C", copy=True)
        target = np.array(target, dtype=np.int64, order="C", copy=True)
    if cfg.intensity_scale > 0 or cfg.intensity_shift > 0 or cfg.gamma > 0 or cfg.noise_std > 0:
        image = _intensity(image, rng, cfg)
    return image, target
