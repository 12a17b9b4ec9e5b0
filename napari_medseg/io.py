"""Reading and writing medical volumes, safely.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``), DICOM series (a folder, or one ``.dcm`` file standing for its series), TIFF
(``.tif``, ``.tiff``) and NumPy (``.npy``). Medical formats go through SimpleITK.

Every volume comes back as a :class:`~napari_medseg.volume.Volume` in array order
``(z, y, x)``: SimpleITK's ``(x, y, z)`` spacing and origin are reversed and its direction
matrix is reversed on both axes, so column ``j`` is the world direction of array axis ``j``
and the world position (mm) of voxel index ``i`` is ``origin + direction @ (spacing * i)``.

Files are untrusted input. Headers are read first and a file is refused
(:class:`~napari_medseg.errors.UnsafeFileError`) when it declares more voxels than
``max_voxels`` or an absurd compression ratio (a decompression bomb), before any pixel
buffer is allocated. Compressed payloads are checked by a bounded streaming decompression
(constant memory), so a truncated ``.nii.gz`` -- which SimpleITK would silently fill with
zeros -- is reported. ``.npy`` files are never unpickled. This module never imports Qt or
napari.

Two SimpleITK (ITK 5) NIfTI reader defects are worked around: NaN and infinite float
voxels, which it reads as 0, are restored from the file's payload; and ``name.nii.gz`` is
read from itself even when a ``name.nii`` lies next to it (ITK would take the voxels from
that other file).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
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
import SimpleITK as sitk

from ._atomic import atomic_write, atomic_write_via
from .errors import MedsegError, MedsegInputError, UnsafeFileError
from .volume import Volume

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "SUPPORTED_EXTENSIONS",
    "DicomSeriesInfo",
    "GeometryWarning",
    "MedsegGeometryWarning",
    "check_image",
    "dicom_series_uid",
    "extension_of",
    "is_supported",
    "list_dicom_series",
    "looks_like_labels",
    "read_volume",
    "write_volume",
]

#: Largest number of voxels (times components) :func:`read_volume` accepts by default:
#: 2 GB of float32.
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

_FORMATS: dict[str, str] = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".dcm": "dicom",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
}
#: File extensions :func:`read_volume` understands (a DICOM folder is also accepted).
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)
_ITK_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
_COMPRESSED_EXTENSIONS = (".nii.gz", ".nrrd", ".nhdr")
_LABEL_HINTS = ("label", "mask", "seg", "annotation", "annot")
_MAX_LABEL_VALUES = 64
_HEADER_LIMIT = 1 << 20
_CHUNK = 1 << 20
_DICOM_TAGS = {
    "modality": "0008|0060",
    "series_uid": "0020|000e",
    "series_description": "0008|103e",
    "rescale_intercept": "0028|1052",
    "rescale_slope": "0028|1053",
    "rescale_type": "0028|1054",
    "window_center": "0028|1050",
    "window_width": "0028|1051",
}
_ITEMSIZE = {
    "8-bit": 1,
    "16-bit": 2,
    "32-bit": 4,
    "64-bit": 8,
}


class GeometryWarning(UserWarning):
    """The file's geometry is unusual (uneven slices, gantry tilt, oblique, dropped)."""


#: Alias of :class:`GeometryWarning`.
MedsegGeometryWarning = GeometryWarning


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found in a folder.

    Parameters
    ----------
    uid : str
        SeriesInstanceUID, to pass as ``read_volume(folder, series_uid=uid)``.
    description : str
        SeriesDescription (may be empty).
    n_slices : int
        Number of files of the series.
    modality : str
        Modality (``CT``, ``MR`` ...; may be empty).
    files : tuple of str
        The files, ordered by slice position.
    """

    uid: str
    description: str
    n_slices: int
    modality: str
    files: tuple[str, ...]

    def __str__(self) -> str:
        text = self.description or "no description"
        return f"{self.uid} ({text}, {self.n_slices} slices)"


@dataclass(frozen=True)
class _Payload:
    """Where a file's (possibly compressed) voxel data lives and how long it must be."""

    file: Path
    offset: int
    expected: int
    compressed: bool


# --------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------


