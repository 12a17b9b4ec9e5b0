"""Training a segmentation network on a sparse annotation.

:func:`train` is a generator: it yields a :class:`TrainProgress` after every optimisation
step and returns a :class:`~napari_medseg.checkpoint.TrainedModel` when it ends (time budget
spent, iteration count reached, or ``stop`` set). Front ends drive it: the CLI with a
progress bar, napari with ``thread_worker``.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from .annotation import annotation_to_target, validate_annotation
from .augmentation import AugmentConfig, augment
from .batches import PrefetchedBatches, SerialBatches, default_workers
from .checkpoint import ModelConfig, TrainedModel
from .device import autocast_dtype, memory_format_for, resolve_device
from .errors import MedsegInputError
from .losses import class_weights_from_counts, masked_cross_entropy, masked_soft_dice
from .models import MAX_MEMBERS, Ensemble, NetworkConfig, build_network
from .models.calibration import batch_norm_layers, recalibrate_batch_norm
from .models.planning import ANISOTROPY_RATIO, plan_network, plan_patch_shape
from .normalization import IntensityNormalization
from .painted_slices import as_3d
from .sampling import AnnotatedPatchSampler, unknown_region

Arch = Literal["unet3d", "unet2d", "fcn"]
Planes = Literal["one", "three"]


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
    base_channels : int or None
        Width of the first level; deeper levels double it. ``None``: 8 (:data:`BASE_CHANNELS`;
        a laptop trains it in minutes, and a GPU did no better with 16).
    batch_norm : bool
        Batch normalisation after every convolution (the paper's choice).
    group_norm : bool
        With ``batch_norm``: normalise over groups of channels within each patch
        (:data:`NORM_GROUPS` groups; Wu and He 2018) instead of over the batch, so that
        training (two class-balanced patches) and prediction (tiles of the whole image)
        normalise alike. Not the default (the paper's network has batch norm, and it lost
        on most cases): on the three-tissue brain at 120 s it raised the 3D U-Net from
        0.77-0.83 to 0.862, 0.873 and 0.879 mean Dice (seeds 0-2), and the prostate phantom
        at 60 s from about 0.69 to 0.735; but single structures fell: breast1 0.48 (almost
        nothing found), brain1 at 180 s 0.740, 0.555 and 0.714, synthetic0 0.832 and synthetic1
        0.737 against 0.933 and 0.905 at 60 s. A step also costs more on a CPU
        (``benchmarks/results/group_norm.jsonl``).
    calibrate_batch_norm : bool
        After training, re-estimate the batch-norm statistics on un-augmented tiles of the
        image where prediction decides (the box of voxels nobody painted, grown by half a
        patch; the whole image if everything is painted) instead of keeping those of the
        class-balanced, augmented training patches (:mod:`napari_medseg.models.calibration`;
        seconds, weights untouched; not after Stop, which must take effect at once). Off by
        default: paired on the same 3D U-Nets it raised the three-tissue brain by +0.012 to
        +0.055 Dice (CSF 0.54 -> 0.68) and brain1 by +0.005 and +0.012, but seven brain1
        runs with it on (180 s, seeds 0-6) gave 0.371-0.797 (median 0.768) against
        0.513-0.801 (median 0.785) without, three of them marking tumour far from it; breast1
        moved by -0.032 to +0.067, the synthetic volumes by -0.016 to -0.002
        (``benchmarks/results/batch_norm_calibration.jsonl``,
        ``brain1_180s_calibrated_cli.txt``).
    freeze_batch_norm : float or None
        Fraction of the run, at its end, during which batch norm normalises with its
        running statistics (the ones prediction uses) instead of each batch's own, while the
        weights go on learning; 0 turns it off. With batches of two class-balanced patches,
        each batch's statistics differ from the running ones the network is applied with,
        which moves every decision boundary a little; in the frozen phase the network is
        trained as it will be applied. ``None`` chooses from the annotation
        (:func:`default_freeze_batch_norm`): 0.3 when several structures are painted, off
        for one.
    patch_shape : tuple of int or None
        Training patch, array order; ``None`` chooses one from the image size and spacing.
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate of AdamW (warm-up, then cosine decay over the run).
    dice_weight : float
        Weight of the soft Dice term added to the cross-entropy (0 disables it).
    class_weight_power : float or None
        Cross-entropy class weights are ``(total / count) ** power`` over the annotated voxels.
        ``None`` chooses from the annotation (:func:`default_class_weight_power`): 0 (no
        weighting; patches are already drawn class-balanced, and weighting on top
        over-segments), or 0.5 when one of several structures is barely painted.
    augment : bool
        On-the-fly augmentation (the paper's): small rotations, scaling, intensity scale
        and shift, elastic deformation; flips and right-angle rotations as ``flips`` says.
    elastic : bool
        Elastic deformation (with ``augment``).
    flips : {"auto", "on", "off"}
        Mirror flips and right-angle rotations (with ``augment``). ``auto``: on when one
        structure is painted on a thick-slice scan, off otherwise (:func:`default_flips`):
        with several structures a mirrored or turned patch can swap which structure is which
        (left and right organs, structures told apart by where they lie or which way they
        run), and on isotropic volumes they cost more than they add.
    mixed_precision : bool
        bf16 (or fp16) autocast on CUDA; a CPU trains in float32 whatever this says (bf16
        training on a CPU lost brain1 twice in six runs: :func:`~.device.autocast_dtype`).
    threads : int or None
        CPU threads for torch during training (restored afterwards). ``None``: torch's
        setting on a CPU; at most 4 on a GPU with batch workers, which need the cores.
    batch_workers : int or None
        Threads that draw and augment batches ahead of the step. ``None``: none on a CPU
        (torch's step already uses every core), all cores but one (up to 16) on a GPU,
        where augmenting on the training thread would leave the GPU idle most of the time
        (:func:`napari_medseg.batches.default_workers`). ``0`` makes batches on the training
        thread.
    ensemble : int
        Networks trained one after the other, each with its own seed (``seed``, ``seed + 1``,
        ...) and an equal share of the time budget (or ``iterations`` steps each), and
        applied as one by averaging their probabilities. Averaging evens out runs that
        under- or over-segment a single structure on a real scan: brain1 in 180 s, single
        networks scored 0.51-0.80 Dice over seven seeds, three 60 s networks 0.73-0.81 over
        35 triples; breast1 in 60 s, 0.87-0.96 against 0.75-0.87 (3 seeds). Shorter networks
        cost where steps matter: synthetic0 0.87-0.89 against 0.92, and with several
        structures at 60 s small structures were lost (prostate phantom 0.58 against 0.70).
        So the default is 1, a single network.
    planes : {"one", "three"}
        2D networks only: the slice orientations they learn from and predict in. ``one``:
        slices across the first array axis (the one napari's slider moves through).
        ``three``: the three orthogonal planes, one network for all; every painted slice
        then trains it whole, whatever plane it was painted in, and prediction averages the
        three passes (three times the prediction time). Not the default: with the 2D U-Net
        at 60 s on nine volumes painted on every axis (synthetic, nodules, the three-tissue
        brain) it scored 0.768 mean Dice against 0.797 with one plane, ahead on three of
        them; the brain went 0.814 against 0.858 at 60 s and 0.883 against 0.874 at 120 s
        (``benchmarks/results/planes_2d_*``). On thick-slice scans a slice across the
        slices looks nothing like one in their plane. The 3D U-Net ignores it.
    """

    arch: Arch = "unet3d"
    time_budget: float | None = 60.0
    iterations: int | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    base_channels: int | None = None
    batch_norm: bool = True
    group_norm: bool = False
    calibrate_batch_norm: bool = False
    freeze_batch_norm: float | None = None
    patch_shape: tuple[int, int, int] | None = None
    batch_size: int = 2
    learning_rate: float = 1e-2
    dice_weight: float = 1.0
    class_weight_power: float | None = None
    augment: bool = True
    elastic: bool = True
    flips: Literal["auto", "on", "off"] = "auto"
    mixed_precision: bool = True
    threads: int | None = None
    batch_workers: int | None = None
    ensemble: int = 1
    planes: Planes = "one"

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
        if self.planes not in ("one", "three"):
            raise MedsegInputError(f"planes must be one or three, not {self.planes!r}")
        if self.flips not in ("auto", "on", "off"):
            raise MedsegInputError(f"flips must be auto, on or off, not {self.flips!r}")
        if (self.base_channels is not None and self.base_channels < 1) or self.batch_size < 1:
            raise MedsegInputError("base channels and batch size must be at least 1")
        if self.batch_workers is not None and self.batch_workers < 0:
            raise MedsegInputError("batch workers cannot be negative")
        if self.freeze_batch_norm is not None and not 0.0 <= self.freeze_batch_norm <= 1.0:
            raise MedsegInputError("freeze_batch_norm is a fraction of the run, 0 to 1")
        if not 1 <= self.ensemble <= MAX_MEMBERS:
            raise MedsegInputError(f"ensemble must be 1 to {MAX_MEMBERS} networks")


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
    seconds_per_step: float = 0.0
    _last: float = field(default_factory=time.perf_counter)

    def record(self, loss: float) -> None:
        now = time.perf_counter()
        took, self._last = now - self._last, now
        self.step += 1
        self.losses.append(loss)
        rate = self.seconds_per_step
        self.seconds_per_step = took if self.step == 1 else 0.8 * rate + 0.2 * took


