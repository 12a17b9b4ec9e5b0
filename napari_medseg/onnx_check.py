"""The check of an ONNX export: ONNX Runtime's prediction of a volume against torch's.

:func:`compare_with_torch` predicts one volume twice through the project's own tiling
(:mod:`napari_medseg._passes`): with torch (:func:`~napari_medseg.inference.predict`, float32
on the CPU) and with an ONNX Runtime session (its CPU provider) as the forward pass of each
tile (:func:`runtime_probabilities`), and compares labels and probabilities
(:class:`ExportCheck`). Used by :func:`napari_medseg.export_onnx.export_onnx` before it saves
a file.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._passes import PassSums, TileComputer, average_passes, plane_pass, plane_views
from .errors import MedsegError, MedsegInputError
from .inference import (
    PredictConfig,
    default_tile_shape,
    predict_volume,
    tile_overlaps,
    tile_shape_for,
)
from .model import TrainedModel
from .progress import run_to_completion

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportCheck",
    "check_volume",
    "compare_with_torch",
    "require",
    "runtime_probabilities",
]

PathLike = str | os.PathLike[str]
#: The names of the ONNX graph's input (normalised intensities) and output.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
#: Two class probabilities closer than this are a tie: either label is right.
TIE = 1e-5
#: Largest probability difference between ONNX Runtime and torch the check accepts.
PROBABILITY_TOLERANCE = 1e-3
#: Sizes of a volume "as large as any tile" (for the uncapped default tile).
UNBOUNDED = 1 << 20
#: The check volume of 2D networks: two tiles of 8 slices; slices their divisor pads.
_SLICEWISE_CHECK_SHAPE = (12, 61, 64)
_INSTALL = 'pip install "napari-medseg[onnx]"'


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime's prediction of a volume compared with torch's.

    ``voxels``: voxels compared; ``differing``: where the labels differ; ``ties``: those of
    them where torch's two best classes are within :data:`TIE` (either label is right);
    ``max_difference``: the largest difference of a class probability.
    """

    voxels: int
    differing: int
    ties: int
    max_difference: float

    @property
    def passed(self) -> bool:
        """Labels equal but for ties, and probabilities within :data:`PROBABILITY_TOLERANCE`."""
        close = bool(self.max_difference <= PROBABILITY_TOLERANCE)  # False for NaN
        return close and self.differing == self.ties

    def describe(self) -> str:
        """One line: whether ONNX Runtime's labels equal torch's, and the largest |dp|."""
        dp = f"max |dp| = {self.max_difference:.2g}"
        if not self.passed:
            return (
                f"ONNX Runtime labels differ from torch's on {self.differing:,} of "
                f"{self.voxels:,} voxels ({self.ties:,} ties), {dp}"
            )
        ties = f" but {self.ties:,} where two classes tie within {TIE:g}" if self.ties else ""
        return f"ONNX Runtime labels equal torch's on {self.voxels:,} voxels{ties}, {dp}"


