"""Checks on untrusted files before their voxels are read, and on the volumes read.

Anything but a regular file (a FIFO, a socket, a device, on which a reader would block or
read forever) is refused before it is opened (:func:`refuse_special_file`). Declared sizes
are bounded (:func:`refuse_too_large`), 4D and multi-component data are refused unless
asked for (:func:`refuse_channels`), and a voxel payload is checked (:func:`check_payload`)
for truncation and for decompression bombs, by a bounded streaming decompression in
constant memory, before any reader allocates it. A payload just written is checked more
strictly (:func:`verify_payload`: exact length, every gzip/zlib stream complete with a
valid checksum). :func:`check_image` lists what makes a volume doubtful for segmentation.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MedsegInputError, UnsafeFileError
from ..volume import Volume

#: Largest number of voxels (times components) :func:`~napari_medseg.io.read_volume`
#: accepts by default: 2 GB of float32.
DEFAULT_MAX_VOXELS = 2_000_000_000 // 4

#: A compressed payload is refused as a decompression bomb when it claims to expand more
#: than ``GZIP_BOMB_RATIO`` times **and** to more than ``GZIP_BOMB_MIN_BYTES``.
GZIP_BOMB_RATIO = 1000.0
GZIP_BOMB_MIN_BYTES = 1 << 30
#: Compressed payloads up to this size (decompressed) are fully verified (length and CRC);
#: larger ones only when their gzip trailer disagrees with the header, or when their
#: ratio exceeds ``SUSPICIOUS_RATIO``.
VERIFY_MAX_BYTES = 64 << 20
SUSPICIOUS_RATIO = 100.0
#: Bytes read (and decompressed) at a time when streaming a payload.
CHUNK = 1 << 20


@dataclass(frozen=True)
class Payload:
    """Where a file's (possibly compressed) voxel data lives and how long it must be."""

    file: Path
    offset: int
    expected: int
    compressed: bool


def refuse_too_large(name: str, shape: Sequence[int], components: int, max_voxels: int) -> None:
    """Refuse a declared size that is nonsensical or holds more than ``max_voxels`` values."""
    dims = " x ".join(str(int(s)) for s in shape)
    if len(shape) == 0 or any(int(s) <= 0 for s in shape):
        raise UnsafeFileError(f"refusing to read {name}: it declares a nonsensical size ({dims})")
    if len(shape) > 5:
        raise UnsafeFileError(f"refusing to read {name}: it declares {len(shape)} dimensions")
    count = math.prod(int(s) for s in shape) * max(int(components), 1)
    if count > max_voxels:
        raise UnsafeFileError(
            f"refusing to read {name}: it declares {dims} voxels ({count:,} values), "
            f"more than the limit of {max_voxels:,}"
        )


def refuse_channels(name: str, shape: Sequence[int], components: int, allow: bool) -> None:
    """Refuse time series and multi-component images unless ``allow``."""
    extent = [int(s) for s in shape]
    while len(extent) > 3 and extent[-1] == 1:
        extent.pop()
    ndim = len(extent) + (1 if components > 1 else 0)
    if (components > 1 or ndim > 3) and not allow:
        # a 2D RGB picture is (y, x) + 3 components: 3 axes, but not a volume
        kind = "RGB or vector components" if components > 1 else "time or channels"
        raise MedsegInputError(
            f"{name} has {ndim} dimensions ({kind}); napari-medseg segments 3D volumes "
            "and 2D images of one channel"
        )


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (``"a FIFO (named pipe)"`` ...).

    None for a regular file (links followed) and for a missing one.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None if not os.path.islink(path) else "a broken link"
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def refuse_special_file(name: str, path: Path) -> None:
    """Refuse ``path`` (the file ``name``, or one of its data files) unless it is a regular file.

    Opening a FIFO for reading blocks until someone writes to it, and a device can be read
    forever; both are refused before anything opens them.
    """
    kind = special_kind(path)
    if kind is None:
        return
    what = "it" if path.name == name else f"its data file {path.name}"
    raise MedsegInputError(f"cannot read {name}: {what} is {kind}, not a regular file")


def _stored_bytes(name: str, payload: Payload) -> int:
    try:
        return payload.file.stat().st_size - payload.offset
    except OSError as exc:
        raise MedsegInputError(
            f"cannot read {name}: its data file {payload.file.name} is missing"
        ) from exc


def _where(name: str, payload: Payload) -> str:
    return "file" if payload.file.name == name else f"data file {payload.file.name}"


def _truncated(name: str, payload: Payload, stored: int) -> MedsegInputError:
    return MedsegInputError(
        f"cannot read {name}: {_where(name, payload)} is truncated or corrupt "
        f"({max(stored, 0):,} bytes where {payload.expected:,} are declared)"
    )


