"""The files a command writes: checked before any work, and kept when a save still fails.

:func:`check_outputs` refuses, with a one-line :class:`~napari_medseg.errors.MedsegInputError`
and before anything is read or trained, an output that could not be written: its folder
missing or not writable (tried for real, with a temporary file: ``os.access`` says yes to
root on a read-only mount), a folder named as the file, an extension the writer does not
know, two outputs naming one file, or an output naming one of the inputs. :func:`check_inputs`
refuses a missing input before the first one is read.

A save can still fail after the work (the disk fills up, the folder is removed meanwhile):
:func:`rescue_model` then keeps the trained model in :func:`rescue_dir` (or the system's
temporary folder) and says where, in one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from ._atomic import TEMP_PREFIX
from .errors import MedsegError, MedsegInputError
from .io._formats import FORMATS, extension_of

__all__ = [
    "MODEL_EXTENSION",
    "RESCUE_ENV_VAR",
    "OutputKind",
    "check_inputs",
    "check_output",
    "check_outputs",
    "describe_os_error",
    "rescue_dir",
    "rescue_model",
]

PathLike = str | os.PathLike[str]
#: What an output holds: a volume (any format :func:`~napari_medseg.io.write_volume`
#: writes), a model (``.safetensors``), an ONNX model or a DICOM SEG.
OutputKind = Literal["volume", "model", "onnx", "dicom-seg"]
#: The extension of model files.
MODEL_EXTENSION = ".safetensors"
#: Environment variable naming the folder of rescued models.
RESCUE_ENV_VAR = "MEDSEG_RESCUE_DIR"
_VOLUME_HINT = "use .nii.gz, .nrrd, .mha, .tif or .npy"
#: The one extension of the kinds that have one, and what to say when it is missing.
_ONE_EXTENSION = {
    "onnx": (".onnx", "ONNX files end in .onnx"),
    "dicom-seg": (".dcm", "a DICOM SEG is a .dcm file"),
}


def check_output(path: PathLike, what: str, *, kind: OutputKind = "volume") -> Path:
    """Refuse an output that could not be written, before any work.

    Parameters
    ----------
    path : path-like
        The file to write.
    what : str
        What it holds, for the message (``"segmentation"``, ``"model"`` ...).
    kind : {"volume", "model", "onnx", "dicom-seg"}
        Which extensions the writer knows: volume formats, ``.safetensors`` (a name
        without any extension is accepted for a model), ``.onnx`` or ``.dcm``.

    Returns
    -------
    Path
        ``path``, with ``~`` expanded.

    Raises
    ------
    MedsegInputError
        One line: the folder is missing or not writable, ``path`` is a folder or not a
        regular file, or its extension is not one the writer knows.
    """
    target = Path(path).expanduser()
    store = _is_zarr_store(target)  # replaced whole once the new store is complete
    if target.is_dir() and not store:
        raise MedsegInputError(f"cannot save {what} {target}: it is a folder; name a file in it")
    _check_extension(target, what, kind)
    if target.exists() and not target.is_file() and not store:
        raise MedsegInputError(f"cannot save {what} {target}: it is not a regular file")
    folder = target.parent
    if not folder.is_dir():
        raise MedsegInputError(f"cannot save {what} {target}: folder {folder} does not exist")
    try_writing_in(folder, f"cannot save {what} {target}")
    return target


def _is_zarr_store(target: Path) -> bool:
    from .io.zarr_io import is_zarr

    return target.name.lower().endswith(".zarr") and target.is_dir() and is_zarr(target)


def check_outputs(
    outputs: Sequence[tuple[PathLike | None, str, OutputKind]],
    inputs: Sequence[tuple[PathLike | None, str]] = (),
) -> None:
    """:func:`check_output` for each ``(path, what, kind)`` given (``None``: not asked for);
    then refuse two outputs naming one file, or an output naming an input ``(path, what)``."""
    seen: dict[object, str] = {}
    for path, what in inputs:
        if path is not None:
            seen.setdefault(_identity(Path(path).expanduser()), f"the {what}")
    for path, what, kind in outputs:
        if path is None:
            continue
        target = check_output(path, what, kind=kind)
        other = seen.get(_identity(target))
        if other is not None:
            raise MedsegInputError(f"cannot save {what} {target}: it is also {other}")
        seen[_identity(target)] = f"the {what}"


def check_inputs(inputs: Sequence[tuple[PathLike | None, str]]) -> None:
    """Refuse a missing input ``(path, what)`` before the first one is read (one line)."""
    for path, what in inputs:
        if path is not None and not Path(path).expanduser().exists():
            raise MedsegInputError(
                f"{what} not found: {Path(path).expanduser()} (no such file or folder)"
            )


def describe_os_error(exc: OSError, folder: Path) -> str:
    """A few words on why writing in ``folder`` failed (``exc`` from the attempt)."""
    if exc.errno == errno.EROFS:
        return f"folder {folder} is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write in folder {folder}"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "disk full"
    if exc.errno == errno.ENOENT and not folder.is_dir():
        return f"folder {folder} does not exist"
    if exc.errno == errno.ENOENT:  # a folder that takes no new files (/proc, some mounts)
        return f"cannot create files in folder {folder}"
    return " ".join(str(exc.strerror or exc).split())


def rescue_dir() -> Path:
    """Folder of models kept after a failed save: ``$MEDSEG_RESCUE_DIR``, else
    ``napari-medseg/rescued`` in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    override = os.environ.get(RESCUE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "napari-medseg" / "rescued"


def rescue_model(
    target: PathLike, failure: BaseException, save: Callable[[Path], object]
) -> MedsegError:
    """Keep a model whose save to ``target`` failed with ``failure``.

    ``save(path)`` writes the model to ``path``; it is tried in :func:`rescue_dir`, then in
    the system's temporary folder. Returns (for the caller to raise) a one-line
    :class:`MedsegError` that names the failure and where the model was kept.
    """
    target = Path(target)
    why = _failure_text(failure, target)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = target.name.removesuffix(MODEL_EXTENSION) or "model"
    for folder in (rescue_dir(), Path(tempfile.gettempdir())):
        kept = folder / f"{stem}-{stamp}-{os.getpid()}{MODEL_EXTENSION}"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            save(kept)
        except (OSError, MedsegError):
            continue
        return MedsegError(f"trained model kept in {kept}; {why}")
    return MedsegError(f"{why}; the trained model could not be kept anywhere else either")


def _failure_text(failure: BaseException, target: Path) -> str:
    """One line saying why saving ``target`` failed."""
    if isinstance(failure, OSError):
        return f"could not save {target}: {describe_os_error(failure, target.parent)}"
    return " ".join(str(failure).split()) or f"could not save {target}"


def _check_extension(target: Path, what: str, kind: OutputKind) -> None:
    extension = extension_of(target)
    if kind in _ONE_EXTENSION:
        expected, hint = _ONE_EXTENSION[kind]
        if extension != expected:
            raise MedsegInputError(f"cannot save {what} {target}: {hint}")
        return
    if kind == "model":
        if extension not in ("", MODEL_EXTENSION):
            raise MedsegInputError(
                f"cannot save {what} {target.name}: models are {MODEL_EXTENSION} files"
            )
        return
    fmt = FORMATS.get(extension)
    if fmt == "dicom":
        raise MedsegInputError(
            f"cannot save {what} {target.name}: writing DICOM is not supported; {_VOLUME_HINT}"
        )
    if fmt is None:
        raise MedsegInputError(
            f"cannot save {what} {target.name}: unknown file type; {_VOLUME_HINT}"
        )


def try_writing_in(folder: Path, context: str) -> None:
    """Create and remove a temporary file in ``folder``; refuse (``context``: why) if that
    fails. Its name starts with the prefix that writers sweep, should a kill leave it."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe-", dir=folder)
    except OSError as exc:
        raise MedsegInputError(f"{context}: {describe_os_error(exc, folder)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def _identity(path: Path) -> object:
    """The same value for two names of one file: device and inode when it exists, else
    the resolved path."""
    with contextlib.suppress(OSError):
        info = path.stat()
        return (info.st_dev, info.st_ino)
    return path.resolve()
