"""OME-Zarr and zarr stores: volumes larger than memory, read lazily, written block by block.

:func:`open_zarr` opens a store as a :class:`LazyVolume`: dask arrays (full resolution and
any lower-resolution levels of an OME-Zarr image) that read only the chunks sliced, with
the spacing and origin (array order ``z, y, x``, mm) of the OME-NGFF metadata (versions 0.1
to 0.5, :mod:`._zarr_meta`). A plain zarr array, or a group holding one, gets spacing 1.
:func:`write_zarr` writes an array, :class:`ZarrLabelWriter` a label map slab by slab, as
an OME-Zarr image (OME-NGFF **0.4** metadata in a zarr **format 2** store, the version most
tools read), with structure names and colours in its ``image-label`` metadata.

Stores are untrusted input. Only their metadata is read at opening; a shape, chunk or dtype
that makes no sense (absurd sizes, more than 3 spatial axes, several channels or time
points, strings) is refused from the metadata, before anything is allocated. Every read
first looks at the chunk files it is about to open: a FIFO, device or oversized file (a
decompression bomb, a file claiming more than its chunk) is refused. Writing goes to a
hidden sibling folder ``.{name}.partial-XXXX`` that becomes ``name`` only at
:meth:`ZarrLabelWriter.commit`, after it was fsynced and read back completely.

Needs the ``zarr`` extra (zarr 3 and dask), imported only when a store is used.
"""

from __future__ import annotations

import itertools
import math
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MedsegInputError, UnsafeFileError
from ..volume import Volume
from ._checks import DEFAULT_MAX_VOXELS, refuse_too_large, special_kind
from ._geometry import check_geometry
from ._save import short_reason
from ._segment_model import Segments
from ._zarr_meta import (
    MAX_CHUNK_BYTES,
    MAX_SHARD_BYTES,
    NODE_FILES,
    Multiscale,
    Selection,
    import_zarr,
    ome_attributes,
    parse_multiscales,
    read_segments_attrs,
    reason,
    select_spatial,
)
from ._zarr_write import ZarrLabelWriter, write_zarr
from .segments import segments_metadata

__all__ = [
    "LAZY_MAX_VOXELS",
    "LazyVolume",
    "ZarrLabelWriter",
    "is_zarr",
    "label_sample",
    "open_zarr",
    "write_zarr",
]

#: Most voxels :func:`open_zarr` accepts by default (a terabyte of uint8): it reads lazily.
LAZY_MAX_VOXELS = 1 << 40
MAX_METADATA_BYTES = 16 << 20
#: zarr chunks smaller than this are grouped into larger dask blocks (fewer tasks).
_MIN_BLOCK_BYTES = 1 << 20
_METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
_MAX_CHILDREN = 4096


def is_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr store: a folder named ``*.zarr`` or holding zarr metadata."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return False
    return p.name.lower().endswith(".zarr") or any((p / n).is_file() for n in NODE_FILES)


# ---- reading ---------------------------------------------------------------------------------


