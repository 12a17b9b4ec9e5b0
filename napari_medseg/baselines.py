"""Intensity baselines a trained network is compared with (numpy only, no GUI, no torch).

* :func:`best_threshold_dice`: an *oracle* that picks, knowing the expert mask, the global
  intensity window with the best Dice per structure;
* :func:`threshold_from_annotation`: a fair threshold window fitted on the painted voxels;
* :func:`nearest_mean_from_annotation`: a nearest-class-mean classifier fitted on them.

Re-exported by :mod:`napari_medseg.synthetic`, where they used to live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .annotation import BACKGROUND, validate_annotation
from .errors import MedsegInputError

__all__ = [
    "ThresholdBaseline",
    "best_threshold_dice",
    "nearest_mean_from_annotation",
    "threshold_from_annotation",
]


@dataclass
class ThresholdBaseline:
    """Best intensity window per structure and the Dice it reaches.

    Attributes
    ----------
    dice : dict of int to float
        Dice of ``low <= image < high`` against structure ``k`` on the scored voxels.
    windows : dict of int to (float, float)
        The chosen half-open window ``[low, high)`` per structure. A window that reaches the
        lowest (highest) scored intensity is open on that side: ``low = -inf``
        (``high = inf``, i.e. a plain threshold ``image >= low``).
    """

    dice: dict[int, float]
    windows: dict[int, tuple[float, float]]

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the structures (1.0 when there is none)."""
        return float(np.mean(list(self.dice.values()))) if self.dice else 1.0


def _best_window(
    values: np.ndarray, target: np.ndarray, n_bins: int, window: bool
) -> tuple[float, float, float]:
    """Window ``[low, high)`` over quantile bins maximising Dice of ``values`` vs ``target``.

    Returns ``(dice, low, high)``.
    """
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(edges.size - 2, 0))
    n_b = max(edges.size - 1, 1)
    all_counts = np.bincount(bins, minlength=n_b).astype(np.float64)
    hit_counts = np.bincount(bins, weights=target.astype(np.float64), minlength=n_b)
    cum_all = np.concatenate([[0.0], np.cumsum(all_counts)])
    cum_hit = np.concatenate([[0.0], np.cumsum(hit_counts)])
    n_target = cum_hit[-1]
    # window = bins i..j-1 : rows i, columns j
    highs = np.arange(1, n_b + 1) if window else np.array([n_b])
    tp = cum_hit[highs][None, :] - cum_hit[:-1][:, None]
    pred = cum_all[highs][None, :] - cum_all[:-1][:, None]
    denom = pred + n_target
    scores = np.where(
        (highs[None, :] > np.arange(n_b)[:, None]) & (denom > 0),
        2.0 * tp / np.maximum(denom, 1e-12),
        -1.0,
    )
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    top = int(highs[j])
    low = float(edges[i]) if i > 0 else -math.inf
    high = float(edges[top]) if top < n_b else math.inf
    return float(scores[i, j]), low, high


def best_threshold_dice(
    image: np.ndarray,
    mask: np.ndarray,
    scored: np.ndarray | None = None,
    *,
    window: bool = True,
    n_bins: int = 256,
) -> ThresholdBaseline:
    """The best global intensity window per structure, chosen knowing the truth.

    An *oracle* baseline: for each structure ``k`` the window ``[low, high)`` (or, with
    ``window=False``, the threshold ``image >= low``) that maximises Dice against
    ``mask == k`` on the scored voxels, searched over ``n_bins`` intensity quantiles.

    Parameters
    ----------
    image : np.ndarray
        Intensities.
    mask : np.ndarray
        Expert label map (``0`` background, ``k`` structure ``k``), same shape.
    scored : np.ndarray, optional
        Boolean array of the voxels to score (default: all).
    window : bool
        Search two-sided windows; ``False`` searches only lower thresholds.
    n_bins : int
        Number of quantile bins the window edges are chosen from.

    Returns
    -------
    ThresholdBaseline
        Dice and window per structure.
    """
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape != mask.shape:
        raise MedsegInputError(f"image shape {image.shape} differs from mask shape {mask.shape}")
    sel = np.ones(mask.shape, bool) if scored is None else np.asarray(scored, dtype=bool)
    values, truth = image[sel].astype(np.float64), mask[sel]
    result = ThresholdBaseline({}, {})
    if values.size == 0:
        return result
    for k in (int(v) for v in np.unique(mask) if v != 0):
        score, low, high = _best_window(values, truth == k, n_bins, window)
        result.dice[k] = score
        result.windows[k] = (low, high)
    return result