def extension_of(path: str | Path) -> str:
    """The lower-case extension of ``path``, with ``.nii.gz`` kept whole.

    Parameters
    ----------
    path : str or Path
        A file name.

    Returns
    -------
    str
        For example ``".nii.gz"``, ``".nrrd"``, or ``""`` when there is none.
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_supported(path: str | Path) -> bool:
    """Whether :func:`read_volume` can read ``path`` (judged from its name, or a folder's files).

    Parameters
    ----------
    path : str or Path
        A file, or a folder that may hold a DICOM series.

    Returns
    -------
    bool
        True for a supported extension, or a folder holding DICOM files.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return _folder_has_dicom(p)
    return extension_of(p) in _FORMATS


def _format_of(path: Path) -> str:
    fmt = _FORMATS.get(extension_of(path))
    if fmt is None:
        raise MedsegInputError(
            f"cannot read {path.name}: unknown file type; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} or a DICOM folder"
        )
    return fmt


def _folder_has_dicom(folder: Path, max_files: int = 64) -> bool:
    """Look at a few files of ``folder`` for the ``.dcm`` extension or the DICM marker."""
    try:
        entries = sorted(folder.iterdir())[: max_files * 4]
    except OSError:
        return False
    files = [e for e in entries if e.is_file()][:max_files]
    return any(f.suffix.lower() == ".dcm" or _has_dicm_marker(f) for f in files)


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def read_volume(
    path: str | Path,
    *,
    series_uid: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    allow_channels: bool = False,
) -> Volume:
    """Read a medical volume with its geometry, refusing unsafe files.

    Parameters
    ----------
    path : str or Path
        A file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.dcm``,
        ``.tif``, ``.tiff``, ``.npy``) or a folder holding a DICOM series.
    series_uid : str, optional
        The DICOM series to read when the folder holds several. A ``.dcm`` file stands
        for its own series.
    max_voxels : int
        Refuse files declaring more voxels (times components per voxel) than this.
    allow_channels : bool
        Accept 4D (time) and multi-component (RGB, vector) images. Components are put on
        the first axis, ``(c, z, y, x)``. By default such files are refused.

    Returns
    -------
    Volume
        Array ``(z, y, x)`` (2D files give ``(y, x)``) with spacing, origin and direction
        in array order, and ``metadata`` with at least ``format`` and ``path``.

    Raises
    ------
    MedsegInputError
        Missing file, unknown type, truncated or corrupt data, several DICOM series and
        no ``series_uid``, 4D or RGB data without ``allow_channels``.
    UnsafeFileError
        Declared size above ``max_voxels``, decompression bomb, pickled ``.npy``.

    Warns
    -----
    GeometryWarning
        DICOM series with uneven slice spacing or gantry tilt.
    UserWarning
        NIfTI NaN or infinite voxels that could not be restored (read as 0).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MedsegInputError(f"cannot read {p}: no such file or folder")
    fmt = "dicom" if p.is_dir() else _format_of(p)
    if fmt == "dicom":
        return _read_dicom(p, series_uid, max_voxels, allow_channels)
    if fmt == "tiff":
        return _read_tiff(p, max_voxels, allow_channels)
    if fmt == "npy":
        return _read_npy(p, max_voxels, allow_channels)
    return _read_itk_file(p, fmt, max_voxels, allow_channels)


def _refuse_too_large(name: str, shape: Sequence[int], components: int, max_voxels: int) -> None:
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


def _refuse_channels(name: str, shape: Sequence[int], components: int, allow: bool) -> None:
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


def _check_geometry(
    name: str, spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray
) -> None:
    spacing_ok = all(math.isfinite(s) and s > 0 for s in spacing)
    origin_ok = all(math.isfinite(o) for o in origin)
    direction_ok = bool(np.all(np.isfinite(direction))) and abs(np.linalg.det(direction)) > 1e-6
    if not (spacing_ok and origin_ok and direction_ok):
        raise MedsegInputError(
            f"cannot read {name}: its geometry is invalid (spacing {tuple(spacing)}, "
            f"origin {tuple(origin)})"
        )


# ---- SimpleITK files (NIfTI, NRRD, MetaImage) ----------------------------------------


def _read_itk_file(path: Path, fmt: str, max_voxels: int, allow_channels: bool) -> Volume:
    with _itk_source(path, fmt) as source:
        reader = _itk_header(source, fmt, path.name)
        size = reader.GetSize()
        components = reader.GetNumberOfComponents()
        _refuse_too_large(path.name, size, components, max_voxels)
        _refuse_channels(path.name, size, components, allow_channels)
        payload = _payload_of(path, fmt, size, components, reader)
        if payload is not None:
            _check_payload(path.name, payload)
        image = _execute(reader, path.name)
    metadata: dict[str, Any] = {"format": fmt, "path": str(path)}
    volume = _volume_from_itk(image, path.name, metadata)
    if fmt == "nifti":
        _restore_nifti_non_finite(path, volume.array)
    return volume


@contextlib.contextmanager
def _itk_source(path: Path, fmt: str) -> Iterator[Path]:
    """The path to give ITK for ``path``: itself, or a private link when ITK would misread it.

    ITK's NIfTI library takes the voxels of ``name.nii.gz`` from ``name.nii`` when such a
    file lies next to it (nifti_findimgname tries ``.nii`` first), silently mixing the
    header of one file with the voxels of another. Such a file is read through a link (or,
    where links are not possible, a copy) in a private temporary folder.
    """
    if fmt != "nifti" or not _is_gzip_nifti(path) or not _has_uncompressed_twin(path):
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


def _itk_header(path: Path, fmt: str, name: str | None = None) -> sitk.ImageFileReader:
    name = name or path.name
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_ITK_IO[fmt])
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegInputError(
            f"cannot read {name}: not a valid {fmt} file, or its header is corrupt"
        ) from exc
    return reader


def _execute(reader: Any, name: str) -> sitk.Image:
    try:
        with _quiet_itk():
            return reader.Execute()
    except MemoryError as exc:
        raise MedsegInputError(f"cannot read {name}: not enough memory") from exc
    except RuntimeError as exc:
        if "bad_alloc" in str(exc) or "allocate" in str(exc).lower():
            raise MedsegInputError(f"cannot read {name}: not enough memory") from exc
        raise MedsegInputError(f"cannot read {name}: file is truncated or corrupt") from exc


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Keep ITK from printing warnings on stderr.

    The ones that matter (uneven or tilted DICOM slices) are raised as GeometryWarning.
    """
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _volume_from_itk(image: sitk.Image, name: str, metadata: dict[str, Any]) -> Volume:
    """Convert an ITK image to a Volume in array order; components go first."""
    ndim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))
    origin = tuple(reversed(image.GetOrigin()))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(ndim, ndim)[::-1, ::-1]
    _check_geometry(name, spacing, origin, direction)
    while array.ndim > 3 and array.shape[0] == 1 and image.GetNumberOfComponentsPerPixel() == 1:
        array, spacing, origin = array[0], spacing[1:], origin[1:]
        direction = direction[1:, 1:]
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
        spacing, origin = (1.0, *spacing), (0.0, *origin)
        direction = _block_identity(direction)
        metadata["channel_axis"] = 0
    return Volume(np.ascontiguousarray(array), spacing, origin, direction.copy(), metadata)


