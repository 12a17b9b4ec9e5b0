"""npe2 writers: save Labels and Image layers with their geometry, atomically.

The geometry comes from the layer metadata written by the reader (``spacing``,
``origin``, ``direction``), so a segmentation painted on a loaded scan is saved aligned
with it; otherwise from the layer's transforms (scale, translate, rotate, shear, affine).
A labels layer's structure names and colours go with it (:func:`layer_segments`): Slicer's
fields in a ``.seg.nrrd``, else an ITK-SNAP label description beside the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..colors import CLASS_NAMES_KEY
from ..errors import MedsegInputError
from ..io import extension_of, write_volume
from ..io.segments import Segments, layer_kind
from ..volume import Volume

__all__ = [
    "DEFAULT_EXTENSION",
    "geometry_from_meta",
    "layer_segments",
    "write_image",
    "write_labels",
]

#: Extension added when the user gives a name without one.
DEFAULT_EXTENSION = ".nii.gz"

Geometry = tuple[tuple[float, ...], tuple[float, ...], np.ndarray]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers.

    Parameters
    ----------
    path : str
        Target file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``,
        ``.tif``, ``.npy``); ``.nii.gz`` is added when there is no extension.
    data : array-like
        The label data (a multiscale list is written at full resolution).
    meta : dict
        The layer state (``layer._get_state()``), with ``metadata`` and transforms.

    Returns
    -------
    list of str
        The written file.

    Raises
    ------
    MedsegError
        The file could not be written completely (disk full ...): it is checked before it
        replaces the previous file, which is left byte-identical.
    """
    return [_write_layer(path, data, meta, labels=True)]


