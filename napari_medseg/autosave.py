"""Crash recovery: periodic, atomic autosaves of the annotation being painted.

GUI-free. A widget keeps one :class:`AutosaveStore` and, per image, a stable key from
:meth:`AutosaveStore.key_for`. Each autosave is one compressed ``.npz`` file, written with
:func:`napari_medseg._atomic.atomic_write` (temporary file, fsync, rename), that holds the
annotation and its metadata (time, class names, spacing, number of annotated voxels, a
checksum). A process killed at any moment leaves either the previous complete autosave or
the new one; a damaged file is skipped with an :class:`AutosaveWarning`, never a crash.

Using the store from a widget
-----------------------------
The Annotate widget's integration is meant to look like this::

    from napari_medseg.autosave import AutosaveStore, image_fingerprint

    store = AutosaveStore()  # $MEDSEG_AUTOSAVE_DIR, else ~/.cache/napari-medseg/autosave

    # 1. When an image layer is chosen: compute its key once and look for an autosave.
    path = image_layer.source.path  # None for data that did not come from a file
    key = AutosaveStore.key_for(
        path, image_layer.data.shape, None if path else image_fingerprint(image_layer.data)
    )
    entry = store.find(key)  # AutosaveEntry or None; a damaged file only warns
    restore_button.enabled = entry is not None
    restore_button.tooltip = entry.describe() if entry else ""

    # 2. "Restore autosaved annotation" button.
    labels_layer.data = store.load(entry, expected_shape=image_layer.data.shape)

    # 3. A QTimer (every 30-60 s) saves the labels layer. Copy the array in the GUI thread
    #    (the user keeps painting) and write it in a worker thread; the store skips the
    #    write when nothing changed since its last save (a cheap checksum).
    snapshot = labels_layer.data.copy()
    worker = thread_worker(store.save)(
        key, snapshot, spacing=image_layer.scale, class_names=names, image_name=image_layer.name
    )
    # MedsegError (disk full ...) from save: show it once, keep the timer running.

    # 4. When the user saves the annotation to a file, or clears it on purpose:
    store.discard(key)

The store is thread-safe: ``save`` may run in a worker thread while ``find`` runs in the GUI
thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import TEMP_PREFIX, atomic_write
from .annotation import content_checksum
from .errors import MedsegInputError

__all__ = [
    "AutosaveEntry",
    "AutosaveStore",
    "AutosaveWarning",
    "default_autosave_dir",
    "image_fingerprint",
]

#: Environment variable that overrides the autosave folder.
ENV_VAR = "MEDSEG_AUTOSAVE_DIR"
#: Version of the ``.npz`` layout; files of another version are ignored with a warning.
FORMAT_VERSION = 1
SUFFIX = ".npz"
#: Temporary files older than this (seconds) are left-overs of a killed process.
STALE_TEMP_SECONDS = 3600.0
_ANNOTATION = "annotation"
_META = "meta"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_FINGERPRINT_SAMPLES = 4096


class AutosaveWarning(UserWarning):
    """An autosave file could not be used (damaged, foreign or from another version)."""


@dataclass(frozen=True)
class AutosaveEntry:
    """What :meth:`AutosaveStore.find` reports about an autosave.

    Attributes
    ----------
    key : str
        The image's key (see :meth:`AutosaveStore.key_for`).
    path : Path
        The autosave file.
    saved_at : datetime
        When it was written (local time).
    annotated_voxels : int
        Number of voxels with a nonzero (annotated) value.
    class_names : tuple of str
        The class names saved with it.
    image_name : str
        Name of the image it annotates.
    spacing : tuple of float
        Voxel spacing (array order, mm) of the image.
    shape : tuple of int
        Shape of the annotation.
    dtype : str
        Numpy type of the annotation.
    checksum : str
        Checksum of the annotation bytes (used to skip unchanged saves).
    """

    key: str
    path: Path
    saved_at: datetime
    annotated_voxels: int
    class_names: tuple[str, ...]
    image_name: str
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    dtype: str
    checksum: str

    def describe(self) -> str:
        """One line for a tooltip or a dialog, e.g. ``"CT: 1,234 voxels, 2024-05-01 10:02"``."""
        when = self.saved_at.strftime("%Y-%m-%d %H:%M:%S")
        return f"{self.image_name}: {self.annotated_voxels:,} annotated voxels, saved {when}"


def default_autosave_dir() -> Path:
    """Folder of the autosaves: ``$MEDSEG_AUTOSAVE_DIR``, else the platform cache folder.

    Returns
    -------
    Path
        ``~/.cache/napari-medseg/autosave`` on Linux (``$XDG_CACHE_HOME`` respected),
        ``~/Library/Caches/napari-medseg/autosave`` on macOS,
        ``%LOCALAPPDATA%\\napari-medseg\\autosave`` on Windows.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "napari-medseg" / "autosave"