@dataclass
class LazyVolume:
    """A volume whose voxels stay on disk until sliced.

    Parameters
    ----------
    array : dask.array.Array
        The full-resolution level, array order ``(z, y, x)`` (``(y, x)`` for 2D); slicing
        it and calling ``np.asarray`` reads only the chunks needed.
    levels : list of dask.array.Array
        Every resolution level, full resolution first (napari's ``multiscale`` data).
    spacing, origin : tuple of float
        Voxel size and world position (mm) of voxel 0, array order.
    metadata : dict
        ``format`` ("zarr"), ``path``, ``axes``, ``units`` (as stored), ``levels``,
        ``ome_version``, ``label_map`` (an OME-NGFF ``image-label``), and the segments'
        metadata (:func:`~.segments.segments_metadata`) when names are stored.
    segments : Segments, optional
        Structure names and colours of a label map.
    """

    array: Any
    levels: list[Any]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    segments: Segments | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the full-resolution level."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Voxel type (native byte order)."""
        dtype: np.dtype[Any] = np.dtype(self.array.dtype)
        return dtype

    @property
    def ndim(self) -> int:
        """Number of axes (3, or 2 for a 2D image)."""
        return len(self.shape)

    @property
    def direction(self) -> npt.NDArray[np.float64]:
        """The identity: OME-NGFF 0.4/0.5 store no orientation."""
        return np.eye(self.ndim)

    @property
    def is_label_map(self) -> bool:
        """Whether the store says it is a label map (``image-label`` metadata)."""
        return bool(self.metadata.get("label_map")) or self.segments is not None

    def load(self, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
        """The full-resolution level in memory, as a :class:`Volume`.

        Raises
        ------
        UnsafeFileError
            More than ``max_voxels`` voxels (``medseg predict`` streams such stores).
        """
        count = math.prod(self.shape)
        if count > max_voxels:
            dims = " x ".join(map(str, self.shape))
            raise UnsafeFileError(
                f"{Path(str(self.metadata.get('path', 'the store'))).name} holds {dims} voxels, "
                f"more than the {max_voxels:,} read into memory at once; `medseg predict` "
                "streams zarr stores block by block"
            )
        import dask.array as da

        out = np.empty(self.shape, self.dtype)
        da.store(self.array, out, lock=False)
        return Volume(out, self.spacing, self.origin, None, dict(self.metadata))


class ZarrSource:
    """A zarr array seen through its spatial axes, its chunk files checked before each read.

    What dask reads from (picklable, so a dask.distributed worker can read it too): a key
    over the kept axes gets ``0`` for the squeezed ones, and the values come back in
    ``dtype`` (native byte order).
    """

    def __init__(self, array: Any, index: tuple[int | None, ...], name: str) -> None:
        self.array = array
        self.index = index
        self.name = name
        self.dtype = np.dtype(array.dtype).newbyteorder("=")
        kept = [i for i, item in enumerate(index) if item is None]
        self.shape = tuple(int(array.shape[i]) for i in kept)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(array.chunks[i]) for i in kept)
        self.stored = tuple(int(c) for c in (getattr(array, "shards", None) or array.chunks))
        inner = math.prod(self.stored) // max(math.prod(int(c) for c in array.chunks), 1)
        self.limit = 2 * math.prod(self.stored) * self.dtype.itemsize + 16 * inner + (1 << 20)

    def __getitem__(self, key: Any) -> npt.NDArray[Any]:
        parts = iter(key if isinstance(key, tuple) else (key,))
        full = tuple(next(parts, slice(None)) if i is None else i for i in self.index)
        self._check_files(full)
        return np.asarray(self.array[full]).astype(self.dtype, copy=False)

    def _check_files(self, key: tuple[Any, ...]) -> None:
        """Refuse a chunk file to be read that is not a regular file or is too large."""
        ranges = [_chunk_range(k, int(n), c) for k, n, c in zip(key, self.array.shape, self.stored)]
        try:
            root = Path(self.array.store_path.store.root) / self.array.store_path.path
        except AttributeError:  # not a local store
            return
        for coords in itertools.product(*ranges):
            chunk = self.array.metadata.encode_chunk_key(coords)
            path = root / chunk
            try:
                info = os.stat(path)
            except FileNotFoundError:
                continue  # never written: the fill value
            except OSError as exc:
                raise MedsegInputError(f"cannot read {self.name}: chunk {chunk}: {exc}") from exc
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeFileError(
                    f"refusing to read {self.name}: its chunk {chunk} is {special_kind(path)}"
                )
            if info.st_size > self.limit:
                raise UnsafeFileError(
                    f"refusing to read {self.name}: its chunk file {chunk} holds "
                    f"{info.st_size:,} bytes, more than its chunk can ({self.limit:,})"
                )


