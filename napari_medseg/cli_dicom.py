"""DICOM on the command line: ``medseg dicom-series``, ``--series-uid`` and ``--dicom-seg``.

A folder may hold several DICOM series (a scout, the axial series, a reconstruction). The
commands that read an image take ``--series-uid``; without it such a folder is refused
before any work with one line listing the series and the option to pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import MedsegInputError
from .io import DicomSeriesInfo, SeveralSeriesError, find_series, list_dicom_series
from .io._formats import extension_of

__all__ = [
    "add_dicom_seg_option",
    "add_parsers",
    "add_series_uid_option",
    "check_dicom_inputs",
    "series_line",
]

SERIES_UID_HELP = (
    "the DICOM series of the image when its folder holds several "
    "(list them with: medseg dicom-series FOLDER)"
)
DICOM_SEG_HELP = (
    "also write the segmentation as a DICOM SEG (.dcm) referencing the source series, for "
    'a PACS or a DICOM viewer; a DICOM image only; needs pip install "napari-medseg[dicom]"'
)


def add_series_uid_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--series-uid UID`` (the DICOM series of the image)."""
    parser.add_argument("--series-uid", default=None, metavar="UID", help=SERIES_UID_HELP)


def add_dicom_seg_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--dicom-seg FILE`` (a DICOM SEG written besides the segmentation)."""
    parser.add_argument("--dicom-seg", default=None, metavar="FILE", help=DICOM_SEG_HELP)


def _is_dicom(path: Path) -> bool:
    from .io import is_zarr

    return (path.is_dir() and not is_zarr(path)) or extension_of(path) == ".dcm"


def check_dicom_inputs(
    image: str,
    series_uid: str | None,
    dicom_seg: str | None = None,
    *,
    annotation: str | None = None,
) -> None:
    """Refuse, before any work, a DICOM input whose series is not known, or a DICOM SEG
    that could not be written.

    Parameters
    ----------
    image : str
        The image argument; ``series_uid`` chooses its series.
    series_uid : str or None
        The value of ``--series-uid``.
    dicom_seg : str or None
        The value of ``--dicom-seg``.
    annotation : str, optional
        The annotation argument: a DICOM folder holding several series must be named by
        one of its files instead (``--series-uid`` is the image's).

    Raises
    ------
    MedsegInputError
        One line: several series and no ``--series-uid`` (listing them), an unknown UID,
        ``--series-uid`` or ``--dicom-seg`` given for an image that is not DICOM, a DICOM
        SEG that could not be written (:func:`~napari_medseg.io.dicom_seg.check_dicom_seg`).
    """
    path = Path(image).expanduser()
    if series_uid is not None and path.exists() and not _is_dicom(path):
        raise MedsegInputError(f"--series-uid applies to a DICOM image; {path.name} is not DICOM")
    if path.exists() and _is_dicom(path):
        try:
            find_series(path, series_uid)
        except SeveralSeriesError as exc:
            raise MedsegInputError(
                f"{exc.folder.name} holds {len(exc.series)} DICOM series; choose one with "
                f"--series-uid UID: {'; '.join(series_line(s) for s in exc.series)}"
            ) from None
    if annotation is not None and Path(annotation).expanduser().is_dir():
        _check_folder_of_one_series(Path(annotation).expanduser(), "annotation")
    if dicom_seg is not None:
        from .io.dicom_seg import check_dicom_seg

        check_dicom_seg(image, dicom_seg, series_uid)


def _check_folder_of_one_series(folder: Path, what: str) -> None:
    try:
        find_series(folder)
    except SeveralSeriesError as exc:
        files = "; ".join(f"{Path(s.files[0]).name} for {series_line(s)}" for s in exc.series)
        raise MedsegInputError(
            f"the {what} folder {folder.name} holds {len(exc.series)} DICOM series; name one "
            f"file of the series instead of the folder (a file stands for its series): {files}"
        ) from None


def series_line(info: DicomSeriesInfo) -> str:
    """``UID (modality, "description", N slices)`` for a one-line listing."""
    description = f'"{info.description}"' if info.description else "no description"
    modality = info.modality or "unknown modality"
    return f"{info.uid} ({modality}, {description}, {info.n_slices} slices)"


def cmd_dicom_series(args: argparse.Namespace) -> int:
    """``medseg dicom-series FOLDER``: the series of a folder, one line each."""
    folder = Path(args.folder).expanduser()
    series = list_dicom_series(folder)
    if not series:
        raise MedsegInputError(f"no DICOM series found in {folder}")
    if args.json:
        print(json.dumps([_as_dict(info) for info in series]))
        return 0
    rows = [("series UID", "modality", "number", "slices", "rows x cols", "description")]
    rows += [
        (
            info.uid,
            info.modality or "-",
            info.series_number or "-",
            str(info.n_slices),
            f"{info.rows} x {info.columns}",
            info.description or "-",
        )
        for info in series
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)) + "  " + row[-1])
    if len(series) > 1:
        print(f"read one with --series-uid UID, e.g. medseg predict MODEL {args.folder} "
              f"--series-uid {series[0].uid} --out seg.nii.gz")
    return 0


def _as_dict(info: DicomSeriesInfo) -> dict[str, object]:
    return {
        "uid": info.uid,
        "modality": info.modality,
        "series_number": info.series_number,
        "description": info.description,
        "slices": info.n_slices,
        "rows": info.rows,
        "columns": info.columns,
    }


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``medseg dicom-series``."""
    p = sub.add_parser(
        "dicom-series",
        help="list the DICOM series of a folder (their UIDs for --series-uid)",
    )
    p.add_argument("folder", help="a folder of DICOM files")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=cmd_dicom_series)
