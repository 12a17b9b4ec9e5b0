"""npe2 reader: open medical volumes as napari layers placed in world coordinates (mm).

An axis-aligned volume becomes a layer with ``scale=spacing`` and ``translate=origin``.
When the direction is not the identity (flipped or permuted axes, as in most NRRD/NIfTI
files stored in LPS/RAS, or an oblique acquisition), the layer gets ``scale=spacing`` and
an ``affine`` holding the direction and origin, so that
``layer.data_to_world(index) == origin + direction @ (spacing * index)`` exactly.

A zarr / OME-Zarr store opens lazily (:func:`zarr_layer_data`): its levels as dask arrays
(a multiscale layer when it has several), read chunk by chunk as napari shows them.

The geometry is also stored in ``layer.metadata`` (``spacing``, ``origin``, ``direction``,
``path``, ``format``) so the writers can restore it. Files that cannot be read raise
:class:`~napari_medseg.errors.MedsegInputError` with a one-line message, which napari
shows as a notification.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedsegError, MedsegInputError
from ..io import (
    DEFAULT_MAX_VOXELS,
    DicomSeriesInfo,
    GeometryWarning,
    SeveralSeriesError,
    dicom_series_uid,
    extension_of,
    is_supported,
    is_zarr,
    open_zarr,
    read_series,
    read_volume,
    window_limits,
)
from ..io.segments import is_seg_nrrd, layer_features, segments_from_metadata
from ..io.zarr_io import LazyVolume, label_sample
from ..labels import looks_like_labels
from ..volume import Volume

__all__ = [
    "get_reader",
    "read_layers",
    "layer_data_from_volume",
    "geometry_kwargs",
    "layer_name",
    "zarr_layer_data",
]

LayerData = tuple[Any, dict[str, Any], str]
PathLike = str | Path
ReaderFunction = Callable[[PathLike | Sequence[PathLike]], list[LayerData]]


def get_reader(path: PathLike | Sequence[PathLike]) -> ReaderFunction | None:
    """npe2 ``get_reader`` hook: a reader function when napari-medseg reads ``path``.

    Parameters
    ----------
    path : str or list of str
        A file, a DICOM folder, or several of them.

    Returns
    -------
    callable or None
        :func:`read_layers` when every path is supported, else None (another plugin may
        read it).
    """
    paths = _as_list(path)
    if not paths or not all(is_supported(p) for p in paths):
        return None
    return read_layers


def read_layers(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Read each path into one layer data tuple ``(data, kwargs, layer_type)``.

    Several ``.dcm`` files of one series give one layer. A folder holding several DICOM
    series gives one layer per series (:func:`read_every_series`). A zarr store opens
    lazily (:func:`zarr_layer_data`).

    Parameters
    ----------
    path : str or list of str
        Files or DICOM folders.

    Returns
    -------
    list of tuple
        ``(array, kwargs, "image" | "labels")`` per volume.

    Raises
    ------
    MedsegInputError
        When a file cannot be read (napari shows the message).
    """
    layers = []
    for item, series_uid in _unique_sources(_as_list(path)):
        if is_zarr(item):
            layers.append(zarr_layer_data(item))
            continue
        try:
            volume = read_volume(item, series_uid=series_uid)
        except SeveralSeriesError as several:
            layers.extend(read_every_series(several))
            continue
        layers.append(layer_data_from_volume(volume, name=layer_name(item)))
    return layers


def read_every_series(several: SeveralSeriesError) -> list[LayerData]:
    """One layer per series of a DICOM folder, named after the folder and the series.

    A warning (a napari notification) says so; a series that cannot be read is left out
    and named in it.

    Parameters
    ----------
    several : SeveralSeriesError
        The error listing the folder's series.

    Returns
    -------
    list of tuple
        Layer data tuples, one per readable series.

    Raises
    ------
    MedsegInputError
        When the series together are too large to open at once, or none can be read.
    """
    folder, series = several.folder, several.series
    total = sum(info.voxels for info in series)
    if total > DEFAULT_MAX_VOXELS:
        raise MedsegInputError(
            f"{folder.name} holds {len(series)} DICOM series, too large together to open at "
            "once; open one with the DICOM series widget (Plugins > MedSeg)"
        )
    layers, skipped, failure = [], [], None
    for info in series:
        try:
            volume = read_series(info)
        except MedsegError as exc:
            skipped.append(f"{info.title} ({exc})")
            failure = failure or exc
            continue
        layers.append(layer_data_from_volume(volume, name=series_layer_name(folder, info)))
    if not layers and failure is not None:
        raise failure
    left_out = f"; left out: {'; '.join(skipped)}" if skipped else ""
    warnings.warn(
        f"{folder.name} holds {len(series)} DICOM series: each opened as its own layer "
        f"(the DICOM series widget opens just one){left_out}",
        UserWarning,
        stacklevel=2,
    )
    return layers