@dataclass(frozen=True)
class _RuntimeTiles(TileComputer):
    """Computes a tile's class probabilities with an ONNX Runtime session."""

    session: Any

    @classmethod
    def of(cls, session: Any, model: TrainedModel) -> _RuntimeTiles:
        """The tile computer of ``session``, made for ``model``."""
        return cls(
            network=nn.Identity(), device=torch.device("cpu"),
            memory_format=torch.contiguous_format, amp=None,
            n_classes=model.config.n_classes, mirror=False, uncertainty=False, session=session,
        )  # fmt: skip

    def __call__(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(tile, dtype=np.float32)[None, None]
        scores = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return np.asarray(scores[0], dtype=np.float32), None


def runtime_probabilities(session: Any, model: TrainedModel, image: np.ndarray) -> np.ndarray:
    """``(K, *shape)`` probabilities of a ``(z, y, x)`` volume, predicted as
    :func:`~napari_medseg.inference.predict` predicts it (float32, no mirroring) with an
    ONNX Runtime ``session`` of an exported file
    (:func:`~napari_medseg.export_onnx.export_onnx`) as the forward pass of each tile."""
    normalized = model.config.normalization.apply(np.asarray(image))
    planes = (0,) if model.config.arch == "unet3d" or image.shape[0] == 1 else model.config.planes
    views = plane_views(
        normalized, tuple(planes), lambda shape: default_tile_shape(model, shape),
        tile_overlaps(model, PredictConfig().overlap),
    )  # fmt: skip
    compute = _RuntimeTiles.of(session, model)
    sums = PassSums()
    for view in views:
        done = run_to_completion(plane_pass(view, compute, _no_report, sums.scores, None))
        sums.add(done, view.axis)
    probabilities, _ = average_passes(sums)
    return probabilities


def _no_report(region: tuple[slice, ...], labels: np.ndarray, caption: str) -> None:
    return None


def compare_with_torch(onnx_path: PathLike, model: TrainedModel, image: np.ndarray) -> ExportCheck:
    """Predict ``image`` with torch (float32 on the CPU) and with ONNX Runtime (its CPU
    provider) running ``onnx_path``, through the same tiling, and compare.

    Raises
    ------
    MedsegError
        When ONNX Runtime cannot load or run the file.
    """
    volume = np.asarray(image)
    volume = volume[np.newaxis] if volume.ndim == 2 else volume
    settings = PredictConfig(device="cpu", mixed_precision=False, probabilities=True)
    reference = predict_volume(model, volume, settings)
    assert reference.probabilities is not None  # asked for
    session = _session(Path(onnx_path))
    try:
        runtime = runtime_probabilities(session, model, volume)
    except Exception as exc:  # onnxruntime's own exception types are not importable
        raise MedsegError(f"ONNX Runtime could not run the exported file: {_line(exc)}") from exc
    return _compared(reference.probabilities, reference.labels, runtime)


def _session(path: Path) -> Any:
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise MedsegError(f"ONNX Runtime could not load the exported file: {_line(exc)}") from exc


def _line(exc: BaseException) -> str:
    """An error's message on one short line."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _compared(expected: np.ndarray, labels: np.ndarray, runtime: np.ndarray) -> ExportCheck:
    """Compare ONNX Runtime's probabilities with torch's (``expected``, ``labels``)."""
    differ = np.argmax(runtime, axis=0) != labels
    ties = 0
    if differ.any():
        best_two = np.sort(expected[:, differ], axis=0)[-2:]
        ties = int(np.count_nonzero(best_two[1] - best_two[0] <= TIE))
    largest = max(float(np.max(np.abs(r - e))) for r, e in zip(runtime, expected))
    return ExportCheck(
        voxels=int(labels.size),
        differing=int(np.count_nonzero(differ)),
        ties=ties,
        max_difference=largest,
    )


def check_volume(model: TrainedModel) -> np.ndarray:
    """The deterministic volume the check predicts when given none: random 8-voxel blocks
    plus noise over the model's normalisation range, two overlapping tiles long and, where a network
    pads, of sizes it pads. 3D U-Net: its default tile, 3 voxels short of it along ``y``
    and half as long again along ``x``; 2D networks: ``(12, 61, 64)`` (tiles of 8 slices)."""
    config = model.config
    if config.arch == "unet3d":
        tile = tile_shape_for(config.arch, config.patch_shape, (UNBOUNDED,) * 3)
        shape = (tile[0], max(1, tile[1] - 3), tile[2] + tile[2] // 2)
    else:
        shape = _SLICEWISE_CHECK_SHAPE
    rng = np.random.default_rng(0)
    coarse = rng.random(tuple(s // 8 + 1 for s in shape))
    blocks = coarse.repeat(8, 0).repeat(8, 1).repeat(8, 2)[: shape[0], : shape[1], : shape[2]]
    field = 0.8 * blocks + 0.2 * rng.random(shape)
    norm = config.normalization
    return (norm.lower + field * (norm.upper - norm.lower)).astype(np.float32)


def require(name: str) -> Any:
    """Import an optional module of the ``onnx`` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MedsegInputError(f"ONNX export needs {name}: {_INSTALL}") from None
