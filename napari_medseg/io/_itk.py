"""SimpleITK files: reading and writing NIfTI, NRRD and MetaImage, and ITK image conversion.

Headers are read first; the declared size is bounded and the voxel payload checked (see
:mod:`._checks`) before ITK reads the voxels. An ITK image becomes a
:class:`~napari_medseg.volume.Volume` in array order: SimpleITK's ``(x, y, z)`` spacing and
origin are reversed and its direction matrix is reversed on both axes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from ..errors import MedsegInputError
from ..volume import Volume
from ._checks import Payload, check_payload, refuse_channels, refuse_too_large
from ._formats import extension_of
from ._geometry import check_geometry
from ._nifti import itk_source, nifti_payload, restore_non_finite
from ._save import atomic_save

_ITK_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
_COMPRESSED_EXTENSIONS = (".nii.gz", ".nrrd", ".nhdr")
_HEADER_LIMIT = 1 << 20
_ITEMSIZE = {
    "8-bit": 1,
    "16-bit": 2,
    "32-bit": 4,
    "64-bit": 8,
}


# ---- reading -------------------------------------------------------------------------


def read_itk_file(path: Path, fmt: str, max_voxels: int, allow_channels: bool) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file (``fmt``) after checking its header and payload."""
    with itk_source(path, fmt) as source:
        reader = _itk_header(source, fmt, path.name)
        size = reader.GetSize()
        components = reader.GetNumberOfComponents()
        refuse_too_large(path.name, size, components, max_voxels)
        refuse_channels(path.name, size, components, allow_channels)
        payload = _payload_of(path, fmt, size, components, reader)
        if payload is not None:
            check_payload(path.name, payload)
        image = execute(reader, path.name)
    metadata: dict[str, Any] = {"format": fmt, "path": str(path)}
    volume = volume_from_itk(image, path.name, metadata)
    if fmt == "nifti":
        restore_non_finite(path, volume.array)
    return volume


def _itk_header(path: Path, fmt: str, name: str | None = None) -> sitk.ImageFileReader:
    name = name or path.name
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_ITK_IO[fmt])
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegInputError(
            f"cannot read {name}: not a valid {fmt} file, or its header is corrupt"
        ) from exc
    return reader


def execute(reader: sitk.ImageFileReader | sitk.ImageSeriesReader, name: str) -> sitk.Image:
    """Run an ITK reader; memory and read failures become :class:`MedsegInputError`."""
    try:
        with quiet_itk():
            return reader.Execute()
    except MemoryError as exc:
        raise MedsegInputError(f"cannot read {name}: not enough memory") from exc
    except RuntimeError as exc:
        if "bad_alloc" in str(exc) or "allocate" in str(exc).lower():
            raise MedsegInputError(f"cannot read {name}: not enough memory") from exc
        raise MedsegInputError(f"cannot read {name}: file is truncated or corrupt") from exc


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Keep ITK from printing warnings on stderr.

    The ones that matter (uneven or tilted DICOM slices) are raised as GeometryWarning.
    """
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def volume_from_itk(image: sitk.Image, name: str, metadata: dict[str, Any]) -> Volume:
    """Convert an ITK image to a Volume in array order; components go first."""
    ndim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))
    origin = tuple(reversed(image.GetOrigin()))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(ndim, ndim)[::-1, ::-1]
    check_geometry(name, spacing, origin, direction)
    while array.ndim > 3 and array.shape[0] == 1 and image.GetNumberOfComponentsPerPixel() == 1:
        array, spacing, origin = array[0], spacing[1:], origin[1:]
        direction = direction[1:, 1:]
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
        spacing, origin = (1.0, *spacing), (0.0, *origin)
        direction = _block_identity(direction)
        metadata["channel_axis"] = 0
    return Volume(np.ascontiguousarray(array), spacing, origin, direction.copy(), metadata)


def _block_identity(direction: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.eye(direction.shape[0] + 1)
    out[1:, 1:] = direction
    return out


# ---- where the voxels lie, for the payload checks ---------------------------------------


def _itemsize(reader: sitk.ImageFileReader) -> int:
    """Bytes per component of the pixel type ITK reports (e.g. "16-bit signed integer")."""
    text = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    size = next((size for key, size in _ITEMSIZE.items() if key in text), 4)
    return 2 * size if "complex" in text else size


def _payload_of(
    path: Path, fmt: str, size: Sequence[int], components: int, reader: sitk.ImageFileReader
) -> Payload | None:
    data_bytes = math.prod(size) * max(components, 1) * _itemsize(reader)
    if fmt == "nifti":
        return nifti_payload(path)
    if fmt == "nrrd":
        return _nrrd_payload(path, data_bytes)
    return _metaimage_payload(path, data_bytes)


def _text_header(path: Path) -> tuple[list[str], int]:
    """Lines of a text header (NRRD, MetaImage) and the byte offset just after it."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    lines: list[str] = []
    position = 0
    for raw in head.splitlines(keepends=True):
        position += len(raw)
        line = raw.decode("latin-1").strip()
        if not line and lines:
            break
        lines.append(line)
        if line.lower().startswith("elementdatafile"):
            break
    return lines, position


def _nrrd_payload(path: Path, data_bytes: int) -> Payload | None:
    lines, offset = _text_header(path)
    fields = _fields(lines, ":")
    if fields.get("encoding", "raw").lower() not in ("gzip", "gz"):
        return None
    skips = ("line skip", "lineskip", "byte skip", "byteskip")
    if any(fields.get(k, "0") not in ("", "0") for k in skips):
        return None
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        return Payload(path, offset, data_bytes, True)
    if " " in data_file or "%" in data_file or data_file.upper().startswith("LIST"):
        return None
    return Payload(path.parent / data_file, 0, data_bytes, True)


def _metaimage_payload(path: Path, data_bytes: int) -> Payload | None:
    lines, offset = _text_header(path)
    fields = _fields(lines, "=")
    if fields.get("compresseddata", "false").lower() != "true":
        return None
    data_file = fields.get("elementdatafile", "LOCAL")
    if data_file.upper() == "LOCAL":
        return Payload(path, offset, data_bytes, True)
    if "%" in data_file or data_file.upper().startswith("LIST") or " " in data_file:
        return None
    return Payload(path.parent / data_file, 0, data_bytes, True)


def _fields(lines: Sequence[str], separator: str) -> dict[str, str]:
    fields = {}
    for line in lines:
        if line.startswith("#") or separator not in line:
            continue
        key, _, value = line.partition(separator)
        fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    return fields


# ---- writing -------------------------------------------------------------------------


def _itk_image(array: npt.NDArray[Any]) -> sitk.Image:
    """A scalar ITK image (SimpleITK would read a 4D array as 3D vectors)."""
    if array.ndim == 4:
        return sitk.JoinSeries([sitk.GetImageFromArray(np.ascontiguousarray(a)) for a in array])
    return sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)


def write_itk(target: Path, volume: Volume) -> None:
    """Save ``volume`` with its geometry as NIfTI, NRRD or MetaImage (from the extension)."""
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
            with quiet_itk():
                sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            if "orthonormal" in str(exc).lower():
                raise MedsegInputError(
                    f"cannot save {target.name}: NIfTI needs an orthonormal direction"
                ) from exc
            raise

    atomic_save(target, write)