def _declared_classes(class_names: Sequence[str] | None) -> int | None:
    """Number of classes (background included) that the given names declare, if any."""
    names = list(class_names or [])
    if not names:
        return None
    return len(names) + (0 if names[0].lower() == "background" else 1)


def _default_class_names(n_classes: int, class_names: Sequence[str] | None) -> list[str]:
    names = list(class_names or [])
    if not names or names[0].lower() != "background":
        names = ["background", *names]
    names = names[:n_classes]
    while len(names) < n_classes:
        names.append(f"structure {len(names)}")
    if not names:
        names = ["background"]
    return names


#: Voxels in a 3D U-Net training patch, and the width of its first level, on every device.
#: A CPU step stays well under a second. A GPU gets the same network and patches and spends
#: its speed on more steps: 96^3-voxel patches and width 16 on an H100 (brain1 at 60 s, seeds
#: 0-2) gave tumour Dice 0.38, 0.66 and 0.40, these gave 0.74, 0.76, 0.65 and 0.77 (seeds
#: 0-3); breast1 (45 s) leant the other way, 0.69 and 0.57 against 0.55 and 0.42
#: (``benchmarks/results/gpu_patch_variants.jsonl``). One plan also means a seed gives the
#: same network on a laptop and on a GPU.
PATCH_VOXELS = 32 * 48 * 48
BASE_CHANNELS = 8
#: Groups of channels of ``TrainConfig(group_norm=True)`` (2 channels each at the first level
#: of the default width).
NORM_GROUPS = 4


