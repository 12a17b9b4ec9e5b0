"""Trained models on disk: safetensors weights with a JSON config in one file.

A model file is a standard ``.safetensors`` file. Its header metadata holds one key,
``"medseg_config"``, whose value is the JSON :class:`ModelConfig` (network, classes,
intensity normalisation, spacing, training settings). Loading parses that header and the
raw tensors only: no pickle is ever read, so a hostile file cannot run code.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ._atomic import atomic_write
from .errors import MedsegInputError, UnsafeFileError
from .model import FORMAT_VERSION, ModelConfig, TrainedModel
from .models import brief_repr, build_network, is_int

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
#: Most bytes of a model file's JSON header (a 10-network ensemble's is well under 1 MiB).
MAX_HEADER_BYTES = 16 * 1024**2
#: Deepest JSON nesting read from a header or config (this version writes far less).
MAX_JSON_DEPTH = 32
MAX_TENSOR_DIMS = 8

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")
#: A JSON string, escapes included (its brackets are not nesting).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: The safetensors dtypes a model's state may hold.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


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
    refused without being unpickled, and nothing retries an unsafe load. The header (its
    size, JSON depth and types, the data offsets), the config (every field's type and
    bounds) and the tensors' names, shapes and dtypes against the network the config
    describes are all checked before the network is built or the weights are read.

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
    _check_tensors(path, config, header.tensors)
    data = path.read_bytes()
    if not data.startswith(header.prefix):  # what was checked is what is loaded
        raise MedsegInputError(f"{path.name}: the model file changed while it was read")
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as exc:
        raise MedsegInputError(f"{path.name}: corrupt model file ({exc})") from None
    network = build_network(config.network)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise MedsegInputError(
            f"{path.name}: weights do not match the network in its config ({detail[:200]})"
        ) from None
    network.eval()
    return TrainedModel(network.to(device), config)


class _Tensor(NamedTuple):
    """A tensor's entry in a safetensors header."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


class _Header(NamedTuple):
    """A checked safetensors header: string metadata, and tensors inside the data."""

    metadata: dict[str, str]
    tensors: dict[str, _Tensor]
    prefix: bytes  # the file's bytes up to the data: its length and the JSON


def _read_raw_header(path: Path) -> tuple[bytes, int]:
    """The file's first bytes up to the data (length and JSON header), and the data's size."""
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
        if not (plausible and 0 < header_len <= size - 8) and head.startswith(_PICKLE_MAGIC):
            raise UnsafeFileError(
                f"{path.name} is a pickle-based PyTorch file; napari-medseg only loads "
                "safetensors models, because unpickling can run arbitrary code"
            )
        if len(head) < 9:
            raise MedsegInputError(f"{path.name}: not a napari-medseg model (file too short)")
        if not plausible or header_len == 0:
            raise MedsegInputError(
                f"{path.name}: not a napari-medseg model (no safetensors header)"
            )
        if header_len > size - 8:
            raise MedsegInputError(
                f"{path.name}: not a napari-medseg model (its header claims {header_len} "
                f"bytes; {size - 8} follow its length)"
            )
        if header_len > MAX_HEADER_BYTES:
            raise UnsafeFileError(
                f"{path.name}: a model header of {header_len} bytes is larger than "
                f"{MAX_HEADER_BYTES}"
            )
        raw = head[8:] + handle.read(header_len - 1)
    return head[:8] + raw, size - 8 - header_len


