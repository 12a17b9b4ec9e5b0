"""Training a segmentation network on a sparse annotation.

``train(image, annotation, config)`` is a generator of :class:`TrainProgress` returning a
:class:`~napari_medseg.model.TrainedModel`. A run is planned (:func:`plan_training`: input
checked, every automatic setting resolved into a frozen :class:`TrainingPlan`), then run
(:mod:`.loop`, one network at a time), then assembled with its history (:mod:`.run`).
"""

from ..models import Arch
from .config import Planes, TrainConfig, TrainProgress
from .defaults import (
    BASE_CHANNELS,
    FROZEN_BATCH_NORM_FRACTION,
    GPU_TORCH_THREADS,
    NORM_GROUPS,
    PATCH_VOXELS,
    RARE_STRUCTURE_VOXELS,
    choose_planes,
    default_class_weight_power,
    default_flips,
    default_freeze_batch_norm,
    network_config_for,
    patch_shape_for,
)
from .plan import TrainingPlan, plan_training
from .run import assemble_model, train

__all__ = [
    "Arch",
    "BASE_CHANNELS",
    "FROZEN_BATCH_NORM_FRACTION",
    "GPU_TORCH_THREADS",
    "NORM_GROUPS",
    "PATCH_VOXELS",
    "Planes",
    "RARE_STRUCTURE_VOXELS",
    "TrainConfig",
    "TrainProgress",
    "TrainingPlan",
    "assemble_model",
    "choose_planes",
    "default_class_weight_power",
    "default_flips",
    "default_freeze_batch_norm",
    "network_config_for",
    "patch_shape_for",
    "plan_training",
    "train",
]
