"""NIfTI specifics: the NIfTI-1/2 header, and two SimpleITK (ITK 5) reader defects undone.

NaN and infinite float voxels, which ITK reads as 0, are restored from the file's payload
(:func:`restore_non_finite`); and ``name.nii.gz`` is read from itself even when a
``name.nii`` lies next to it (:func:`itk_source`; ITK would take the voxels from that
other file).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MedsegInputError
from ._checks import CHUNK, Payload
from ._formats import extension_of


@dataclass(frozen=True)
class NiftiHeader:
    """What the NIfTI-1/2 header says about the voxel data."""

    vox_offset: int
    data_bytes: int
    count: int
    datatype: int
    big_endian: bool
    slope: float
    inter: float


#: NIfTI datatype codes of the real floating-point types that can hold NaN and infinity.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def is_gzip_nifti(path: Path) -> bool:
    """Whether ``path`` names a compressed NIfTI file (``.nii.gz``)."""
    return extension_of(path) == ".nii.gz"


# ---- the header ------------------------------------------------------------------------


def nifti_payload(path: Path) -> Payload | None:
    """Data layout of a NIfTI-1/2 file, from its own header (not ITK's rescaled type)."""
    header = nifti_header_of(path)
    if header is None:
        return None
    return Payload(path, 0, header.vox_offset + header.data_bytes, is_gzip_nifti(path))


def nifti_header_of(path: Path) -> NiftiHeader | None:
    """The header of the NIfTI file ``path``; None when it is not NIfTI-1 or NIfTI-2."""
    try:
        opener = _gzip_head if is_gzip_nifti(path) else _plain_head
        header = opener(path, 540)
    except (OSError, EOFError, zlib.error) as exc:
        raise MedsegInputError(f"cannot read {path.name}: file is truncated or corrupt") from exc
    return _nifti_header(header)


def _plain_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(n)


def _gzip_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as handle:
        stream = zlib.decompressobj(47)
        return stream.decompress(handle.read(64 * 1024), n)


def _nifti_header(header: bytes) -> NiftiHeader | None:
    """Parse the fields of a NIfTI-1 or NIfTI-2 header we need; None if not NIfTI."""
    if len(header) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            slope, inter = struct.unpack(endian + "2f", header[112:120])
            sizes = _nifti_sizes(dims, bitpix, max(offset, 352))
        elif sizeof_hdr == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", header[176:192])
            sizes = _nifti_sizes(dims, bitpix, max(offset, 544))
        else:
            continue
        if sizes is None:
            return None
        vox_offset, data_bytes = sizes
        return NiftiHeader(
            vox_offset=vox_offset,
            data_bytes=data_bytes,
            count=data_bytes * 8 // bitpix,
            datatype=int(datatype),
            big_endian=endian == ">",
            slope=float(slope),
            inter=float(inter),
        )
    return None


def _nifti_sizes(dims: Sequence[int], bitpix: int, offset: int) -> tuple[int, int] | None:
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    count = math.prod(max(int(d), 1) for d in dims[1 : ndim + 1])
    return int(offset), count * bitpix // 8


# ---- a .nii.gz next to a .nii ----------------------------------------------------------


@contextlib.contextmanager
def itk_source(path: Path, fmt: str) -> Iterator[Path]:
    """The path to give ITK for ``path``: itself, or a private link when ITK would misread it.

    ITK's NIfTI library takes the voxels of ``name.nii.gz`` from ``name.nii`` when such a
    file lies next to it (nifti_findimgname tries ``.nii`` first), silently mixing the
    header of one file with the voxels of another. Such a file is read through a link (or,
    where links are not possible, a copy) in a private temporary folder.
    """
    if fmt != "nifti" or not is_gzip_nifti(path) or not _has_uncompressed_twin(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="medseg-read-") as folder:
        alias = Path(folder) / path.name
        try:
            os.symlink(path.resolve(), alias)
        except OSError:
            try:
                shutil.copyfile(path, alias)
            except OSError as exc:
                raise MedsegInputError(
                    f"cannot read {path.name}: {path.name[:-3]} lies next to it and a private "
                    f"copy could not be made ({exc.strerror or exc})"
                ) from exc
        yield alias


def _has_uncompressed_twin(path: Path) -> bool:
    stem = path.name[: -len(".gz")]
    base = stem[: -len(".nii")]
    return any((path.parent / (base + ext)).exists() for ext in {stem[-4:], ".nii", ".NII"})


# ---- NaN / infinity (ITK's NIfTI reader stores them as 0) ------------------------------


def restore_non_finite(path: Path, array: npt.NDArray[Any]) -> None:
    """Put back the NaN and infinite voxels that ITK's NIfTI reader replaced by 0.

    ITK 5 (nifti_read_buffer) silently turns every non-finite float voxel into 0, so an
    image whose outside was NaN would look like a real zero-valued region. The raw payload
    is streamed once more (constant memory, in chunks) and only the non-finite voxels are
    written back. The payload's voxel order (x fastest) is the order of ``array`` (C order,
    components first), so the n-th value of the payload is ``array.flat[n]``.

    Skipped cheaply when the data is not float, or when no voxel holds the value a
    replaced voxel would have (0, or ``scl_inter`` when the file is rescaled). When the
    layout does not match the array, the voxels are counted and a warning is given.
    """
    if array.dtype.kind != "f":
        return
    header = nifti_header_of(path)
    if header is None or header.datatype not in _NIFTI_FLOATS:
        return
    slope, inter = _nifti_scaling(header)
    filled = array.dtype.type(0.0 * slope + inter)
    flat = array.reshape(-1) if array.flags.c_contiguous else None
    if flat is not None and not _contains(flat, filled):
        return
    dtype = np.dtype(_NIFTI_FLOATS[header.datatype]).newbyteorder(">" if header.big_endian else "<")
    layout_ok = flat is not None and flat.size == header.count
    found = 0
    try:
        for position, values in _payload_values(path, header, dtype):
            bad = np.flatnonzero(~np.isfinite(values))
            if not bad.size:
                continue
            found += int(bad.size)
            if layout_ok and flat is not None:  # layout_ok implies flat is not None
                restored = values[bad].astype(np.float64) * slope + inter
                flat[position + bad] = restored.astype(array.dtype)
    except (OSError, EOFError, zlib.error):
        layout_ok = False  # already read once by ITK; give up quietly on a re-read failure
    if found and not layout_ok:
        warnings.warn(
            f"{path.name}: {found:,} non-finite voxels (NaN or infinite) were read as "
            f"{float(filled):g}",
            UserWarning,
            stacklevel=4,
        )


def _nifti_scaling(header: NiftiHeader) -> tuple[float, float]:
    """The ``(slope, intercept)`` ITK applies: none when ``scl_slope`` is 0 or not finite."""
    slope, inter = header.slope, header.inter
    if slope == 0 or not math.isfinite(slope):
        return 1.0, 0.0
    return slope, inter if math.isfinite(inter) else 0.0


def _contains(flat: npt.NDArray[Any], value: np.generic, step: int = 1 << 22) -> bool:
    """``value in flat`` without a full-size temporary array."""
    return any(
        bool(np.any(flat[start : start + step] == value)) for start in range(0, flat.size, step)
    )


def _payload_values(
    path: Path, header: NiftiHeader, dtype: np.dtype[np.floating[Any]]
) -> Iterator[tuple[int, npt.NDArray[np.floating[Any]]]]:
    """The payload's values as ``(index of the first value, values)`` chunks."""
    itemsize = dtype.itemsize
    position = 0
    carry = b""
    for chunk in _payload_bytes(path, header.vox_offset, header.count * itemsize):
        data = carry + chunk if carry else chunk
        usable = len(data) - len(data) % itemsize
        carry = data[usable:]
        values = np.frombuffer(data, dtype=dtype, count=usable // itemsize)
        yield position, values
        position += values.size


def _payload_bytes(path: Path, start: int, length: int) -> Iterator[bytes]:
    """Bytes ``[start, start + length)`` of the file's (decompressed) content, in chunks."""
    with open(path, "rb") as handle:
        if not is_gzip_nifti(path):
            handle.seek(start)
            remaining = length
            while remaining > 0:
                chunk = handle.read(min(4 * CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
            return
        stream = zlib.decompressobj(47)
        skip, remaining = start, length
        while remaining > 0:
            if stream.eof:  # a file of several gzip members
                data, stream = stream.unused_data, zlib.decompressobj(47)
            elif stream.unconsumed_tail:
                data = stream.unconsumed_tail
            else:
                data = handle.read(CHUNK)
                if not data:
                    return
            out = stream.decompress(data, 4 * CHUNK)
            if skip:
                cut = min(skip, len(out))
                out, skip = out[cut:], skip - cut
            out = out[:remaining]
            remaining -= len(out)
            if out:
                yield out

