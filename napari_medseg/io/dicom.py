"""DICOM series: finding them in a folder, and reading one with its slice geometry checked.

A series is read through SimpleITK (GDCM). Uneven slice spacing and gantry tilt are
reported as :class:`~napari_medseg.io.GeometryWarning`; the slice spacing is the mean
distance between slices along the slice normal.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from ..errors import MedsegInputError
from ..volume import Volume
from ._checks import (
    DEFAULT_MAX_VOXELS,
    refuse_channels,
    refuse_special_file,
    refuse_too_large,
    special_kind,
)
from ._geometry import GeometryWarning
from ._itk import execute, quiet_itk, volume_from_itk

__all__ = [
    "DicomSeriesInfo",
    "SeveralSeriesError",
    "dicom_series_uid",
    "find_series",
    "folder_has_dicom",
    "list_dicom_series",
    "read_dicom",
    "read_series",
    "window_limits",
]

_DICOM_TAGS = {
    "modality": "0008|0060",
    "series_uid": "0020|000e",
    "series_description": "0008|103e",
    "series_number": "0020|0011",
    "rescale_intercept": "0028|1052",
    "rescale_slope": "0028|1053",
    "rescale_type": "0028|1054",
    "window_center": "0028|1050",
    "window_width": "0028|1051",
}


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
        The files, ordered by slice position (the order of the volume's first axis).
    series_number : str
        SeriesNumber (may be empty).
    rows, columns : int
        Size of a slice (0 when unknown).
    """

    uid: str
    description: str
    n_slices: int
    modality: str
    files: tuple[str, ...]
    series_number: str = ""
    rows: int = 0
    columns: int = 0

    def __str__(self) -> str:
        text = self.description or "no description"
        return f"{self.uid} ({text}, {self.n_slices} slices)"

    @property
    def voxels(self) -> int:
        """Number of voxels of the series (slices x rows x columns; 0 when unknown)."""
        return self.n_slices * self.rows * self.columns

    @property
    def title(self) -> str:
        """A short human name: the description and the series number, else the UID."""
        number = f"series {self.series_number}" if self.series_number else ""
        parts = [part for part in (self.description, number) if part]
        return ", ".join(parts) if parts else self.uid


class SeveralSeriesError(MedsegInputError):
    """A folder holds several DICOM series and none was chosen.

    Attributes
    ----------
    folder : Path
        The folder.
    series : list of DicomSeriesInfo
        The series it holds, for a caller to offer a choice (``--series-uid``, a list).
    """

    def __init__(self, folder: Path, series: list[DicomSeriesInfo]) -> None:
        listing = "; ".join(str(info) for info in series)
        super().__init__(
            f"{folder.name} holds {len(series)} DICOM series, choose one with series_uid: "
            f"{listing}"
        )
        self.folder = folder
        self.series = series


# ---- finding series ------------------------------------------------------------------


def folder_has_dicom(folder: Path, max_files: int = 64) -> bool:
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
        When ``folder`` is not a folder, or holds a FIFO, socket, device or broken link.
    """
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise MedsegInputError(f"cannot list DICOM series: {p} is not a folder")
    _refuse_special_entries(p)
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

    Raises
    ------
    MedsegInputError
        When ``path`` is not a regular file (a FIFO ...) or not a DICOM file.
    """
    p = Path(path)
    refuse_special_file(p.name, p)
    return _dicom_file_tags(p).get("series_uid", "")


def _series_ids(folder: Path) -> list[str]:
    with quiet_itk():
        return [uid.strip("\x00 ") for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))]


def _series_files(folder: Path, uid: str) -> tuple[str, ...]:
    with quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def _series_info(folder: Path, uid: str) -> DicomSeriesInfo:
    files = _series_files(folder, uid)
    reader = _dicom_reader(Path(files[0])) if files else None
    tags = _tags_of(reader) if reader is not None else {}
    columns, rows = reader.GetSize()[:2] if reader is not None else (0, 0)
    return DicomSeriesInfo(
        uid=uid,
        description=tags.get("series_description", ""),
        n_slices=len(files),
        modality=tags.get("modality", ""),
        files=files,
        series_number=tags.get("series_number", ""),
        rows=int(rows),
        columns=int(columns),
    )


def _dicom_reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    reader.LoadPrivateTagsOff()
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegInputError(f"cannot read {path.name}: not a valid DICOM file") from exc
    return reader


def _dicom_file_tags(path: Path) -> dict[str, str]:
    return _tags_of(_dicom_reader(path))


def _tags_of(reader: sitk.ImageFileReader) -> dict[str, str]:
    return {
        key: reader.GetMetaData(tag).strip("\x00 ")
        for key, tag in _DICOM_TAGS.items()
        if reader.HasMetaDataKey(tag)
    }


# ---- reading a series ----------------------------------------------------------------


def read_dicom(
    path: Path, series_uid: str | None, max_voxels: int, allow_channels: bool
) -> Volume:
    """Read the DICOM series ``series_uid`` of a folder, or the series of one ``.dcm`` file.

    See :func:`~napari_medseg.io.read_volume` for the parameters and errors.
    """
    folder = path if path.is_dir() else path.parent
    uid, files = _resolve_series(path, series_uid)
    return _read_files(folder, uid, files, max_voxels, allow_channels)