def write_labels_dicom_seg(path: str, data: Any, meta: Mapping[str, Any]) -> str:
    """A segmentation layer of an image read from DICOM, written as a DICOM SEG on that
    series (:mod:`napari_medseg.io.dicom_seg`: highdicom; checked before anything is written,
    verified before it replaces ``path``), one segment per structure name of the layer.

    Raises
    ------
    MedsegInputError
        The layer's image was not read from a DICOM series (one line), or the SEG could not
        be written there (:func:`~napari_medseg.io.dicom_seg.check_dicom_seg`).
    """
    from ..io.dicom_seg import check_dicom_seg, write_dicom_seg

    metadata = meta.get("metadata") or {}
    folder = metadata.get("path")
    if metadata.get("format") != "dicom" or not folder:
        raise MedsegInputError(
            "a DICOM SEG is made on a DICOM series: segment an image opened from DICOM"
        )
    source = check_dicom_seg(str(folder), path, metadata.get("series_uid"))
    array = _full_resolution(data, meta)
    spacing, origin, direction = geometry_from_meta(meta, array.ndim)
    reference = Volume(array, spacing, origin, direction)
    found = int(array.max()) if array.size else 0
    names = [str(n) for n in metadata.get(CLASS_NAMES_KEY) or []]
    names += [f"structure {k}" for k in range(len(names) + 1, found + 1)]
    return str(write_dicom_seg(path, array, source, names, reference=reference))


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Image layers (grayscale; RGB is refused).

    Parameters
    ----------
    path : str
        Target file, as for :func:`write_labels`.
    data : array-like
        The image data.
    meta : dict
        The layer state.

    Returns
    -------
    list of str
        The written file.
    """
    if meta.get("rgb"):
        raise MedsegInputError("napari-medseg saves grayscale volumes; this layer is RGB")
    return [_write_layer(path, data, meta, labels=False)]


def _write_layer(path: str, data: Any, meta: Mapping[str, Any], labels: bool) -> str:
    array = _full_resolution(data, meta)
    spacing, origin, direction = geometry_from_meta(meta, array.ndim)
    target = _with_extension(Path(path))
    written = write_volume(
        target, array, spacing=spacing, origin=origin, direction=direction, labels=labels,
        segments=layer_segments(meta) if labels else None,
    )  # fmt: skip
    return str(written)


def layer_segments(meta: Mapping[str, Any]) -> Segments | None:
    """The structure names a labels layer carries, with the colours napari shows them in.

    Parameters
    ----------
    meta : mapping
        The layer state: ``metadata`` with the names
        (:data:`~napari_medseg.colors.CLASS_NAMES_KEY`), ``name``, ``colormap``.

    Returns
    -------
    Segments or None
        None when the layer has no names. Whether it is an annotation or a segmentation
        comes from its metadata or name (:func:`~napari_medseg.io.segments.layer_kind`).
    """
    metadata = meta.get("metadata") or {}
    names = metadata.get(CLASS_NAMES_KEY)
    if not names:
        return None
    kind = layer_kind(metadata, str(meta.get("name") or ""))
    return Segments.of_structures([str(n) for n in names], kind, _shown_colors(meta))


def _shown_colors(meta: Mapping[str, Any]) -> dict[int, tuple[float, ...]]:
    """Colour of each label value of a direct colormap (none for napari's cyclic default)."""
    color_dict = getattr(meta.get("colormap"), "color_dict", None)
    if not isinstance(color_dict, Mapping):
        return {}
    return {
        int(value): tuple(float(c) for c in np.asarray(color)[:3])
        for value, color in color_dict.items()
        if value is not None and np.asarray(color).size >= 3
    }


def _full_resolution(data: Any, meta: Mapping[str, Any]) -> np.ndarray:
    if meta.get("multiscale") or (
        isinstance(data, (list, tuple)) and data and hasattr(data[0], "shape")
    ):
        data = data[0]
    return np.asarray(data)


def _with_extension(path: Path) -> Path:
    if extension_of(path):
        return path
    return path.with_name(path.name + DEFAULT_EXTENSION)


def geometry_from_meta(meta: Mapping[str, Any], ndim: int) -> Geometry:
    """Spacing, origin and direction (array order) of a layer for writing.

    Parameters
    ----------
    meta : mapping
        Layer state: ``metadata`` (with the reader's ``spacing``, ``origin``,
        ``direction``) and/or the transforms ``scale``, ``translate``, ``rotate``,
        ``shear``, ``affine``.
    ndim : int
        Number of data dimensions.

    Returns
    -------
    tuple
        ``(spacing, origin, direction)``.
    """
    stored = _geometry_from_metadata(meta.get("metadata") or {}, ndim)
    if stored is not None:
        return stored
    return _geometry_from_transforms(meta, ndim)


def _geometry_from_metadata(metadata: Mapping[str, Any], ndim: int) -> Geometry | None:
    try:
        spacing = tuple(float(s) for s in metadata["spacing"])
        origin = tuple(float(o) for o in metadata["origin"])
        direction = np.asarray(metadata.get("direction", np.eye(ndim)), dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if len(spacing) != ndim or len(origin) != ndim or direction.shape != (ndim, ndim):
        return None
    return spacing, origin, direction


def _geometry_from_transforms(meta: Mapping[str, Any], ndim: int) -> Geometry:
    """Compose napari's data-to-world transform and split it into spacing and direction."""
    matrix = _data_to_world(meta, ndim)
    linear, translation = matrix[:ndim, :ndim], matrix[:ndim, ndim]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise MedsegInputError("the layer's transform is degenerate (zero scale)")
    return tuple(map(float, spacing)), tuple(map(float, translation)), linear / spacing


def _data_to_world(meta: Mapping[str, Any], ndim: int) -> np.ndarray:
    from napari.utils.transforms import Affine

    physical: npt.NDArray[np.float64] = Affine(
        scale=_vector(meta.get("scale"), ndim, 1.0),
        translate=_vector(meta.get("translate"), ndim, 0.0),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        ndim=ndim,
    ).affine_matrix
    given = meta.get("affine")
    if given is None:
        return physical
    extra = np.asarray(getattr(given, "affine_matrix", given), dtype=np.float64)
    if extra.shape != (ndim + 1, ndim + 1):
        return physical
    return extra @ physical


def _vector(value: Sequence[float] | None, ndim: int, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,) * ndim
    values = tuple(float(v) for v in value)
    return values[-ndim:] if len(values) >= ndim else (default,) * (ndim - len(values)) + values
