"""Crash-safe file writing: write a temporary file, fsync it, then rename it onto the target.

A reader of the target path sees either the previous complete file or the new complete
file, never a half-written one, even if the process is killed (``kill -9``) or the disk
fills up in the middle of the write. On any failure the temporary file is removed and the
previous file is left untouched. A process killed mid-write can leave a hidden
``.medseg-tmp-*`` entry next to the target; it is never mistaken for the target, and the
next write into that folder removes such entries once they are older than
:data:`STALE_TEMP_SECONDS`.

Two entry points:

* :func:`atomic_write` for code that writes to a file object;
* :func:`atomic_write_via` for libraries that only write to a path (SimpleITK, tifffile).

What reached the disk is verified before the rename, because some libraries (SimpleITK's
NIfTI writer) report a short write only on stderr and return as if all went well. Both
entry points compare the size of the temporary file with what was written through it
(:func:`atomic_write`) or let the caller's ``check`` read the temporary file back
(:func:`atomic_write_via`); a check raises :class:`WriteCheckError`. When the written
file is incomplete, the temporary files are removed, the previous file is left untouched
and the error says ``disk full`` when the file system is (nearly) full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import MedsegError, MedsegInputError

__all__ = [
    "atomic_write",
    "atomic_write_via",
    "STALE_TEMP_SECONDS",
    "TEMP_PREFIX",
    "WriteCheckError",
    "is_nearly_full",
]

#: Prefix of the temporary files and folders created next to the target.
TEMP_PREFIX = ".medseg-tmp-"
#: Temporary entries untouched for longer than this were left by a killed process.
STALE_TEMP_SECONDS = 3600.0

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DISK_FULL_TEXT = ("no space left on device", "disk full", "not enough space", "quota exceeded")
_NEARLY_FULL_BYTES = 1 << 20
_BACKUP_PREFIX = "previous-"


class WriteCheckError(Exception):
    """A file just written is not complete; the message says how, in a few words."""


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    check: Callable[[Path], Any] | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` only once it is completely written.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace.
    mode : str
        ``"wb"`` (default) or ``"w"`` for text.
    encoding : str, optional
        Text encoding when ``mode="w"`` (default UTF-8).
    check : callable, optional
        ``check(tmp_path)`` reads the written temporary file back and raises
        :class:`WriteCheckError` when it is incomplete.

    Yields
    ------
    IO
        The open temporary file. Write to it; do not close it.

    Raises
    ------
    MedsegInputError
        When the folder of ``path`` does not exist.
    MedsegError
        When the disk is full, or the file on disk is shorter than what was written to it
        (the previous file is left intact).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    folder = _folder_of(target)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        text_encoding = (encoding or "utf-8") if mode == "w" else None
        with os.fdopen(fd, mode, encoding=text_encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            _check_size(handle)
        if check is not None:
            check(tmp)
        _publish(tmp, target)
    except BaseException as exc:
        _remove_quietly(tmp)
        _raise_as_save_error(exc, target)
        raise


def atomic_write_via(
    path: str | os.PathLike[str],
    writer: Callable[[Path], Any],
    *,
    check: Callable[[Path], Any] | None = None,
) -> list[Path]:
    """Let ``writer`` write to a temporary path, then move the result onto ``path``.

    The temporary path lives in a private hidden folder next to ``path`` and has the
    **same file name** as ``path``, so libraries that choose the format from the
    extension (``.nii.gz``, ``.nrrd`` ...) behave exactly as for the real target, and
    formats with a separate data file (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw.gz``) keep
    consistent references. Every file the writer produced is fsynced, checked, and moved
    next to ``path``; ``path`` itself is moved last. Should that last move fail, the
    companion files already moved are put back as they were.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace.
    writer : callable
        ``writer(tmp_path)`` writes the file (and any companion file) at ``tmp_path``.
    check : callable, optional
        ``check(tmp_path)`` reads the written file back (companion files lie next to it)
        and raises :class:`WriteCheckError` when it is incomplete.

    Returns
    -------
    list of Path
        The files written, ``path`` last.

    Raises
    ------
    MedsegInputError
        When the folder of ``path`` does not exist.
    MedsegError
        When the disk is full or the check fails (the previous file is left intact).
    """
    target = Path(path)
    folder = _folder_of(target)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder))
    try:
        writer(staging / target.name)
        produced = _staged_files(staging, target.name)
        for item in produced:
            _fsync_file(item)
        if check is not None:
            check(staging / target.name)
        return _publish_all(produced, target, staging)
    except BaseException as exc:
        _raise_as_save_error(exc, target)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _folder_of(target: Path) -> Path:
    """The target's folder (a user mistake when missing); stale temporaries there are swept."""
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise MedsegInputError(f"could not save {target}: folder {folder} does not exist")
    _sweep_stale(folder)
    return folder