def _patch_for(config: TrainConfig, shape: tuple[int, ...], spacing: tuple[float, ...]):
    if config.patch_shape is not None:
        return tuple(int(p) for p in config.patch_shape)
    if config.arch == "unet3d":
        return plan_patch_shape(shape, spacing, budget_voxels=PATCH_VOXELS)
    # 2D networks: wide in-plane patches, a few slices folded into the batch.
    in_plane = tuple(min(s, 128) for s in shape[1:])
    return (min(shape[0], 4), *in_plane)


#: A structure with fewer painted voxels than this counts as rare (see
#: :func:`default_class_weight_power`).
RARE_STRUCTURE_VOXELS = 100


#: Fraction of the run with frozen batch-norm statistics when several structures are painted.
FROZEN_BATCH_NORM_FRACTION = 0.3


def default_freeze_batch_norm(n_structures: int) -> float:
    """The frozen batch-norm phase ``freeze_batch_norm=None`` chooses: 0.3 of the run for
    several structures, none for one.

    Measured with the 3D U-Net (``benchmarks/results/freeze_batch_norm.jsonl``; on the
    development CPU, one process per run): the three-tissue brain at 120 s went from 0.838,
    0.868 and 0.821 mean Dice to 0.889, 0.879 and 0.865 (seeds 0-2; seed 2's CSF from 0.59
    to 0.77). Measured while training ran in bf16, the same: 0.857, 0.839, 0.880 ->
    0.879, 0.896, 0.886 (0.892 and 0.885 with half the run frozen); the prostate phantom
    (4 structures, 60 s) 0.667/0.692 against 0.670/0.687 and the three-structure synthetic1
    0.909/0.927 against 0.911/0.922 (seeds 0/1). With one structure it is not used: the
    only brain1 run with it (180 s, seed 0, bf16 training) found no tumour at all, not even
    on the painted slices. bf16 training lost brain1 once without it too (which is why a
    CPU now trains in float32), so that run does not settle it; batch norm that follows
    each batch re-centres the features after a loss spike, frozen statistics may not.
    """
    return FROZEN_BATCH_NORM_FRACTION if n_structures > 1 else 0.0


