"""Intensity normalisation fitted on an image and stored with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from .errors import MedsegInputError


@dataclass(frozen=True)
class IntensityNormalization:
    """Clip to robust percentiles, then standardise.

    Parameters
    ----------
    lower, upper : float
        Clipping range (the 0.5 and 99.5 percentiles of the fitted image).
    mean, std : float
        Mean and standard deviation of the clipped image.
    """

    lower: float
    upper: float
    mean: float
    std: float

    @classmethod
    def fit(cls, image: np.ndarray, max_samples: int = 2_000_000) -> IntensityNormalization:
        """Fit on an image (non-finite voxels are ignored).

        Raises
        ------
        MedsegInputError
            When the image has no finite voxel.
        """
        flat = np.asarray(image).reshape(-1)
        if flat.size > max_samples:
            step = int(np.ceil(flat.size / max_samples))
            flat = flat[::step]
        flat = flat[np.isfinite(flat)].astype(np.float64)
        if flat.size == 0:
            raise MedsegInputError("image has no finite voxel (all NaN or infinite)")
        lower, upper = np.percentile(flat, [0.5, 99.5])
        clipped = np.clip(flat, lower, upper)
        std = float(clipped.std())
        return cls(float(lower), float(upper), float(clipped.mean()), std if std > 1e-8 else 1.0)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Normalise an image to ``float32``; NaN and infinite voxels become the mean (0)."""
        # one float32 copy of the image, then every step in place (a slab of a large volume
        # is normalised with no other temporary of its size)
        out: npt.NDArray[np.float32] = np.array(image, dtype=np.float32, copy=True)
        np.nan_to_num(out, copy=False, nan=self.mean, posinf=self.upper, neginf=self.lower)
        np.clip(out, self.lower, self.upper, out=out)
        out -= np.float32(self.mean)
        out /= np.float32(self.std)
        return out

    def to_dict(self) -> dict[str, float]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> IntensityNormalization:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        MedsegInputError
            Unless ``data`` maps each of ``lower``, ``upper``, ``mean`` and ``std`` to a
            finite number (not a string or a boolean), with ``std > 0`` and
            ``lower <= upper``: a model file's normalisation is foreign input.
        """
        keys = ("lower", "upper", "mean", "std")
        if not isinstance(data, dict) or not all(_is_number(data.get(k)) for k in keys):
            raise MedsegInputError(
                "model normalisation must be an object of numbers: lower, upper, mean, std"
            )
        values = {k: _float(data[k]) for k in keys}
        if not all(np.isfinite(v) for v in values.values()):
            raise MedsegInputError("model normalisation holds non-finite values")
        if values["std"] <= 0 or values["lower"] > values["upper"]:
            raise MedsegInputError("model normalisation is invalid (std <= 0 or lower > upper)")
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: float) -> float:
    """``float(value)``; an integer too large for a float is infinite (then refused)."""
    try:
        return float(value)
    except OverflowError:
        return float("inf")
