"""Saving a file atomically, with a one-line reason when the writing library fails."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .._atomic import atomic_write_via
from ..errors import MedsegError


def atomic_save(target: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` write a temporary file that then replaces ``target`` atomically.

    Raises
    ------
    MedsegError
        The file could not be written (disk full ...); a previous file is left intact.
    """
    try:
        atomic_write_via(target, write)
    except MedsegError:
        raise
    except (RuntimeError, OSError) as exc:
        reason = short_reason(exc)
        raise MedsegError(f"could not save {target}: {reason}") from exc


def short_reason(exc: BaseException) -> str:
    """The gist of an error: the OS's text, or the last line of an ITK message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", text)[:200]