def default_class_weight_power(counts: Sequence[int]) -> float:
    """Loss-weighting power chosen from the painted voxel counts (background first).

    Patches are already drawn class-balanced, and inverse-frequency weighting on top
    over-segments; it pays only to keep a structure alive that is barely painted. So: 0 (no
    weighting), unless there are several structures and one of them has fewer than
    :data:`RARE_STRUCTURE_VOXELS` painted voxels, then 0.5 (inverse square-root frequency).
    Measured at 60 s: two three-structure synthetic volumes (250-900 painted voxels per
    structure) 0.819 and 0.707 Dice unweighted vs 0.683 and 0.478 weighted; the prostate
    phantom (32 and 37 painted voxels for two structures) lost one of those unweighted.
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
    """Whether ``flips="auto"`` mirrors and turns patches: one structure on a thick-slice scan.

    With several structures they teach the network that a structure may sit on either side
    or run either way, and structures are often told apart by exactly that. Measured with
    the 3D U-Net at 60 s: the prostate phantom (4 structures) 0.697 and 0.695 Dice without
    them against 0.505 with; two three-structure synthetic volumes 0.912 and 0.933 against
    0.876 and 0.671.

    With one structure they helped on the thick-slice scans (coarsest spacing at least
    :data:`~.models.planning.ANISOTROPY_RATIO` times the finest): breast1 (2.1 / 0.66 mm) at
    60 s 0.792 mean of 3 seeds with them, 0.575 without; brain1 (6.5 / 0.78 mm) at 180 s
    (seeds 0-2) 0.795 with, 0.778 without. On isotropic volumes they cost: the three
    single-structure synthetic volumes of ``benchmarks/generalisation.py`` at 60 s gained
    0.011-0.046 without them, and a nodules-among-vessels volume (3 slices per axis) at
    120 s went from 0.293 to 0.875. (Those isotropic volumes were painted along all three
    axes, the thick-slice scans along one: which of the two matters is not separated.)

    Parameters
    ----------
    n_structures : int
        Structures painted.
    spacing : sequence of float
        Voxel spacing, array order.
    shape : sequence of int, optional
        Image shape; axes of size 1 (a 2D image) are left out of the comparison.
    """
    if n_structures > 1:
        return False
    sizes = shape if shape is not None else [2] * len(spacing)
    active = [float(s) for s, n in zip(spacing, sizes) if n > 1]
    return len(active) > 1 and max(active) >= ANISOTROPY_RATIO * min(active)


def choose_planes(config: TrainConfig, shape: Sequence[int]) -> tuple[int, ...]:
    """The axes across which a 2D network takes its slices (``(0,)`` for the 3D U-Net).

    Parameters
    ----------
    config : TrainConfig
        Its ``arch`` and ``planes`` decide (see :class:`TrainConfig`).
    shape : sequence of 3 int
        Image shape, array order; a single slice (a 2D image) always gets ``(0,)``.

    Returns
    -------
    tuple of int
        ``(0,)`` or ``(0, 1, 2)``.
    """
    if config.arch == "unet3d" or config.planes == "one" or shape[0] == 1:
        return (0,)
    return (0, 1, 2)


def _plane_samplers(
    config: TrainConfig,
    normalized: np.ndarray,
    target: np.ndarray,
    spacing: tuple[float, ...],
    planes: Sequence[int],
    rng: np.random.Generator,
) -> list[tuple[AnnotatedPatchSampler, tuple[float, ...]]]:
    """A patch sampler and the voxel spacing of each plane's view of the volume.

    The view of plane ``a`` has axis ``a`` first: a 2D network reads its slices along it.
    """
    samplers = []
    for axis in planes:
        order = (axis, *(b for b in range(3) if b != axis))
        view_target = np.moveaxis(target, axis, 0)
        view_spacing = tuple(spacing[b] for b in order)
        patch = _patch_for(config, view_target.shape, view_spacing)
        sampler = AnnotatedPatchSampler(
            np.moveaxis(normalized, axis + 1, 1), view_target, patch, rng
        )
        samplers.append((sampler, view_spacing))
    return samplers


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
    image = as_3d(image, "image")
    annotation = as_3d(annotation, "annotation")
    n_classes = validate_annotation(annotation, image.shape, _declared_classes(class_names))
    if not np.isfinite(image).any():
        raise MedsegInputError("image has no finite voxel (all NaN or infinite)")
    spacing_t = tuple(float(s) for s in (spacing or (1.0,) * image.ndim))
    if len(spacing_t) == 2:
        spacing_t = (max(spacing_t), *spacing_t)
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise MedsegInputError(f"spacing {spacing_t} must be three positive numbers")

    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)

    normalization = IntensityNormalization.fit(image)
    target = annotation_to_target(annotation)
    counts = [int(np.count_nonzero(target == c)) for c in range(n_classes)]
    patch_shape = _patch_for(config, image.shape, spacing_t)
    net_config = _network_config(config, n_classes, spacing_t, patch_shape)
    normalized = normalization.apply(image)[np.newaxis]
    planes = choose_planes(config, image.shape)
    samplers = _plane_samplers(config, normalized, target, spacing_t, planes, rng)
    freeze = config.freeze_batch_norm
    if freeze is None:
        freeze = default_freeze_batch_norm(n_classes - 1)
    power = config.class_weight_power
    if power is None:
        power = default_class_weight_power(counts)
    weights = class_weights_from_counts(counts, power=power)
    if config.flips == "auto":
        flips = default_flips(n_classes - 1, spacing_t, image.shape)
    else:
        flips = config.flips == "on"
    aug_config = AugmentConfig(elastic=config.elastic, flips=flips, rotate90=flips)
    workers = config.batch_workers
    if workers is None:
        workers = default_workers(device.type)
    make = functools.partial(
        _make_batch, samplers, config.batch_size, aug_config if config.augment else None
    )
    threads = config.threads or _gpu_torch_threads(device, workers)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    batches = PrefetchedBatches(make, rng, workers) if workers else SerialBatches(make, rng)
    n_members = config.ensemble
    member_config = config
    if n_members > 1 and config.time_budget is not None:
        member_config = replace(config, time_budget=config.time_budget / n_members)
    networks: list[torch.nn.Module] = []
    member_steps: list[int] = []
    calibration_tiles: list[int] = []
    done_steps = 0
    state = _RunState()
    reason: str | None = None

    def progress(member: int, loss: float, message: str = "") -> TrainProgress:
        if n_members > 1:
            message = f"network {member + 1}/{n_members} {message}".strip()
        now = time.perf_counter()
        fraction = _fraction(member_config, state.step, now - member_start)
        return TrainProgress(
            done_steps + state.step,
            config.iterations * n_members if config.iterations else None,
            loss,
            now - start,
            (member + fraction) / n_members,
            message,
        )

    try:
        for member in range(n_members):
            if member:
                torch.manual_seed(config.seed + member)
            member_start = start if member == 0 else time.perf_counter()
            state = _RunState()
            run = _Optimisation(config, net_config, device, weights)
            try:
                while (
                    reason := _stop_reason(
                        member_config, state, stop, time.perf_counter() - member_start
                    )
                ) is None:
                    images, targets = batches.next()
                    fraction = _fraction(
                        member_config, state.step, time.perf_counter() - member_start
                    )
                    if freeze and fraction >= 1 - freeze:
                        run.freeze_batch_norm()
                    loss = run.step(
                        images, targets, config.learning_rate * _lr_factor(fraction, state.step)
                    )
                    if not math.isfinite(loss):
                        run.restore_last_good()
                        reason = "diverged"
                        yield progress(
                            member,
                            loss,
                            "loss became NaN or infinite: training stopped, last good weights kept",
                        )
                        break
                    state.record(loss)
                    if state.step % 10 == 0:
                        run.remember_good()
                    yield progress(member, loss)
                keep = reason == "finished" or not networks
                # not after Stop, which must take effect at once: that model stays as trained
                ready = keep and config.calibrate_batch_norm and state.step and reason != "stopped"
                if ready and batch_norm_layers(run.network):
                    message = "calibrating batch norm on the unpainted region"
                    yield progress(member, state.losses[-1], message)
                    tiles = run.calibrate(
                        _decided_region(normalized, target, patch_shape), patch_shape
                    )
                    calibration_tiles.append(tiles)
            finally:
                run.release()
            # A member cut short (Stop, divergence) is kept only when it is the first.
            if reason == "finished" or not networks:
                networks.append(run.network)
                member_steps.append(state.step)
            done_steps += state.step
            if reason != "finished":
                break
    finally:
        batches.close()
        torch.set_num_threads(previous_threads)

    if len(networks) > 1:
        network: torch.nn.Module = Ensemble(networks).eval()
        net_config = replace(net_config, members=len(networks))
    else:
        network = networks[0]
    history = {
        "steps": done_steps,
        "seconds": round(time.perf_counter() - start, 3),
        "final_loss": float(np.mean(state.losses[-10:])) if state.losses else None,
        "stop_reason": reason,
        "device": str(device),
        "class_voxel_counts": counts,
        "class_weight_power": power,
        "freeze_batch_norm": freeze,
        "flips": flips,
        "batch_workers": workers,
        "ensemble": len(networks),
        "member_steps": member_steps,
        "batch_norm_calibration_tiles": calibration_tiles,
        "planes": list(planes),
    }
    model_config = ModelConfig(
        network=net_config,
        class_names=_default_class_names(n_classes, class_names),
        normalization=normalization,
        spacing=spacing_t,
        patch_shape=tuple(int(p) for p in patch_shape),
        planes=planes,
        training=asdict(config),
        history=history,
    )
    return TrainedModel(network, model_config)


def _decided_region(
    normalized: np.ndarray, target: np.ndarray, patch_shape: Sequence[int]
) -> np.ndarray:
    """The image where prediction decides: the box of voxels nobody painted, grown by half a
    patch (the whole image when everything is painted)."""
    box = unknown_region(target, [p // 2 for p in patch_shape])
    return normalized if box is None else normalized[(slice(None), *box)]


def _fraction(config: TrainConfig, step: int, elapsed: float) -> float:
    parts = []
    if config.iterations:
        parts.append(step / config.iterations)
    if config.time_budget:
        parts.append(elapsed / config.time_budget)
    return float(min(1.0, max(parts)))


def _stop_reason(
    config: TrainConfig, state: _RunState, stop: threading.Event | None, elapsed: float
) -> str | None:
    """Why training ends before the next step, or ``None`` to go on."""
    if stop is not None and stop.is_set():
        return "stopped"
    if config.iterations is not None and state.step >= config.iterations:
        return "finished"
    if config.time_budget is not None and state.step > 0:
        if elapsed + state.seconds_per_step > config.time_budget:
            return "finished"
    return None


#: torch's CPU threads while a GPU trains with batch workers: its own CPU work is small, and
#: a thread per core beside the workers slowed a step from 14 to 25 ms (H100, 16 cores,
#: brain1, 10 x 80 x 80 patches).
GPU_TORCH_THREADS = 4


def _gpu_torch_threads(device: torch.device, workers: int) -> int | None:
    """torch's CPU threads for a run on ``device`` (``None``: leave them as they are)."""
    if device.type == "cpu" or not workers:
        return None
    return min(GPU_TORCH_THREADS, torch.get_num_threads())