def _chunk_range(key: Any, size: int, chunk: int) -> range:
    """Indices of the chunks a key item reads along one axis (all for unusual items)."""
    if isinstance(key, (int, np.integer)):
        i = int(key) + size if int(key) < 0 else int(key)
        return range(i // chunk, i // chunk + 1)
    if isinstance(key, slice):
        start, stop, step = key.indices(size)
        lo, hi = (start, stop - 1) if step > 0 else (stop + 1, start)
        return range(lo // chunk, hi // chunk + 1) if lo <= hi else range(0)
    return range(-(-size // chunk))


def open_zarr(path: str | os.PathLike[str], *, max_voxels: int = LAZY_MAX_VOXELS) -> LazyVolume:
    """Open a zarr or OME-Zarr store lazily: only its metadata is read.

    Parameters
    ----------
    path : str or Path
        The store's folder: a zarr array, an OME-Zarr image (``multiscales``), or a group
        holding one of them.
    max_voxels : int
        Refuse stores declaring more voxels than this.

    Returns
    -------
    LazyVolume

    Raises
    ------
    MedsegInputError
        Not a readable store, malformed metadata, several channels or time points, more
        than 3 spatial axes, a voxel type that is not a number, zarr not installed.
    UnsafeFileError
        Absurd or too large shapes or chunks, metadata files too large or not regular files.
    """
    zarr = import_zarr("reading")
    p = Path(path).expanduser()
    name = p.name
    if not p.exists():
        raise MedsegInputError(f"cannot read {p}: no such file or folder")
    if not p.is_dir():
        raise MedsegInputError(f"cannot read {name}: a zarr store is a folder (not a zip file)")
    arrays, multiscale, attrs = _find_image(zarr, _open_node(zarr, p, name), p, name, 0)
    selection = _check_arrays(name, arrays, multiscale, max_voxels)
    spacing, origin = _spatial_geometry(name, arrays[0].ndim, multiscale, selection)
    levels = [_dask_level(ZarrSource(a, selection.index, name)) for a in arrays]
    ome = ome_attributes(attrs)
    segments = read_segments_attrs(ome, attrs) if levels[0].dtype.kind in "biu" else None
    metadata: dict[str, Any] = {
        "format": "zarr",
        "path": str(p),
        "axes": list(selection.names),
        "units": list(selection.units),
        "levels": len(levels),
    }
    if multiscale is not None and multiscale.version:
        metadata["ome_version"] = multiscale.version
    if "image-label" in ome:
        metadata["label_map"] = True
    if segments is not None:
        metadata.update(segments_metadata(segments))
    return LazyVolume(levels[0], levels, spacing, origin, metadata, segments)


def _check_metadata_files(folder: Path, name: str) -> None:
    """zarr will read these: regular files of metadata size only (no FIFO, no huge file)."""
    for meta in _METADATA_FILES:
        path = folder / meta
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise MedsegInputError(f"cannot read {name}: {meta}: {short_reason(exc)}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"refusing to read {name}: its {meta} is {special_kind(path)}")
        if info.st_size > MAX_METADATA_BYTES:
            raise UnsafeFileError(
                f"refusing to read {name}: its {meta} holds {info.st_size:,} bytes, too many "
                "for metadata"
            )


def _open_node(zarr: ModuleType, folder: Path, name: str) -> Any:
    _check_metadata_files(folder, name)
    try:
        return zarr.open(store=str(folder), mode="r", use_consolidated=False)
    except Exception as exc:  # malformed metadata raises anything from KeyError to TypeError
        raise MedsegInputError(f"cannot read {name}: not a zarr store ({reason(exc)})") from exc


def _find_image(
    zarr: ModuleType, node: Any, folder: Path, name: str, depth: int
) -> tuple[list[Any], Multiscale | None, dict[str, Any]]:
    """The arrays of the image (every level), its multiscale metadata, the group attributes."""
    if isinstance(node, zarr.Array):
        return [node], None, {}
    attrs = dict(node.attrs)
    multiscale = parse_multiscales(name, ome_attributes(attrs))
    if multiscale is not None:
        arrays = []
        for sub in multiscale.paths:
            _check_metadata_files(folder / sub, name)
            try:
                level = node[sub]
            except Exception as exc:  # missing or malformed
                why = f"cannot read {name}: dataset {sub!r}: {reason(exc)}"
                raise MedsegInputError(why) from exc
            if not isinstance(level, zarr.Array):
                raise MedsegInputError(f"cannot read {name}: its dataset {sub!r} is not an array")
            arrays.append(level)
        return arrays, multiscale, attrs
    children = _child_nodes(folder, name)
    if len(children) != 1 or depth >= 2:
        raise MedsegInputError(
            f"cannot read {name}: it holds no OME-Zarr image (multiscales metadata) and "
            f"{len(children)} arrays or groups; open one of them"
        )
    child = children[0]
    try:
        member = node[child]
    except Exception as exc:
        raise MedsegInputError(f"cannot read {name}: {child}: {reason(exc)}") from exc
    return _find_image(zarr, member, folder / child, name, depth + 1)


def _child_nodes(folder: Path, name: str) -> list[str]:
    """Sub-folders holding zarr metadata (checked), at most :data:`_MAX_CHILDREN` looked at."""
    children = []
    with os.scandir(folder) as entries:
        for count, entry in enumerate(entries):
            if count > _MAX_CHILDREN:
                raise MedsegInputError(f"cannot read {name}: it holds too many entries")
            if entry.is_dir() and any((Path(entry.path) / n).exists() for n in NODE_FILES):
                _check_metadata_files(Path(entry.path), name)
                children.append(entry.name)
    return sorted(children)


def _check_arrays(
    name: str, arrays: list[Any], multiscale: Multiscale | None, max_voxels: int
) -> Selection:
    """Refuse what makes no sense, from the metadata; the spatial axes of every level."""
    axes = multiscale.axes if multiscale is not None else None
    first = arrays[0]
    selection = select_spatial(name, [int(s) for s in first.shape], axes)
    for level, array in enumerate(arrays):
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "biuf":
            raise MedsegInputError(f"cannot read {name}: its voxel type {dtype} is not a number")
        if dtype != np.dtype(first.dtype) or array.ndim != first.ndim:
            raise MedsegInputError(f"cannot read {name}: its level {level} differs in type or axes")
        refuse_too_large(name, [int(s) for s in array.shape], 1, max_voxels)
        if select_spatial(name, [int(s) for s in array.shape], axes) != selection:
            raise MedsegInputError(f"cannot read {name}: its level {level} differs in axes")
        if any(int(a) > int(b) for a, b in zip(array.shape, first.shape)):
            raise MedsegInputError(f"cannot read {name}: its level {level} is larger than level 0")
        chunk = math.prod(int(c) for c in array.chunks) * dtype.itemsize
        shards = getattr(array, "shards", None)
        shard = math.prod(int(c) for c in shards) * dtype.itemsize if shards else 0
        if chunk <= 0 or chunk > MAX_CHUNK_BYTES or shard > MAX_SHARD_BYTES:
            raise UnsafeFileError(
                f"refusing to read {name}: it declares chunks of {max(chunk, shard):,} bytes"
            )
    return selection


def _spatial_geometry(
    name: str, ndim: int, multiscale: Multiscale | None, selection: Selection
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Spacing and origin (mm) of the kept axes of level 0."""
    scale: tuple[float, ...] = ()
    translation: tuple[float, ...] = ()
    if multiscale is not None:
        scale, translation = multiscale.scales[0], multiscale.translations[0]
    if len(scale) not in (0, ndim) or len(translation) not in (0, ndim):
        raise MedsegInputError(f"cannot read {name}: its coordinate transformations do not fit")
    scale = scale or (1.0,) * ndim
    translation = translation or (0.0,) * ndim
    spacing = tuple(scale[i] * f for i, f in zip(selection.kept, selection.factors))
    origin = tuple(translation[i] * f for i, f in zip(selection.kept, selection.factors))
    check_geometry(name, spacing, origin, np.eye(len(spacing)))
    return spacing, origin


def _dask_level(source: ZarrSource) -> Any:
    """A dask array reading ``source``: its blocks are its zarr chunks, tiny ones grouped.

    Blocks no larger than needed: where dask does not narrow a slice down to the chunks it
    touches (napari turns that optimisation off), a block is read whole.
    """
    import dask.array as da

    block = list(source.chunks)
    for axis in reversed(range(source.ndim)):
        while (
            block[axis] < source.shape[axis]
            and 2 * math.prod(block) * source.dtype.itemsize <= _MIN_BLOCK_BYTES
        ):
            block[axis] = min(source.shape[axis], 2 * block[axis])
    return da.from_array(  # type: ignore[no-untyped-call]
        source, chunks=tuple(block), name=f"zarr-{uuid.uuid4().hex}", lock=False,
        asarray=False, inline_array=True,
        meta=np.empty((0,) * source.ndim, source.dtype),
    )  # fmt: skip


def label_sample(volume: LazyVolume, voxels: int = 1 << 24) -> npt.NDArray[Any]:
    """A small sample of a lazy volume, to tell a label map from an image.

    The smallest level when it holds at most ``voxels`` voxels, else three blocks (up to
    32 x 256 x 256) at a quarter, half and three quarters of its first axis.
    """
    level = volume.levels[-1]
    shape = tuple(int(s) for s in level.shape)
    if math.prod(shape) <= voxels:
        return np.asarray(level)
    around = [slice(max(0, s // 2 - 128), s // 2 + 128) for s in shape[1:]]
    blocks = [
        np.asarray(level[(slice(at, at + 32), *around)]).ravel()
        for at in sorted({shape[0] // 4, shape[0] // 2, 3 * shape[0] // 4})
    ]
    return np.concatenate(blocks)