def _json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (without parsing)."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    step = np.zeros(bare.size, np.int8)
    step[(bare == ord("[")) | (bare == ord("{"))] = 1
    step[(bare == ord("]")) | (bare == ord("}"))] = -1
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def _parse_json(path: Path, raw: bytes, what: str) -> Any:
    """JSON parsed only when its nesting is shallow; any failure is one line."""
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise MedsegInputError(f"{path.name}: {what} is nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at byte {exc.pos}"
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except ValueError:  # an integer of more than 4300 digits
        reason = "a number with too many digits"
    except RecursionError:
        reason = "nested too deep"
    raise MedsegInputError(f"{path.name}: {what} is not valid JSON ({reason})")


def _read_safetensors_header(path: Path) -> _Header:
    prefix, data_bytes = _read_raw_header(path)
    header = _parse_json(path, prefix[8:], "the model header")
    if not isinstance(header, dict):
        raise MedsegInputError(f"{path.name}: not a napari-medseg model (bad header)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise MedsegInputError(f"{path.name}: not a napari-medseg model (bad header metadata)")
    tensors = {name: _tensor(path, name, info, data_bytes) for name, info in header.items()}
    previous: tuple[str, _Tensor] | None = None
    for name, tensor in sorted(tensors.items(), key=lambda item: item[1][2:]):
        if previous is not None and tensor.begin < previous[1].end:
            raise UnsafeFileError(
                f"{path.name}: tensors {brief_repr(previous[0])} and {brief_repr(name)} overlap"
            )
        previous = (name, tensor)
    return _Header(metadata, tensors, prefix)


def _tensor(path: Path, name: str, info: Any, data_bytes: int) -> _Tensor:
    """One tensor's header entry, checked: known dtype, shape, offsets inside the data."""
    what = f"{path.name}: tensor {brief_repr(name)}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise MedsegInputError(f"{what} has a malformed header entry")
    dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise MedsegInputError(f"{what} has an unknown dtype {brief_repr(info['dtype'])}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not _naturals(shape) or len(shape) > MAX_TENSOR_DIMS:
        raise MedsegInputError(f"{what} has an invalid shape {brief_repr(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_int, offsets)):
        raise MedsegInputError(f"{what} has invalid data offsets {brief_repr(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise UnsafeFileError(f"{what} points outside the file")
    if math.prod(shape) * dtype.itemsize != end - begin:
        raise MedsegInputError(
            f"{what}: {info['dtype']} x {brief_repr(shape)} does not fill its {end - begin} bytes"
        )
    return _Tensor(dtype, tuple(shape), begin, end)


def _naturals(value: object) -> bool:
    """A JSON list of non-negative ints."""
    return isinstance(value, list) and all(is_int(v) and v >= 0 for v in value)


def _config_from_header(path: Path, header: _Header) -> ModelConfig:
    text = header.metadata.get(METADATA_KEY)
    if text is None:
        raise MedsegInputError(
            f"{path.name}: a safetensors file without a napari-medseg config (not a medseg model)"
        )
    data = _parse_json(path, text.encode("utf-8", "surrogatepass"), "the model config")
    try:
        return ModelConfig.from_dict(data)
    except MedsegInputError as exc:
        raise type(exc)(f"{path.name}: {exc}") from None


def _check_tensors(path: Path, config: ModelConfig, tensors: dict[str, _Tensor]) -> None:
    """Refuse a file whose tensors are not exactly the network's (names, shapes, dtypes),
    comparing with the network built on the meta device: nothing allocated."""
    with torch.device("meta"):
        expected = build_network(config.network).state_dict()
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    detail = ""
    if missing or extra:
        first = f"missing {brief_repr(missing[0])}" if missing else ""
        first = first or f"unexpected {brief_repr(extra[0])}"
        others = len(missing) + len(extra) - 1
        detail = first + (f" and {others} more difference(s)" if others else "")
    else:
        for name, want in expected.items():
            got = tensors[name]
            if got.shape != tuple(want.shape) or got.dtype != want.dtype:
                detail = (
                    f"{brief_repr(name)} is {_DTYPE_NAMES[got.dtype]} {list(got.shape)} in the "
                    f"file, the network needs {_DTYPE_NAMES.get(want.dtype, want.dtype)} "
                    f"{list(want.shape)}"
                )
                break
    if detail:
        raise MedsegInputError(
            f"{path.name}: weights do not match the network in its config ({detail})"
        )
