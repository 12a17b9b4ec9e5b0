"""DICOM Segmentation objects (DICOM SEG) of a segmentation of a DICOM series, via highdicom.

A PACS or a DICOM viewer (3D Slicer, OHIF) takes a segmentation as a DICOM SEG that
references the images it was made on. :func:`check_dicom_seg` checks, before any work,
that such a file can be made (a DICOM image, highdicom installed, a usable target) and
reads the headers of the source series in the order of the volume's slices;
:func:`write_dicom_seg` writes a BINARY segmentation, one segment per structure, frame
``i`` of each segment on the source image of slice ``i``. The file is written atomically
and read back with highdicom before it replaces the target.

highdicom is an optional dependency (``pip install "napari-medseg[dicom]"``), imported
only here and only when a DICOM SEG is asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import __version__
from .._atomic import WriteCheckError
from ..colors import structure_color
from ..errors import MedsegInputError
from ..volume import Volume
from ._formats import extension_of
from ._save import atomic_save
from .dicom import DicomSeriesInfo, find_series

__all__ = ["DicomSegSource", "check_dicom_seg", "write_dicom_seg", "INSTALL_HINT"]

#: How to install what a DICOM SEG needs.
INSTALL_HINT = 'pip install "napari-medseg[dicom]"'
#: SeriesNumber of the segmentations written (apart from the scanner's own series).
SEG_SERIES_NUMBER = 1000
_LONG_STRING = 64  # DICOM LO: SegmentLabel, SeriesDescription


@dataclass(frozen=True)
class DicomSegSource:
    """The DICOM series a segmentation is made on, read (headers only) for a DICOM SEG.

    Parameters
    ----------
    series : DicomSeriesInfo
        The series, its files in the order of the volume's slices.
    datasets : tuple
        The ``pydicom`` datasets of those files, without pixel data, in the same order.
    """

    series: DicomSeriesInfo
    datasets: tuple[Any, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``: the shape the segmentation must have."""
        first = self.datasets[0]
        return len(self.datasets), int(first.Rows), int(first.Columns)


def check_dicom_seg(
    image_path: str | os.PathLike[str],
    seg_path: str | os.PathLike[str],
    series_uid: str | None = None,
) -> DicomSegSource:
    """Refuse, before any work, a DICOM SEG that could not be written; read its source.

    Parameters
    ----------
    image_path : path-like
        The image the segmentation is made on: a DICOM folder or ``.dcm`` file.
    seg_path : path-like
        The DICOM SEG to write (``.dcm``).
    series_uid : str, optional
        The series of the folder, when it holds several.

    Returns
    -------
    DicomSegSource
        The source series and its headers, for :func:`write_dicom_seg`.

    Raises
    ------
    MedsegInputError
        One line: the image is not DICOM, highdicom is missing, the target is not a
        ``.dcm`` file in a writable folder (or lies in the source folder), the series is
        multi-frame or lacks a FrameOfReferenceUID.
    """
    image = Path(image_path).expanduser()
    target = Path(seg_path).expanduser()
    if not (image.is_dir() or extension_of(image) == ".dcm"):
        raise MedsegInputError(
            f"a DICOM SEG needs a DICOM image (a folder or a .dcm file); {image.name} is not "
            "DICOM"
        )
    _highdicom()
    series = find_series(image, series_uid)
    _check_target(target, Path(series.files[0]).parent)
    datasets = tuple(_read_header(Path(name)) for name in series.files)
    _check_source(datasets, series)
    return DicomSegSource(series, datasets)


def write_dicom_seg(
    path: str | os.PathLike[str],
    labels: npt.NDArray[np.integer[Any]],
    source: DicomSegSource,
    class_names: Sequence[str],
    *,
    reference: Volume | None = None,
) -> Path:
    """Write ``labels`` as a DICOM SEG on ``source``, atomically and verified.

    Parameters
    ----------
    path : path-like
        The ``.dcm`` file to write.
    labels : np.ndarray
        ``(slices, rows, columns)`` label map: ``0`` background, ``k`` structure ``k``.
    source : DicomSegSource
        From :func:`check_dicom_seg`.
    class_names : sequence of str
        One name per structure (background excluded): the segment labels.
    reference : Volume, optional
        The volume read from the series; its slice positions are checked against the
        source images, so that frame ``i`` lands on the image of slice ``i``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    MedsegInputError
        The labels do not fit the series (shape, values, slice order).
    MedsegError
        The file could not be written; a previous file is left intact.
    """
    target = Path(path).expanduser()
    labels = _checked_labels(labels, source, len(class_names))
    if reference is not None:
        _check_slice_order(source, reference)
    seg = _segmentation(labels, source, class_names)
    uids = [str(ds.SOPInstanceUID) for ds in source.datasets]

    def check(tmp: Path) -> None:
        _verify(tmp, labels, uids, str(seg.SOPInstanceUID))

    atomic_save(target, lambda tmp: seg.save_as(tmp), check)
    return target


# ---- checks before any work ----------------------------------------------------------


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError:
        raise MedsegInputError(
            f"writing a DICOM SEG needs highdicom: {INSTALL_HINT}"
        ) from None
    return highdicom


def _check_target(target: Path, source_folder: Path) -> None:
    from ..outputs import check_output

    check_output(target, "the DICOM SEG", kind="dicom-seg")
    if target.parent.resolve() == source_folder.resolve():
        raise MedsegInputError(
            f"cannot save the DICOM SEG {target}: it is in the folder of the source series, "
            "which would then hold two series; save it in another folder"
        )


