"""Choose pooling, kernels and patch size from voxel spacing (nnU-Net's anisotropy heuristic).

Thick-slice scans (e.g. spacing ``(6.5, 0.78, 0.78)`` mm) should not be pooled or convolved
along the thick axis until the in-plane resolution has been reduced to a comparable
spacing; isotropic scans get the paper's ``(2, 2, 2)`` pooling and ``(3, 3, 3)`` kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .blocks import Triple
from .unet3d import resolve_pools_kernels

if TYPE_CHECKING:
    from . import NetworkConfig

#: Default patch budget: 64**3 voxels trains a base-16 3D U-Net at a few steps per
#: second on a laptop CPU.
DEFAULT_BUDGET_VOXELS = 64**3

#: An axis is pooled only while its patch size is at least this (so it stays >= 4).
MIN_POOL_SIZE = 8

#: An axis counts as "fine" while its spacing is at most this times the finest spacing
#: (sqrt(2) would keep voxels nearest to cubic; nnU-Net uses 2; why 1.5: docs/DEFAULTS.md).
ANISOTROPY_RATIO = 1.5


def _check3(value: Sequence[float], name: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in value)
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{name} must be 3 positive finite numbers, got {tuple(value)!r}")
    return vals


def plan_network(
    spacing: Sequence[float],
    patch_shape: Sequence[int],
    levels: int = 3,
) -> tuple[list[Triple], list[Triple]]:
    """Pooling per down-sampling step and kernel per level for a 3D U-Net.

    At each step an axis is pooled by 2 only if its current patch size is >= 8 (so it stays
    >= 4) and its current spacing is <= 1.5x the smallest current spacing among the axes
    that are still that large (an axis too small to pool does not block the others). The
    kernel is 3 along an axis from the first level at which its current spacing is
    <= 1.5x the finest (and its patch size is > 1), else 1 (:data:`ANISOTROPY_RATIO`).

    Parameters
    ----------
    spacing : 3 floats
        Voxel spacing ``(z, y, x)`` in mm.
    patch_shape : 3 ints
        Training patch shape ``(z, y, x)``.
    levels : int
        Number of down-sampling steps (3 for the paper's 4-level U-Net).

    Returns
    -------
    pool_sizes : list of 3-tuples
        ``levels`` entries, each 1 or 2 per axis (``(1, 1, 1)`` once nothing may be pooled).
    kernel_sizes : list of 3-tuples
        ``levels + 1`` entries, each 1 or 3 per axis.

    Examples
    --------
    >>> plan_network((1.0, 1.0, 1.0), (64, 64, 64))[0]
    [(2, 2, 2), (2, 2, 2), (2, 2, 2)]
    >>> plan_network((6.5, 0.78, 0.78), (8, 96, 96))[1][0]
    (1, 3, 3)
    """
    current = list(_check3(spacing, "spacing"))
    shape = [int(s) for s in patch_shape]
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"patch_shape must be 3 positive ints, got {tuple(patch_shape)!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")

    conv3 = [False, False, False]  # once an axis gets kernel 3 it keeps it

    def kernel() -> Triple:
        # axes of size 1 have nothing to convolve; they do not define the finest spacing
        active = [sp for sp, sz in zip(current, shape) if sz > 1] or current
        finest = min(active)
        for a in range(3):
            conv3[a] = conv3[a] or (shape[a] > 1 and current[a] <= ANISOTROPY_RATIO * finest)
        return tuple(3 if c else 1 for c in conv3)  # type: ignore[return-value]

    pools: list[Triple] = []
    kernels: list[Triple] = []
    for _ in range(levels):
        kernels.append(kernel())
        # the finest spacing among the axes that are still large enough to be pooled
        poolable = [sp for sp, sz in zip(current, shape) if sz >= MIN_POOL_SIZE]
        finest = min(poolable) if poolable else 0.0
        pool = tuple(
            2 if (sz >= MIN_POOL_SIZE and sp <= ANISOTROPY_RATIO * finest) else 1
            for sp, sz in zip(current, shape)
        )
        pools.append(pool)  # type: ignore[arg-type]
        current = [sp * p for sp, p in zip(current, pool)]
        shape = [sz // p for sz, p in zip(shape, pool)]
    kernels.append(kernel())
    return pools, kernels


def pooling_product(pool_sizes: Sequence[Sequence[int]]) -> Triple:
    """Total down-sampling factor per axis of a list of pool sizes."""
    out = [1, 1, 1]
    for p in pool_sizes:
        out = [o * int(v) for o, v in zip(out, p)]
    return (out[0], out[1], out[2])


def _isotropic_patch(
    image_shape: Sequence[int], spacing: Sequence[float], budget: int
) -> list[float]:
    """Patch as close to a cube in mm as the image allows, with ~``budget`` voxels."""
    if math.prod(image_shape) <= budget:
        return [float(s) for s in image_shape]

    def voxels(side_mm: float) -> float:
        return math.prod(min(float(n), side_mm / sp) for n, sp in zip(image_shape, spacing))

    lo, hi = 0.0, max(n * sp for n, sp in zip(image_shape, spacing))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if voxels(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return [max(1.0, min(float(n), lo / sp)) for n, sp in zip(image_shape, spacing)]


def plan_patch_shape(
    image_shape: Sequence[int],
    spacing: Sequence[float],
    budget_voxels: int = DEFAULT_BUDGET_VOXELS,
    levels: int = 3,
) -> Triple:
    """Training patch shape: roughly isotropic in mm, divisible by the planned pooling.

    The patch is the largest box that is close to a cube in millimetres, fits in the
    image, and holds at most ``budget_voxels`` voxels; each axis is then rounded down to a
    multiple of the pooling product that :func:`plan_network` plans for it. Along an axis
    where the image is smaller than that multiple the patch is the multiple itself (the
    sampler pads the image), so the budget can be exceeded slightly in that case.

    Parameters
    ----------
    image_shape : 3 ints
        Image shape ``(z, y, x)``.
    spacing : 3 floats
        Voxel spacing ``(z, y, x)`` in mm.
    budget_voxels : int
        Upper bound on the patch's voxel count (default ``64**3``).
    levels : int
        Down-sampling steps of the network (3 for the 4-level 3D U-Net).

    Returns
    -------
    tuple of 3 ints
        Patch shape; use it with ``plan_network(spacing, patch, levels)``.

    Examples
    --------
    >>> plan_patch_shape((200, 200, 200), (1.0, 1.0, 1.0))
    (64, 64, 64)
    """
    sp = _check3(spacing, "spacing")
    shape = [int(s) for s in image_shape]
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"image_shape must be 3 positive ints, got {tuple(image_shape)!r}")
    if budget_voxels < 1:
        raise ValueError(f"budget_voxels must be positive, got {budget_voxels}")
    patch = [max(1, int(math.floor(p))) for p in _isotropic_patch(shape, sp, budget_voxels)]
    for _ in range(8):  # rounding can only remove pooling steps: converges in a few rounds
        pools, _kernels = plan_network(sp, patch, levels)
        divisor = pooling_product(pools)
        rounded = [max(d, (p // d) * d) for p, d in zip(patch, divisor)]
        if rounded == patch:
            break
        patch = rounded
    return (patch[0], patch[1], patch[2])


def required_divisor(cfg: NetworkConfig) -> Triple:
    """The multiple of ``(D, H, W)`` at which the network needs no internal padding.

    Networks accept any size (they pad internally), but patches that are multiples of this
    waste no computation. 2D networks need nothing along ``D``.

    Parameters
    ----------
    cfg : NetworkConfig
        The network's configuration.

    Returns
    -------
    tuple of 3 ints
        ``unet3d``: product of its pool sizes (``(8, 8, 8)`` by default);
        ``unet2d``: ``(1, 16, 16)``; ``fcn``: ``(1, 32, 32)``.
    """
    if cfg.arch == "unet3d":
        pools, _ = resolve_pools_kernels(cfg.pool_sizes, cfg.kernel_sizes)
        return pooling_product(pools)
    if cfg.arch == "unet2d":
        from .unet2d import STEPS

        return (1, 2**STEPS, 2**STEPS)
    if cfg.arch == "fcn":
        from .fcn import STAGES

        return (1, 2**STAGES, 2**STAGES)
    raise ValueError(f"unknown network arch {cfg.arch!r}")
