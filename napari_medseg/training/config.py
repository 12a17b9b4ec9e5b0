"""The settings of a training run and what a run reports after each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..device import DeviceName
from ..errors import MedsegInputError
from ..models import MAX_MEMBERS, MAX_PATCH_SIZE, Arch
from ..options import check_choice, option
from .preview import SlicePreview

Planes = Literal["one", "three"]
Flips = Literal["auto", "on", "off"]


@dataclass
class TrainConfig:
    """Settings of one training run.

    The Train widget's form and the options of ``medseg train`` are built from these fields
    (:mod:`napari_medseg.options`). Why the defaults are what they are, with the figures
    that chose them: ``docs/DEFAULTS.md``.
    """

    arch: Arch = option(
        "unet3d",
        help="network: 3D U-Net (Çiçek 2016), 2D U-Net (Ronneberger 2015) slice by slice, "
        "or 2D FCN-8s (Long 2015)",
    )
    time_budget: float | None = option(
        60.0, help="wall-clock seconds to train for", unit="s", none_text="no time limit",
        min=1, max=10**6, metavar="SECONDS",
    )
    iterations: int | None = option(
        None, help="optimisation steps (with a time budget too, whichever comes first ends "
        "training; a fixed seed and step count give the same model twice on a CPU)",
        none_text="no step limit", suggest=200, min=1, max=10**7, metavar="N",
    )
    device: DeviceName = option("auto", help="where to train: auto picks CUDA, then Apple MPS, "
                            "then the CPU")
    seed: int = option(0, help="seed of every random choice (patches, augmentation, weights)")
    base_channels: int | None = option(
        None, help="width of the first level; deeper levels double it", none_text="8",
        suggest=8, min=1, max=256, metavar="N",
    )
    batch_norm: bool = option(True, help="batch normalisation after every convolution (the "
                              "paper's choice)", negate=True, flag="no_batch_norm",
                              flag_help="no batch normalisation")
    group_norm: bool = option(
        False, help="with batch norm: normalise over groups of channels within each patch "
        "instead of over the batch",
    )
    calibrate_batch_norm: bool = option(
        False, help="after training, re-estimate batch-norm statistics on un-augmented tiles "
        "of the region prediction decides (not after Stop)",
    )
    freeze_batch_norm: float | None = option(
        None, help="fraction of the run, at its end, in which batch norm uses its running "
        "statistics (the ones prediction uses) while the weights learn on; 0 turns it off",
        none_text="0.3 for several structures, off for one", suggest=0.3,
        min=0.0, max=1.0, step=0.05, metavar="FRACTION",
    )
    patch_shape: tuple[int, int, int] | None = option(
        None, help="training patch in voxels, array order",
        none_text="chosen from the image size and spacing", suggest=(32, 64, 64),
        min=1, max=MAX_PATCH_SIZE, metavar="N",
    )
    batch_size: int = option(2, help="patches per optimisation step", min=1, max=256)
    learning_rate: float = option(1e-2, help="peak learning rate of AdamW (warm-up, then "
                                  "cosine decay over the run)")
    dice_weight: float = option(1.0, help="weight of the soft Dice term added to the "
                                "cross-entropy (0 disables it)")
    class_weight_power: float | None = option(
        None, help="cross-entropy class weights are (total / count) ** power over the "
        "painted voxels", none_text="0, or 0.5 when one of several structures is barely "
        "painted", suggest=0.5, metavar="POWER",
    )
    augment: bool = option(True, help="on-the-fly augmentation: rotations, scaling, "
                           "intensity, elastic deformation", negate=True, flag="no_augment",
                           flag_help="no augmentation")
    elastic: bool = option(True, help="elastic deformation (with augmentation)", negate=True,
                           flag="no_elastic", flag_help="no elastic deformation")
    flips: Flips = option(
        "auto", help="mirror flips and right-angle turns of training patches (auto: on for "
        "one structure on a thick-slice scan)",
    )
    mixed_precision: bool = option(
        True, help="bf16 (or fp16) autocast on a GPU; a CPU trains in float32",
        negate=True, flag="full_precision",
        flag_help="compute in float32 even where the device does bf16 natively (a GPU; "
        "for prediction also a CPU with AVX-512 BF16 or AMX)",
    )
    threads: int | None = option(
        None, help="CPU threads for torch during training", none_text="torch's default",
        suggest=2, min=1, max=256, metavar="N",
    )
    batch_workers: int | None = option(
        None, help="threads that draw and augment batches ahead of the step (0: on the "
        "training thread)", none_text="none on a CPU, most cores on a GPU", suggest=4,
        min=0, max=256, metavar="N",
    )
    ensemble: int = option(
        1, help="networks trained one after the other with their own seeds and a share of "
        "the budget, averaged as one", min=1, max=MAX_MEMBERS, metavar="N",
    )
    weight_average: bool = option(
        True, help="validate and keep a moving average of the weights over the last ~100 "
        "steps instead of the last step's weights", negate=True, flag="no_weight_average",
        flag_help="keep the last step's weights",
    )
    validation: bool = option(
        True, help="hold out part of the painted voxels (a fifth of the painted slices when "
        "there are five or more, else blocks of voxels), score the run on them as it trains, "
        "keep the best weights, start again when a structure is not found, and report the "
        "figure", negate=True, flag="no_validation",
        flag_help="train on every painted voxel, without a held-out estimate",
    )
    planes: Planes = option(
        "one", help="2D networks: learn from and predict in slices across the first axis "
        "(one) or the three orthogonal planes (three)",
    )

    def __post_init__(self) -> None:
        for name in ("arch", "device", "flips", "planes"):
            try:
                check_choice(TrainConfig, name, getattr(self, name))
            except ValueError as exc:
                raise MedsegInputError(str(exc)) from None
        if self.time_budget is None and self.iterations is None:
            raise MedsegInputError("give a time budget or an iteration count")
        if self.time_budget is not None and self.time_budget <= 0:
            raise MedsegInputError("the time budget must be positive")
        if self.iterations is not None and self.iterations < 1:
            raise MedsegInputError("the iteration count must be at least 1")
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
    """What :func:`~napari_medseg.training.train` yields after each step."""

    step: int
    total_steps: int | None
    loss: float
    elapsed: float
    fraction: float
    message: str = ""
    validation: float | None = None
    preview: SlicePreview | None = None

    def describe(self) -> str:
        """One line for a progress bar: step (of the total when known), loss, seconds and any
        message."""
        step = f"{self.step}/{self.total_steps}" if self.total_steps else str(self.step)
        text = f"step {step} loss {self.loss:.3f} {self.elapsed:4.0f}s"
        if self.validation is not None:
            text += f" validation {self.validation:.3f}"
        return f"{text} {self.message}".strip()
