"""NumPy ``.npy`` files: read without unpickling (header checked first), written atomically."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import MedsegError, MedsegInputError, UnsafeFileError
from ..volume import Volume
from ._checks import refuse_channels, refuse_too_large
from ._geometry import GeometryWarning
from ._save import WriteCheckError, read_back, short_reason


def read_npy(path: Path, max_voxels: int, allow_channels: bool) -> Volume:
    """Read a numeric ``.npy`` array; object arrays (pickles) are refused."""
    shape, dtype, _ = _npy_header(path)
    if dtype.hasobject:
        raise UnsafeFileError(
            f"refusing to read {path.name}: it stores Python objects (pickle), which could "
            "run arbitrary code"
        )
    if dtype.kind not in "biuf":
        raise MedsegInputError(f"cannot read {path.name}: dtype {dtype} is not a number type")
    refuse_too_large(path.name, shape, 1, max_voxels)
    if len(shape) < 2:
        raise MedsegInputError(f"{path.name} has {len(shape)} dimension(s); expected 2D or 3D")
    refuse_channels(path.name, shape, 1, allow_channels)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MedsegInputError(f"cannot read {path.name}: file is truncated or corrupt") from exc
    return Volume(array, metadata={"format": "npy", "path": str(path)})


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Shape, dtype and the offset of the data, from the header alone."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(handle)
            offset = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise MedsegInputError(f"cannot read {path.name}: not a valid .npy file") from exc
    return tuple(int(s) for s in shape), np.dtype(dtype), offset


def _verify_npy(path: Path, array: np.ndarray[Any, Any]) -> None:
    """The header of a file just written says what was written, and all the data follows."""
    shape, dtype, offset = _npy_header(path)
    if shape != array.shape or dtype != array.dtype:
        raise WriteCheckError(f"the file written reads back as {shape} {dtype}")
    stored = path.stat().st_size - offset
    if stored != array.nbytes:
        raise WriteCheckError(
            f"the file written is truncated ({stored:,} of {array.nbytes:,} data bytes)"
        )


def write_npy(target: Path, volume: Volume) -> None:
    """Save the voxels only, warning when the geometry is not the trivial one."""
    ndim = volume.array.ndim
    trivial = (
        np.allclose(volume.spacing, 1.0)
        and np.allclose(volume.origin, 0.0)
        and np.allclose(volume.direction_matrix, np.eye(ndim))
    )
    if not trivial:
        warnings.warn(
            f"{target.name}: .npy keeps only the voxels; spacing {volume.spacing}, origin and "
            "direction are not saved (use .nii.gz, .nrrd or .mha to keep them)",
            GeometryWarning,
            stacklevel=3,
        )

    def check(tmp: Path) -> None:
        read_back(lambda written: _verify_npy(written, volume.array), tmp)

    try:
        with atomic_write(target, "wb", check=check) as handle:
            np.save(handle, volume.array, allow_pickle=False)
    except MedsegError:
        raise
    except OSError as exc:
        raise MedsegError(f"could not save {target}: {short_reason(exc)}") from exc