def _block_identity(direction: np.ndarray) -> np.ndarray:
    out = np.eye(direction.shape[0] + 1)
    out[1:, 1:] = direction
    return out


def _itemsize(reader: sitk.ImageFileReader) -> int:
    """Bytes per component of the pixel type ITK reports (e.g. "16-bit signed integer")."""
    text = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    size = next((size for key, size in _ITEMSIZE.items() if key in text), 4)
    return 2 * size if "complex" in text else size


# ---- payload checks (truncation, decompression bombs) --------------------------------


def _payload_of(
    path: Path, fmt: str, size: Sequence[int], components: int, reader: sitk.ImageFileReader
) -> _Payload | None:
    data_bytes = math.prod(size) * max(components, 1) * _itemsize(reader)
    if fmt == "nifti":
        return _nifti_payload(path)
    if fmt == "nrrd":
        return _nrrd_payload(path, data_bytes)
    return _metaimage_payload(path, data_bytes)


@dataclass(frozen=True)
class _NiftiHeader:
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


def _nifti_payload(path: Path) -> _Payload | None:
    """Data layout of a NIfTI-1/2 file, from its own header (not ITK's rescaled type)."""
    header = _nifti_header_of(path)
    if header is None:
        return None
    return _Payload(path, 0, header.vox_offset + header.data_bytes, _is_gzip_nifti(path))


def _is_gzip_nifti(path: Path) -> bool:
    return extension_of(path) == ".nii.gz"


def _nifti_header_of(path: Path) -> _NiftiHeader | None:
    try:
        opener = _gzip_head if _is_gzip_nifti(path) else _plain_head
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