def _read_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise MedsegInputError(f"cannot read {path.name}: not a valid DICOM file") from exc


def _check_source(datasets: tuple[Any, ...], series: DicomSeriesInfo) -> None:
    first = datasets[0]
    name = f"series {series.uid}"
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise MedsegInputError(
            f"a DICOM SEG of the multi-frame {name} is not supported (single-frame series only)"
        )
    if not all(getattr(ds, "FrameOfReferenceUID", "") for ds in datasets):
        raise MedsegInputError(
            f"{name} has no FrameOfReferenceUID, which a DICOM SEG requires"
        )
    for attribute in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient"):
        if any(getattr(ds, attribute, None) is None for ds in datasets):
            raise MedsegInputError(f"{name} lacks {attribute}, which a DICOM SEG requires")
    size = (first.Rows, first.Columns)
    if any((ds.Rows, ds.Columns) != size for ds in datasets):
        raise MedsegInputError(f"the images of {name} differ in size: no DICOM SEG possible")


# ---- writing -------------------------------------------------------------------------


def _checked_labels(
    labels: npt.NDArray[np.integer[Any]], source: DicomSegSource, n_structures: int
) -> npt.NDArray[np.unsignedinteger[Any]]:
    array = np.asarray(labels)
    if array.shape != source.shape:
        raise MedsegInputError(
            f"the segmentation {array.shape} does not fit the DICOM series "
            f"{source.series.uid} {source.shape} (slices, rows, columns)"
        )
    if array.dtype.kind not in "biu" or (array.size and int(array.min()) < 0):
        raise MedsegInputError("a DICOM SEG needs a label map of non-negative integers")
    top = int(array.max()) if array.size else 0
    if top > n_structures:
        raise MedsegInputError(
            f"the segmentation holds label {top} but only {n_structures} structure names"
        )
    return array.astype(np.uint8 if n_structures < 256 else np.uint16)


def _check_slice_order(source: DicomSegSource, reference: Volume) -> None:
    """Frame ``i`` must lie on slice ``i``: the first image at the volume's origin, the
    others one after another along the volume's slice axis."""
    if reference.array.shape[: 3] != source.shape:
        raise MedsegInputError(
            f"the volume {reference.array.shape} does not match its DICOM series {source.shape}"
        )
    positions = np.asarray(
        [[float(v) for v in ds.ImagePositionPatient][::-1] for ds in source.datasets]
    )  # array order (z, y, x), as the volume's geometry
    axis = np.asarray(reference.direction, dtype=float)[:, 0]
    along = (positions - np.asarray(reference.origin, dtype=float)) @ axis
    spacing = float(reference.spacing[0])
    off = float(np.linalg.norm(positions[0] - np.asarray(reference.origin, dtype=float)))
    if off > 1e-2 * max(spacing, 1.0) or (len(along) > 1 and np.any(np.diff(along) <= 0)):
        raise MedsegInputError(
            f"the images of series {source.series.uid} are not in the order of the volume's "
            "slices (was the folder changed since it was read?); nothing written"
        )


def _segmentation(
    labels: npt.NDArray[np.unsignedinteger[Any]],
    source: DicomSegSource,
    class_names: Sequence[str],
) -> Any:
    hd = _highdicom()
    return hd.seg.Segmentation(
        source_images=list(source.datasets),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(class_names),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-medseg",
        manufacturer_model_name="napari-medseg",
        software_versions=__version__,
        device_serial_number="napari-medseg",
        series_description=_long_string(
            f"napari-medseg segmentation of {source.series.description or 'series'}"
        ),
        content_label="SEGMENTATION",
        content_description="semi-automatic segmentation (napari-medseg)",
        omit_empty_frames=bool(labels.any()),  # all empty: every frame, without a warning
    )


def _segment_descriptions(class_names: Sequence[str]) -> list[Any]:
    """One segment per structure, with the generic Tissue category and type (the codes 3D
    Slicer gives a segment it knows nothing about) and napari-medseg as the algorithm."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-medseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
    )
    descriptions = []
    for k, name in enumerate(class_names, start=1):
        red, green, blue, _ = structure_color(k)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=k,
                segment_label=_long_string(name) or f"structure {k}",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(
                    *(round(255 * c) for c in (red, green, blue))
                ),
            )
        )
    return descriptions


def _long_string(text: str) -> str:
    """A DICOM LO value: no backslash or control characters, at most 64 characters."""
    clean = re.sub(r"[\x00-\x1f\x7f]", " ", str(text)).replace("\\", "/").strip()
    return clean[:_LONG_STRING].strip()


def _verify(
    tmp: Path, labels: npt.NDArray[np.unsignedinteger[Any]], uids: list[str], sop_uid: str
) -> None:
    """Read the written file back with highdicom: same instance, same voxels per source image."""
    hd = _highdicom()
    from pydicom.errors import InvalidDicomError

    try:
        seg = hd.seg.segread(tmp)
        if str(seg.SOPInstanceUID) != sop_uid:
            raise WriteCheckError("the file written is another DICOM object")
        if not labels.any():
            return  # no frame holds a segment: nothing to compare
        back = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
        )
    except (InvalidDicomError, ValueError, KeyError, AttributeError, EOFError) as exc:
        raise WriteCheckError(f"the file written does not read back ({exc})") from exc
    if back.shape != labels.shape or not np.array_equal(back, labels):
        raise WriteCheckError("the file written does not hold the segmentation")
