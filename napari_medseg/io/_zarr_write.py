"""Writing OME-Zarr stores slab by slab, atomically (:func:`write_zarr`, :class:`ZarrLabelWriter`).

Stores are written with OME-NGFF 0.4 metadata in zarr format 2 (dimension separator ``/``,
Blosc-zstd chunks), into a hidden sibling folder ``.{name}.partial-XXXX`` that is fsynced
and read back completely (metadata, shapes, voxel types, every chunk) before it is renamed
to ``name``. Re-exported by :mod:`.zarr_io`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import stat
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import numpy.typing as npt

from .. import _atomic
from .._atomic import WriteCheckError, _raise_as_save_error
from ..errors import MedsegError, MedsegInputError
from ..volume import Volume
from ._geometry import GeometryWarning, check_geometry
from ._save import short_reason
from ._segment_model import Segments
from ._zarr_meta import (
    BLOCK_BYTES,
    MAX_CHUNK_BYTES,
    MAX_LEVELS,
    NODE_FILES,
    import_zarr,
    multiscales_attrs,
    ome_attributes,
    parse_multiscales,
    reason,
)

if TYPE_CHECKING:
    from .zarr_io import LazyVolume

__all__ = ["ZarrLabelWriter", "write_zarr"]

_OWNER_FILE = ".medseg-writer"
_COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1}


def write_zarr(
    path: str | os.PathLike[str],
    array: Any,
    *,
    reference: Volume | LazyVolume | None = None,
    spacing: tuple[float, ...] | None = None,
    origin: tuple[float, ...] | None = None,
    chunks: tuple[int, ...] | None = None,
    segments: Segments | None = None,
    labels: bool | None = None,
    levels: int = 1,
) -> Path:
    """Write a whole 2D or 3D array as an OME-Zarr image, slab by slab, atomically.

    Parameters
    ----------
    path : str or Path
        The store to create or replace (``name.zarr``).
    array : array-like or Volume
        numpy, dask or zarr array (read a slab at a time); a :class:`Volume` also gives
        the geometry when there is no ``reference``.
    reference : Volume or LazyVolume, optional
        Image whose spacing and origin to store; its shape must equal the array's.
    spacing, origin : tuple of float, optional
        Override the reference's (array order, mm).
    chunks : tuple of int, optional
        Chunk shape; default whole planes of up to 256 x 256 voxels, a few planes deep.
    segments : Segments, optional
        Structure names and colours of a label map (``image-label`` metadata).
    labels : bool, optional
        Mark the store as a label map (``image-label``); default: when ``segments`` is given.
    levels : int
        Resolution levels; level ``k`` keeps every ``2**k``-th voxel in y and x.

    Returns
    -------
    Path
        The store written.
    """
    if isinstance(array, Volume):
        reference = reference if reference is not None else array
        array = array.array
    labels = segments is not None if labels is None else labels
    shape = tuple(int(s) for s in array.shape)
    with ZarrLabelWriter(
        path, shape, np.dtype(array.dtype), chunks, reference=reference, spacing=spacing,
        origin=origin, segments=segments, labels=labels, levels=levels,
    ) as writer:  # fmt: skip
        rows = writer.slab_rows
        for start in range(0, shape[0], rows):
            writer.write(start, np.asarray(array[start : start + rows]))
    return writer.path


class ZarrLabelWriter:
    """Write a volume slab by slab (along its first axis) into an OME-Zarr store, atomically.

    The store is written into a hidden sibling folder ``.{name}.partial-XXXX``;
    :meth:`commit` fsyncs it, reads it back (shape, voxel type, geometry, every chunk) and
    only then renames it to ``path``, replacing an existing store there. :meth:`abort`
    removes it. As a context manager it commits on success and aborts on an exception. A
    folder left by a killed writer is removed by the next writer of the same store.

    Slabs may come in any order and any size; those that arrive in increasing order, each
    once (what the streaming prediction does), are buffered to whole chunk rows, so every
    chunk is compressed and written once.

    Parameters
    ----------
    path : str or Path
        The store to create or replace.
    shape : tuple of int
        ``(z, y, x)`` (or ``(y, x)``).
    dtype : dtype
        Voxel type (uint8 by default, for label maps).
    chunks : tuple of int, optional
        Chunk shape; by default planes of up to 256 x 256, deep enough for 64 MB buffers.
    reference, spacing, origin, segments, labels, levels
        As for :func:`write_zarr` (``labels`` is True by default here).
    verify : bool
        Read every chunk back before committing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, ...],
        dtype: npt.DTypeLike = np.uint8,
        chunks: tuple[int, ...] | None = None,
        *,
        reference: Volume | LazyVolume | None = None,
        spacing: tuple[float, ...] | None = None,
        origin: tuple[float, ...] | None = None,
        segments: Segments | None = None,
        labels: bool = True,
        levels: int = 1,
        verify: bool = True,
    ) -> None:
        zarr = import_zarr("writing")
        self.path = Path(path).expanduser()
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.verify = verify
        self.chunks = _chunks_for(self.path.name, self.shape, self.dtype, chunks)
        if not 1 <= levels <= MAX_LEVELS:
            raise MedsegInputError(f"cannot save {self.path.name}: 1 to {MAX_LEVELS} levels")
        geometry = _geometry(self.path.name, self.shape, reference, spacing, origin)
        self.factors = [(1,) * (len(self.shape) - 2) + (2**k, 2**k) for k in range(levels)]
        self.attrs = multiscales_attrs(
            self.path.stem, *geometry, self.factors, labels, segments
        )
        _refuse_in_the_way(self.path)
        folder = _atomic._folder_of(self.path)
        _sweep_abandoned(folder, self.path.name)
        self._lock = threading.Lock()
        self._state = "open"
        try:
            self.partial = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=folder))
        except OSError as exc:
            _reraise(exc, self.path)
        try:
            self._arrays = self._create(zarr)  # mode "w" empties the folder: owner after
            (self.partial / _OWNER_FILE).write_text(_owner(), encoding="utf-8")
        except BaseException as exc:
            shutil.rmtree(self.partial, ignore_errors=True)
            self._state = "aborted"
            _reraise(exc, self.path)
        self._sinks = [_SlabSink(a, f) for a, f in zip(self._arrays, self.factors)]
        self._published: Any = None

    def _create(self, zarr: ModuleType) -> list[Any]:
        root = zarr.open_group(store=str(self.partial), mode="w", zarr_format=2,
                               attributes=self.attrs)  # fmt: skip
        arrays = []
        for level, factor in enumerate(self.factors):
            shape = tuple(-(-s // f) for s, f in zip(self.shape, factor))
            arrays.append(root.create_array(
                str(level), shape=shape, dtype=self.dtype,
                chunks=tuple(min(c, s) for c, s in zip(self.chunks, shape)),
                fill_value=np.zeros((), self.dtype).item(), compressors=_COMPRESSOR,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                config={"write_empty_chunks": False},
            ))  # fmt: skip
        return arrays

    @property
    def array(self) -> Any:
        """The full-resolution zarr array being written (the published one after commit)."""
        if self._state == "committed":
            if self._published is None:
                self._published = import_zarr("reading").open_array(
                    store=str(self.path / "0"), mode="r"
                )
            return self._published
        return self._arrays[0]

    @property
    def slab_rows(self) -> int:
        """A slab depth (whole chunk rows, about 64 MB) that writes efficiently."""
        plane = math.prod(self.shape[1:]) * self.dtype.itemsize
        rows = self.chunks[0]
        return max(rows, BLOCK_BYTES // max(plane, 1) // rows * rows)

    def write(self, start: int, labels: npt.ArrayLike) -> None:
        """Write ``labels`` (shape ``(dz, y, x)``) at ``start .. start + dz`` of the first axis.

        Raises
        ------
        MedsegInputError
            A slab that does not fit the store, or values its voxel type cannot hold.
        MedsegError
            The disk is full, or the writer was committed or aborted.
        """
        data = np.asarray(labels)
        with self._lock:
            self._require_open()
            if (
                data.ndim != len(self.shape)
                or tuple(data.shape[1:]) != self.shape[1:]
                or not 0 <= start <= start + data.shape[0] <= self.shape[0]
            ):
                raise MedsegInputError(
                    f"a slab of shape {data.shape} at {start} does not fit {self.path.name} "
                    f"of shape {self.shape}"
                )
            data = _fit_dtype(data, self.dtype, self.path.name)
            try:
                for sink in self._sinks:
                    sink.put(start, data)
            except BaseException as exc:
                _reraise(exc, self.path)

    def commit(self) -> Path:
        """Flush, fsync and check the store, then rename it into place.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        MedsegError
            It could not be written completely (disk full ...): nothing is left behind and
            a store previously at ``path`` is intact.
        """
        with self._lock:
            self._require_open()
            try:
                for sink in self._sinks:
                    sink.flush()
                _fsync_tree(self.partial)
                self._check(self.partial, read_back=self.verify)
                (self.partial / _OWNER_FILE).unlink()
                _publish(self.partial, self.path)
                self._state = "committed"
            except BaseException as exc:
                self._state = "aborted"
                shutil.rmtree(self.partial, ignore_errors=True)
                _reraise(exc, self.path)
        try:
            self._check(self.path, read_back=False)
        except BaseException as exc:
            _reraise(exc, self.path)
        return self.path

    def abort(self) -> None:
        """Remove the partial store; ``path`` is left as it was. Idempotent."""
        with self._lock:
            if self._state == "open":
                self._state = "aborted"
                shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self) -> ZarrLabelWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def _require_open(self) -> None:
        if self._state != "open":
            raise MedsegError(f"the writer of {self.path.name} is already {self._state}")

    def _check(self, folder: Path, read_back: bool) -> None:
        """What reached the disk: metadata, every level's shape and type, every chunk."""
        zarr = import_zarr("reading")
        try:
            root = zarr.open_group(store=str(folder), mode="r", use_consolidated=False)
            written = parse_multiscales(folder.name, ome_attributes(dict(root.attrs)))
            expected = parse_multiscales(folder.name, ome_attributes(self.attrs))
            arrays = [root[p] for p in (written.paths if written else ())]
        except MedsegError:
            raise
        except Exception as exc:
            raise WriteCheckError(f"the store written does not read back ({reason(exc)})") from exc
        if written != expected or [(a.shape, a.dtype) for a in arrays] != [
            (a.shape, a.dtype) for a in self._arrays
        ]:
            raise WriteCheckError("the store written does not read back as written")
        for array in arrays if read_back else ():
            rows = _SlabSink(array, ()).rows
            plane = math.prod(array.shape[1:]) * array.dtype.itemsize
            step = max(rows, BLOCK_BYTES // max(plane, 1) // rows * rows)
            for start in range(0, array.shape[0], step):
                try:
                    array[start : start + step]
                except Exception as exc:
                    raise WriteCheckError(
                        f"the store written does not read back at {start} ({reason(exc)})"
                    ) from exc


class _SlabSink:
    """Writes slabs into one level; rows of a partly written chunk row wait in a buffer."""

    def __init__(self, array: Any, factors: tuple[int, ...]) -> None:
        self.array = array
        self.factors = factors
        self.rows = int(array.chunks[0])
        self.length = int(array.shape[0])
        self._row = -1
        self._buffer: npt.NDArray[Any] | None = None
        self._filled = np.zeros(self.rows, bool)

    def put(self, start: int, data: npt.NDArray[Any]) -> None:
        """Write the level-0 slab ``data`` at ``start``: the voxels this level keeps."""
        step = self.factors[0]
        first = -(-start // step)
        picked = data[(slice(first * step - start, None, step),) + tuple(
            slice(None, None, f) for f in self.factors[1:]
        )]  # fmt: skip
        stop = first + picked.shape[0]
        row = first // self.rows
        while row * self.rows < stop:
            row_lo, row_hi = row * self.rows, min((row + 1) * self.rows, self.length)
            lo, hi = max(first, row_lo), min(stop, row_hi)
            part = picked[lo - first : hi - first]
            if (lo, hi) == (row_lo, row_hi) and self._row != row:
                self.array[lo:hi] = part  # a whole chunk row: written once
            else:
                self._stage(row, lo - row_lo, part, row_hi - row_lo)
            row += 1

    def _stage(self, row: int, at: int, part: npt.NDArray[Any], height: int) -> None:
        if self._row != row:
            self.flush()
            if self._buffer is None:
                self._buffer = np.zeros((self.rows, *self.array.shape[1:]), self.array.dtype)
            self._row = row
            self._filled[:] = False
        assert self._buffer is not None
        self._buffer[at : at + len(part)] = part
        self._filled[at : at + len(part)] = True
        if self._filled[:height].all():
            self.array[row * self.rows : row * self.rows + height] = self._buffer[:height]
            self._row = -1

    def flush(self) -> None:
        """Write what waits in the buffer (the chunks get a read-modify-write)."""
        if self._row < 0 or self._buffer is None:
            return
        base = self._row * self.rows
        edges = np.flatnonzero(np.diff(np.concatenate(([0], self._filled.view(np.int8), [0]))))
        for lo, hi in zip(edges[::2].tolist(), edges[1::2].tolist()):
            self.array[base + lo : base + hi] = self._buffer[lo:hi]
        self._row = -1


def _chunks_for(
    name: str, shape: tuple[int, ...], dtype: np.dtype[Any], chunks: tuple[int, ...] | None
) -> tuple[int, ...]:
    """Validated chunks, or planes of up to 256 x 256 deep enough for a 64 MB row buffer."""
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise MedsegInputError(f"cannot save {name}: shape {shape} (a zarr store holds 2D or 3D)")
    if dtype.kind not in "biuf":
        raise MedsegInputError(f"cannot save {name}: voxel type {dtype} is not supported")
    if chunks is None:
        plane = math.prod(shape[1:]) * dtype.itemsize
        chunks = (max(1, min(64, BLOCK_BYTES // plane)),) + tuple(min(256, s) for s in shape[1:])
    chunks = tuple(min(int(c), s) for c, s in zip(chunks, shape))
    if len(chunks) != len(shape) or min(chunks) < 1:
        raise MedsegInputError(f"cannot save {name}: chunks {chunks} do not fit shape {shape}")
    if math.prod(chunks) * dtype.itemsize > MAX_CHUNK_BYTES:
        raise MedsegInputError(f"cannot save {name}: chunks {chunks} are too large")
    return chunks


def _geometry(
    name: str,
    shape: tuple[int, ...],
    reference: Volume | LazyVolume | None,
    spacing: tuple[float, ...] | None,
    origin: tuple[float, ...] | None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Spacing and origin to store; the reference's shape must match; a direction is lost."""
    n = len(shape)
    if reference is not None and tuple(reference.shape) != shape:
        raise MedsegInputError(
            f"the array's shape {shape} differs from the reference image's {reference.shape}"
        )
    spacing = tuple(spacing or (reference.spacing if reference is not None else (1.0,) * n))
    origin = tuple(origin or (reference.origin if reference is not None else (0.0,) * n))
    if len(spacing) != n or len(origin) != n:
        raise MedsegInputError(f"cannot save {name}: spacing and origin need {n} values")
    check_geometry(name, spacing, origin, np.eye(n))
    if isinstance(reference, Volume) and not reference.is_axis_aligned:
        warnings.warn(
            f"{name}: OME-Zarr keeps the spacing and origin, not the orientation; written "
            "axis-aligned (use .nii.gz, .nrrd or .mha to keep it)",
            GeometryWarning,
            stacklevel=4,
        )
    return tuple(map(float, spacing)), tuple(map(float, origin))


def _fit_dtype(data: npt.NDArray[Any], dtype: np.dtype[Any], name: str) -> npt.NDArray[Any]:
    """``data`` in ``dtype``; integer targets take only values they hold exactly."""
    if data.dtype == dtype or np.can_cast(data.dtype, dtype, "safe") or data.size == 0:
        return data.astype(dtype, copy=False)
    if dtype.kind == "f" and data.dtype.kind in "biuf":
        return data.astype(dtype)
    if dtype.kind in "iu" and data.dtype.kind in "biuf":
        info = np.iinfo(dtype)
        low, high = data.min(), data.max()
        exact = data.dtype.kind != "f" or bool(np.all(np.round(data) == data))
        if exact and info.min <= low and high <= info.max:
            return data.astype(dtype)
    raise MedsegInputError(f"values of type {data.dtype} do not fit {name}'s voxel type {dtype}")


def _reraise(exc: BaseException, target: Path) -> NoReturn:
    """Raise ``exc`` as a one-line save error (disk full, failed check, OS error)."""
    _raise_as_save_error(exc, target)
    if isinstance(exc, OSError) and not isinstance(exc, MedsegError):
        raise MedsegError(f"could not save {target}: {short_reason(exc)}") from exc
    raise exc


def _refuse_in_the_way(target: Path) -> None:
    """Only a zarr store (a folder with zarr metadata) is ever replaced."""
    if (target.exists() or target.is_symlink()) and not (
        target.is_dir() and not target.is_symlink() and any(
            (target / n).is_file() for n in NODE_FILES)
    ):  # fmt: skip
        raise MedsegInputError(
            f"cannot save {target}: something else than a zarr store is in the way"
        )


def _publish(partial: Path, target: Path) -> None:
    """Rename ``partial`` to ``target``; a store there is moved aside first, put back on failure."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o777 & ~_atomic._current_umask()
    os.chmod(partial, mode)
    previous = None
    if target.exists():
        _refuse_in_the_way(target)
        previous = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
        os.rename(target, previous)
    try:
        os.rename(partial, target)
    except BaseException:
        if previous is not None:
            os.rename(previous, target)
        raise
    _atomic._fsync_folder(target.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _atomic._fsync_file(Path(folder) / name)
        _atomic._fsync_folder(Path(folder))


def _owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _sweep_abandoned(folder: Path, name: str) -> None:
    """Remove what a killed writer of ``name`` left: its partial store, a store moved aside.

    A partial store is abandoned when its writer (named in it) was a process of this
    machine that no longer runs; a store moved aside goes back into place when nothing
    took it, else is removed. Only on POSIX systems.
    """
    if os.name != "posix":
        return
    for entry in folder.glob(f".{name}.p*-*"):
        with contextlib.suppress(OSError, ValueError):
            if entry.is_symlink() or not entry.is_dir():
                continue
            if entry.name.startswith(f".{name}.previous-"):
                if (folder / name).exists():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    os.rename(entry, folder / name)
            elif entry.name.startswith(f".{name}.partial-"):
                host, pid = (entry / _OWNER_FILE).read_text(encoding="utf-8").split()
                if host == socket.gethostname() and not _alive(int(pid)):
                    shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
