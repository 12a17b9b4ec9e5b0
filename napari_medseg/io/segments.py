"""Structure names and colours that travel with a label map, where other programs read them.

A label map written with :class:`Segments` carries the name and colour of every structure:

* ``name.seg.nrrd``: 3D Slicer's segmentation fields in the NRRD header (``SegmentN_ID``,
  ``SegmentN_Name``, ``SegmentN_Color``, ``SegmentN_LabelValue``, ``SegmentN_Layer``,
  ``SegmentN_Extent``, ``SegmentN_Tags``, ``Segmentation_MasterRepresentation`` ...), as
  Slicer and ``slicerio`` read them;
* any other format: an ITK-SNAP label description file beside it, ``name.label.txt`` for
  ``name.nii.gz`` (:func:`label_file_for`; the text ITK-SNAP's *Label Editor* exports and
  imports, ``IDX -R- -G- -B- -A-- VIS MSH LABEL``).

:func:`read_segments` finds them again when the file is read
(:func:`~napari_medseg.io.read_volume` puts them into the volume's metadata,
:func:`segments_metadata`). A sparse annotation's segments are ``1`` background and
``k + 1`` structure ``k`` (``0``, not annotated, is none); a segmentation's are ``k``
structure ``k``. Colours default to those the widgets show (:mod:`napari_medseg.colors`).
Names are kept on one line: control characters become spaces, ``"`` becomes ``'`` and
``\\`` becomes ``/`` (the two files quote and escape with them).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ..colors import CLASS_NAMES_KEY
from ..errors import MedsegInputError
from ..volume import Volume
from ._checks import refuse_special_file
from ._formats import extension_of
from ._itksnap import format_label_description, parse_label_description, write_label_description
from ._segment_model import Kind, Segment, Segments, clean_name, rgb
from ._slicer import nrrd_fields, slicer_fields, slicer_segments, write_seg_nrrd

__all__ = [
    "KIND_KEY",
    "LABEL_FILE_SUFFIX",
    "SEGMENTS_KEY",
    "Kind",
    "Segment",
    "Segments",
    "format_label_description",
    "is_seg_nrrd",
    "label_file_for",
    "layer_features",
    "layer_kind",
    "parse_label_description",
    "read_segments",
    "segments_from_metadata",
    "segments_metadata",
    "slicer_fields",
    "stored_class_names",
    "with_segments",
    "write_label_description",
    "write_seg_nrrd",
]

#: Metadata key (volumes read, napari layers) saying what a label map is.
KIND_KEY = "medseg_kind"
#: Metadata key holding the segments read from a file: ``[{"value", "name", "color"}, ...]``.
SEGMENTS_KEY = "medseg_segments"
#: What replaces a label map's extension in the name of its ITK-SNAP label description.
LABEL_FILE_SUFFIX = ".label.txt"
_MAX_LABEL_FILE = 1 << 20


# ---- metadata of volumes and layers ---------------------------------------------------------


def segments_metadata(segments: Segments) -> dict[str, Any]:
    """The metadata a volume read (and a napari layer) gets from its segments.

    Returns
    -------
    dict
        :data:`~napari_medseg.colors.CLASS_NAMES_KEY` (structure names),
        :data:`KIND_KEY` and :data:`SEGMENTS_KEY` (JSON-friendly).
    """
    return {
        CLASS_NAMES_KEY: segments.class_names,
        KIND_KEY: segments.kind,
        SEGMENTS_KEY: [
            {"value": s.value, "name": s.name, "color": list(s.color)} for s in segments.items
        ],
    }


def segments_from_metadata(metadata: Mapping[str, Any]) -> Segments | None:
    """The segments :func:`segments_metadata` stored, or None when absent or malformed."""
    stored = metadata.get(SEGMENTS_KEY)
    kind = metadata.get(KIND_KEY)
    if not isinstance(stored, list) or kind not in ("annotation", "segmentation"):
        return None
    try:
        items = tuple(
            Segment(int(s["value"]), clean_name(s["name"]), rgb(s["color"])) for s in stored
        )
        return Segments(cast(Kind, kind), items)
    except (KeyError, TypeError, ValueError):
        return None


def stored_class_names(metadata: Mapping[str, Any], kind: Kind) -> list[str] | None:
    """The structure names read with a label map of ``kind`` (None when not stored)."""
    names = metadata.get(CLASS_NAMES_KEY)
    if metadata.get(KIND_KEY) != kind or not isinstance(names, list) or not names:
        return None
    return [str(n) for n in names]


def layer_kind(metadata: Mapping[str, Any], layer_name: str = "") -> Kind:
    """Whether a labels layer holds a sparse annotation or a segmentation.

    Its :data:`KIND_KEY` says so when present; else a layer made by the Predict widget
    (``medseg_model``) is a segmentation, one made by the Annotate widget (``medseg_image``)
    or named ``... annotation`` an annotation; anything else a segmentation.
    """
    kind = metadata.get(KIND_KEY)
    if kind in ("annotation", "segmentation"):
        return cast(Kind, kind)
    if "medseg_model" in metadata:
        return "segmentation"
    if "medseg_image" in metadata or "annotation" in layer_name.lower():
        return "annotation"
    return "segmentation"


def layer_features(segments: Segments) -> dict[str, list[Any]]:
    """A napari Labels ``features`` table: the name of each value shows on hover."""
    names = segments.names_by_value()
    return {"index": list(names), "name": list(names.values())}


# ---- where the names are stored --------------------------------------------------------------


def is_seg_nrrd(path: str | Path) -> bool:
    """Whether ``path`` names a 3D Slicer segmentation file (``.seg.nrrd``)."""
    return Path(path).name.lower().endswith(".seg.nrrd")


def label_file_for(path: str | Path) -> Path:
    """The ITK-SNAP label description of a label map: ``seg.nii.gz`` -> ``seg.label.txt``."""
    p = Path(path)
    ext = extension_of(p)
    stem = p.name[: len(p.name) - len(ext)] if ext else p.name
    return p.with_name(stem + LABEL_FILE_SUFFIX)


def read_segments(path: str | Path) -> Segments | None:
    """The segments stored with the label map ``path``, or None.

    A ``.nrrd`` holding Slicer's segment fields gives them; otherwise the ITK-SNAP label
    description beside the file (:func:`label_file_for`) when there is one.

    Raises
    ------
    MedsegInputError
        The label description is not a regular file, too large, or unreadable.
    """
    p = Path(path)
    if extension_of(p) in (".nrrd", ".nhdr") and p.is_file():
        found = slicer_segments(nrrd_fields(p))
        if found is not None:
            return found
    label_file = label_file_for(p)
    if not label_file.exists():
        return None
    refuse_special_file(label_file.name, label_file)
    if label_file.stat().st_size > _MAX_LABEL_FILE:
        raise MedsegInputError(f"cannot read {label_file.name}: larger than a label description")
    try:
        text = label_file.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        raise MedsegInputError(f"cannot read {label_file.name}: {exc.strerror}") from exc
    return parse_label_description(text)


def with_segments(volume: Volume, path: Path) -> Volume:
    """``volume`` (an integer label map read from ``path``) with its segments' metadata.

    A label description that cannot be read is passed over with a warning: the volume
    itself was read.
    """
    if volume.array.dtype.kind not in "biu" or "channel_axis" in volume.metadata:
        return volume
    try:
        segments = read_segments(path)
    except MedsegInputError as exc:
        warnings.warn(f"names and colours not read: {exc}", UserWarning, stacklevel=3)
        return volume
    if segments is not None:
        volume.metadata.update(segments_metadata(segments))
    return volume
