"""Exceptions raised by napari-medseg.

Every mistake a user can make (a missing file, shapes that differ, an annotation with
nothing painted, an unsafe model file) raises :class:`MedsegInputError` with a one-line,
human-readable message. Front ends (CLI, widgets) show that message instead of a traceback.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of all errors raised on purpose by napari-medseg."""


class MedsegInputError(MedsegError, ValueError):
    """The user's input cannot be used; the message says why in one line."""


class UnsafeFileError(MedsegInputError):
    """A file would need unsafe work (unpickling, huge allocation) to be read."""