def series_layer_name(folder: Path, info: DicomSeriesInfo) -> str:
    """Layer name of one series of a DICOM folder: ``"folder · description, series N"``."""
    return f"{folder.name} · {info.title}"


def layer_data_from_volume(
    volume: Volume, name: str | None = None, layer_type: str | None = None
) -> LayerData:
    """Turn a volume into a napari layer data tuple placed in world coordinates.

    Parameters
    ----------
    volume : Volume
        The volume.
    name : str, optional
        Layer name.
    layer_type : {"image", "labels"}, optional
        Default: ``"labels"`` when :func:`~napari_medseg.io.looks_like_labels` or when the
        file stored structure names (:mod:`~napari_medseg.io.segments`), else ``"image"``.
        A labels layer with names gets their colours and a ``features`` table (the name
        under the cursor shows in the status bar).

    Returns
    -------
    tuple
        ``(data, kwargs, layer_type)`` for ``viewer._add_layer_from_data`` / npe2.
    """
    segments = segments_from_metadata(volume.metadata)
    if layer_type is None:
        named = segments is not None
        layer_type = "labels" if named or looks_like_labels(volume, name) else "image"
    data = volume.array
    if layer_type == "labels" and data.dtype.kind not in "iu":
        data = data.astype(np.uint8 if data.dtype.kind == "b" else np.int32)
    kwargs: dict[str, Any] = {"metadata": geometry_metadata(volume), **geometry_kwargs(volume)}
    window = window_limits(volume.metadata) if layer_type == "image" else None
    if window is not None:  # the DICOM header's display window (CT: HU)
        kwargs["contrast_limits"] = list(window)
    if layer_type == "labels" and segments is not None:  # names on hover, the file's colours
        kwargs.update(colormap=segments.color_dict(), features=layer_features(segments))
    if name:
        kwargs["name"] = name
    return data, kwargs, layer_type


def zarr_layer_data(path: PathLike, name: str | None = None) -> LayerData:
    """A zarr / OME-Zarr store as a lazy napari layer data tuple, placed in world coordinates.

    Only the metadata and a small sample (:func:`~napari_medseg.io.zarr_io.label_sample`)
    are read: the data are dask arrays, a list of them (``multiscale``) when the store has
    several resolution levels. A store with OME-NGFF ``image-label`` metadata, or whose
    sample looks like labels, opens as a labels layer (with its names and colours).

    Parameters
    ----------
    path : str or Path
        The store.
    name : str, optional
        Layer name (default: the store's name without ``.zarr``).

    Returns
    -------
    tuple
        ``(data, kwargs, "image" | "labels")``.
    """
    lazy = open_zarr(path)
    sample = None if lazy.is_label_map else label_sample(lazy)
    labels = sample is None or looks_like_labels(sample, str(path))
    levels = lazy.levels
    if labels and lazy.dtype.kind not in "iu":
        kind = np.uint8 if lazy.dtype.kind == "b" else np.int32
        levels = [level.astype(kind) for level in levels]
    kwargs: dict[str, Any] = {
        "name": name or layer_name(path),
        "metadata": _lazy_metadata(lazy),
        "scale": lazy.spacing,
        "translate": lazy.origin,
        "multiscale": len(levels) > 1,
    }
    if _napari_has_units():
        kwargs["units"] = ("mm",) * lazy.ndim
    if labels and lazy.segments is not None:
        kwargs.update(colormap=lazy.segments.color_dict(), features=layer_features(lazy.segments))
    if sample is not None and not labels:
        finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
        if finite.size and finite.min() < finite.max():
            kwargs["contrast_limits"] = [float(finite.min()), float(finite.max())]
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "labels" if labels else "image"