def _make_batch(
    samplers: Sequence[tuple[AnnotatedPatchSampler, tuple[float, ...]]],
    size: int,
    aug_config: AugmentConfig | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``size`` patches of one plane and augment them (``aug_config`` None: as drawn).

    ``samplers`` holds a sampler and its voxel spacing per plane; with more than one, the
    plane of the batch is drawn at random (all its patches share a shape).
    """
    pick = int(rng.integers(len(samplers))) if len(samplers) > 1 else 0
    sampler, spacing = samplers[pick]
    images, targets = sampler.batch(size, rng)
    if aug_config is None:
        return images, targets
    pairs = [augment(i, t, rng, aug_config, spacing) for i, t in zip(images, targets)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _network_config(
    config: TrainConfig,
    n_classes: int,
    spacing: tuple[float, ...],
    patch_shape: tuple[int, ...],
) -> NetworkConfig:
    pool_sizes, kernel_sizes = (None, None)
    if config.arch == "unet3d":
        pool_sizes, kernel_sizes = plan_network(spacing, patch_shape)
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


class _Optimisation:
    """The network, its optimiser and mixed-precision state on one device."""

    def __init__(
        self,
        config: TrainConfig,
        net_config: NetworkConfig,
        device: torch.device,
        class_weights: torch.Tensor,
    ) -> None:
        self.config = config
        self.device = device
        self.network = build_network(net_config).to(device)
        self.memory_format = memory_format_for(self.network)
        self.network.to(memory_format=self.memory_format)
        self.network.train()
        self.weights = class_weights.to(device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.learning_rate, weight_decay=1e-4
        )
        self.amp_dtype = autocast_dtype(device, config.mixed_precision, training=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin = device.type == "cuda"
        self.last_good = copy.deepcopy(self.network.state_dict())

    def _to_device(self, array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        if self.pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=self.pin)

    def _input(self, images: np.ndarray) -> torch.Tensor:
        return self._to_device(images, np.float32).contiguous(memory_format=self.memory_format)

    def step(self, images: np.ndarray, targets: np.ndarray, lr: float) -> float:
        """One optimisation step; returns the loss (not applied when it is not finite)."""
        x = self._input(images)
        y = self._to_device(targets, np.int64)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = self.network(x)
        loss = masked_cross_entropy(logits, y, self.weights)
        if self.config.dice_weight > 0:
            loss = loss + self.config.dice_weight * masked_soft_dice(logits, y)
        value = float(loss.detach())
        if math.isfinite(value):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return value

    def freeze_batch_norm(self) -> None:
        """From now on batch norm uses (and keeps) its running statistics, as in prediction."""
        for layer in batch_norm_layers(self.network):
            layer.eval()

    def remember_good(self) -> None:
        """Keep a copy of the current weights to fall back on."""
        self.last_good = copy.deepcopy(self.network.state_dict())

    def restore_last_good(self) -> None:
        """Return to the last weights remembered as good."""
        self.network.load_state_dict(self.last_good)

    def calibrate(self, normalized: np.ndarray, patch_shape: Sequence[int]) -> int:
        """Batch-norm statistics from tiles of ``normalized`` (returns the tile count)."""
        return recalibrate_batch_norm(
            self.network,
            normalized,
            patch_shape,
            device=self.device,
            memory_format=self.memory_format,
            amp_dtype=self.amp_dtype,
        )

    def release(self) -> None:
        """Eval mode, back to the CPU, device memory freed."""
        self.network.eval()
        self.network.to("cpu", memory_format=torch.contiguous_format)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
