"""A trained model in memory: the network and the config that explains it.

:class:`ModelConfig` holds everything needed to rebuild and apply a network (architecture,
classes, intensity normalisation, spacing, patch, planes, training settings and history);
:mod:`napari_medseg.checkpoint` writes and reads both to and from one file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from . import __version__
from .errors import MedsegInputError
from .models import NetworkConfig
from .normalization import IntensityNormalization

#: Version of the model file's config layout.
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """Everything needed to rebuild and apply a trained network.

    Parameters
    ----------
    network : NetworkConfig
        Architecture and sizes.
    class_names : list of str
        One name per class, background first (index = label value in a segmentation).
    normalization : IntensityNormalization
        Intensity normalisation fitted on the training image.
    spacing : tuple of float
        Voxel spacing (mm, array order) of the training image.
    patch_shape : tuple of int
        Patch shape used in training (inference tiles are at least this size).
    planes : tuple of int
        2D networks: the axes across which they take slices, ``(0,)`` or ``(0, 1, 2)``
        (prediction then averages a pass per plane). ``(0,)`` for the 3D U-Net, and for
        files written before planes existed.
    training : dict
        The training settings (a :class:`~napari_medseg.training.TrainConfig` as a dict).
    history : dict
        Summary of the run: steps, final loss, seconds, stop reason.
    """

    network: NetworkConfig
    class_names: list[str]
    normalization: IntensityNormalization
    spacing: tuple[float, ...]
    patch_shape: tuple[int, ...]
    planes: tuple[int, ...] = (0,)
    training: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    medseg_version: str = __version__
    format_version: int = FORMAT_VERSION

    @property
    def n_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def arch(self) -> str:
        """Architecture name (``unet3d``, ``unet2d`` or ``fcn``)."""
        return self.network.arch

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "format_version": self.format_version,
            "medseg_version": self.medseg_version,
            "network": self.network.to_dict(),
            "class_names": list(self.class_names),
            "normalization": self.normalization.to_dict(),
            "spacing": list(self.spacing),
            "patch_shape": list(self.patch_shape),
            "planes": list(self.planes),
            "training": _jsonable(self.training),
            "history": _jsonable(self.history),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        MedsegInputError
            For a config written by an incompatible version or missing fields.
        """
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise MedsegInputError(
                f"model file format version {version!r} is not supported (this napari-medseg "
                f"{__version__} reads version {FORMAT_VERSION}); retrain or upgrade"
            )
        try:
            network = NetworkConfig.from_dict(data["network"])
            if len(data["class_names"]) != network.n_classes:
                raise MedsegInputError(
                    f"model config names {len(data['class_names'])} classes but its network "
                    f"has {network.n_classes} outputs"
                )
            return cls(
                network=network,
                class_names=[str(n) for n in data["class_names"]],
                normalization=IntensityNormalization.from_dict(data["normalization"]),
                spacing=tuple(float(s) for s in data["spacing"]),
                patch_shape=tuple(int(s) for s in data["patch_shape"]),
                planes=_planes(data.get("planes", [0])),
                training=dict(data.get("training", {})),
                history=dict(data.get("history", {})),
                medseg_version=str(data.get("medseg_version", "?")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsegInputError(f"model config is incomplete or invalid: {exc}") from None


def _planes(value: Any) -> tuple[int, ...]:
    """Validated ``planes`` of a model config: distinct axes 0-2, sorted."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"planes must be a non-empty list, not {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"planes must be axes 0, 1 or 2, not {value!r}")
    if not all(0 <= v <= 2 for v in value) or value != sorted(set(value)):
        raise ValueError(f"planes must be distinct sorted axes 0, 1 or 2, not {value!r}")
    return tuple(value)


@dataclass
class TrainedModel:
    """A network with the config that explains it."""

    network: torch.nn.Module
    config: ModelConfig

    def to(self, device: torch.device | str) -> TrainedModel:
        """Move the network to a device (in place) and return self."""
        self.network.to(device)
        return self


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
