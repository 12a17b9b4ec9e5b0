"""A training run: plan -> train the network(s) -> assemble the model and its history.

:func:`train` is a generator: it yields a :class:`TrainProgress` after every optimisation
step and returns a :class:`~napari_medseg.model.TrainedModel` when it ends (time budget
spent, iteration count reached, or ``stop`` set). Front ends drive it: the CLI with a
progress bar, napari with ``thread_worker``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..annotation import annotation_to_target
from ..batches import PrefetchedBatches, SerialBatches
from ..model import ModelConfig, TrainedModel
from ..models import Ensemble
from ..painted_slices import as_3d
from ..progress import relay
from .config import TrainConfig, TrainProgress
from .loop import (
    NetworkResult,
    StepReport,
    decided_region,
    make_batch,
    plane_samplers,
    run_fraction,
    torch_threads,
    train_network,
)
from .plan import TrainingPlan, plan_training
from .warm import earlier_rounds, member_states, round_record


@dataclass
class _Members:
    """The networks of a run so far (a member cut short is kept only when it is the first)."""

    results: list[NetworkResult] = field(default_factory=list)
    kept: list[NetworkResult] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.results)


def train(
    image: np.ndarray,
    annotation: np.ndarray,
    config: TrainConfig | None = None,
    *,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    init: TrainedModel | None = None,
) -> Generator[TrainProgress, None, TrainedModel]:
    """Train a network on a sparse annotation, from scratch or continuing from ``init``.

    Parameters
    ----------
    image : np.ndarray
        ``(z, y, x)`` (or 2D) intensity volume.
    annotation : np.ndarray
        Same shape; ``0`` not annotated, ``1`` background, ``k + 1`` structure ``k``.
    config : TrainConfig, optional
        Settings; defaults to ``TrainConfig()``.
    spacing : sequence of float, optional
        Voxel size in mm (array order); plans anisotropic networks and patches.
    class_names : sequence of str, optional
        Names of the structures (background may be included first).
    stop : threading.Event, optional
        Set it from another thread to end training after the current step; the model
        trained so far is returned.
    init : TrainedModel, optional
        A model to continue from (a warm start: its network, weights and intensity
        normalisation are kept; a structure it did not know gets a new output). Its rounds
        are kept in the new model's history, this run added as the next.

    Yields
    ------
    TrainProgress
        After every step.

    Returns
    -------
    TrainedModel
        The trained network in eval mode, on the CPU, with its config.

    Raises
    ------
    MedsegInputError
        For unusable input (checked before any training).
    """
    plan = plan_training(
        image, annotation, config, spacing=spacing, class_names=class_names, init=init
    )
    start = time.perf_counter()
    members = yield from run_plan(plan, image, annotation, stop, start)
    return assemble_model(plan, members, start, as_3d(annotation, "annotation"))


def run_plan(
    plan: TrainingPlan,
    image: np.ndarray,
    annotation: np.ndarray,
    stop: threading.Event | None,
    start: float,
) -> Generator[TrainProgress, None, _Members]:
    """Train the plan's network(s) on the image; returns them with how each run ended."""
    rng = np.random.default_rng(plan.config.seed)
    torch.manual_seed(plan.config.seed)
    target = annotation_to_target(as_3d(annotation, "annotation"))
    normalized = plan.normalization.apply(as_3d(image, "image"))[np.newaxis]
    samplers = plane_samplers(plan, normalized, target, rng)
    make = functools.partial(make_batch, samplers, plan.config.batch_size, plan.augment)
    workers = plan.batch_workers
    region = functools.partial(decided_region, normalized, target, plan.patch_shape)
    members = _Members()
    states = member_states(plan.init) if plan.init is not None else None
    with torch_threads(plan.threads):
        batches = PrefetchedBatches(make, rng, workers) if workers else SerialBatches(make, rng)
        try:
            for member in range(plan.members):
                if member:
                    torch.manual_seed(plan.config.seed + member)
                started = start if member == 0 else time.perf_counter()
                network = train_network(
                    plan, batches, stop, started, region, first=member == 0,
                    initial_state=states[member] if states else None,
                )
                wrap = _member_progress(plan, member, members.steps, start, started)
                result = yield from relay(network, wrap)
                members.results.append(result)
                if result.reason == "finished" or not members.kept:
                    members.kept.append(result)
                if result.reason != "finished":
                    break
        finally:
            batches.close()
    return members


def _member_progress(
    plan: TrainingPlan, member: int, done_steps: int, start: float, started: float
) -> Callable[[StepReport], TrainProgress]:
    """Turns one network's step reports into the whole run's :class:`TrainProgress`."""
    n, iterations = plan.members, plan.config.iterations

    def wrap(report: StepReport) -> TrainProgress:
        message = report.message
        if n > 1:
            message = f"network {member + 1}/{n} {message}".strip()
        now = time.perf_counter()
        fraction = run_fraction(plan.member_config, report.step, now - started)
        return TrainProgress(
            step=done_steps + report.step,
            total_steps=iterations * n if iterations else None,
            loss=report.loss,
            elapsed=now - start,
            fraction=(member + fraction) / n,
            message=message,
        )

    return wrap


def assemble_model(
    plan: TrainingPlan, members: _Members, start: float, annotation: np.ndarray
) -> TrainedModel:
    """The trained model (an :class:`~napari_medseg.models.Ensemble` of the kept networks
    when there are several) with its config and the run's history, this round included."""
    kept = [r.network for r in members.kept]
    net_config = plan.network
    if len(kept) > 1:
        network: torch.nn.Module = Ensemble(kept).eval()
        net_config = replace(net_config, members=len(kept))
    else:
        network = kept[0]
    last = members.results[-1]
    history: dict[str, Any] = {
        "steps": members.steps,
        "seconds": round(time.perf_counter() - start, 3),
        "final_loss": float(np.mean(last.losses[-10:])) if last.losses else None,
        "stop_reason": last.reason,
        "device": str(plan.device),
        "class_voxel_counts": list(plan.class_voxel_counts),
        "class_weight_power": plan.class_weight_power,
        "freeze_batch_norm": plan.freeze_batch_norm,
        "flips": plan.flips,
        "batch_workers": plan.batch_workers,
        "ensemble": len(kept),
        "member_steps": [r.steps for r in members.kept],
        "batch_norm_calibration_tiles": [
            r.calibration_tiles for r in members.results if r.calibration_tiles is not None
        ],
        "planes": list(plan.planes),
    }
    rounds = earlier_rounds(plan.init)
    this = round_record(annotation, plan.config, history, plan.init is not None, rounds)
    history["rounds"] = [*rounds, this]
    model_config = ModelConfig(
        network=net_config,
        class_names=list(plan.class_names),
        normalization=plan.normalization,
        spacing=plan.spacing,
        patch_shape=tuple(int(p) for p in plan.patch_shape),
        planes=plan.planes,
        training=asdict(plan.config),
        history=history,
    )
    return TrainedModel(network, model_config)
