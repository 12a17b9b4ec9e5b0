"""Training a segmentation network on a sparse annotation.

:func:`train` is a generator: it yields a :class:`TrainProgress` after every optimisation
step and returns a :class:`~napari_medseg.checkpoint.TrainedModel` when it ends (time budget
spent, iteration count reached, or ``stop`` set). Front ends drive it: the CLI with a
progress bar, napari with ``thread_worker``.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from .annotation import annotation_to_target, validate_annotation
from .augmentation import AugmentConfig, augment
from .checkpoint import ModelConfig, TrainedModel
from .device import autocast_dtype, resolve_device
from .errors import MedsegInputError
from .losses import class_weights_from_counts, masked_cross_entropy, masked_soft_dice
from .models import NetworkConfig, build_network
from .models.planning import plan_network, plan_patch_shape
from .normalization import IntensityNormalization
from .sampling import AnnotatedPatchSampler

Arch = Literal["unet3d", "unet2d", "fcn"]


@dataclass
class TrainConfig:
    """Settings of one training run (the Train widget's form is built from these fields).

    Parameters
    ----------
    arch : {"unet3d", "unet2d", "fcn"}
        Network: the 3D U-Net of Çiçek et al. 2016, a 2D U-Net (Ronneberger 2015) applied
        slice by slice, or a 2D FCN-8s (Long 2015).
    time_budget : float or None
        Wall-clock seconds to train for (``None``: no limit; then ``iterations`` is needed).
    iterations : int or None
        Optimisation steps; with a time budget too, whichever comes first ends training.
        A fixed ``seed`` and ``iterations`` give the same model twice on CPU.
    device : {"auto", "cpu", "cuda", "mps"}
        ``auto`` picks CUDA, then Apple MPS, then the CPU.
    seed : int
        Seed of every random choice (patches, augmentation, initial weights).
    base_channels : int
        Width of the first level; deeper levels double it.
    batch_norm : bool
        Batch normalisation after every convolution (the paper's choice).
    patch_shape : tuple of int or None
        Training patch, array order; ``None`` chooses one from the image size and spacing.
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate of AdamW (warm-up, then cosine decay over the run).
    dice_weight : float
        Weight of the soft Dice term added to the cross-entropy (0 disables it).
    augment : bool
        On-the-fly augmentation: flips, in-plane right-angle rotations, intensity scale and
        shift, elastic deformation.
    elastic : bool
        Elastic deformation (with ``augment``).
    mixed_precision : bool
        Autocast on CUDA (and on CPUs with AMX); ignored elsewhere.
    threads : int or None
        CPU threads for torch; ``None`` leaves torch's setting.
    """

    arch: Arch = "unet3d"
    time_budget: float | None = 60.0
    iterations: int | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    base_channels: int = 16
    batch_norm: bool = True
    patch_shape: tuple[int, int, int] | None = None
    batch_size: int = 2
    learning_rate: float = 3e-3
    dice_weight: float = 1.0
    augment: bool = True
    elastic: bool = True
    mixed_precision: bool = True
    threads: int | None = None

    def check(self) -> None:
        """Raise :class:`MedsegInputError` for settings that cannot work."""
        if self.arch not in ("unet3d", "unet2d", "fcn"):
            raise MedsegInputError(f"unknown architecture {self.arch!r}: use unet3d, unet2d or fcn")
        if self.time_budget is None and self.iterations is None:
            raise MedsegInputError("give a time budget or an iteration count")
        if self.time_budget is not None and self.time_budget <= 0:
            raise MedsegInputError("the time budget must be positive")
        if self.iterations is not None and self.iterations < 1:
            raise MedsegInputError("the iteration count must be at least 1")
        if self.base_channels < 1 or self.batch_size < 1:
            raise MedsegInputError("base channels and batch size must be at least 1")


@dataclass
class TrainProgress:
    """What :func:`train` yields after each step."""

    step: int
    total_steps: int | None
    loss: float
    elapsed: float
    fraction: float
    message: str = ""


@dataclass
class _RunState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    stop_reason: str = "finished"


def _as_volume(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim != 3:
        raise MedsegInputError(
            f"{name} has {array.ndim} dimensions; napari-medseg segments 2D images and 3D volumes"
        )
    return array


def _default_class_names(n_classes: int, class_names: Sequence[str] | None) -> list[str]:
    names = list(class_names or [])
    if names and names[0].lower() != "background":
        names = ["background", *names]
    names = names[:n_classes]
    while len(names) < n_classes:
        names.append(f"structure {len(names)}")
    if not names:
        names = ["background"]
    return names


def _patch_for(config: TrainConfig, shape: tuple[int, ...], spacing: tuple[float, ...]):
    if config.patch_shape is not None:
        return tuple(int(p) for p in config.patch_shape)
    if config.arch == "unet3d":
        return plan_patch_shape(shape, spacing)
    # 2D networks: wide in-plane patches, a few slices folded into the batch.
    in_plane = tuple(min(s, 128) for s in shape[1:])
    return (min(shape[0], 4), *in_plane)


def _lr_factor(fraction: float, step: int, warmup: int = 10) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


def train(
    image: np.ndarray,
    annotation: np.ndarray,
    config: TrainConfig | None = None,
    *,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    stop: threading.Event | None = None,
) -> Generator[TrainProgress, None, TrainedModel]:
    """Train a network on a sparse annotation.

    Parameters
    ----------
    image : np.ndarray
        ``(z, y, x)`` (or 2D) intensity volume.
    annotation : np.ndarray
        Same shape; ``0`` not annotated, ``1`` background, ``k + 1`` structure ``k``.
    config : TrainConfig, optional
        Settings; defaults to ``TrainConfig()``.
    spacing : sequence of float, optional
        Voxel size in mm (array order); plans anisotropic networks and patches.
    class_names : sequence of str, optional
        Names of the structures (background may be included first).
    stop : threading.Event, optional
        Set it from another thread to end training after the current step; the model
        trained so far is returned.

    Yields
    ------
    TrainProgress
        After every step.

    Returns
    -------
    TrainedModel
        The trained network in eval mode, on the CPU, with its config.

    Raises
    ------
    MedsegInputError
        For unusable input (checked before any training).
    """
    config = config or TrainConfig()
    config.check()
    image = _as_volume(image, "image")
    annotation = _as_volume(annotation, "annotation")
    n_classes = validate_annotation(annotation, image.shape)
    spacing_t = tuple(float(s) for s in (spacing or (1.0,) * image.ndim))
    if len(spacing_t) == 2:
        spacing_t = (max(spacing_t), *spacing_t)
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise MedsegInputError(f"spacing {spacing_t} must be three positive numbers")

    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)

    normalization = IntensityNormalization.fit(image)
    norm_image = normalization.apply(image)[np.newaxis]
    target = annotation_to_target(annotation)
    counts = [int(np.count_nonzero(target == c)) for c in range(n_classes)]

    patch_shape = _patch_for(config, image.shape, spacing_t)
    pool_sizes, kernel_sizes = (None, None)
    if config.arch == "unet3d":
        pool_sizes, kernel_sizes = plan_network(spacing_t, patch_shape)
    net_config = NetworkConfig(
        arch=config.arch,
        in_channels=1,
        n_classes=n_classes,
        base_channels=config.base_channels,
        batch_norm=config.batch_norm,
        pool_sizes=pool_sizes,
        kernel_sizes=kernel_sizes,
    )
    network = build_network(net_config).to(device)
    network.train()
    sampler = AnnotatedPatchSampler(norm_image, target, patch_shape, rng)
    aug_config = AugmentConfig(elastic=config.elastic)
    weights = class_weights_from_counts(counts).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    amp_dtype = autocast_dtype(device, config.mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    pin = device.type == "cuda"

    state = _RunState()
    last_good = copy.deepcopy(network.state_dict())
    seconds_per_step = 0.0

    def fraction_done(elapsed: float) -> float:
        parts = []
        if config.iterations:
            parts.append(state.step / config.iterations)
        if config.time_budget:
            parts.append(elapsed / config.time_budget)
        return float(min(1.0, max(parts)))

    while True:
        elapsed = time.perf_counter() - start
        if stop is not None and stop.is_set():
            state.stop_reason = "stopped"
            break
        if config.iterations is not None and state.step >= config.iterations:
            break
        if config.time_budget is not None and elapsed + seconds_per_step > config.time_budget:
            if state.step > 0:
                break
        step_start = time.perf_counter()
        images, targets = sampler.batch(config.batch_size)
        if config.augment:
            pairs = [augment(i, t, rng, aug_config, spacing_t) for i, t in zip(images, targets)]
            images = np.stack([p[0] for p in pairs])
            targets = np.stack([p[1] for p in pairs])
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * _lr_factor(fraction_done(elapsed), state.step)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = network(x)
        loss = masked_cross_entropy(logits, y, weights)
        if config.dice_weight > 0:
            loss = loss + config.dice_weight * masked_soft_dice(logits, y)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            network.load_state_dict(last_good)
            state.stop_reason = "diverged"
            yield TrainProgress(
                state.step,
                config.iterations,
                loss_value,
                time.perf_counter() - start,
                fraction_done(time.perf_counter() - start),
                "loss became NaN or infinite: training stopped, last good weights kept",
            )
            break
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        state.losses.append(loss_value)
        if state.step % 10 == 0:
            last_good = copy.deepcopy(network.state_dict())
        step_time = time.perf_counter() - step_start
        seconds_per_step = step_time if state.step == 1 else 0.8 * seconds_per_step + 0.2 * step_time
        elapsed = time.perf_counter() - start
        yield TrainProgress(
            state.step, config.iterations, loss_value, elapsed, fraction_done(elapsed)
        )

    network.eval()
    network.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    history = {
        "steps": state.step,
        "seconds": round(time.perf_counter() - start, 3),
        "final_loss": float(np.mean(state.losses[-10:])) if state.losses else None,
        "stop_reason": state.stop_reason,
        "device": str(device),
        "class_voxel_counts": counts,
    }
    settings = asdict(config)
    model_config = ModelConfig(
        network=net_config,
        class_names=_default_class_names(n_classes, class_names),
        normalization=normalization,
        spacing=spacing_t,
        patch_shape=tuple(int(p) for p in patch_shape),
        training=settings,
        history=history,
    )
    return TrainedModel(network, model_config)
