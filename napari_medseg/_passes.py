"""The pieces of tiled inference (:mod:`napari_medseg.inference`), as a sampler and an
aggregator are (:mod:`napari_medseg.tiling`).

:class:`TileComputer` computes one tile on a device; :func:`plane_pass` is one tiled pass
over one plane's view of the volume, blending the tiles into its aggregators;
:class:`PassSums` adds up the finished passes (a 2D network may read three planes) and
:func:`average_passes` averages them. :func:`live_labels` gives a finished tile's labels for
the live overlay.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from .device import autocast_dtype, memory_format_for, place
from .errors import MedsegError
from .models import Ensemble
from .models.fusion import fused_for_inference
from .tiling import GaussianAggregator, GridSampler

if TYPE_CHECKING:
    from .inference import PredictConfig
    from .model import TrainedModel

T = TypeVar("T")
Shape = tuple[int, ...]
Region = tuple[slice, ...]


def doubt(probabilities: torch.Tensor) -> torch.Tensor:
    """How unsure one network is, per voxel, from 0 (sure) to 1: the entropy of its class
    probabilities ``(N, C, *spatial)`` divided by ``log(C)``; ``(N, *spatial)``."""
    n_classes = probabilities.shape[1]
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1)
    return (entropy / math.log(max(n_classes, 2))).clamp(0.0, 1.0)


def disagreement(member_probabilities: torch.Tensor) -> torch.Tensor:
    """How much an ensemble's networks disagree, per voxel, from 0 (agree) to 1.

    The mutual information between the networks' predictions and the class (the entropy of
    their mean minus their mean entropy), divided by its largest value, ``log(C)``. It is
    high where the networks are each sure but of different classes, and stays low where
    they agree, however unsure: at every boundary one network is unsure, but only where the
    annotation leaves the answer open do the networks part ways.

    Parameters
    ----------
    member_probabilities : torch.Tensor
        ``(M, N, C, *spatial)`` class probabilities of M networks.

    Returns
    -------
    torch.Tensor
        ``(N, *spatial)``.
    """

    def entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)

    n_classes = member_probabilities.shape[2]
    mean = member_probabilities.mean(0)
    information = entropy(mean, 1) - entropy(member_probabilities, 2).mean(0)
    return (information / math.log(n_classes)).clamp(0.0, 1.0)


def _mirrored_softmax(network: torch.nn.Module, x: torch.Tensor, mirror: bool) -> torch.Tensor:
    probs = torch.softmax(network(x).float(), dim=1)
    if mirror:
        for dims in ((3,), (4,), (3, 4)):
            probs += torch.softmax(network(x.flip(dims)).float(), dim=1).flip(dims)
        probs /= 4.0
    return probs


@torch.inference_mode()
def forward(
    network: torch.nn.Module,
    x: torch.Tensor,
    amp: torch.dtype | None,
    mirror: bool,
    uncertainty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities of a batch of tiles and, for ``uncertainty``, the disagreement of
    the ensemble's networks (:func:`disagreement`)."""
    # Inference mode is entered per tile, never held across a yield: it is thread-wide state
    # and would leak into whatever the consumer of the generator does between tiles.
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        if not uncertainty:
            return _mirrored_softmax(network, x, mirror), None
        if not isinstance(network, Ensemble):
            probabilities = _mirrored_softmax(network, x, mirror)
            return probabilities, doubt(probabilities)
        members = torch.stack([_mirrored_softmax(m, x, mirror) for m in network.members])
        return members.mean(0), disagreement(members)


