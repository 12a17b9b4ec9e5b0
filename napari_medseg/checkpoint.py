"""Trained models on disk: safetensors weights with a JSON config in one file.

A model file is a standard ``.safetensors`` file. Its header metadata holds one key,
``"medseg_config"``, whose value is the JSON :class:`ModelConfig` (network, classes,
intensity normalisation, spacing, training settings). Loading parses that header and the
raw tensors only: no pickle is ever read, so a hostile file cannot run code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from . import __version__
from ._atomic import atomic_write
from .errors import MedsegInputError, UnsafeFileError
from .models import NetworkConfig, build_network
from .normalization import IntensityNormalization

FORMAT_VERSION = 1
METADATA_KEY = "medseg_config"
MAX_MODEL_BYTES = 2 * 1024**3

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


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


def save_model(path: str | os.PathLike[str], model: TrainedModel) -> Path:
    """Write a model atomically (temporary file, fsync, rename).

    Parameters
    ----------
    path : path-like
        Target file, conventionally ``*.safetensors``.
    model : TrainedModel
        The model to save.

    Returns
    -------
    Path
        The written path.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.network.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(model.config.to_dict(), sort_keys=True)}
    payload = save_safetensors_bytes(state, metadata=metadata)
    with atomic_write(path, "wb") as handle:
        handle.write(payload)
    return path


def read_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read only the JSON config of a model file (cheap; no weights)."""
    header = _read_safetensors_header(Path(path))
    return _config_from_header(Path(path), header)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainedModel:
    """Load a model file safely.

    Only safetensors files are accepted. A pickle-based PyTorch file (``torch.save``) is
    refused without being unpickled, and nothing retries an unsafe load.

    Raises
    ------
    MedsegInputError
        Missing file, not a model, wrong shapes, config from another version.
    UnsafeFileError
        A pickle-based file, or a header declaring more data than the file holds.
    """
    path = Path(path)
    header = _read_safetensors_header(path)
    config = _config_from_header(path, header)
    try:
        state = load_safetensors_bytes(path.read_bytes())
    except SafetensorError as exc:
        raise MedsegInputError(f"{path.name}: corrupt model file ({exc})") from None
    network = build_network(config.network)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise MedsegInputError(
            f"{path.name}: weights do not match the network in its config ({detail})"
        ) from None
    network.eval()
    return TrainedModel(network.to(device), config)


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MedsegInputError(f"model file not found: {path}")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise UnsafeFileError(f"{path.name}: {size} bytes is too large for a napari-medseg model")
    with open(path, "rb") as handle:
        head = handle.read(9)
        header_len = int.from_bytes(head[:8], "little")
        # A safetensors file: 8-byte little-endian header length, then a JSON object. Test
        # that first: the length's first byte may equal a pickle magic byte (0x80).
        plausible = len(head) == 9 and head[8:] == b"{"
        plausible = plausible and 0 < header_len <= min(size - 8, 100 * 1024**2)
        if not plausible and any(head.startswith(magic) for magic in _PICKLE_MAGIC):
            raise UnsafeFileError(
                f"{path.name} is a pickle-based PyTorch file; napari-medseg only loads "
                "safetensors models, because unpickling can run arbitrary code"
            )
        if len(head) < 9:
            raise MedsegInputError(f"{path.name}: not a napari-medseg model (file too short)")
        if not plausible:
            raise MedsegInputError(
                f"{path.name}: not a napari-medseg model (no safetensors header)"
            )
        raw = head[8:] + handle.read(header_len - 1)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MedsegInputError(f"{path.name}: not a napari-medseg model (bad header)") from None
    if not isinstance(header, dict):
        raise MedsegInputError(f"{path.name}: not a napari-medseg model (bad header)")
    data_bytes = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets", [0, 0]) if isinstance(info, dict) else [0, 0]
        if not (0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise UnsafeFileError(f"{path.name}: tensor {name!r} points outside the file")
    return header


def _config_from_header(path: Path, header: dict[str, Any]) -> ModelConfig:
    metadata = header.get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise MedsegInputError(
            f"{path.name}: a safetensors file without a napari-medseg config (not a medseg model)"
        )
    try:
        data = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        raise MedsegInputError(f"{path.name}: model config is not valid JSON") from None
    return ModelConfig.from_dict(data)
