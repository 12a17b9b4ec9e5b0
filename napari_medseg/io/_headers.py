"""NRRD and MetaImage text headers: where the voxels lie, and which files hold them.

:func:`payload_of_header` says where a file's voxel payload lies (attached after the
header or in a separate data file, raw or compressed) so that its length can be checked
against the declared size; :func:`data_files_of` lists the separate data files a header
names (one file, a ``LIST`` or a numbered pattern), so that each can be checked to be a
regular file before any library opens it (opening a FIFO would block forever).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import UnsafeFileError
from ._checks import Payload

_HEADER_LIMIT = 1 << 20
#: Most data files a header may name (a ``LIST`` or a numbered pattern).
MAX_DATA_FILES = 100_000
_DATA_FILE_KEYS = {"nrrd": ("data file", "datafile"), "metaimage": ("elementdatafile",)}
_PATTERN = re.compile(r"^(\S*%\S*)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)(\s+\d+)?$")


def _text_header(path: Path) -> tuple[list[str], int]:
    """Lines of a text header (NRRD, MetaImage) and the byte offset just after it."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    lines: list[str] = []
    position = 0
    for raw in head.splitlines(keepends=True):
        position += len(raw)
        line = raw.decode("latin-1").strip()
        if not line and lines:
            break
        lines.append(line)
        if line.lower().startswith("elementdatafile"):
            break
    return lines, position


def _fields(lines: Sequence[str], separator: str) -> dict[str, str]:
    fields = {}
    for line in lines:
        if line.startswith("#") or separator not in line:
            continue
        key, _, value = line.partition(separator)
        fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    return fields


def _header_fields(path: Path, fmt: str) -> tuple[dict[str, str], int]:
    lines, offset = _text_header(path)
    return _fields(lines, ":" if fmt == "nrrd" else "="), offset


def _data_file_spec(fields: dict[str, str], fmt: str) -> str | None:
    """The data-file field of a header; None when the voxels follow the header."""
    spec = next((fields[k] for k in _DATA_FILE_KEYS[fmt] if k in fields), None)
    if spec is None or (fmt == "metaimage" and spec.upper() == "LOCAL"):
        return None
    return spec


def _skip(fields: dict[str, str], *keys: str) -> int | None:
    """A byte or line skip (0 when absent); None when it is -1 or not a number."""
    value = next((fields[k] for k in keys if k in fields), "0") or "0"
    try:
        skip = int(value)
    except ValueError:
        return None
    return skip if skip >= 0 else None


def payload_of_header(path: Path, fmt: str, data_bytes: int) -> Payload | None:
    """Where the ``data_bytes`` of voxels of a NRRD or MetaImage header lie.

    None when the layout cannot be checked cheaply (text encodings, line skips, data at
    the end of a file, several data files).
    """
    fields, offset = _header_fields(path, fmt)
    if fmt == "nrrd":
        encoding = fields.get("encoding", "raw").lower()
        if encoding not in ("raw", "gzip", "gz") or _skip(fields, "line skip", "lineskip") != 0:
            return None
        compressed = encoding != "raw"
        skip = _skip(fields, "byte skip", "byteskip")
        if skip is None or (compressed and skip):
            return None
    else:
        compressed = fields.get("compresseddata", "false").lower() == "true"
        skip = 0 if compressed else _skip(fields, "headersize")
        if skip is None:
            return None
    spec = _data_file_spec(fields, fmt)
    if spec is None:  # MetaImage applies HeaderSize to a separate data file only
        return Payload(path, offset + (skip if fmt == "nrrd" else 0), data_bytes, compressed)
    if " " in spec or "%" in spec or spec.upper().startswith("LIST"):
        return None
    return Payload(path.parent / spec, skip, data_bytes, compressed)


def data_files_of(path: Path, fmt: str) -> list[Path]:
    """The separate data files named by a NRRD or MetaImage header (empty: voxels attached).

    Raises
    ------
    UnsafeFileError
        When the header names more than :data:`MAX_DATA_FILES` files.
    """
    if fmt not in _DATA_FILE_KEYS:
        return []
    fields, _ = _header_fields(path, fmt)
    spec = _data_file_spec(fields, fmt)
    if spec is None:
        return []
    if spec.upper().split(" ")[0] == "LIST":
        names = _listed_names(path, fmt)
    else:
        names = _pattern_names(path.name, spec)
    return [path.parent / name for name in names]


def _listed_names(path: Path, fmt: str) -> list[str]:
    """The file names following a ``data file: LIST`` line (to the end of the header file)."""
    with open(path, "rb") as handle:
        lines = handle.read(_HEADER_LIMIT).decode("latin-1").splitlines()
    keys = _DATA_FILE_KEYS[fmt]
    start = next(
        (i + 1 for i, line in enumerate(lines) if line.strip().lower().startswith(keys)),
        len(lines),
    )
    names = [line.strip() for line in lines[start:] if line.strip()]
    _refuse_too_many(path.name, len(names))
    return names


def _pattern_names(name: str, spec: str) -> list[str]:
    """``name%03d.raw 1 40 1`` gives ``name001.raw`` ... ``name040.raw``; else ``[spec]``."""
    match = _PATTERN.match(spec)
    if match is None:
        return [spec]
    pattern, first, last, step = match.group(1), *map(int, match.group(2, 3, 4))
    if step == 0:
        return [spec]
    numbers = range(first, last + (1 if step > 0 else -1), step)
    _refuse_too_many(name, len(numbers))
    try:
        return [pattern % i for i in numbers]
    except (TypeError, ValueError):
        return [spec]


def _refuse_too_many(name: str, count: int) -> None:
    if count > MAX_DATA_FILES:
        raise UnsafeFileError(
            f"refusing to read {name}: it names {count:,} data files (more than {MAX_DATA_FILES:,})"
        )