def read_series(
    info: DicomSeriesInfo, *, max_voxels: int = DEFAULT_MAX_VOXELS, allow_channels: bool = False
) -> Volume:
    """Read a series listed by :func:`list_dicom_series` without scanning its folder again.

    Parameters
    ----------
    info : DicomSeriesInfo
        The series, with its files in slice order.
    max_voxels, allow_channels
        As for :func:`~napari_medseg.io.read_volume`.

    Returns
    -------
    Volume
        The same volume as ``read_volume(folder, series_uid=info.uid)``.
    """
    if not info.files:
        raise MedsegInputError(f"series {info.uid} has no files")
    folder = Path(info.files[0]).parent
    _refuse_special_entries(folder)
    return _read_files(folder, info.uid, info.files, max_voxels, allow_channels)


def _read_files(
    folder: Path, uid: str, files: tuple[str, ...], max_voxels: int, allow_channels: bool
) -> Volume:
    first = _dicom_reader(Path(files[0]))
    cols, rows, *frames = first.GetSize()
    size = (cols, rows, math.prod(frames) * len(files))
    refuse_too_large(folder.name, size, first.GetNumberOfComponents(), max_voxels)
    refuse_channels(folder.name, size, first.GetNumberOfComponents(), allow_channels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    image = execute(reader, folder.name)
    metadata = _dicom_metadata(reader, folder, uid, len(files))
    volume = volume_from_itk(image, folder.name, metadata)
    _check_slices(volume, reader, len(files), folder.name)
    return volume


def _refuse_special_entries(folder: Path) -> None:
    """Refuse a folder holding a FIFO, socket, device or broken link.

    GDCM's folder scan does not skip them: a FIFO or a broken link makes it find no series,
    a FIFO or socket can make it silently drop a real slice.
    """
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not e.is_dir() and not e.is_file())
    except OSError as exc:
        raise MedsegInputError(f"cannot read {folder}: {exc.strerror or exc}") from exc
    if names:
        kind = special_kind(folder / names[0]) or "not a regular file"
        more = f" (and {len(names) - 1} more such entries)" if len(names) > 1 else ""
        raise MedsegInputError(
            f"cannot read the DICOM folder {folder.name}: {names[0]} in it is {kind}{more}, "
            "which the DICOM reader cannot skip safely; move it out of the folder"
        )


def find_series(path: str | Path, series_uid: str | None = None) -> DicomSeriesInfo:
    """The series :func:`read_dicom` reads for ``path`` and ``series_uid``.

    Parameters
    ----------
    path : str or Path
        A folder of DICOM files, or one file (standing for its series).
    series_uid : str, optional
        The series to take when the folder holds several.

    Returns
    -------
    DicomSeriesInfo
        The series, its files in the order of the volume's slices.

    Raises
    ------
    SeveralSeriesError
        Several series and no ``series_uid``.
    MedsegInputError
        No series, an unknown ``series_uid``, a FIFO or broken link in the folder.
    """
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    uid, _ = _resolve_series(p, series_uid)
    return _series_info(folder, uid)


def _resolve_series(path: Path, series_uid: str | None) -> tuple[str, tuple[str, ...]]:
    """The UID and the ordered files of the series chosen for ``path``."""
    folder = path if path.is_dir() else path.parent
    _refuse_special_entries(folder)
    if series_uid is None and path.is_file():
        series_uid = dicom_series_uid(path) or None
    uid = _choose_series(folder, series_uid)
    return uid, _series_files(folder, uid)


def _choose_series(folder: Path, series_uid: str | None) -> str:
    ids = _series_ids(folder)
    if not ids:
        raise MedsegInputError(f"cannot read {folder}: no DICOM series found in this folder")
    if series_uid is None and len(ids) == 1:
        return ids[0]
    if series_uid is not None and series_uid.strip("\x00 ") in ids:
        return series_uid.strip("\x00 ")
    series = [_series_info(folder, uid) for uid in ids]
    if series_uid is None:
        raise SeveralSeriesError(folder, series)
    listing = "; ".join(str(info) for info in series)
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


def window_limits(metadata: dict[str, Any]) -> tuple[float, float] | None:
    """The display window of a DICOM header as ``(low, high)``, or None.

    Parameters
    ----------
    metadata : dict
        A volume's metadata, with ``window_center`` and ``window_width`` as read from
        the header (the first value counts when there are several). They apply to the
        rescaled values (Hounsfield units for CT), which is what is read.

    Returns
    -------
    tuple of float or None
        ``(center - width / 2, center + width / 2)``; None without a valid window.
    """
    center = _first_number(metadata.get("window_center"))
    width = _first_number(metadata.get("window_width"))
    if center is None or width is None or width <= 0:
        return None
    return center - width / 2, center + width / 2


def _first_number(value: object) -> float | None:
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            number = float(value.split("\\")[0])
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


# ---- slice geometry ------------------------------------------------------------------


def _slice_positions(reader: sitk.ImageSeriesReader, n: int) -> npt.NDArray[np.float64] | None:
    try:
        rows = [reader.GetMetaData(i, "0020|0032").split("\\") for i in range(n)]
        return np.asarray(rows, dtype=float).reshape(n, 3)
    except (RuntimeError, ValueError):
        return None


def _slice_normal(reader: sitk.ImageSeriesReader) -> npt.NDArray[np.float64] | None:
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


def _check_tilt(
    positions: npt.NDArray[np.float64], normal: npt.NDArray[np.float64], name: str
) -> None:
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
