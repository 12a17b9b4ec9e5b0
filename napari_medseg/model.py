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
from .models import MAX_PATCH_SIZE, NetworkConfig, brief_repr, is_int
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
    def from_dict(cls, data: Any) -> ModelConfig:
        """Inverse of :meth:`to_dict`; every field's JSON type and bounds are checked
        (:func:`_bounded_config`) before anything is built from it.

        Raises
        ------
        MedsegInputError
            For a config written by an incompatible version, missing fields, or fields of
            the wrong type or out of bounds.
        """
        try:
            return cls(**_bounded_config(data))
        except MedsegInputError:
            raise
        except (TypeError, ValueError) as exc:
            raise MedsegInputError(f"model config is incomplete or invalid: {exc}") from None


#: Fields a model config must have.
_REQUIRED = ("network", "class_names", "normalization", "spacing", "patch_shape")
#: Bounds of the other fields.
MAX_NAME_CHARS = 200
MAX_SPACING_MM = 1e6


def _json_type(value: object) -> str:
    for kind, name in ((bool, "a boolean"), (str, "a string"), (dict, "an object"),
                       (list, "a list"), (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _bounded_config(data: Any) -> dict[str, Any]:
    """The keyword arguments of :class:`ModelConfig` from a config's JSON, every field
    checked for its JSON type and bounds first.

    Raises
    ------
    MedsegInputError
        For another format version, or a network, class names or normalisation that are
        not what this version writes.
    ValueError
        For any other field missing, of the wrong type or out of bounds.
    """
    if not isinstance(data, dict):
        raise MedsegInputError(f"model config must be a JSON object, not {_json_type(data)}")
    version = data.get("format_version")
    if not is_int(version) or version != FORMAT_VERSION:
        raise MedsegInputError(
            f"model file format version {brief_repr(version)} is not supported (this "
            f"napari-medseg {__version__} reads version {FORMAT_VERSION}); retrain or upgrade"
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"no {missing[0]!r}")
    network = NetworkConfig.from_dict(data["network"])
    return {
        "network": network,
        "class_names": _class_names(data["class_names"], network.n_classes),
        "normalization": IntensityNormalization.from_dict(data["normalization"]),
        "spacing": _numbers(data["spacing"], "spacing", MAX_SPACING_MM),
        "patch_shape": _sizes(data["patch_shape"], "patch_shape", MAX_PATCH_SIZE),
        "planes": _planes(data.get("planes", [0])),
        "training": _object(data.get("training", {}), "training"),
        "history": _object(data.get("history", {}), "history"),
        "medseg_version": _text(data.get("medseg_version", "?"), "medseg_version"),
    }


def _text(value: Any, name: str) -> str:
    """A short, printable string (it goes into one-line messages and the GUI)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {_json_type(value)}")
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise ValueError(f"{name} {brief_repr(value)} is not a short printable string")
    return value


def _class_names(value: Any, n_classes: int) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"class_names must be a list of names, not {_json_type(value)}")
    if len(value) != n_classes:
        raise MedsegInputError(
            f"model config names {len(value)} classes but its network has {n_classes} outputs"
        )
    return [_text(name, "class name") for name in value]


def _numbers(value: Any, name: str, high: float) -> tuple[float, float, float]:
    """Three positive finite numbers up to ``high``."""
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"{name} must be a list of 3 numbers, not {brief_repr(value)}")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not all(0 < v <= high for v in value):  # NaN compares false
        raise ValueError(f"{name} must be 3 numbers above 0 and up to {high:g}, "
                         f"not {brief_repr(value)}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _sizes(value: Any, name: str, high: int) -> tuple[int, int, int]:
    """Three ints from 1 to ``high``."""
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"{name} must be a list of 3 ints, not {brief_repr(value)}")
    if not all(is_int(v) and 1 <= v <= high for v in value):
        raise ValueError(f"{name} must be 3 ints from 1 to {high}, not {brief_repr(value)}")
    return (value[0], value[1], value[2])


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, not {_json_type(value)}")
    return value


def _planes(value: Any) -> tuple[int, ...]:
    """Validated ``planes`` of a model config: distinct axes 0-2, sorted."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"planes must be a non-empty list, not {brief_repr(value)}")
    if not all(is_int(v) for v in value):
        raise ValueError(f"planes must be axes 0, 1 or 2, not {brief_repr(value)}")
    if not all(0 <= v <= 2 for v in value) or value != sorted(set(value)):
        raise ValueError(f"planes must be distinct sorted axes 0, 1 or 2, not {brief_repr(value)}")
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