@dataclass(frozen=True)
class TileComputer:
    """Computes a tile's class probabilities (and the ensemble's disagreement) on a device."""

    network: torch.nn.Module
    device: torch.device
    memory_format: torch.memory_format
    amp: torch.dtype | None
    n_classes: int
    mirror: bool
    uncertainty: bool

    @classmethod
    def placed(
        cls, model: TrainedModel, device: torch.device, config: PredictConfig
    ) -> TileComputer:
        """A copy of ``model``'s network made for prediction (batch norm folded into the
        convolutions: :func:`~napari_medseg.models.fusion.fused_for_inference`) on
        ``device``, in its fastest layout."""
        memory_format = memory_format_for(model.network)
        network = place(fused_for_inference(model.network), device, memory_format)
        return cls(
            network=network,
            device=device,
            memory_format=memory_format,
            amp=autocast_dtype(device, config.mixed_precision),
            n_classes=model.config.n_classes,
            mirror=config.mirror,
            uncertainty=config.uncertainty,
        )

    def __call__(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(C, *tile)`` probabilities and, for ``uncertainty``, ``(1, *tile)`` disagreement."""
        pin = self.device.type == "cuda"  # pinned memory copies to the GPU asynchronously
        x = torch.from_numpy(np.ascontiguousarray(tile))
        if pin:
            x = x.pin_memory()
        scores, disagree = self.on_device(x.to(self.device, non_blocking=pin))
        return scores.cpu().numpy(), None if disagree is None else disagree.cpu().numpy()

    def on_device(self, tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same for a float32 ``tile`` already on the device; the results stay there."""
        x = tile[None, None].contiguous(memory_format=self.memory_format)
        scores, disagree = forward(self.network, x, self.amp, self.mirror, self.uncertainty)
        return scores[0], disagree


@dataclass(frozen=True)
class PlaneView:
    """One plane's view of the volume (its axis first), the tiles that cover it and the
    caption of its tiles (which pass it is, when the model reads several planes)."""

    axis: int
    view: np.ndarray
    sampler: GridSampler
    caption: str


def plane_views(
    normalized: np.ndarray,
    planes: tuple[int, ...],
    tiles_for: Callable[[Shape], Shape],
    overlap: float | tuple[float, ...],
) -> list[PlaneView]:
    """A view per plane in ``planes``, tiled by ``tiles_for(view shape)`` with ``overlap``
    (per axis of the view: its first axis is the plane's)."""
    views = []
    for number, axis in enumerate(planes, start=1):
        view = np.moveaxis(normalized, axis, 0)
        sampler = GridSampler(view.shape, tiles_for(view.shape), overlap)
        several = len(planes) > 1
        caption = f"slices across {'zyx'[axis]} ({number}/{len(planes)})" if several else ""
        views.append(PlaneView(axis=axis, view=view, sampler=sampler, caption=caption))
    return views


def to_volume_order(region: Region, axis: int) -> Region:
    """A region of the view with ``axis`` moved first, in the volume's axis order."""
    rest = list(region[1:])
    rest.insert(axis, region[0])
    return tuple(rest)


@dataclass(frozen=True)
class PlaneScores:
    """A pass's blended class scores (and disagreement); ``complete``: every tile done."""

    scores: GaussianAggregator
    spread: GaussianAggregator | None
    complete: bool


def plane_pass(
    plane: PlaneView,
    compute: TileComputer,
    report: Callable[[Region, np.ndarray, str], T],
    earlier: np.ndarray | None,
    stop: threading.Event | None,
) -> Generator[T, None, PlaneScores]:
    """One tiled pass over ``plane``'s view, yielding ``report(region in volume order,
    live labels, caption)`` after each tile; it ends early when ``stop`` is set.
    ``earlier``: the finished passes' summed probabilities, for the live labels."""
    shape, tiles = plane.view.shape, plane.sampler.tile_shape
    scores = GaussianAggregator(compute.n_classes, shape, tiles)
    spread = GaussianAggregator(1, shape, tiles) if compute.uncertainty else None
    for region in plane.sampler:
        if stop is not None and stop.is_set():
            return PlaneScores(scores=scores, spread=spread, complete=False)
        probabilities, disagree = compute(plane.view[region])
        scores.add(region, probabilities)
        if spread is not None and disagree is not None:
            spread.add(region, disagree)
        labels = live_labels(scores, region, plane.axis, earlier)
        yield report(to_volume_order(region, plane.axis), labels, plane.caption)
    return PlaneScores(scores=scores, spread=spread, complete=True)


def live_labels(
    scores: GaussianAggregator, region: Region, axis: int, earlier: np.ndarray | None
) -> np.ndarray:
    """Labels of a finished tile for the live overlay, in the volume's axis order: this
    pass's so far, plus the finished passes' (when the model reads several planes)."""
    if earlier is None:
        return np.moveaxis(scores.labels(region), 0, axis)
    weight = np.maximum(scores.weight[region], 1e-8)
    current = np.moveaxis(scores.scores[(slice(None), *region)] / weight, 1, axis + 1)
    where = to_volume_order(region, axis)
    labels: np.ndarray = np.argmax(earlier[(slice(None), *where)] + current, axis=0)
    return labels.astype(np.uint8)


@dataclass
class PassSums:
    """Class probabilities (and, for ``uncertainty``, disagreement) summed over the finished
    passes, in the volume's axis order."""

    scores: np.ndarray | None = None
    spread: np.ndarray | None = None
    passes: int = 0

    def add(self, done: PlaneScores, axis: int) -> None:
        """Add a finished pass over the plane of ``axis``."""
        self.scores = _add_pass(self.scores, done.scores, axis)
        if done.spread is not None:
            self.spread = _add_pass(self.spread, done.spread, axis)
        self.passes += 1


def _add_pass(summed: np.ndarray | None, aggregator: GaussianAggregator, axis: int) -> np.ndarray:
    """Add a finished pass's probabilities (in its view's order) to the running sum."""
    probabilities = np.moveaxis(aggregator.probabilities(), 1, axis + 1)
    if summed is None:
        return np.ascontiguousarray(probabilities)
    summed += probabilities
    return summed


def average_passes(sums: PassSums) -> tuple[np.ndarray, np.ndarray | None]:
    """The passes' mean probabilities (divided in place) and mean disagreement."""
    if sums.scores is None:  # pragma: no cover - a finished attempt has a pass
        raise MedsegError("no finished pass to average")
    spread = None if sums.spread is None else sums.spread[0]
    if sums.passes == 1:
        return sums.scores, spread
    count = np.float32(sums.passes)
    uncertainty = None if spread is None else np.divide(spread, count)
    return np.divide(sums.scores, count, out=sums.scores), uncertainty
