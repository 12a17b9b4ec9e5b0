"""Autosave keys and snapshots: the glue between the Annotate widget and :mod:`.autosave`.

Nothing here imports Qt or napari, so a plain script (or a test that kills its process
mid-way) can save an autosave exactly the way the widget does:

* :func:`image_source_path` finds the file an image layer was read from;
* :func:`autosave_key` names the autosave of an image (its file and shape, or a fingerprint
  of its data when it has no file);
* :func:`save_snapshot` writes a copy of the annotation (called in a worker thread);
* :func:`find_autosave` looks for an autosave (also in a worker thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from .autosave import AutosaveEntry, AutosaveStore, image_fingerprint

__all__ = [
    "autosave_key",
    "describe_entry",
    "find_autosave",
    "image_source_path",
    "save_snapshot",
]


def image_source_path(layer: Any) -> str | None:
    """The file (or DICOM folder) an image layer came from, or None.

    napari records it in ``layer.source.path`` when a file is opened; the plugin's reader
    (and its sample-data hooks) also keep it in ``layer.metadata["path"]``.
    """
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    if path:
        return str(path)
    metadata = getattr(layer, "metadata", None) or {}
    path = metadata.get("path") if isinstance(metadata, dict) else None
    return str(path) if path else None


def autosave_key(path: str | None, image: Any) -> str:
    """The autosave key of an image: from its file and shape, or from its data.

    Parameters
    ----------
    path : str or None
        The image's file (see :func:`image_source_path`); None for data without a file.
    image : array-like
        The image data (only its shape is read when ``path`` is given).
    """
    shape = tuple(int(s) for s in np.shape(image))
    if path:
        return AutosaveStore.key_for(path, shape)
    return AutosaveStore.key_for(None, shape, image_fingerprint(image))


def save_snapshot(
    store: AutosaveStore,
    key: str,
    snapshot: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    image_name: str = "",
) -> Path | None:
    """Autosave ``snapshot`` (a copy of the annotation) under ``key``.

    An annotation without a single painted voxel is not saved: there is nothing to recover,
    and an empty layer must never replace an autosave left by an earlier session.

    Returns
    -------
    Path or None
        The autosave file, or None when nothing was saved.
    """
    if not np.any(snapshot):
        return None
    return store.save(
        key, snapshot, spacing=spacing, class_names=class_names, image_name=image_name
    )


def find_autosave(
    store: AutosaveStore, path: str | None, image: Any, current: np.ndarray | None = None
) -> tuple[str, Any]:
    """``(key, entry)`` of an image: its autosave key and the store's entry (or None).

    Entries without any annotated voxel are ignored, and so is an autosave identical to
    ``current`` (the annotation already shown): there is nothing to restore.
    """
    key = autosave_key(path, image)
    entry = store.find(key)
    if entry is not None and entry.annotated_voxels <= 0:
        entry = None
    if (
        entry is not None
        and current is not None
        and tuple(np.shape(current)) == tuple(entry.shape)
        and int(np.count_nonzero(current)) == entry.annotated_voxels
        and np.array_equal(store.load(entry), current)
    ):
        entry = None
    return key, entry


def describe_entry(entry: AutosaveEntry) -> str:
    """The restore button's text.

    E.g. ``"Restore autosaved annotation (1,234 voxels, saved 10:02)"``; the date is added
    when the autosave is not from today.
    """
    saved = entry.saved_at
    when = saved.strftime("%H:%M" if saved.date() == date.today() else "%Y-%m-%d %H:%M")
    return f"Restore autosaved annotation ({entry.annotated_voxels:,} voxels, saved {when})"
