"""OME-NGFF metadata of zarr stores: axes, scale and translation, label names and colours.

Read: versions 0.1 to 0.5 of ``multiscales`` (0.5 nests them under ``"ome"`` in the
``zarr.json`` attributes, earlier versions put them in ``.zattrs``), the per-dataset
``coordinateTransformations`` (``scale`` then ``translation``) composed with the
multiscale-level ones, axis units converted to millimetres, and ``image-label``
(``colors``: ``label-value`` + ``rgba`` 0-255; ``properties``: ``label-value`` + ``name``).
Written: version 0.4 (:func:`multiscales_attrs`). The metadata is untrusted input: anything
malformed raises :class:`~napari_medseg.errors.MedsegInputError` with a one-line message.
Also the limits and the lazy import of zarr shared by :mod:`.zarr_io` (reading) and
``_zarr_write`` (writing).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import MedsegInputError
from ._segment_model import RGB, Segments, rgb, segments_from

__all__ = [
    "BLOCK_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_LEVELS",
    "MAX_SHARD_BYTES",
    "NODE_FILES",
    "MEDSEG_KEY",
    "NGFF_VERSION",
    "Multiscale",
    "Selection",
    "image_label_attrs",
    "import_zarr",
    "multiscales_attrs",
    "ome_attributes",
    "parse_multiscales",
    "read_segments_attrs",
    "reason",
    "select_spatial",
]

#: OME-NGFF version written.
NGFF_VERSION = "0.4"
#: Most resolution levels read.
MAX_LEVELS = 32
#: Attribute of the root group holding what OME-NGFF has no field for (the label map's kind).
MEDSEG_KEY = "napari-medseg"
#: Millimetres per unit of length (OME-NGFF's UDUNITS-2 names and common abbreviations).
MM_PER_UNIT: dict[str, float] = {
    "angstrom": 1e-7, "picometer": 1e-9, "nanometer": 1e-6, "nm": 1e-6,
    "micrometer": 1e-3, "micron": 1e-3, "um": 1e-3, "µm": 1e-3,
    "millimeter": 1.0, "mm": 1.0, "centimeter": 10.0, "cm": 10.0,
    "decimeter": 100.0, "meter": 1000.0, "m": 1000.0, "inch": 25.4, "foot": 304.8,
}  # fmt: skip
#: Largest chunk (decoded) read or written, and largest shard of a sharded store.
MAX_CHUNK_BYTES = 1 << 30
MAX_SHARD_BYTES = 16 << 30
#: Bytes of the dask blocks read, and of the slabs written or read back at a time.
BLOCK_BYTES = 64 << 20
#: Files that make a folder a zarr array or group.
NODE_FILES = ("zarr.json", ".zarray", ".zgroup")
_SPATIAL_NAMES = ("z", "y", "x")
_MAX_ENTRIES = 65535


def import_zarr(verb: str) -> ModuleType:
    """The zarr module (3 or later), with dask; a one-line error when the extra is missing.

    Parameters
    ----------
    verb : str
        ``"reading"`` or ``"writing"``, for the message.
    """
    hint = f"{verb} zarr needs the zarr extra: pip install 'napari-medseg[zarr]'"
    if sys.version_info < (3, 11):
        raise MedsegInputError(f"{verb} zarr needs zarr 3, which needs Python 3.11 or later")
    try:
        import dask.array  # noqa: F401
        import zarr
    except ImportError as exc:
        raise MedsegInputError(hint) from exc
    if int(str(zarr.__version__).split(".")[0]) < 3:
        raise MedsegInputError(hint.replace("the zarr extra", "zarr 3 or later"))
    return zarr


def reason(exc: BaseException) -> str:
    """An exception's message on one short line."""
    return " ".join(str(exc).split())[:160] or type(exc).__name__


