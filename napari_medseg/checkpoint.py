"""Trained models on disk: safetensors weights with a JSON config in one file.

A model file is a standard ``.safetensors`` file. Its header metadata holds one key,
``"medseg_config"``, whose value is the JSON :class:`ModelConfig` (network, classes,
intensity normalisation, spacing, training settings). Loading parses that header and the
raw tensors only: no pickle is ever read, so a hostile file cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ._atomic import atomic_write
from .errors import MedsegInputError, UnsafeFileError
from .model import FORMAT_VERSION, ModelConfig, TrainedModel
from .models import build_network

__all__ = [
    "FORMAT_VERSION",
    "ModelConfig",
    "TrainedModel",
    "load_model",
    "read_model_config",
    "save_model",
]

METADATA_KEY = "medseg_config"
MAX_MODEL_BYTES = 2 * 1024**3

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


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