def threshold_from_annotation(
    image: np.ndarray, annotation: np.ndarray, *, window: bool = True, n_bins: int = 256
) -> np.ndarray:
    """A fair threshold baseline that sees only what the user painted.

    For each structure ``k`` the intensity window that best separates the voxels annotated
    ``k + 1`` from the other annotated voxels (highest Dice on the annotated voxels) is
    applied to the whole volume. Where windows of several structures overlap, a voxel goes
    to the structure whose annotated median intensity is closest.

    Parameters
    ----------
    image : np.ndarray
        Intensities.
    annotation : np.ndarray
        Sparse annotation: ``0`` unknown, ``1`` background, ``k + 1`` structure ``k``.
    window : bool
        Two-sided windows (``True``) or lower thresholds only.
    n_bins : int
        Number of quantile bins the window edges are chosen from.

    Returns
    -------
    np.ndarray
        ``uint8`` segmentation: ``0`` background, ``k`` structure ``k``.
    """
    image, annotation = np.asarray(image), np.asarray(annotation)
    n_classes = validate_annotation(annotation, image.shape)
    known = annotation > 0
    labels = annotation.astype(np.int64) - BACKGROUND  # -1 unknown, 0 bg, k structure
    baseline = best_threshold_dice(
        image, np.where(known, labels, 0), known, window=window, n_bins=n_bins
    )
    segmentation = np.zeros(image.shape, dtype=np.uint8)
    best = np.full(image.shape, np.inf)
    for k in range(1, n_classes):
        if k not in baseline.windows:
            continue
        low, high = baseline.windows[k]
        centre = float(np.median(image[labels == k]))
        distance = np.abs(image - centre)
        take = (image >= low) & (image < high) & (distance < best)
        segmentation[take] = k
        best[take] = distance[take]
    return segmentation


def nearest_mean_from_annotation(image: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """Nearest-class-mean intensity classifier fitted on what the user painted.

    Each voxel goes to the class (background included) whose mean annotated intensity is
    closest: the plain intensity classifier the networks are compared with.

    Parameters
    ----------
    image : np.ndarray
        Intensities.
    annotation : np.ndarray
        Sparse annotation: ``0`` unknown, ``1`` background, ``k + 1`` structure ``k``.

    Returns
    -------
    np.ndarray
        ``uint8`` segmentation: ``0`` background, ``k`` structure ``k`` (a class nobody
        painted is never chosen).
    """
    image, annotation = np.asarray(image), np.asarray(annotation)
    top = int(annotation.max()) if annotation.size else 0
    # an intensity baseline may skip a structure nobody painted: no gap check
    n_classes = validate_annotation(annotation, image.shape, known=max(top, 0))
    means = np.full(n_classes, np.inf)
    for k in range(n_classes):
        painted = image[annotation == k + BACKGROUND]
        if painted.size:
            means[k] = float(np.mean(painted, dtype=np.float64))
    segmentation = np.zeros(image.shape, dtype=np.uint8)
    best = np.full(image.shape, np.inf)
    values = image.astype(np.float64, copy=False)
    for label in np.flatnonzero(np.isfinite(means)):
        distance = np.abs(values - means[label])
        closer = distance < best
        segmentation[closer] = label
        best[closer] = distance[closer]
    return segmentation