def _sweep_stale(folder: Path) -> None:
    """Remove ``TEMP_PREFIX`` files and folders untouched for ``STALE_TEMP_SECONDS``.

    Only entries whose name starts with the prefix are examined (never followed through
    links); anything that cannot be removed (another user's, in use) is left alone.
    """
    limit = time.time() - STALE_TEMP_SECONDS
    try:
        with os.scandir(folder) as entries:
            candidates = [e for e in entries if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return
    for entry in candidates:
        with contextlib.suppress(OSError):
            if entry.is_symlink():
                continue
            if entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False) and _last_touched(entry.path) < limit:
                shutil.rmtree(entry.path, ignore_errors=True)


def _last_touched(folder: str) -> float:
    """Newest modification time of a staging folder and of the files in it."""
    newest = os.stat(folder, follow_symlinks=False).st_mtime
    with os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _staged_files(staging: Path, name: str) -> list[Path]:
    """Files the writer produced, the main file last (companion data files first)."""
    main = staging / name
    if not main.is_file():
        raise WriteCheckError("the writer produced no file")
    others = sorted(p for p in staging.iterdir() if p.is_file() and p != main)
    return [*others, main]


def _publish_all(produced: list[Path], target: Path, staging: Path) -> list[Path]:
    """Move the staged files next to ``target`` (main file last), or leave all as they were.

    Before a companion file (``seg.raw.gz`` of ``seg.nhdr``) replaces an older one, the
    older one is kept as a hard link in the staging folder; if a later move fails, the
    companions already moved are restored (or removed, when they are new), so the previous
    header never points at new data. Where hard links are not possible this undo is
    skipped.
    """
    undo: list[tuple[Path, Path | None]] = []
    written: list[Path] = []
    try:
        for item in produced:
            final = target.parent / item.name
            step = _keep_previous(final, staging) if item.name != target.name else None
            if step is not None:
                undo.append(step)
            _publish(item, final)
            written.append(final)
    except BaseException:
        for final, previous in reversed(undo):
            with contextlib.suppress(OSError):
                if previous is None:
                    os.unlink(final)
                else:
                    os.replace(previous, final)
        raise
    return written


def _keep_previous(final: Path, staging: Path) -> tuple[Path, Path | None] | None:
    """How to undo replacing ``final``: ``(final, hard link to the previous file)``,
    ``(final, None)`` when there was none (undoing removes ``final``), or None when it
    cannot be undone (no hard links on this file system)."""
    backup = staging / (_BACKUP_PREFIX + final.name)
    try:
        os.link(final, backup, follow_symlinks=False)
    except FileNotFoundError:
        return final, None
    except OSError:
        return None
    return final, backup


def _publish(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the target's permissions, rename it onto ``target``, fsync the folder."""
    _copy_permissions(tmp, target)
    os.replace(tmp, target)
    _fsync_folder(target.parent)


def _copy_permissions(tmp: Path, target: Path) -> None:
    """mkstemp makes files private (0600); keep the old file's mode, or the umask default."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_current_umask()
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; not possible (nor needed) on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _check_size(handle: IO[Any]) -> None:
    """The file on disk must hold every byte written through ``handle``."""
    raw = getattr(handle, "buffer", handle)
    written = raw.tell()
    on_disk = os.fstat(handle.fileno()).st_size
    if on_disk < written:
        raise WriteCheckError(f"only {on_disk:,} of {written:,} bytes reached the disk")


def _raise_as_save_error(exc: BaseException, target: Path) -> None:
    """Turn a full disk or a failed check into a one-line :class:`MedsegError`."""
    if _is_disk_full(exc, target.parent):
        raise MedsegError(f"could not save {target}: disk full") from exc
    if isinstance(exc, WriteCheckError):
        raise MedsegError(f"could not save {target}: {exc}") from exc


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    """True for ENOSPC/EDQUOT, or a library error or failed check on a nearly full disk."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if not isinstance(exc, (OSError, RuntimeError, WriteCheckError)):
        return False
    if any(text in str(exc).lower() for text in _DISK_FULL_TEXT):
        return True
    return is_nearly_full(folder)


def is_nearly_full(folder: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``folder`` has less than 1 MiB left (``statvfs``).

    Parameters
    ----------
    folder : str or os.PathLike
        A folder on the file system to look at.

    Returns
    -------
    bool
        True when (nearly) full; False when it has room, or cannot be asked.
    """
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
        except OSError:
            return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES
