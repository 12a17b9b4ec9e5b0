"""Reading and writing medical volumes, safely.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``), DICOM series (a folder, or one ``.dcm`` file standing for its series), TIFF
(``.tif``, ``.tiff``), NumPy (``.npy``) and zarr / OME-Zarr stores (a ``.zarr`` folder, with
the ``zarr`` extra; :mod:`.zarr_io` also opens them lazily, for volumes larger than memory).
Medical formats go through SimpleITK.

Every volume comes back as a :class:`~napari_medseg.volume.Volume` in array order
``(z, y, x)``: SimpleITK's ``(x, y, z)`` spacing and origin are reversed and its direction
matrix is reversed on both axes, so column ``j`` is the world direction of array axis ``j``
and the world position (mm) of voxel index ``i`` is ``origin + direction @ (spacing * i)``.

Files are untrusted input. Anything but a regular file (a FIFO, a socket, a device), or a
header whose data file is one, is refused before it is opened (a DICOM folder holding one
too). Headers are read first and a file is refused
(:class:`~napari_medseg.errors.UnsafeFileError`) when it declares more voxels than
``max_voxels`` or an absurd compression ratio (a decompression bomb), before any pixel
buffer is allocated. Compressed payloads are checked by a bounded streaming decompression
(constant memory), so a truncated ``.nii.gz`` -- which SimpleITK would silently fill with
zeros -- is reported. ``.npy`` files are never unpickled. This package never imports Qt or
napari.

Two SimpleITK (ITK 5) NIfTI reader defects are worked around: NaN and infinite float
voxels, which it reads as 0, are restored from the file's payload; and ``name.nii.gz`` is
read from itself even when a ``name.nii`` lies next to it (ITK would take the voxels from
that other file).

Writing is atomic and verified (``_save``): the library writes a temporary file, its
header is read back (shape, voxel type) and its payload checked (length; compressed data by
one streaming decompression) before it replaces the target, so a short write that a library
reports only on stderr (SimpleITK's NIfTI writer on a full disk) fails with
:class:`~napari_medseg.errors.MedsegError` and leaves the previous file untouched.

A label map written with ``segments`` carries its structure names and colours where 3D
Slicer (``.seg.nrrd`` fields) and ITK-SNAP (a ``.label.txt`` label description beside other
formats) read them, and :func:`read_volume` finds them again (:mod:`.segments`).

This module only dispatches on the format (:func:`read_volume`, :func:`write_volume`); the
work is done per format by ``_itk`` (NIfTI, NRRD, MetaImage through SimpleITK, with
``_nifti`` for NIfTI specifics), :mod:`.dicom`, :mod:`.tiff`, ``_npy`` and :mod:`.zarr_io`.
The checks on untrusted files are in ``_checks``; the label-map heuristics in
:mod:`napari_medseg.labels`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MedsegInputError
from ..labels import as_label_type, looks_like_labels
from ..volume import Volume
from ._checks import DEFAULT_MAX_VOXELS, check_image, refuse_special_file
from ._formats import FORMATS, STORE_EXTENSIONS, SUPPORTED_EXTENSIONS, extension_of
from ._geometry import GeometryWarning, geometry_for
from ._itk import read_itk_file, write_itk
from ._npy import read_npy, write_npy
from .dicom import (
    DicomSeriesInfo,
    SeveralSeriesError,
    dicom_series_uid,
    find_series,
    folder_has_dicom,
    list_dicom_series,
    read_dicom,
    read_series,
    window_limits,
)
from .segments import (
    Segments,
    is_seg_nrrd,
    label_file_for,
    with_segments,
    write_label_description,
    write_seg_nrrd,
)
from .tiff import read_tiff, write_tiff
from .zarr_io import LazyVolume, ZarrLabelWriter, is_zarr, open_zarr, write_zarr

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "SUPPORTED_EXTENSIONS",
    "DicomSeriesInfo",
    "GeometryWarning",
    "LazyVolume",
    "Segments",
    "SeveralSeriesError",
    "ZarrLabelWriter",
    "check_image",
    "dicom_series_uid",
    "extension_of",
    "find_series",
    "is_supported",
    "is_zarr",
    "list_dicom_series",
    "looks_like_labels",
    "open_zarr",
    "read_series",
    "read_volume",
    "window_limits",
    "write_volume",
    "write_zarr",
]

#: Writer of each format :func:`write_volume` can write (DICOM is read only).
_WRITERS: dict[str, Callable[[Path, Volume], None]] = {
    "nifti": write_itk,
    "nrrd": write_itk,
    "metaimage": write_itk,
    "tiff": write_tiff,
    "npy": write_npy,
}


def is_supported(path: str | Path) -> bool:
    """Whether :func:`read_volume` can read ``path`` (judged from its name, or a folder's files).

    Parameters
    ----------
    path : str or Path
        A file, a zarr store, or a folder that may hold a DICOM series.

    Returns
    -------
    bool
        True for a supported extension, a zarr store, or a folder holding DICOM files.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return is_zarr(p) or folder_has_dicom(p)
    return extension_of(p) in FORMATS


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(extension_of(path))
    if fmt is None:
        raise MedsegInputError(
            f"cannot read {path.name}: unknown file type; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}, a DICOM folder or a "
            f"{' or '.join(STORE_EXTENSIONS)} store"
        )
    return fmt


def read_volume(
    path: str | os.PathLike[str],
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
        ``.tif``, ``.tiff``, ``.npy``), a folder holding a DICOM series, or a zarr /
        OME-Zarr store (read whole: :func:`open_zarr` reads one lazily).
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
        in array order, and ``metadata`` with at least ``format`` and ``path``; a label
        map stored with its structure names and colours also gets them
        (:func:`.segments.segments_metadata`).

    Raises
    ------
    MedsegInputError
        Missing file, unknown type, not a regular file (a FIFO, socket or device, or a
        header whose data file is one), truncated or corrupt data, several DICOM series
        and no ``series_uid`` (:class:`SeveralSeriesError`, listing them), 4D or RGB data
        without ``allow_channels``.
    UnsafeFileError
        Declared size above ``max_voxels`` (a zarr store that large: ``medseg predict``
        streams it), decompression bomb, pickled ``.npy``.

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
    fmt = "zarr" if is_zarr(p) else "dicom" if p.is_dir() else _format_of(p)
    if not p.is_dir():
        refuse_special_file(p.name, p)
    if fmt == "zarr":
        return open_zarr(p).load(max_voxels)
    if fmt == "dicom":
        return read_dicom(p, series_uid, max_voxels, allow_channels)
    if fmt == "tiff":
        volume = read_tiff(p, max_voxels, allow_channels)
    elif fmt == "npy":
        volume = read_npy(p, max_voxels, allow_channels)
    else:
        volume = read_itk_file(p, fmt, max_voxels, allow_channels)
    return with_segments(volume, p)


def write_volume(
    path: str | os.PathLike[str],
    data: npt.NDArray[Any] | Volume,
    *,
    reference: Volume | None = None,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: npt.ArrayLike | None = None,
    labels: bool | None = None,
    segments: Segments | None = None,
) -> Path:
    """Write a volume atomically, keeping its geometry.

    Geometry comes from ``reference`` (e.g. the image a segmentation was made for, so the
    file opens aligned in 3D Slicer / ITK-SNAP), else from ``data`` when it is a
    :class:`Volume`; ``spacing``, ``origin`` and ``direction`` (array order) override it.

    Parameters
    ----------
    path : str or Path
        Target file; the format follows the extension (any of
        :data:`SUPPORTED_EXTENSIONS` except ``.dcm``, or ``.zarr``: an OME-Zarr store,
        :func:`write_zarr`, axis-aligned).
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
    segments : Segments, optional
        Structure names and colours of a label map (:mod:`.segments`): Slicer's fields in
        a ``.seg.nrrd`` (3D only), OME-NGFF ``image-label`` metadata in a ``.zarr`` store,
        else an ITK-SNAP label description beside the file (``seg.label.txt`` for
        ``seg.nii.gz``), written after it.

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
        When the format cannot keep the geometry (``.npy``; a direction in ``.zarr``).
    """
    target = Path(path).expanduser()
    fmt = FORMATS.get(extension_of(target))
    if fmt is None or fmt == "dicom":
        raise MedsegInputError(
            f"cannot save {target.name}: "
            + ("writing DICOM is not supported" if fmt == "dicom" else "unknown file type")
            + "; use .nii.gz, .nrrd, .mha, .tif, .npy or .zarr"
        )
    array = np.asarray(data.array if isinstance(data, Volume) else data)
    base = reference if reference is not None else (data if isinstance(data, Volume) else None)
    geometry = geometry_for(array.shape, base, spacing, origin, direction, reference is not None)
    if fmt == "zarr":
        return _write_zarr_volume(target, array, geometry, labels, segments)
    array = _storable(array, target.name, True if segments is not None else labels)
    volume = Volume(array, *geometry)
    if segments is not None and is_seg_nrrd(target):
        write_seg_nrrd(target, volume, segments)
        return target
    _WRITERS[fmt](target, volume)
    if segments is not None:
        write_label_description(label_file_for(target), segments)
    return target


def _write_zarr_volume(
    target: Path,
    array: npt.NDArray[Any],
    geometry: tuple[Any, ...],
    labels: bool | None,
    segments: Segments | None,
) -> Path:
    """An OME-Zarr store; a label map gets ``image-label`` metadata (:func:`write_zarr`)."""
    decided = True if segments is not None else labels
    if decided is None:
        decided = array.dtype.kind in "biu" and looks_like_labels(array)
    array = _storable(array, target.name, decided)
    volume = Volume(array, *geometry)
    return write_zarr(target, array, reference=volume, segments=segments, labels=decided)


def _storable(
    array: npt.NDArray[Any], name: str, labels: bool | None
) -> npt.NDArray[Any]:
    """Convert to a type every format stores; label maps to the smallest unsigned type."""
    if array.ndim < 2 or array.ndim > 4:
        raise MedsegInputError(f"cannot save {name}: {array.ndim}D data (expected 2D to 4D)")
    if labels is None:
        labels = array.dtype.kind in "biu" and looks_like_labels(array)
    if labels:
        return as_label_type(array, name)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise MedsegInputError(f"cannot save {name}: voxel type {array.dtype} is not supported")
    return array
