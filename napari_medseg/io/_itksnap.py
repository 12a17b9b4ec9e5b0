"""ITK-SNAP label description files (``IDX -R- -G- -B- -A-- VIS MSH LABEL``), beside a label map.

The text ITK-SNAP's *Label Editor* exports and imports, plus a comment line saying what the
label map is (:data:`KIND_COMMENT`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .._atomic import WriteCheckError, atomic_write
from ..errors import MedsegInputError
from ._segment_model import RGB, Segments, rgb, segments_from

#: Comment line of an ITK-SNAP label description written by napari-medseg.
KIND_COMMENT = "# napari-medseg: "
_LINE = re.compile(
    r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+(\d+)\s+(\d+)\s+"(.*)"\s*$'
)

_ITKSNAP_HEADER = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    IDX:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def format_label_description(segments: Segments) -> str:
    """The text of an ITK-SNAP label description file for ``segments``.

    Label ``0`` (ITK-SNAP's *Clear Label*) is named after what it is here: ``not
    annotated`` (annotation) or ``background`` (segmentation), hidden.
    """
    kind_text = (
        "annotation (sparse: 0 not annotated, 1 background, k+1 structure k)"
        if segments.kind == "annotation"
        else "segmentation (0 background, k structure k)"
    )
    lines = [_ITKSNAP_HEADER + KIND_COMMENT + kind_text]
    lines.append(_label_line(0, (0.0, 0.0, 0.0), 0.0, segments.names_by_value()[0]))
    lines += [_label_line(s.value, s.color, 1.0, s.name) for s in segments.items]
    return "\n".join(lines) + "\n"


def _label_line(value: int, color: RGB, alpha: float, name: str) -> str:
    r, g, b = (round(c * 255) for c in color)
    visible = 1 if alpha > 0 else 0
    return f'{value:5d} {r:5d} {g:4d} {b:4d} {alpha:8.2g} {visible:2d} {visible:2d}    "{name}"'


def parse_label_description(text: str) -> Segments | None:
    """Segments from an ITK-SNAP label description (None when it names no label above 0).

    Raises
    ------
    MedsegInputError
        A line that is neither a comment nor a label.
    """
    found: dict[int, tuple[str, RGB | None]] = {}
    kind: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(KIND_COMMENT.strip()):
            kind = stripped[len(KIND_COMMENT.strip()) :].split()[0]
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise MedsegInputError(
                f"not an ITK-SNAP label description: line {number} is {line!r:.60}"
            )
        value, r, g, b = (int(match.group(i)) for i in range(1, 5))
        if value > 0:
            found[value] = (match.group(8), rgb([min(c, 255) / 255 for c in (r, g, b)]))
    return segments_from(found, kind if kind in ("annotation", "segmentation") else None)


def write_label_description(path: Path, segments: Segments) -> None:
    """Write an ITK-SNAP label description atomically, checking what reached the disk.

    Raises
    ------
    MedsegError
        The file could not be written (disk full ...); a previous file is left intact.
    """
    text = format_label_description(segments)

    def check(tmp: Path) -> None:
        found = parse_label_description(tmp.read_bytes().decode("utf-8", "replace"))
        if found is None or not found.matches(segments, tolerance=0.5 / 255 + 1e-9):
            raise WriteCheckError("the label description written does not read back")

    with atomic_write(path, "w", encoding="utf-8", check=check) as handle:
        handle.write(text)
