"""A voxel array together with its physical geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Volume:
    """A 3D (or 2D) array with the geometry that places it in the world.

    All geometry is given in **array axis order** (numpy / napari order: ``z, y, x`` for a
    3D volume read from a medical file), in millimetres.

    Parameters
    ----------
    array : np.ndarray
        The voxel values, axes ``(z, y, x)``.
    spacing : tuple of float
        Voxel size along each array axis, in mm.
    origin : tuple of float
        World position (mm) of the centre of voxel ``(0, 0, 0)``, per array axis.
    direction : np.ndarray
        ``(ndim, ndim)`` direction cosines in array axis order: column ``j`` is the world
        direction of array axis ``j``. The identity for axis-aligned volumes.
    metadata : dict
        Free-form information kept from the file (format, modality, series UID ...).
    """

    array: np.ndarray
    spacing: tuple[float, ...] = ()
    origin: tuple[float, ...] = ()
    direction: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ndim = self.array.ndim
        if not self.spacing:
            self.spacing = (1.0,) * ndim
        if not self.origin:
            self.origin = (0.0,) * ndim
        if self.direction is None:
            self.direction = np.eye(ndim)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the voxel array."""
        return tuple(self.array.shape)

    @property
    def direction_matrix(self) -> npt.NDArray[np.float64]:
        """``direction`` typed as the ``(ndim, ndim)`` float array ``__post_init__`` made it."""
        return np.asarray(self.direction, dtype=np.float64)

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction is a diagonal of +1 (shown exactly by napari's scale)."""
        direction = self.direction_matrix
        return bool(np.allclose(direction, np.eye(direction.shape[0]), atol=1e-6))

    def with_array(self, array: np.ndarray) -> Volume:
        """Return a new volume with the same geometry and another array of the same shape."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"shape {array.shape} differs from the volume's {self.shape}")
        direction = self.direction_matrix.copy()
        return Volume(array, self.spacing, self.origin, direction, dict(self.metadata))