def image_fingerprint(image: np.ndarray, samples: int = _FINGERPRINT_SAMPLES) -> bytes:
    """A small, cheap fingerprint of an image's content, for images without a file.

    Parameters
    ----------
    image : np.ndarray
        The image (any shape; a dask or other array-like works if it supports
        ``np.asarray`` on a strided view).
    samples : int
        About how many voxels to sample (evenly strided over the flattened array).

    Returns
    -------
    bytes
        Shape, type and the sampled voxels' bytes; equal images give equal fingerprints.
    """
    array = np.asarray(image)
    flat = array.reshape(-1)
    step = max(1, flat.size // max(1, samples))
    sample = np.ascontiguousarray(flat[::step][:samples])
    head = f"{array.shape}|{array.dtype.str}|".encode()
    return head + sample.tobytes()


class AutosaveStore:
    """Autosaves of annotations, one file per image key, in one folder.

    Parameters
    ----------
    root : Path, optional
        Folder of the autosaves (created with private permissions on first save).
        Default: :func:`default_autosave_dir`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_autosave_dir()
        self._lock = threading.Lock()
        self._last_checksum: dict[str, str] = {}
        self._swept = False

    # ---- keys -----------------------------------------------------------------------

    @staticmethod
    def key_for(
        image_path: str | os.PathLike[str] | None,
        image_shape: Sequence[int],
        image_fingerprint: bytes | None = None,
    ) -> str:
        """A stable key naming the autosave of one image.

        Parameters
        ----------
        image_path : str or path-like, optional
            The image's file (or DICOM folder). Resolved, so relative paths and symlinks
            give the same key.
        image_shape : sequence of int
            The image's shape; the same file reshaped gets another key.
        image_fingerprint : bytes, optional
            For an image without a file: :func:`image_fingerprint` of its data.

        Returns
        -------
        str
            ``"<file stem>-<16 hex digits>"``, or ``"data-<16 hex digits>"`` without a path:
            safe as a file name on every platform.

        Raises
        ------
        ValueError
            When neither a path nor a fingerprint is given.
        """
        shape = "x".join(str(int(s)) for s in image_shape)
        digest = hashlib.sha256()
        if image_path is not None and str(image_path):
            resolved = Path(image_path).expanduser().resolve()
            digest.update(b"path\0" + str(resolved).encode("utf-8", "surrogatepass"))
            stem = _safe_stem(resolved.name)
        elif image_fingerprint is not None:
            digest.update(b"data\0" + bytes(image_fingerprint))
            stem = "data"
        else:
            raise ValueError("key_for needs the image's path or a fingerprint of its data")
        digest.update(b"\0shape\0" + shape.encode())
        return f"{stem}-{digest.hexdigest()[:16]}"

    def path_for(self, key: str) -> Path:
        """The autosave file of ``key`` (it may not exist)."""
        _check_key(key)
        return self.root / f"{key}{SUFFIX}"

    # ---- writing --------------------------------------------------------------------

    def save(
        self,
        key: str,
        annotation: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        image_name: str = "",
    ) -> Path:
        """Write the annotation atomically, unless it is unchanged since the last save.

        Parameters
        ----------
        key : str
            From :meth:`key_for`.
        annotation : np.ndarray
            The sparse annotation (``0`` not annotated). Pass a copy when the user may
            keep painting during the save.
        spacing : sequence of float, optional
            Voxel spacing of the image (array order, mm), kept for information.
        class_names : sequence of str, optional
            Names of the classes, kept with the annotation.
        image_name : str
            Name of the image (layer or file name), shown when offering a restore.

        Returns
        -------
        Path
            The autosave file (written now, or already holding this annotation).

        Raises
        ------
        MedsegInputError
            A key that is not a safe file name, or an annotation that is not numeric.
        MedsegError
            When the file cannot be written (disk full ...); the previous autosave is
            left intact.
        """
        path = self.path_for(key)
        array = np.asarray(annotation)
        if array.dtype.kind not in "biu":
            raise MedsegInputError(f"cannot autosave an annotation of type {array.dtype}")
        checksum = content_checksum(array)
        with self._lock:
            if self._unchanged(key, path, checksum):
                return path
            self._ensure_root()
            meta = {
                "format_version": FORMAT_VERSION,
                "key": key,
                "saved_at": time.time(),
                "annotated_voxels": int(np.count_nonzero(array)),
                "class_names": [str(n) for n in (class_names or [])],
                "image_name": str(image_name),
                "spacing": [float(s) for s in (spacing or ())],
                "shape": [int(s) for s in array.shape],
                "dtype": array.dtype.str,
                "checksum": checksum,
            }
            meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
            with atomic_write(path, "wb") as handle:
                arrays: dict[str, Any] = {_ANNOTATION: array, _META: meta_bytes}
                np.savez_compressed(handle, **arrays)
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
            self._last_checksum[key] = checksum
        return path

    def discard(self, key: str) -> None:
        """Delete the autosave of ``key`` (nothing happens when there is none)."""
        path = self.path_for(key)
        with self._lock:
            self._last_checksum.pop(key, None)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ---- reading --------------------------------------------------------------------

    def find(self, key: str) -> AutosaveEntry | None:
        """The autosave of ``key``, or ``None``.

        The whole file is checked (every compressed member's CRC), so a damaged file is
        reported here, with an :class:`AutosaveWarning`, and ``None`` is returned.
        """
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            return _read_entry(key, path, verify=True)
        except _BadAutosave as exc:
            warnings.warn(f"ignoring damaged autosave {path}: {exc}", AutosaveWarning, stacklevel=2)
            return None

    def entries(self) -> list[AutosaveEntry]:
        """Every readable autosave in the folder, newest first (damaged ones warn)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            key = path.name[: -len(SUFFIX)]
            if _KEY_PATTERN.match(key):
                entry = self.find(key)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: e.saved_at, reverse=True)

    def load(
        self, entry: AutosaveEntry, *, expected_shape: Sequence[int] | None = None
    ) -> np.ndarray:
        """Read the annotation of an autosave.

        Parameters
        ----------
        entry : AutosaveEntry
            From :meth:`find`.
        expected_shape : sequence of int, optional
            The image's shape; a different annotation shape is refused.

        Returns
        -------
        np.ndarray
            The annotation, with the type it was saved with.

        Raises
        ------
        MedsegInputError
            When the file is gone or damaged, or its shape is not the expected one.
        """
        try:
            with np.load(entry.path, allow_pickle=False) as data:
                array = np.asarray(data[_ANNOTATION])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise MedsegInputError(f"cannot restore autosave {entry.path.name}: {exc}") from None
        if tuple(array.shape) != tuple(entry.shape):
            raise MedsegInputError(
                f"autosave {entry.path.name} holds shape {array.shape}, its record says "
                f"{entry.shape}"
            )
        if expected_shape is not None and tuple(array.shape) != tuple(
            int(s) for s in expected_shape
        ):
            raise MedsegInputError(
                f"autosave {entry.path.name} has shape {tuple(array.shape)}, the image has "
                f"{tuple(expected_shape)}"
            )
        return array

    # ---- internals ------------------------------------------------------------------

    def _unchanged(self, key: str, path: Path, checksum: str) -> bool:
        if not path.is_file():
            return False
        last = self._last_checksum.get(key)
        if last is None:  # first save in this process: compare with the (intact) file on disk
            try:
                last = _read_entry(key, path, verify=True).checksum
            except _BadAutosave:
                return False
            self._last_checksum[key] = last
        return last == checksum

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._swept:
            self._swept = True
            _remove_stale_temp_files(self.root)


class _BadAutosave(Exception):
    """Internal: why an autosave file cannot be used."""


def _safe_stem(name: str) -> str:
    for suffix in (".nii.gz", ".nhdr", ".nrrd", ".nii", ".mha", ".mhd", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40]
    return stem or "image"


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_PATTERN.match(key) or ".." in key:
        raise MedsegInputError(f"invalid autosave key {key!r}: use AutosaveStore.key_for")


def _read_entry(key: str, path: Path, *, verify: bool) -> AutosaveEntry:
    """Parse (and with ``verify``, CRC-check) one autosave file."""
    try:
        with zipfile.ZipFile(path) as archive:
            if verify:
                bad = archive.testzip()
                if bad is not None:
                    raise _BadAutosave(f"member {bad} is corrupt")
            names = set(archive.namelist())
            if {f"{_ANNOTATION}.npy", f"{_META}.npy"} - names:
                raise _BadAutosave("not a napari-medseg autosave")
        with np.load(path, allow_pickle=False) as data:
            meta_bytes = np.asarray(data[_META])
        meta = json.loads(meta_bytes.astype(np.uint8).tobytes().decode("utf-8"))
    except _BadAutosave:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        UnicodeDecodeError,
    ) as exc:  # json.JSONDecodeError is a ValueError
        raise _BadAutosave(str(exc) or type(exc).__name__) from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise _BadAutosave("written by another version of napari-medseg")
    try:
        return AutosaveEntry(
            key=key,
            path=path,
            saved_at=datetime.fromtimestamp(float(meta["saved_at"])),
            annotated_voxels=int(meta["annotated_voxels"]),
            class_names=tuple(str(n) for n in meta.get("class_names", [])),
            image_name=str(meta.get("image_name", "")),
            spacing=tuple(float(s) for s in meta.get("spacing", [])),
            shape=tuple(int(s) for s in meta["shape"]),
            dtype=str(meta["dtype"]),
            checksum=str(meta["checksum"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        raise _BadAutosave(f"incomplete record ({exc})") from None


def _remove_stale_temp_files(root: Path) -> None:
    """Delete temporary files a killed process left behind (old enough to be dead)."""
    now = time.time()
    for item in root.glob(f"{TEMP_PREFIX}*"):
        try:
            if item.is_file() and now - item.stat().st_mtime > STALE_TEMP_SECONDS:
                item.unlink()
        except OSError:
            continue
