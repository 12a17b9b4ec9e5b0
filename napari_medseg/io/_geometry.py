"""Geometry of volumes read and written: validity, the geometry a saved file gets, warnings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..errors import MedsegInputError
from ..volume import Volume

Geometry = tuple[tuple[float, ...], tuple[float, ...], npt.NDArray[np.float64]]


class GeometryWarning(UserWarning):
    """The file's geometry is unusual (uneven slices, gantry tilt, oblique, dropped)."""


def check_geometry(
    name: str,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: npt.NDArray[np.float64],
) -> None:
    """Refuse non-positive or non-finite spacing, a non-finite origin, a singular direction."""
    spacing_ok = all(math.isfinite(s) and s > 0 for s in spacing)
    origin_ok = all(math.isfinite(o) for o in origin)
    direction_ok = bool(np.all(np.isfinite(direction))) and abs(np.linalg.det(direction)) > 1e-6
    if not (spacing_ok and origin_ok and direction_ok):
        raise MedsegInputError(
            f"cannot read {name}: its geometry is invalid (spacing {tuple(spacing)}, "
            f"origin {tuple(origin)})"
        )


def geometry_for(
    shape: Sequence[int],
    base: Volume | None,
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None,
    direction: npt.ArrayLike | None,
    is_reference: bool,
) -> Geometry:
    """The geometry to save an array of ``shape`` with: the overrides, else ``base``'s.

    Without ``base`` or an override, spacing 1, origin 0 and the identity direction.
    """
    ndim = len(shape)
    if base is not None and tuple(base.shape) != tuple(shape):
        what = "reference image" if is_reference else "volume"
        raise MedsegInputError(
            f"the array's shape {tuple(shape)} differs from the {what}'s {tuple(base.shape)}"
        )
    spacing = tuple(spacing if spacing is not None else (base.spacing if base else (1.0,) * ndim))
    origin = tuple(origin if origin is not None else (base.origin if base else (0.0,) * ndim))
    matrix = np.asarray(
        direction if direction is not None else (base.direction if base else np.eye(ndim)),
        dtype=float,
    )
    if len(spacing) != ndim or len(origin) != ndim or matrix.shape != (ndim, ndim):
        raise MedsegInputError(
            f"geometry does not match a {ndim}D array: spacing {spacing}, origin {origin}, "
            f"direction of shape {matrix.shape}"
        )
    check_geometry("the volume", spacing, origin, matrix)
    return tuple(map(float, spacing)), tuple(map(float, origin)), matrix