def _nifti_header(header: bytes) -> _NiftiHeader | None:
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
        return _NiftiHeader(
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


# ---- NIfTI NaN / infinity (ITK's NIfTI reader stores them as 0) ----------------------


def _restore_nifti_non_finite(path: Path, array: np.ndarray) -> None:
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
    header = _nifti_header_of(path)
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
            if layout_ok:
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


def _nifti_scaling(header: _NiftiHeader) -> tuple[float, float]:
    """The ``(slope, intercept)`` ITK applies: none when ``scl_slope`` is 0 or not finite."""
    slope, inter = header.slope, header.inter
    if slope == 0 or not math.isfinite(slope):
        return 1.0, 0.0
    return slope, inter if math.isfinite(inter) else 0.0


def _contains(flat: np.ndarray, value: Any, step: int = 1 << 22) -> bool:
    """``value in flat`` without a full-size temporary array."""
    return any(
        bool(np.any(flat[start : start + step] == value)) for start in range(0, flat.size, step)
    )


def _payload_values(
    path: Path, header: _NiftiHeader, dtype: np.dtype
) -> Iterator[tuple[int, np.ndarray]]:
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
        if not _is_gzip_nifti(path):
            handle.seek(start)
            remaining = length
            while remaining > 0:
                chunk = handle.read(min(4 * _CHUNK, remaining))
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
                data = handle.read(_CHUNK)
                if not data:
                    return
            out = stream.decompress(data, 4 * _CHUNK)
            if skip:
                cut = min(skip, len(out))
                out, skip = out[cut:], skip - cut
            out = out[:remaining]
            remaining -= len(out)
            if out:
                yield out


def _text_header(path: Path) -> tuple[list[str], int]:
    """Lines of a text header (NRRD, MetaImage) and the byte offset just after it."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    lines, position = [], 0
    for raw in head.splitlines(keepends=True):
        position += len(raw)
        line = raw.decode("latin-1").strip()
        if not line and lines:
            break
        lines.append(line)
        if line.lower().startswith("elementdatafile"):
            break
    return lines, position


def _nrrd_payload(path: Path, data_bytes: int) -> _Payload | None:
    lines, offset = _text_header(path)
    fields = _fields(lines, ":")
    if fields.get("encoding", "raw").lower() not in ("gzip", "gz"):
        return None
    skips = ("line skip", "lineskip", "byte skip", "byteskip")
    if any(fields.get(k, "0") not in ("", "0") for k in skips):
        return None
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        return _Payload(path, offset, data_bytes, True)
    if " " in data_file or "%" in data_file or data_file.upper().startswith("LIST"):
        return None
    return _Payload(path.parent / data_file, 0, data_bytes, True)


def _metaimage_payload(path: Path, data_bytes: int) -> _Payload | None:
    lines, offset = _text_header(path)
    fields = _fields(lines, "=")
    if fields.get("compresseddata", "false").lower() != "true":
        return None
    data_file = fields.get("elementdatafile", "LOCAL")
    if data_file.upper() == "LOCAL":
        return _Payload(path, offset, data_bytes, True)
    if "%" in data_file or data_file.upper().startswith("LIST") or " " in data_file:
        return None
    return _Payload(path.parent / data_file, 0, data_bytes, True)


def _fields(lines: Sequence[str], separator: str) -> dict[str, str]:
    fields = {}
    for line in lines:
        if line.startswith("#") or separator not in line:
            continue
        key, _, value = line.partition(separator)
        fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    return fields


def _check_payload(name: str, payload: _Payload) -> None:
    """Refuse truncated payloads and decompression bombs before ITK allocates anything."""
    try:
        stored = payload.file.stat().st_size - payload.offset
    except OSError as exc:
        raise MedsegInputError(
            f"cannot read {name}: its data file {payload.file.name} is missing"
        ) from exc
    if not payload.compressed:
        if stored < payload.expected:
            raise MedsegInputError(f"cannot read {name}: file is truncated or corrupt")
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


def _trailer_ok(payload: _Payload) -> bool:
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


def _decompressed_size(name: str, payload: _Payload) -> int:
    """Stream-decompress the payload (constant memory) and return how many bytes it holds.

    Stops once comfortably past the expected size; checks CRCs of complete gzip members.
    """
    limit = payload.expected + _CHUNK
    produced = 0
    stream = zlib.decompressobj(47)
    try:
        with open(payload.file, "rb") as handle:
            handle.seek(payload.offset)
            while produced <= limit:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                produced += _drain(stream, chunk, limit - produced)
                if stream.eof:
                    rest = stream.unused_data
                    if not rest.startswith(b"\x1f\x8b"):
                        break
                    stream = zlib.decompressobj(47)
                    produced += _drain(stream, rest, limit - produced)
    except zlib.error as exc:
        raise MedsegInputError(f"cannot read {name}: file is truncated or corrupt") from exc
    return produced


def _drain(stream: Any, data: bytes, budget: int) -> int:
    """Feed ``data`` to a decompressor, never holding more than one chunk of output."""
    produced = len(stream.decompress(data, _CHUNK))
    while stream.unconsumed_tail and produced <= budget:
        produced += len(stream.decompress(stream.unconsumed_tail, _CHUNK))
    return produced


# ---- DICOM ---------------------------------------------------------------------------


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """The DICOM series found in ``folder`` (not recursive).

    Parameters
    ----------
    folder : str or Path
        A folder holding DICOM files.

    Returns
    -------
    list of DicomSeriesInfo
        One entry per SeriesInstanceUID; empty when there is none.

    Raises
    ------
    MedsegInputError
        When ``folder`` is not a folder.
    """
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise MedsegInputError(f"cannot list DICOM series: {p} is not a folder")
    return [_series_info(p, uid) for uid in _series_ids(p)]


def dicom_series_uid(path: str | Path) -> str:
    """The SeriesInstanceUID of one DICOM file (header only).

    Parameters
    ----------
    path : str or Path
        A DICOM file.

    Returns
    -------
    str
        The UID, or ``""`` when the file has none.
    """
    return _dicom_file_tags(Path(path)).get("series_uid", "")


def _series_ids(folder: Path) -> list[str]:
    with _quiet_itk():
        return [uid.strip("\x00 ") for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))]


def _series_files(folder: Path, uid: str) -> tuple[str, ...]:
    with _quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def _series_info(folder: Path, uid: str) -> DicomSeriesInfo:
    files = _series_files(folder, uid)
    tags = _dicom_file_tags(Path(files[0])) if files else {}
    return DicomSeriesInfo(
        uid=uid,
        description=tags.get("series_description", ""),
        n_slices=len(files),
        modality=tags.get("modality", ""),
        files=files,
    )


def _dicom_reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    reader.LoadPrivateTagsOff()
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegInputError(f"cannot read {path.name}: not a valid DICOM file") from exc
    return reader


def _dicom_file_tags(path: Path) -> dict[str, str]:
    reader = _dicom_reader(path)
    return {
        key: reader.GetMetaData(tag).strip("\x00 ")
        for key, tag in _DICOM_TAGS.items()
        if reader.HasMetaDataKey(tag)
    }


def _read_dicom(
    path: Path, series_uid: str | None, max_voxels: int, allow_channels: bool
) -> Volume:
    folder = path if path.is_dir() else path.parent
    if series_uid is None and path.is_file():
        series_uid = dicom_series_uid(path) or None
    uid = _choose_series(folder, series_uid)
    files = _series_files(folder, uid)
    first = _dicom_reader(Path(files[0]))
    cols, rows, *frames = first.GetSize()
    size = (cols, rows, math.prod(frames) * len(files))
    _refuse_too_large(folder.name, size, first.GetNumberOfComponents(), max_voxels)
    _refuse_channels(folder.name, size, first.GetNumberOfComponents(), allow_channels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    image = _execute(reader, folder.name)
    metadata = _dicom_metadata(reader, folder, uid, len(files))
    volume = _volume_from_itk(image, folder.name, metadata)
    _check_slices(volume, reader, len(files), folder.name)
    return volume


def _choose_series(folder: Path, series_uid: str | None) -> str:
    ids = _series_ids(folder)
    if not ids:
        raise MedsegInputError(f"cannot read {folder}: no DICOM series found in this folder")
    if series_uid is None and len(ids) == 1:
        return ids[0]
    if series_uid is not None and series_uid.strip("\x00 ") in ids:
        return series_uid.strip("\x00 ")
    listing = "; ".join(str(_series_info(folder, uid)) for uid in ids)
    if series_uid is None:
        raise MedsegInputError(
            f"{folder.name} holds {len(ids)} DICOM series, choose one with series_uid: {listing}"
        )
    raise MedsegInputError(f"series {series_uid} is not in {folder.name}; found: {listing}")


def _dicom_metadata(
    reader: sitk.ImageSeriesReader, folder: Path, uid: str, n_files: int
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"format": "dicom", "path": str(folder), "n_files": n_files}
    for key, tag in _DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            value = reader.GetMetaData(0, tag).strip("\x00 ")
            metadata[key] = (
                _number_or_text(value) if key.startswith(("rescale_s", "rescale_i")) else value
            )
    metadata["series_uid"] = uid
    return metadata


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _slice_positions(reader: sitk.ImageSeriesReader, n: int) -> np.ndarray | None:
    try:
        rows = [reader.GetMetaData(i, "0020|0032").split("\\") for i in range(n)]
        return np.asarray(rows, dtype=float).reshape(n, 3)
    except (RuntimeError, ValueError):
        return None


def _slice_normal(reader: sitk.ImageSeriesReader) -> np.ndarray | None:
    try:
        cosines = np.asarray(reader.GetMetaData(0, "0020|0037").split("\\"), dtype=float)
    except (RuntimeError, ValueError):
        return None
    if cosines.shape != (6,):
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    length = np.linalg.norm(normal)
    return normal / length if length > 1e-6 else None


def _check_slices(volume: Volume, reader: sitk.ImageSeriesReader, n: int, name: str) -> None:
    """Warn about uneven spacing and gantry tilt; use the mean spacing along the normal."""
    if n < 2 or volume.array.ndim != 3:
        return
    positions, normal = _slice_positions(reader, n), _slice_normal(reader)
    if positions is None or normal is None:
        return
    distances = positions @ normal
    gaps = np.abs(np.diff(distances))
    mean = abs(distances[-1] - distances[0]) / (n - 1)
    if mean > 1e-6:
        volume.spacing = (float(mean), *volume.spacing[1:])
    if np.any(gaps < 1e-3 * max(mean, 1e-3)):
        _warn(f"{name}: several slices share the same position; the volume may be wrong")
    elif np.max(np.abs(gaps - mean)) > max(0.01 * mean, 1e-3):
        _warn(
            f"{name}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, missing "
            f"slices?); the volume uses the mean spacing {mean:.3g} mm, so positions and "
            "distances along the slice axis are approximate"
        )
    _check_tilt(positions, normal, name)


def _check_tilt(positions: np.ndarray, normal: np.ndarray, name: str) -> None:
    step = positions[-1] - positions[0]
    along = float(step @ normal)
    lateral = float(np.linalg.norm(step - along * normal))
    if abs(along) < 1e-6:
        return
    angle = math.degrees(math.atan2(lateral, abs(along)))
    if angle > 0.1:
        _warn(
            f"{name}: slices are tilted by {angle:.1f} degrees (gantry tilt); the volume is "
            f"not de-sheared, so world positions may be off by up to {lateral:.1f} mm"
        )


def _warn(message: str) -> None:
    warnings.warn(message, GeometryWarning, stacklevel=4)


# ---- TIFF ----------------------------------------------------------------------------

_UNIT_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "cm": 10.0,
    "centimeter": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "micron": 1e-3,
    "um": 1e-3,
    "µm": 1e-3,
    "\\u00b5m": 1e-3,
    "microns": 1e-3,
    "nm": 1e-6,
    "inch": 25.4,
}
_SPATIAL_AXES = "ZYXQI"


def _read_tiff(path: Path, max_voxels: int, allow_channels: bool) -> Volume:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            _refuse_too_large(path.name, shape, 1, max_voxels)
            keep, channel_axes = _tiff_axes(path.name, shape, axes, allow_channels)
            spacing, origin, direction, unit = _tiff_geometry(tif, len(keep) - len(channel_axes))
            array = series.asarray()
    except MedsegError:
        raise
    except MemoryError as exc:
        raise MedsegInputError(f"cannot read {path.name}: not enough memory") from exc
    except Exception as exc:  # tifffile raises many types on damaged files
        raise MedsegInputError(f"cannot read {path.name}: file is truncated or corrupt") from exc
    array = array.reshape([shape[i] for i in keep])
    metadata: dict[str, Any] = {"format": "tiff", "path": str(path), "spacing_unit": unit}
    if channel_axes:
        array = np.moveaxis(array, [keep.index(c) for c in channel_axes], range(len(channel_axes)))
        n = len(channel_axes)
        spacing, origin = (1.0,) * n + spacing, (0.0,) * n + origin
        direction = np.eye(array.ndim)
        metadata["channel_axis"] = 0
    return Volume(array, spacing, origin, direction, metadata)


def _tiff_axes(
    name: str, shape: Sequence[int], axes: str, allow_channels: bool
) -> tuple[list[int], list[int]]:
    """Axes kept (singletons dropped, Z, Y and X always kept) and which of them are channels."""
    keep = [i for i, (a, s) in enumerate(zip(axes, shape)) if s > 1 or a in "ZYX"]
    channels = [i for i in keep if axes[i] not in _SPATIAL_AXES]
    spatial = len(keep) - len(channels)
    if spatial > 3 or (channels and not allow_channels):
        ndim = len(keep)
        kind = (
            "RGB or vector components"
            if any(axes[i] == "S" for i in channels)
            else "time or channels"
        )
        raise MedsegInputError(
            f"{name} has {ndim} dimensions ({kind}); napari-medseg segments 3D volumes"
        )
    return keep, channels


def _tiff_geometry(
    tif: Any, ndim: int
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray | None, str]:
    """Spacing (mm when the unit is known), origin and direction of a TIFF."""
    shaped = (tif.shaped_metadata or [{}])[0] if tif.is_shaped else {}
    spacing = shaped.get("spacing")
    if spacing is not None and len(spacing) == ndim:
        factor, unit = _unit_factor(shaped.get("unit", "mm"))
        origin = shaped.get("origin") or (0.0,) * ndim
        direction = shaped.get("direction")
        return (
            tuple(float(s) * factor for s in spacing),
            tuple(float(o) * factor for o in origin),
            None if direction is None else np.asarray(direction, dtype=float),
            unit,
        )
    y, x, unit_text = _tiff_resolution(tif)
    factor, unit = _unit_factor(unit_text)
    z = float((tif.imagej_metadata or {}).get("spacing", 1.0)) if tif.is_imagej else 1.0
    spacing_xyz = (z, y, x)[3 - ndim :] if ndim <= 3 else (1.0,) * ndim
    return tuple(s * factor for s in spacing_xyz), (0.0,) * ndim, None, unit


def _tiff_resolution(tif: Any) -> tuple[float, float, str]:
    """Pixel size along y and x and its unit name, from the first page's tags."""
    page = tif.pages[0]
    tags = page.tags
    unit_code = int(getattr(tags.get("ResolutionUnit"), "value", 1))
    unit = {2: "inch", 3: "cm"}.get(unit_code, "")
    if tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", unit))
    return _pixel_size(tags.get("YResolution")), _pixel_size(tags.get("XResolution")), unit


def _pixel_size(tag: Any) -> float:
    if tag is None:
        return 1.0
    value = tag.value
    num, den = value if isinstance(value, tuple) else (value, 1)
    return float(den) / float(num) if num else 1.0


def _unit_factor(unit: str) -> tuple[float, str]:
    """Millimetres per ``unit``; unknown units keep their numbers (factor 1)."""
    key = str(unit).strip().lower()
    if key in _UNIT_MM:
        return _UNIT_MM[key], "mm"
    return 1.0, key or "pixel"


# ---- NumPy ---------------------------------------------------------------------------


def _read_npy(path: Path, max_voxels: int, allow_channels: bool) -> Volume:
    shape, dtype = _npy_header(path)
    if dtype.hasobject:
        raise UnsafeFileError(
            f"refusing to read {path.name}: it stores Python objects (pickle), which could "
            "run arbitrary code"
        )
    if dtype.kind not in "biuf":
        raise MedsegInputError(f"cannot read {path.name}: dtype {dtype} is not a number type")
    _refuse_too_large(path.name, shape, 1, max_voxels)
    if len(shape) < 2:
        raise MedsegInputError(f"{path.name} has {len(shape)} dimension(s); expected 2D or 3D")
    _refuse_channels(path.name, shape, 1, allow_channels)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MedsegInputError(f"cannot read {path.name}: file is truncated or corrupt") from exc
    return Volume(array, metadata={"format": "npy", "path": str(path)})


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise MedsegInputError(f"cannot read {path.name}: not a valid .npy file") from exc
    return tuple(int(s) for s in shape), np.dtype(dtype)


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


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


def looks_like_labels(volume: Volume | np.ndarray, name: str | None = None) -> bool:
    """Guess whether a volume is a label map (segmentation, mask) rather than an image.

    Parameters
    ----------
    volume : Volume or np.ndarray
        The data.
    name : str, optional
        File or layer name; ``label``, ``mask``, ``seg``, ``annotation`` are hints. Taken
        from ``volume.metadata["path"]`` when not given.

    Returns
    -------
    bool
        True for boolean data, or integer data (integral floats when the name hints at
        labels) with few distinct non-negative values on a subsample.
    """
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    if name is None and isinstance(volume, Volume):
        name = str(volume.metadata.get("path", ""))
    hinted = any(h in Path(name or "").name.lower() for h in _LABEL_HINTS)
    if array.dtype.kind == "b":
        return True
    if array.dtype.kind not in "iuf" or array.size == 0:
        return False
    sample = _subsample(array)
    if array.dtype.kind == "f" and not (
        hinted and np.all(np.isfinite(sample)) and np.all(sample == np.round(sample))
    ):
        return False
    if sample.min() < 0:
        return False
    limit = _MAX_LABEL_VALUES * (16 if hinted else 1)
    return len(np.unique(sample)) <= limit


def _subsample(array: np.ndarray, target: int = 1_000_000) -> np.ndarray:
    step = max(1, int(round((array.size / target) ** (1 / max(array.ndim, 1)))))
    return np.asarray(array[(slice(None, None, step),) * array.ndim]).ravel()


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def write_volume(
    path: str | Path,
    data: np.ndarray | Volume,
    *,
    reference: Volume | None = None,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: np.ndarray | Sequence[Sequence[float]] | None = None,
    labels: bool | None = None,
) -> Path:
    """Write a volume atomically, keeping its geometry.

    Geometry comes from ``reference`` (e.g. the image a segmentation was made for, so the
    file opens aligned in 3D Slicer / ITK-SNAP), else from ``data`` when it is a
    :class:`Volume`; ``spacing``, ``origin`` and ``direction`` (array order) override it.

    Parameters
    ----------
    path : str or Path
        Target file; the format follows the extension (any of
        :data:`SUPPORTED_EXTENSIONS` except ``.dcm``).
    data : np.ndarray or Volume
        The voxels, array order ``(z, y, x)``.
    reference : Volume, optional
        Volume whose geometry to copy; its shape must equal the data's.
    spacing, origin : sequence of float, optional
        Voxel size and world position of voxel 0, array order, mm.
    direction : array-like, optional
        ``(ndim, ndim)`` direction cosines, column ``j`` for array axis ``j``.
    labels : bool, optional
        Store as a label map: the smallest unsigned integer type holding the values
        (uint8, or uint16 above 255 ...). ``None`` decides from the data
        (:func:`looks_like_labels`); conversion is always lossless.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    MedsegInputError
        Unsupported extension (or DICOM), shape or geometry mismatch, unsupported dtype.
    MedsegError
        The file could not be written (disk full ...); a previous file is left intact.

    Warns
    -----
    GeometryWarning
        When the format cannot keep the geometry (``.npy``).
    """
    target = Path(path).expanduser()
    fmt = _FORMATS.get(extension_of(target))
    if fmt is None or fmt == "dicom":
        raise MedsegInputError(
            f"cannot save {target.name}: "
            + ("writing DICOM is not supported" if fmt == "dicom" else "unknown file type")
            + "; use .nii.gz, .nrrd, .mha, .tif or .npy"
        )
    array = np.asarray(data.array if isinstance(data, Volume) else data)
    base = reference if reference is not None else (data if isinstance(data, Volume) else None)
    geometry = _geometry_for(array.shape, base, spacing, origin, direction, reference is not None)
    array = _storable(array, target.name, labels)
    volume = Volume(array, *geometry)
    if fmt == "npy":
        _write_npy(target, volume)
    elif fmt == "tiff":
        _write_tiff(target, volume)
    else:
        _write_itk(target, volume)
    return target


def _geometry_for(
    shape: Sequence[int],
    base: Volume | None,
    spacing: Any,
    origin: Any,
    direction: Any,
    is_reference: bool,
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    ndim = len(shape)
    if base is not None and tuple(base.shape) != tuple(shape):
        what = "reference image" if is_reference else "volume"
        raise MedsegInputError(
            f"the array's shape {tuple(shape)} differs from the {what}'s {tuple(base.shape)}"
        )
    spacing = tuple(spacing if spacing is not None else (base.spacing if base else (1.0,) * ndim))
    origin = tuple(origin if origin is not None else (base.origin if base else (0.0,) * ndim))
    direction = np.asarray(
        direction if direction is not None else (base.direction if base else np.eye(ndim)),
        dtype=float,
    )
    if len(spacing) != ndim or len(origin) != ndim or direction.shape != (ndim, ndim):
        raise MedsegInputError(
            f"geometry does not match a {ndim}D array: spacing {spacing}, origin {origin}, "
            f"direction of shape {direction.shape}"
        )
    _check_geometry("the volume", spacing, origin, direction)
    return tuple(map(float, spacing)), tuple(map(float, origin)), direction


def _storable(array: np.ndarray, name: str, labels: bool | None) -> np.ndarray:
    """Convert to a type every format stores; label maps to the smallest unsigned type."""
    if array.ndim < 2 or array.ndim > 4:
        raise MedsegInputError(f"cannot save {name}: {array.ndim}D data (expected 2D to 4D)")
    if labels is None:
        labels = array.dtype.kind in "biu" and looks_like_labels(array)
    if labels:
        return _as_label_type(array, name)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise MedsegInputError(f"cannot save {name}: voxel type {array.dtype} is not supported")
    return array


def _as_label_type(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise MedsegInputError(f"cannot save {name} as labels: values are not integers")
    elif array.dtype.kind not in "iu":
        raise MedsegInputError(f"cannot save {name} as labels: voxel type {array.dtype}")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = array.min(), array.max()
    for dtype in (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype, copy=False)
    raise MedsegInputError(f"cannot save {name} as labels: values out of range")


def _itk_image(array: np.ndarray) -> sitk.Image:
    """A scalar ITK image (SimpleITK would read a 4D array as 3D vectors)."""
    if array.ndim == 4:
        return sitk.JoinSeries([sitk.GetImageFromArray(np.ascontiguousarray(a)) for a in array])
    return sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)


def _write_itk(target: Path, volume: Volume) -> None:
    image = _itk_image(volume.array)
    try:
        image.SetSpacing(tuple(reversed(volume.spacing)))
        image.SetOrigin(tuple(reversed(volume.origin)))
        image.SetDirection(tuple(np.asarray(volume.direction)[::-1, ::-1].ravel()))
    except RuntimeError as exc:
        raise MedsegInputError(f"cannot save {target.name}: invalid geometry") from exc
    compress = extension_of(target) in _COMPRESSED_EXTENSIONS

    def write(tmp: Path) -> None:
        try:
            with _quiet_itk():
                sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            if "orthonormal" in str(exc).lower():
                raise MedsegInputError(
                    f"cannot save {target.name}: NIfTI needs an orthonormal direction"
                ) from exc
            raise

    _atomic_save(target, write)


def _atomic_save(target: Path, write: Any) -> None:
    try:
        atomic_write_via(target, write)
    except MedsegError:
        raise
    except (RuntimeError, OSError) as exc:
        reason = _short_reason(exc)
        raise MedsegError(f"could not save {target}: {reason}") from exc


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", text)[:200]


def _write_tiff(target: Path, volume: Volume) -> None:
    import tifffile

    array = volume.array
    if array.ndim > 3:
        raise MedsegInputError(f"cannot save {target.name}: TIFF output is limited to 3D")
    axes = "ZYX"[3 - array.ndim :]
    metadata = {
        "axes": axes,
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": np.asarray(volume.direction).tolist(),
        "unit": "mm",
    }
    per_cm = tuple(10.0 / s for s in volume.spacing[-2:][::-1])

    def write(tmp: Path) -> None:
        tifffile.imwrite(
            tmp,
            array,
            photometric="minisblack",
            metadata=metadata,
            resolution=per_cm,
            resolutionunit="CENTIMETER",
            compression="zlib",
            bigtiff=array.nbytes > 2**32 - 2**25,
        )

    _atomic_save(target, write)


def _write_npy(target: Path, volume: Volume) -> None:
    ndim = volume.array.ndim
    trivial = (
        np.allclose(volume.spacing, 1.0)
        and np.allclose(volume.origin, 0.0)
        and np.allclose(volume.direction, np.eye(ndim))
    )
    if not trivial:
        warnings.warn(
            f"{target.name}: .npy keeps only the voxels; spacing {volume.spacing}, origin and "
            "direction are not saved (use .nii.gz, .nrrd or .mha to keep them)",
            GeometryWarning,
            stacklevel=3,
        )
    try:
        with atomic_write(target, "wb") as handle:
            np.save(handle, volume.array, allow_pickle=False)
    except MedsegError:
        raise
    except OSError as exc:
        raise MedsegError(f"could not save {target}: {_short_reason(exc)}") from exc
