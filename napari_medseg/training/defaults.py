"""The rules that resolve a :class:`TrainConfig`'s automatic settings from the annotation.

Each rule is a pure function of the painted classes, the image's shape and spacing. The
measurements behind every number here are in ``docs/DEFAULTS.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import NetworkConfig
from ..models.planning import ANISOTROPY_RATIO, plan_network, plan_patch_shape
from .config import TrainConfig

#: Voxels in a 3D U-Net training patch, and the width of its first level, on every device
#: (one plan also means a seed gives the same network on a laptop and on a GPU).
PATCH_VOXELS = 32 * 48 * 48
BASE_CHANNELS = 8
#: Groups of channels of ``TrainConfig(group_norm=True)``.
NORM_GROUPS = 4
#: A structure with fewer painted voxels than this counts as rare
#: (:func:`default_class_weight_power`).
RARE_STRUCTURE_VOXELS = 100
#: Fraction of the run with frozen batch-norm statistics when several structures are painted.
FROZEN_BATCH_NORM_FRACTION = 0.3
#: torch's CPU threads while a GPU trains with batch workers (its own CPU work is small).
GPU_TORCH_THREADS = 4


def default_freeze_batch_norm(n_structures: int) -> float:
    """The frozen batch-norm phase ``freeze_batch_norm=None`` chooses: 0.3 of the run for
    several structures, none for one."""
    return FROZEN_BATCH_NORM_FRACTION if n_structures > 1 else 0.0


def default_class_weight_power(counts: Sequence[int]) -> float:
    """Loss-weighting power chosen from the painted voxel counts (background first).

    0 (no weighting: patches are already drawn class-balanced), unless there are several
    structures and one of them has fewer than :data:`RARE_STRUCTURE_VOXELS` painted voxels;
    then 0.5 (inverse square-root frequency).
    """
    structures = [int(c) for c in counts[1:]]
    if len(structures) > 1 and min(structures) < RARE_STRUCTURE_VOXELS:
        return 0.5
    return 0.0


def default_flips(
    n_structures: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    shape: Sequence[int] | None = None,
) -> bool:
    """Whether ``flips="auto"`` mirrors and turns patches: one structure on a thick-slice scan
    (coarsest spacing at least :data:`~.models.planning.ANISOTROPY_RATIO` times the finest).

    With several structures a mirrored or turned patch can swap which is which. ``shape``:
    axes of size 1 (a 2D image) are left out of the comparison.
    """
    if n_structures > 1:
        return False
    sizes = shape if shape is not None else [2] * len(spacing)
    active = [float(s) for s, n in zip(spacing, sizes) if n > 1]
    return len(active) > 1 and max(active) >= ANISOTROPY_RATIO * min(active)


def choose_planes(config: TrainConfig, shape: Sequence[int]) -> tuple[int, ...]:
    """The axes across which a 2D network takes its slices: ``(0,)`` or ``(0, 1, 2)``
    (``(0,)`` for the 3D U-Net and for a single slice)."""
    if config.arch == "unet3d" or config.planes == "one" or shape[0] == 1:
        return (0,)
    return (0, 1, 2)


def patch_shape_for(
    config: TrainConfig, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[int, ...]:
    """The training patch: the config's, or one planned from the image size and spacing
    (2D networks: wide in-plane patches, a few slices folded into the batch)."""
    if config.patch_shape is not None:
        return tuple(int(p) for p in config.patch_shape)
    if config.arch == "unet3d":
        return tuple(plan_patch_shape(shape, spacing, budget_voxels=PATCH_VOXELS))
    in_plane = tuple(min(s, 128) for s in shape[1:])
    return (min(shape[0], 4), *in_plane)


def network_config_for(
    config: TrainConfig,
    n_classes: int,
    spacing: Sequence[float],
    patch_shape: Sequence[int],
) -> NetworkConfig:
    """The network a run builds (pooling and kernels planned for the 3D U-Net)."""
    pool_sizes, kernel_sizes = (None, None)
    if config.arch == "unet3d":
        pool_sizes, kernel_sizes = plan_network(tuple(spacing), tuple(patch_shape))
    return NetworkConfig(
        arch=config.arch,
        in_channels=1,
        n_classes=n_classes,
        base_channels=config.base_channels or BASE_CHANNELS,
        batch_norm=config.batch_norm,
        norm_groups=NORM_GROUPS if config.group_norm else 0,
        pool_sizes=pool_sizes,
        kernel_sizes=kernel_sizes,
    )


def gpu_torch_threads(device: torch.device, workers: int) -> int | None:
    """torch's CPU threads for a run on ``device`` (``None``: leave them as they are)."""
    if device.type == "cpu" or not workers:
        return None
    return min(GPU_TORCH_THREADS, torch.get_num_threads())