@dataclass(frozen=True)
class Multiscale:
    """The first ``multiscales`` entry of an OME-Zarr group.

    ``axes`` holds one ``(name, type or None, unit or None)`` per array axis (None when the
    metadata names none: versions 0.1 and 0.2); ``scales`` and ``translations`` one full
    vector per level (all array axes), the multiscale-level transforms already applied.
    """

    version: str | None
    axes: tuple[tuple[str, str | None, str | None], ...] | None
    paths: tuple[str, ...]
    scales: tuple[tuple[float, ...], ...]
    translations: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Selection:
    """Which array axes are kept (spatial) and which are squeezed (size 1)."""

    index: tuple[int | None, ...]  # 0 for a squeezed axis, None for a kept one
    names: tuple[str, ...]
    units: tuple[str | None, ...]
    factors: tuple[float, ...]  # millimetres per stored unit, kept axes

    @property
    def kept(self) -> tuple[int, ...]:
        """Array positions of the kept axes."""
        return tuple(i for i, item in enumerate(self.index) if item is None)


def ome_attributes(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The OME-NGFF part of a group's attributes (0.5: under ``"ome"``; earlier: the root)."""
    nested = attrs.get("ome")
    return nested if isinstance(nested, Mapping) else attrs


def parse_multiscales(name: str, ome: Mapping[str, Any]) -> Multiscale | None:
    """The first multiscale image described by ``ome``, or None when there is none.

    Raises
    ------
    MedsegInputError
        Malformed metadata: no datasets, unsafe dataset paths, bad transforms.
    """
    entries = ome.get("multiscales")
    if entries is None:
        return None
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        raise _bad(name, "its multiscales metadata is malformed")
    entry = entries[0]
    datasets = entry.get("datasets")
    if not isinstance(datasets, list) or not 1 <= len(datasets) <= MAX_LEVELS:
        raise _bad(name, f"its multiscales metadata lists no datasets, or more than {MAX_LEVELS}")
    axes = _parse_axes(name, entry.get("axes"))
    ndim = len(axes) if axes is not None else None
    outer = _transforms(name, entry.get("coordinateTransformations"), ndim)
    paths, scales, translations = [], [], []
    for dataset in datasets:
        if not isinstance(dataset, Mapping):
            raise _bad(name, "its multiscales metadata is malformed")
        paths.append(_safe_path(name, dataset.get("path")))
        inner = _transforms(name, dataset.get("coordinateTransformations"), ndim)
        scale, translation = _compose(name, inner, outer)
        scales.append(scale)
        translations.append(translation)
    version = entry.get("version", ome.get("version"))
    return Multiscale(
        str(version) if version is not None else None, axes, tuple(paths), tuple(scales),
        tuple(translations),
    )  # fmt: skip


def _bad(name: str, why: str) -> MedsegInputError:
    return MedsegInputError(f"cannot read {name}: {why}")


def _parse_axes(name: str, raw: Any) -> tuple[tuple[str, str | None, str | None], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
        raise _bad(name, "its axes metadata is malformed")
    axes: list[tuple[str, str | None, str | None]] = []
    for item in raw:
        if isinstance(item, str):  # version 0.3: names only
            axes.append((item, None, None))
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            kind, unit = item.get("type"), item.get("unit")
            axes.append(
                (item["name"], kind if isinstance(kind, str) else None,
                 unit if isinstance(unit, str) else None)
            )  # fmt: skip
        else:
            raise _bad(name, "its axes metadata is malformed")
    return tuple(axes)


def _safe_path(name: str, raw: Any) -> str:
    """A dataset path inside the store: relative, no ``..``, no empty parts."""
    if not isinstance(raw, str) or not raw or len(raw) > 256:
        raise _bad(name, "a dataset of its multiscales metadata has no valid path")
    parts = raw.split("/")
    if raw.startswith("/") or "\\" in raw or any(p in ("", ".", "..") for p in parts):
        raise _bad(name, f"its dataset path {raw[:64]!r} points outside the store")
    return raw


Transforms = tuple[tuple[float, ...] | None, tuple[float, ...] | None]


def _transforms(name: str, raw: Any, ndim: int | None) -> Transforms:
    """``(scale, translation)`` of a ``coordinateTransformations`` list (None when absent)."""
    if raw is None:
        return None, None
    if not isinstance(raw, list) or len(raw) > 4:
        raise _bad(name, "its coordinateTransformations metadata is malformed")
    found: dict[str, tuple[float, ...]] = {}
    for item in raw:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind in found:
            raise _bad(name, f"its coordinate transformation {str(kind)[:32]!r} is not supported")
        values = _vector(name, item.get(kind), ndim)
        if kind == "scale" and not all(v > 0 for v in values):
            raise _bad(name, f"its scale {values} is not positive")
        found[kind] = values
    return found.get("scale"), found.get("translation")


def _vector(name: str, raw: Any, ndim: int | None) -> tuple[float, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
        raise _bad(name, "a coordinate transformation is stored in an array, or malformed")
    try:
        values = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise _bad(name, "a coordinate transformation holds something else than numbers") from None
    if not all(math.isfinite(v) for v in values) or (ndim is not None and len(values) != ndim):
        raise _bad(name, f"its coordinate transformation {values} does not fit its axes")
    return values


def _compose(
    name: str, inner: Transforms, outer: Transforms
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``outer(inner(index))``: scale ``S2 S1``, translation ``S2 T1 + T2`` (empty: none)."""
    lengths = {len(v) for pair in (inner, outer) for v in pair if v is not None}
    if len(lengths) > 1:
        raise _bad(name, "its coordinate transformations have different lengths")
    ndim = lengths.pop() if lengths else 0
    s1, t1 = inner[0] or (1.0,) * ndim, inner[1] or (0.0,) * ndim
    s2, t2 = outer[0] or (1.0,) * ndim, outer[1] or (0.0,) * ndim
    scale = tuple(a * b for a, b in zip(s2, s1))
    translation = tuple(b * t + c for b, t, c in zip(s2, t1, t2))
    return scale, translation


def select_spatial(
    name: str, shape: Sequence[int], axes: Sequence[tuple[str, str | None, str | None]] | None
) -> Selection:
    """The 2 or 3 spatial axes to keep; other axes must have size 1 and are squeezed.

    Without axes metadata (a plain array, OME-NGFF 0.1/0.2), the last three axes (two for a
    2D array) are spatial and leading axes must have size 1.

    Raises
    ------
    MedsegInputError
        A channel or time axis holding several values, more than 3 or fewer than 2 spatial
        axes, axes metadata that does not match the array.
    """
    if axes is None:
        lead = max(len(shape) - 3, 0)
        if any(int(size) != 1 for size in shape[:lead]) or len(shape) < 2:
            dims = " x ".join(str(int(s)) for s in shape)
            raise _bad(name, f"it has {len(shape)} dimensions ({dims}); napari-medseg reads "
                       "2D and 3D images of one channel")  # fmt: skip
        names = _SPATIAL_NAMES[-(len(shape) - lead):]
        axes = [(f"dim_{i}", None, None) for i in range(lead)] + [(n, None, None) for n in names]
        spatial = [i >= lead for i in range(len(shape))]
    else:
        if len(axes) != len(shape):
            raise _bad(name, f"its axes metadata names {len(axes)} axes for {len(shape)}D data")
        spatial = [kind == "space" or (kind is None and n.lower() in _SPATIAL_NAMES)
                   for n, kind, _ in axes]  # fmt: skip
    for (axis, kind, _), size, keep in zip(axes, shape, spatial):
        if not keep and int(size) != 1:
            what = kind or {"c": "channel", "t": "time"}.get(axis.lower(), "non-spatial")
            raise _bad(
                name, f"its {what} axis {axis!r} holds {int(size)} values; napari-medseg "
                "segments one channel of one time point (a 3D or 2D image)",
            )  # fmt: skip
    kept = [axes[i] for i, keep in enumerate(spatial) if keep]
    if not 2 <= len(kept) <= 3:
        raise _bad(name, f"it has {len(kept)} spatial axes; napari-medseg reads 2D and 3D images")
    units = tuple(unit for _, _, unit in kept)
    factors = tuple(MM_PER_UNIT.get((unit or "").lower(), 1.0) for unit in units)
    index = tuple(None if keep else 0 for keep in spatial)
    return Selection(index, tuple(n for n, _, _ in kept), units, factors)


# ---- label maps --------------------------------------------------------------------------


def read_segments_attrs(ome: Mapping[str, Any], attrs: Mapping[str, Any]) -> Segments | None:
    """The structure names and colours of an ``image-label``, or None (none stored, malformed).

    The kind (annotation or segmentation) is napari-medseg's own attribute when present,
    else inferred from the names (:func:`~._segment_model.segments_from`).
    """
    label = ome.get("image-label")
    if not isinstance(label, Mapping):
        return None
    found: dict[int, tuple[str, RGB | None]] = {}
    for item in _entries(label.get("properties")):
        if isinstance(item.get("name"), str):
            value = int(item["label-value"])
            found[value] = (item["name"], found.get(value, ("", None))[1])
    for item in _entries(label.get("colors")):
        color = _rgba(item.get("rgba"))
        if color is not None:
            value = int(item["label-value"])
            found[value] = (found.get(value, ("", None))[0], color)
    mine = attrs.get(MEDSEG_KEY)
    kind = mine.get("kind") if isinstance(mine, Mapping) else None
    try:
        return segments_from(found, kind if kind in ("annotation", "segmentation") else None)
    except (TypeError, ValueError):
        return None


def _entries(raw: Any) -> list[Mapping[str, Any]]:
    """The list items with an integer ``label-value`` (at most 65535 of them)."""
    if not isinstance(raw, list):
        return []
    return [
        item
        for item in raw[:_MAX_ENTRIES]
        if isinstance(item, Mapping)
        and isinstance(item.get("label-value"), int)
        and not isinstance(item.get("label-value"), bool)
    ]


def _rgba(raw: Any) -> RGB | None:
    if not isinstance(raw, list) or len(raw) not in (3, 4):
        return None
    try:
        return rgb([float(c) / 255.0 for c in raw[:3]])
    except (TypeError, ValueError):
        return None


def image_label_attrs(segments: Segments | None) -> dict[str, Any]:
    """The ``image-label`` metadata (version 0.4) of a label map and its segments."""
    label: dict[str, Any] = {"version": NGFF_VERSION}
    if segments is not None:
        label["colors"] = [
            {"label-value": s.value, "rgba": [round(c * 255) for c in s.color] + [255]}
            for s in segments.items
        ]
        label["properties"] = [{"label-value": s.value, "name": s.name} for s in segments.items]
    return label


def multiscales_attrs(
    name: str,
    spacing: Sequence[float],
    origin: Sequence[float],
    factors: Sequence[Sequence[int]],
    labels: bool,
    segments: Segments | None,
) -> dict[str, Any]:
    """Root attributes of an OME-Zarr (0.4) image: one dataset ``"k"`` per level.

    Level ``k`` keeps every ``factors[k]``-th voxel, so its voxel 0 is level 0's voxel 0:
    scale ``spacing * factor``, translation ``origin``, axes in millimetres.
    """
    names = _SPATIAL_NAMES[-len(spacing):]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [float(s) * f for s, f in zip(spacing, factor)]},
                {"type": "translation", "translation": [float(o) for o in origin]},
            ],
        }
        for level, factor in enumerate(factors)
    ]
    multiscale: dict[str, Any] = {
        "version": NGFF_VERSION,
        "name": name,
        "axes": [{"name": n, "type": "space", "unit": "millimeter"} for n in names],
        "datasets": datasets,
        "type": "nearest",
        "metadata": {"method": "every other voxel in y and x (napari-medseg)"},
    }
    attrs: dict[str, Any] = {"multiscales": [multiscale]}
    if labels:
        attrs["image-label"] = image_label_attrs(segments)
    if segments is not None:
        attrs[MEDSEG_KEY] = {"kind": segments.kind}
    return attrs
