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
from ._checks import (
    Payload,
    check_payload,
    refuse_channels,
    refuse_special_file,
    refuse_too_large,
    verify_payload,
)
from ._formats import FORMATS, extension_of
from ._geometry import check_geometry
from ._headers import data_files_of, payload_of_header
from ._nifti import itk_source, nifti_payload, restore_non_finite
from ._save import WriteCheckError, atomic_save

_ITK_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
_COMPRESSED_EXTENSIONS = (".nii.gz", ".nrrd", ".nhdr")
_ITEMSIZE = {
    "8-bit": 1,
    "16-bit": 2,
    "32-bit": 4,
    "64-bit": 8,
}


# ---- reading -------------------------------------------------------------------------


def read_itk_file(path: Path, fmt: str, max_voxels: int, allow_channels: bool) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file (``fmt``) after checking its header and payload."""
    for data_file in data_files_of(path, fmt):
        refuse_special_file(path.name, data_file)
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


def execute(reader: sitk.ImageReaderBase, name: str) -> sitk.Image:
    """Run an ITK reader; memory and read failures become :class:`MedsegInputError`."""
    try:
        with quiet_itk():
            image: sitk.Image = reader.Execute()
            return image
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
    return payload_of_header(path, fmt, data_bytes)


# ---- writing -------------------------------------------------------------------------


def _itk_image(array: npt.NDArray[Any]) -> sitk.Image:
    """A scalar ITK image (SimpleITK would read a 4D array as 3D vectors)."""
    if array.ndim == 4:
        joined: sitk.Image = sitk.JoinSeries(
            [sitk.GetImageFromArray(np.ascontiguousarray(a)) for a in array]
        )
        return joined
    return sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)


def itk_image_of(volume: Volume, target: Path) -> sitk.Image:
    """``volume`` as a SimpleITK image with its spacing, origin and direction (x, y, z)."""
    image = _itk_image(volume.array)
    try:
        image.SetSpacing(tuple(reversed(volume.spacing)))
        image.SetOrigin(tuple(reversed(volume.origin)))
        image.SetDirection(tuple(np.asarray(volume.direction)[::-1, ::-1].ravel()))
    except RuntimeError as exc:
        raise MedsegInputError(f"cannot save {target.name}: invalid geometry") from exc
    return image


def write_itk(target: Path, volume: Volume) -> None:
    """Save ``volume`` with its geometry as NIfTI, NRRD or MetaImage (from the extension)."""
    image = itk_image_of(volume, target)
    compress = extension_of(target) in _COMPRESSED_EXTENSIONS
    fmt = FORMATS[extension_of(target)]

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

    def check(tmp: Path) -> None:
        _verify_written(tmp, fmt, image)

    atomic_save(target, write, check)


def _verify_written(path: Path, fmt: str, image: sitk.Image) -> None:
    """Read back the header of a file just written and check the length of its payload."""
    reader = _itk_header(path, fmt)
    expected = (image.GetSize(), image.GetPixelID(), image.GetNumberOfComponentsPerPixel())
    found = (reader.GetSize(), reader.GetPixelID(), reader.GetNumberOfComponents())
    if found != expected:
        raise WriteCheckError(
            f"the file written reads back as {_describe(*found)}, not {_describe(*expected)}"
        )
    payload = _payload_of(path, fmt, found[0], found[2], reader)
    if payload is None:
        raise WriteCheckError("the file written cannot be checked")  # never for our writes
    verify_payload(path.name, payload)


def _describe(size: Sequence[int], pixel_id: int, components: int) -> str:
    text = sitk.GetPixelIDValueAsString(pixel_id)
    return (
        " x ".join(str(s) for s in reversed(size))
        + f" {text} voxels"
        + (f" of {components} components" if components > 1 else "")
    )
