"""A training run's plan: the input checked and every automatic setting resolved, up front.

:func:`plan_training` turns an image, its sparse annotation and a :class:`TrainConfig` into a
frozen :class:`TrainingPlan`: class count, names, spacing, device, patch, network, planes,
loss weighting, flips, frozen batch norm, threads and batch workers. The run
(:mod:`.loop`) only executes it, and benchmarks read it instead of reaching into the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..annotation import declared_classes, painted_counts, validate_annotation
from ..augmentation import AugmentConfig
from ..batches import default_workers
from ..device import resolve_device
from ..errors import MedsegInputError
from ..model import TrainedModel
from ..models import NetworkConfig
from ..normalization import IntensityNormalization
from ..painted_slices import as_3d
from .config import TrainConfig
from .defaults import (
    choose_planes,
    default_class_weight_power,
    default_flips,
    default_freeze_batch_norm,
    gpu_torch_threads,
    network_config_for,
    patch_shape_for,
)
from .warm import adopt_network, class_names_for


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a run will do, resolved before it starts."""

    config: TrainConfig
    n_classes: int
    class_names: tuple[str, ...]
    spacing: tuple[float, float, float]
    device: torch.device
    normalization: IntensityNormalization
    class_voxel_counts: tuple[int, ...]
    patch_shape: tuple[int, ...]
    network: NetworkConfig
    planes: tuple[int, ...]
    freeze_batch_norm: float
    class_weight_power: float
    flips: bool
    batch_workers: int
    threads: int | None
    init: TrainedModel | None = None

    @property
    def augment(self) -> AugmentConfig | None:
        """The augmentation of every patch (``None``: patches as drawn)."""
        if not self.config.augment:
            return None
        return AugmentConfig(elastic=self.config.elastic, flips=self.flips, rotate90=self.flips)

    @property
    def members(self) -> int:
        """Networks trained one after the other (an ensemble when more than one)."""
        return self.config.ensemble

    @property
    def member_config(self) -> TrainConfig:
        """The settings of one member: an equal share of the time budget."""
        config = self.config
        if self.members > 1 and config.time_budget is not None:
            return replace(config, time_budget=config.time_budget / self.members)
        return config


def full_class_names(n_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """``n_classes`` names, background first; unnamed structures are ``structure k``."""
    names = list(class_names or [])
    if not names or names[0].lower() != "background":
        names = ["background", *names]
    names = names[:n_classes]
    while len(names) < n_classes:
        names.append(f"structure {len(names)}")
    return names or ["background"]


def checked_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, float, float]:
    """Three positive voxel sizes (a 2D image's slice gets the larger in-plane size)."""
    values = tuple(float(s) for s in (spacing or (1.0,) * ndim))
    if len(values) == 2:
        values = (max(values), *values)
    if len(values) != 3 or min(values) <= 0:
        raise MedsegInputError(f"spacing {values} must be three positive numbers")
    return (values[0], values[1], values[2])


def plan_training(
    image: np.ndarray,
    annotation: np.ndarray,
    config: TrainConfig | None = None,
    *,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    init: TrainedModel | None = None,
    normalization: IntensityNormalization | None = None,
) -> TrainingPlan:
    """Check the input and resolve every automatic setting of a run.

    With ``init`` (a warm start) the network, its patch and the intensity normalisation are
    the earlier model's, and the classes are its classes plus any new structure painted.
    Else the intensity normalisation is ``normalization``, or one fitted on ``image``.

    Raises
    ------
    MedsegInputError
        For unusable input, before any work.
    """
    config = config or TrainConfig()
    if init is not None:
        config = adopt_network(config, init)
    image = as_3d(image, "image")
    annotation = as_3d(annotation, "annotation")
    known = 0 if init is None else init.config.n_classes  # its classes may go unpainted
    n_classes = validate_annotation(
        annotation, image.shape, declared_classes(class_names), known=known
    )
    if init is not None:
        n_classes = max(n_classes, init.config.n_classes)
    if not np.isfinite(image).any():
        raise MedsegInputError("image has no finite voxel (all NaN or infinite)")
    spacing_t = checked_spacing(spacing, image.ndim)
    device = resolve_device(config.device)
    if init is not None:
        normalization = init.config.normalization
    elif normalization is None:
        normalization = IntensityNormalization.fit(image)
    counts = tuple(int(c) for c in painted_counts(annotation, n_classes + 1)[1:])
    patch_shape = patch_shape_for(config, image.shape, spacing_t)
    freeze, power = config.freeze_batch_norm, config.class_weight_power
    if config.flips == "auto":
        flips = default_flips(n_classes - 1, spacing_t, image.shape)
    else:
        flips = config.flips == "on"
    workers = config.batch_workers
    if workers is None:
        workers = default_workers(device.type)
    return TrainingPlan(
        config=config,
        n_classes=n_classes,
        class_names=tuple(
            full_class_names(n_classes, class_names)
            if init is None
            else class_names_for(n_classes, init, class_names)
        ),
        spacing=spacing_t,
        device=device,
        normalization=normalization,
        class_voxel_counts=counts,
        patch_shape=patch_shape,
        network=(
            network_config_for(config, n_classes, spacing_t, patch_shape)
            if init is None
            else replace(init.config.network, n_classes=n_classes, members=1)
        ),
        planes=choose_planes(config, image.shape),
        freeze_batch_norm=default_freeze_batch_norm(n_classes - 1) if freeze is None else freeze,
        class_weight_power=default_class_weight_power(counts) if power is None else power,
        flips=flips,
        batch_workers=workers,
        threads=config.threads or gpu_torch_threads(device, workers),
        init=init,
    )