def check_payload(name: str, payload: Payload) -> None:
    """Refuse truncated payloads and decompression bombs before ITK allocates anything."""
    stored = _stored_bytes(name, payload)
    if not payload.compressed:
        if stored < payload.expected:
            raise _truncated(name, payload, stored)
        return
    ratio = payload.expected / max(stored, 1)
    if payload.expected > GZIP_BOMB_MIN_BYTES and ratio > GZIP_BOMB_RATIO:
        raise UnsafeFileError(
            f"refusing to read {name}: {stored:,} compressed bytes claim to expand to "
            f"{payload.expected:,} bytes ({ratio:,.0f}:1), a likely decompression bomb"
        )
    if payload.expected <= VERIFY_MAX_BYTES or ratio > SUSPICIOUS_RATIO or not _trailer_ok(payload):
        produced = _decompressed_size(name, payload)
        if produced < payload.expected:
            raise MedsegInputError(f"cannot read {name}: file is truncated or corrupt")


def verify_payload(name: str, payload: Payload) -> None:
    """Check a payload just written: exactly the declared length, every stream complete.

    Raw data is checked by its size alone; compressed data by one streaming decompression
    (constant memory) that must end every gzip/zlib stream with a valid checksum and give
    exactly the declared number of bytes. Much cheaper than the compression that wrote it.

    Raises
    ------
    MedsegInputError
        The payload is shorter or longer than declared, or a stream is cut or corrupt.
    """
    stored = _stored_bytes(name, payload)
    if not payload.compressed:
        if stored != payload.expected:
            raise _truncated(name, payload, stored)
        return
    produced, complete = _inflate(name, payload, payload.expected + CHUNK)
    if not complete or produced != payload.expected:
        state = "" if complete else ", its compressed stream is cut short"
        raise MedsegInputError(
            f"cannot read {name}: {_where(name, payload)} is truncated or corrupt ({produced:,} "
            f"bytes decompressed where {payload.expected:,} are declared{state})"
        )


def _trailer_ok(payload: Payload) -> bool:
    """Does the gzip trailer (ISIZE, size mod 2**32) match the expected size? O(1)."""
    try:
        with open(payload.file, "rb") as handle:
            handle.seek(payload.offset)
            magic = handle.read(2)
            handle.seek(-4, 2)
            isize = struct.unpack("<I", handle.read(4))[0]
    except OSError:
        return False
    return magic == b"\x1f\x8b" and isize == payload.expected % (1 << 32)


def _decompressed_size(name: str, payload: Payload) -> int:
    """How many bytes the payload decompresses to (stops comfortably past the expected size)."""
    return _inflate(name, payload, payload.expected + CHUNK)[0]


def _inflate(name: str, payload: Payload, limit: int) -> tuple[int, bool]:
    """Stream-decompress the payload (constant memory): ``(bytes produced, complete)``.

    Stops once past ``limit`` bytes. ``complete`` is True when the last gzip/zlib stream
    ended (its checksum verified by zlib) and nothing but further gzip members followed.
    """
    produced = 0
    stream = zlib.decompressobj(47)
    try:
        with open(payload.file, "rb") as handle:
            handle.seek(payload.offset)
            data = handle.read(CHUNK)
            while data and produced <= limit:
                produced += _drain(stream, data, limit - produced)
                if not stream.eof:
                    data = handle.read(CHUNK)
                    continue
                data = stream.unused_data or handle.read(CHUNK)
                if not data.startswith(b"\x1f\x8b"):
                    return produced, not data  # anything else after the last member
                stream = zlib.decompressobj(47)
    except zlib.error as exc:
        raise MedsegInputError(f"cannot read {name}: file is truncated or corrupt") from exc
    return produced, stream.eof


def _drain(stream: zlib._Decompress, data: bytes, budget: int) -> int:
    """Feed ``data`` to a decompressor, never holding more than one chunk of output."""
    produced = len(stream.decompress(data, CHUNK))
    while stream.unconsumed_tail and produced <= budget:
        produced += len(stream.decompress(stream.unconsumed_tail, CHUNK))
    return produced


def check_image(volume: Volume) -> list[str]:
    """Problems that make a volume unusable or doubtful for segmentation.

    Parameters
    ----------
    volume : Volume
        The image to check.

    Returns
    -------
    list of str
        One line per problem (NaN or infinite voxels, constant image, wrong number of
        dimensions, invalid spacing); empty when the image looks fine.
    """
    array = np.asarray(volume.array)
    problems = []
    if array.size == 0:
        return ["the image is empty"]
    if array.ndim not in (2, 3):
        problems.append(f"the image has {array.ndim} dimensions; expected 2D or 3D")
    if array.dtype.kind not in "biuf":
        problems.append(f"the voxel type {array.dtype} is not a number type")
        return problems
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            problems.append(f"{bad:,} voxels are NaN or infinite")
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if finite.size and finite.min() == finite.max():
        problems.append(f"all voxels have the same value ({finite.flat[0]})")
    if not all(math.isfinite(s) and s > 0 for s in volume.spacing):
        problems.append(f"the voxel spacing {volume.spacing} is not positive")
    return problems
