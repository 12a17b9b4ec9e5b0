"""TIFF files: reading a volume with its pixel size, and writing one with its geometry.

Geometry written by napari-medseg (shaped metadata: spacing, origin, direction in mm) is
read back exactly; otherwise the pixel size comes from the resolution tags (and ImageJ's
slice spacing), converted to mm when the unit is known. ``tifffile`` is imported only
when a TIFF is read or written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from ..errors import MedsegError, MedsegInputError
from ..volume import Volume
from ._checks import refuse_too_large
from ._save import WriteCheckError, atomic_save

if TYPE_CHECKING:
    import tifffile

__all__ = ["read_tiff", "write_tiff"]

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


def read_tiff(path: Path, max_voxels: int, allow_channels: bool) -> Volume:
    """Read the first series of a TIFF; channel axes go first when ``allow_channels``."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            refuse_too_large(path.name, shape, 1, max_voxels)
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
    tif: tifffile.TiffFile, ndim: int
) -> tuple[tuple[float, ...], tuple[float, ...], npt.NDArray[np.float64] | None, str]:
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


def _tiff_resolution(tif: tifffile.TiffFile) -> tuple[float, float, str]:
    """Pixel size along y and x and its unit name, from the first page's tags."""
    page = cast("tifffile.TiffPage", tif.pages[0])  # the first page is never a TiffFrame
    tags = page.tags
    unit_code = int(getattr(tags.get("ResolutionUnit"), "value", 1))
    unit = {2: "inch", 3: "cm"}.get(unit_code, "")
    if tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", unit))
    return _pixel_size(tags.get("YResolution")), _pixel_size(tags.get("XResolution")), unit


def _pixel_size(tag: tifffile.TiffTag | None) -> float:
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


def write_tiff(target: Path, volume: Volume) -> None:
    """Save a 2D or 3D volume as zlib-compressed TIFF, geometry in its metadata (mm)."""
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
    y_mm, x_mm = volume.spacing[-2:]
    per_cm = (10.0 / x_mm, 10.0 / y_mm)

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

    def check(tmp: Path) -> None:
        _verify_tiff(tmp, array)

    atomic_save(target, write, check)


def _verify_tiff(path: Path, array: npt.NDArray[Any]) -> None:
    """A TIFF just written reads back with the shape and type written, all strips in the file."""
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            found = (tuple(series.shape), np.dtype(series.dtype))
            extents = [
                (int(offset), int(count))
                for page in tif.pages
                for offset, count in zip(page.dataoffsets, page.databytecounts)
            ]
    except Exception as exc:  # tifffile raises many types on damaged files
        raise WriteCheckError("the file written is not a readable TIFF") from exc
    if found != (array.shape, array.dtype):
        raise WriteCheckError(f"the file written reads back as {found[0]} {found[1]}")
    end = max((offset + count for offset, count in extents), default=0)
    if end > size or sum(count for _, count in extents) == 0:
        raise WriteCheckError(f"the file written is truncated ({size:,} of {end:,} bytes)")
