"""Make MedSeg napari's reader for medical file types, once, where the user chose none.

napari's built-in reader also claims ``.nii``, ``.nrrd``, ``.mha`` ... (reading them without
their voxel spacing, or not at all), so dropping such a file on napari opens a *Choose
reader* dialog, and ``viewer.open(path, plugin=None)`` raises. napari keeps the user's
choices in ``settings.plugins.extension2reader`` (pattern -> plugin name).

:func:`claim_reader_precedence` adds ``"*.nii.gz": "napari-medseg"`` and the like for the
patterns of :data:`MEDICAL_PATTERNS`, and only

* when no saved pattern already matches files of that type (the user's choice, ``*.gz`` or
  ``*`` included, always wins), and
* the first time MedSeg meets that pattern in this napari settings folder: the patterns
  already considered are listed in :data:`MARKER_NAME` next to napari's settings file, so a
  preference the user removed stays removed.

General-purpose types (``.tif``, ``.tiff``, ``.npy``) are left to the user: the dialog asks.
:func:`on_activate` (the npe2 activation hook) and ``medseg gui`` call
:func:`announce_reader_precedence`, which also tells the user what changed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .._atomic import atomic_write

__all__ = [
    "MEDICAL_PATTERNS",
    "PLUGIN",
    "announce_reader_precedence",
    "claim_reader_precedence",
    "on_activate",
    "precedence_message",
    "unclaimed_patterns",
]

logger = logging.getLogger(__name__)

PLUGIN = "napari-medseg"
#: File patterns MedSeg becomes the reader of (formats made for medical volumes).
MEDICAL_PATTERNS = ("*.nii", "*.nii.gz", "*.nrrd", "*.nhdr", "*.mha", "*.mhd", "*.dcm")
#: File, next to napari's settings file, listing the patterns already considered.
MARKER_NAME = "napari-medseg-readers.json"


def unclaimed_patterns(
    extension2reader: Mapping[str, str], patterns: Iterable[str] = MEDICAL_PATTERNS
) -> list[str]:
    """The patterns for whose files no saved preference chooses a reader.

    Parameters
    ----------
    extension2reader : mapping
        napari's saved preferences, file pattern -> plugin name.
    patterns : iterable of str
        Candidate patterns such as ``"*.nii.gz"``.

    Returns
    -------
    list of str
        Each pattern whose example file (``/folder/volume.nii.gz``) no saved pattern
        matches; a saved ``*.gz`` or ``*`` counts as a choice.
    """
    example_dir = os.path.join(os.sep, "folder")
    free = []
    for pattern in patterns:
        example = os.path.join(example_dir, "volume" + pattern.lstrip("*"))
        if not any(fnmatch(example, saved) for saved in extension2reader):
            free.append(pattern)
    return free


def claim_reader_precedence(settings: Any = None) -> list[str]:
    """Make MedSeg the reader of the medical patterns nobody chose a reader for.

    Parameters
    ----------
    settings : napari.settings.NapariSettings, optional
        Default: ``napari.settings.get_settings()``.

    Returns
    -------
    list of str
        The patterns newly set to ``napari-medseg`` (empty when nothing changed).
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    marker = _marker_path(settings)
    considered = _read_marker(marker)
    fresh = [p for p in MEDICAL_PATTERNS if p not in considered]
    if not fresh:
        return []
    current = dict(settings.plugins.extension2reader)
    claimed = unclaimed_patterns(current, fresh)
    if claimed:
        settings.plugins.extension2reader = {**current, **dict.fromkeys(claimed, PLUGIN)}
    _write_marker(marker, sorted(considered | set(fresh)))
    return claimed


def precedence_message(patterns: Iterable[str]) -> str:
    """One line telling the user which file types MedSeg now opens, and how to undo it."""
    types = ", ".join(p.lstrip("*") for p in patterns)
    return (
        f"MedSeg now opens {types} files you drop on napari or open with File > Open "
        "(with their voxel spacing in mm); change it in Preferences > Plugins"
    )


def announce_reader_precedence() -> list[str]:
    """:func:`claim_reader_precedence`, then a napari notification naming the changes.

    Never raises: a settings folder that cannot be written is logged and skipped.

    Returns
    -------
    list of str
        The patterns newly set.
    """
    try:
        claimed = claim_reader_precedence()
    except Exception as exc:  # noqa: BLE001 - a preference is not worth failing napari over
        logger.warning("could not set MedSeg as napari's reader for medical files: %s", exc)
        return []
    if claimed:
        from napari.utils.notifications import show_info

        message = precedence_message(claimed)
        logger.info(message)
        show_info(message)
    return claimed


def on_activate(context: Any = None) -> None:
    """npe2 activation hook: claim reader precedence when a napari window is open.

    Headless uses (scripts with ``ViewerModel``, ``npe2`` tooling) change no settings.
    """
    import napari

    if napari.current_viewer() is not None:
        announce_reader_precedence()


def _marker_path(settings: Any) -> Path | None:
    config_path = getattr(settings, "config_path", None)
    return Path(config_path).parent / MARKER_NAME if config_path else None


def _read_marker(marker: Path | None) -> set[str]:
    if marker is None or not marker.is_file():
        return set()
    try:
        patterns = json.loads(marker.read_text(encoding="utf-8")).get("considered", [])
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("ignoring unreadable %s: %s", marker, exc)
        return set()
    return {p for p in patterns if isinstance(p, str)}


def _write_marker(marker: Path | None, patterns: list[str]) -> None:
    if marker is None:
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(marker, "w", encoding="utf-8") as handle:
        json.dump({"considered": patterns}, handle, indent=1)