def _lazy_metadata(lazy: LazyVolume) -> dict[str, Any]:
    """Layer metadata of a lazy volume: its metadata plus its (axis-aligned) geometry."""
    metadata = dict(lazy.metadata)
    metadata["spacing"] = [float(s) for s in lazy.spacing]
    metadata["origin"] = [float(o) for o in lazy.origin]
    metadata["direction"] = np.eye(lazy.ndim).tolist()
    return metadata


def geometry_kwargs(volume: Volume) -> dict[str, Any]:
    """Layer keyword arguments (``scale``, ``translate`` or ``affine``) placing ``volume``.

    Parameters
    ----------
    volume : Volume
        The volume.

    Returns
    -------
    dict
        ``scale`` and ``translate`` for axis-aligned volumes; ``scale`` and ``affine``
        (direction and origin) otherwise.
    """
    ndim = volume.array.ndim
    kwargs: dict[str, Any] = {"scale": tuple(volume.spacing)}
    if _napari_has_units():
        kwargs["units"] = ("mm",) * ndim
    direction = np.asarray(volume.direction, dtype=float)
    if volume.is_axis_aligned:
        kwargs["translate"] = tuple(volume.origin)
        return kwargs
    _warn_if_oblique(direction, volume.metadata.get("path", "the volume"))
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = direction
    affine[:ndim, ndim] = volume.origin
    kwargs["affine"] = affine
    return kwargs


def geometry_metadata(volume: Volume) -> dict[str, Any]:
    """JSON-friendly layer metadata: the volume's metadata plus its geometry.

    Parameters
    ----------
    volume : Volume
        The volume.

    Returns
    -------
    dict
        ``volume.metadata`` with ``spacing``, ``origin`` and ``direction`` (lists).
    """
    metadata = dict(volume.metadata)
    metadata["spacing"] = [float(s) for s in volume.spacing]
    metadata["origin"] = [float(o) for o in volume.origin]
    metadata["direction"] = np.asarray(volume.direction, dtype=float).tolist()
    return metadata


def layer_name(path: PathLike) -> str:
    """Layer name for a file: its name without the extension (``.nii.gz`` fully stripped).

    Parameters
    ----------
    path : str or Path
        A file or folder.

    Returns
    -------
    str
        ``"brain"`` for ``brain.nii.gz``, ``"liver"`` for ``liver.seg.nrrd``, ``"scan"`` for
        ``scan.zarr``; a folder's own name.
    """
    p = Path(path)
    if p.is_dir() and not p.name.lower().endswith(".zarr"):
        return p.name
    ext = ".seg.nrrd" if is_seg_nrrd(p) else extension_of(p)
    return p.name[: len(p.name) - len(ext)] if ext else p.name


def _as_list(path: PathLike | Sequence[PathLike]) -> list[PathLike]:
    if isinstance(path, (str, Path)):
        return [path]
    return list(path)


def _unique_sources(paths: Sequence[PathLike]) -> list[tuple[Path, str | None]]:
    """Each path with the series to read; ``.dcm`` files of one series count once."""
    sources: list[tuple[Path, str | None]] = []
    seen: set[tuple[Path, str]] = set()
    for item in map(Path, paths):
        if item.is_file() and extension_of(item) == ".dcm":
            uid = dicom_series_uid(item)
            key = (item.parent.resolve(), uid)
            if key in seen:
                continue
            seen.add(key)
            sources.append((item, uid or None))
        else:
            sources.append((item, None))
    return sources


@functools.lru_cache(maxsize=1)
def _napari_has_units() -> bool:
    """Layers take ``units`` since napari 0.6."""
    try:
        major, minor = (int(part) for part in version("napari").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 6)


def _warn_if_oblique(direction: np.ndarray, where: str) -> None:
    """napari slices oblique data in 2D without the out-of-plane rotation: say so."""
    is_signed_permutation = np.allclose(
        np.abs(direction).sum(axis=0), 1.0, atol=1e-6
    ) and np.allclose(np.abs(direction).max(axis=0), 1.0, atol=1e-6)
    if is_signed_permutation:
        return
    cosine = float(np.clip(np.abs(direction).max(axis=0).min(), -1.0, 1.0))
    angle = math.degrees(math.acos(cosine))
    warnings.warn(
        f"{Path(str(where)).name} is stored obliquely (axes rotated by up to {angle:.1f} "
        "degrees): the 3D view is exact; 2D slices are shown in the volume's own planes",
        GeometryWarning,
        stacklevel=3,
    )
