"""Saving a file atomically and verified, with a one-line reason when the writing fails.

Every volume writer goes through :func:`atomic_save`: the library writes a temporary
file, ``check`` reads it back (header: shape and voxel type; payload: its length, or one
streaming decompression), and only a complete file replaces the target. What a C library
prints on the process's stderr while it writes (SimpleITK's NIfTI and MetaImage writers
report a full disk only there) is captured: it becomes part of the error instead of
cluttering the terminal, and is passed on unchanged when the save succeeds.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .._atomic import WriteCheckError, atomic_write_via
from ..errors import MedsegError

__all__ = ["WriteCheckError", "atomic_save", "read_back", "short_reason"]

_STDERR_LOCK = threading.Lock()
_STDERR_KEEP = 1 << 16


def atomic_save(target: Path, write: Callable[[Path], None], check: Callable[[Path], None]) -> None:
    """Let ``write`` write a temporary file that replaces ``target`` once ``check`` passes.

    Parameters
    ----------
    target : Path
        The file to create or replace.
    write : callable
        ``write(tmp)`` writes the file (and any data file next to it) at ``tmp``.
    check : callable
        ``check(tmp)`` reads the written file back; it raises :class:`WriteCheckError`
        (or a :class:`MedsegError` of the reading code) when the file is incomplete.

    Raises
    ------
    MedsegError
        The file could not be written completely (disk full ...); a previous file is left
        intact.
    """
    said: list[str] = []
    read_noise: list[str] = []

    def quiet_write(tmp: Path) -> None:
        with _captured_stderr(said):
            write(tmp)

    def checked(tmp: Path) -> None:
        with _captured_stderr(read_noise):  # readers' warnings on a broken file
            read_back(check, tmp, said)

    try:
        atomic_write_via(target, quiet_write, check=checked)
    except MedsegError:
        raise
    except (RuntimeError, OSError) as exc:
        raise MedsegError(f"could not save {target}: {short_reason(exc)}") from exc
    if said or read_noise:
        sys.stderr.write("\n".join(said + read_noise) + "\n")


def read_back(check: Callable[[Path], None], tmp: Path, said: list[str] | None = None) -> None:
    """Run ``check(tmp)``; a reading error becomes a :class:`WriteCheckError`.

    The last line the writing library printed (``said``) is added to the reason.
    """
    try:
        check(tmp)
    except (WriteCheckError, MedsegError, OSError) as exc:
        text = short_reason(exc) if isinstance(exc, OSError) else str(exc)
        text = re.sub(r"^cannot read [^:]*: ", "", text)
        if text.startswith("file "):
            reason = "the file written " + text[len("file ") :]
        elif text.startswith(("data file ", "its data file ")):
            reason = "its " + text.removeprefix("its ")
        elif text.startswith("the file written"):
            reason = text
        else:
            reason = f"the file written does not read back ({text})"
        if said:
            reason += f" (the writer said: {said[-1][:120]})"
        raise WriteCheckError(reason) from exc


@contextlib.contextmanager
def _captured_stderr(lines: list[str]) -> Iterator[None]:
    """Collect what is printed on file descriptor 2 (by C libraries too) into ``lines``.

    The capture goes to an in-memory file (``memfd``) where possible, so a full disk does
    not lose it. Concurrent captures are serialised; where descriptor 2 cannot be
    redirected, nothing is captured.
    """
    with _STDERR_LOCK, _sink() as sink:
        saved = _dup_stderr() if sink is not None else None
        if sink is None or saved is None:
            yield
            return
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(max(0, sink.seek(0, os.SEEK_END) - _STDERR_KEEP))
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _dup_stderr() -> int | None:
    """A copy of descriptor 2 to restore it from; None when there is no stderr."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    try:
        return os.dup(2)
    except OSError:
        return None


@contextlib.contextmanager
def _sink() -> Iterator[IO[bytes] | None]:
    """An anonymous read-write binary file in memory (or in the temporary folder)."""
    handle: IO[bytes]
    try:
        if hasattr(os, "memfd_create"):
            handle = os.fdopen(os.memfd_create("medseg-stderr"), "w+b")
        else:
            handle = tempfile.TemporaryFile()
    except OSError:
        yield None
        return
    with handle:
        yield handle


def short_reason(exc: BaseException) -> str:
    """The gist of an error: the OS's text, or the last line of an ITK message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", text)[:200]
