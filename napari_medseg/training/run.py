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

from ..annotation import IGNORE_INDEX, annotation_to_target
from ..batches import PrefetchedBatches, SerialBatches
from ..model import ModelConfig, TrainedModel
from ..models import Ensemble
from ..normalization import IntensityNormalization
from ..painted_slices import as_3d
from ..progress import relay
from .config import TrainConfig, TrainProgress
from .guard import RETRY_SEED, Guard, build_guard, missed_names, retry_plan, validation_record
from .loop import (
    NetworkResult,
    StepReport,
    decided_region,
    make_batch,
    plane_patch,
    plane_samplers,
    run_fraction,
    torch_threads,
    train_network,
)
from .plan import TrainingPlan, plan_training
from .preview import LivePreview, PreviewRequest
from .warm import earlier_rounds, member_states, round_record


@dataclass
class _Members:
    """The networks of a run so far (a member cut short is kept only when it is the first)."""

    results: list[NetworkResult] = field(default_factory=list)
    kept: list[NetworkResult] = field(default_factory=list)
    guard: Guard | None = None
    restarted: bool = False

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
    preview: PreviewRequest | None = None,
    normalization: IntensityNormalization | None = None,
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
    preview : PreviewRequest, optional
        The slice a viewer shows: every few seconds a progress item carries the current
        model's labels of it (:class:`~.preview.SlicePreview`).
    normalization : IntensityNormalization, optional
        The intensity normalisation to train and predict with, instead of one fitted on
        ``image`` (training on a crop of a larger volume: fitted on the whole of it).

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
        image, annotation, config, spacing=spacing, class_names=class_names, init=init,
        normalization=normalization,
    )  # fmt: skip
    start = time.perf_counter()
    members = yield from run_plan(plan, image, annotation, stop, start, preview)
    return assemble_model(plan, members, start, as_3d(annotation, "annotation"))


def run_plan(
    plan: TrainingPlan,
    image: np.ndarray,
    annotation: np.ndarray,
    stop: threading.Event | None,
    start: float,
    preview: PreviewRequest | None = None,
) -> Generator[TrainProgress, None, _Members]:
    """Train the plan's network(s) on the image; returns them with how each run ended."""
    rng = np.random.default_rng(plan.config.seed)
    torch.manual_seed(plan.config.seed)
    annotation = as_3d(annotation, "annotation")
    target = annotation_to_target(annotation)
    normalized = plan.normalization.apply(as_3d(image, "image"))[np.newaxis]
    guard = None
    if plan.config.validation:
        axis = plan.planes[0]
        patch = plane_patch(plan, axis, target.shape)
        guard = build_guard(annotation, normalized, axis, patch, plan.n_classes, rng)
    training = target if guard is None else np.where(guard.held.mask, IGNORE_INDEX, target)
    samplers = plane_samplers(plan, normalized, training, rng)
    make = functools.partial(make_batch, samplers, plan.config.batch_size, plan.augment)
    workers = plan.batch_workers
    region = functools.partial(decided_region, normalized, target, plan.patch_shape)
    members = _Members(guard=guard)
    states = member_states(plan.init) if plan.init is not None else None
    with torch_threads(plan.threads):
        batches = PrefetchedBatches(make, rng, workers) if workers else SerialBatches(make, rng)
        try:
            for member in range(plan.members):
                if member:
                    torch.manual_seed(plan.config.seed + member)
                started = start if member == 0 else time.perf_counter()
                train_one = functools.partial(
                    train_network, batches=batches, stop=stop, calibration_region=region,
                    first=member == 0, initial_state=states[member] if states else None,
                    live=None if preview is None else LivePreview(
                        preview, normalized, plan.patch_shape
                    ),
                )
                result = yield from _member(plan, train_one, member, members, start, started)
                members.results.append(result)
                if result.reason == "finished" or not members.kept:
                    members.kept.append(result)
                if result.reason != "finished":
                    break
        finally:
            batches.close()
    return members


def _member(
    plan: TrainingPlan,
    train_one: Callable[..., Generator[StepReport, None, NetworkResult]],
    member: int,
    members: _Members,
    start: float,
    started: float,
) -> Generator[TrainProgress, None, NetworkResult]:
    """One network of the run; trained once more at half the learning rate, in the time
    left, when its validation found nothing of a structure half-way through."""
    guard = members.guard.fresh() if members.guard is not None else None
    wrap = _member_progress(plan, member, members.steps, start, started)
    result = yield from relay(train_one(plan, started=started, guard=guard), wrap)
    if result.reason != "missed" or members.guard is None:
        return result
    again = retry_plan(plan, result.steps, started)
    missing = ", ".join(missed_names(plan, result))
    if again is None:
        result.reason = "finished"
        return result
    note = f"validation found no {missing}: training again at half the learning rate"
    yield wrap(StepReport(step=result.steps, loss=result.losses[-1], message=note))
    members.restarted = True
    torch.manual_seed(plan.config.seed + RETRY_SEED + member)
    now = time.perf_counter()
    head = run_fraction(plan.member_config, result.steps, now - started)
    wrap = _member_progress(again, member, members.steps + result.steps, start, now, head)
    second = yield from relay(train_one(again, started=now, guard=members.guard.fresh()), wrap)
    total = result.steps + second.steps
    better = second if _validated(second) >= _validated(result) else result
    better.steps = total  # both attempts spent the budget
    if better.reason == "missed":
        better.reason = "finished"
    return better


def _validated(result: NetworkResult) -> float:
    return result.validation.score if result.validation is not None else -1.0


def _member_progress(
    plan: TrainingPlan,
    member: int,
    done_steps: int,
    start: float,
    started: float,
    head: float = 0.0,
) -> Callable[[StepReport], TrainProgress]:
    """Turns one network's step reports into the whole run's :class:`TrainProgress`
    (``head``: the share of this member's run already done by an earlier attempt)."""
    n, iterations = plan.members, plan.config.iterations
    latest: list[float | None] = [None]

    def wrap(report: StepReport) -> TrainProgress:
        message = report.message
        if n > 1:
            message = f"network {member + 1}/{n} {message}".strip()
        if report.validation is not None:
            latest[0] = report.validation
        now = time.perf_counter()
        fraction = head + (1 - head) * run_fraction(plan.member_config, report.step, now - started)
        return TrainProgress(
            step=done_steps + report.step,
            total_steps=iterations * n if iterations else None,
            loss=report.loss,
            elapsed=now - start,
            fraction=(member + fraction) / n,
            message=message,
            validation=latest[0],
            preview=report.preview,
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
    if members.guard is not None:
        history["validation"] = validation_record(
            members.guard.held, last.validation, last.scores, plan.class_names,
            members.restarted,
        )
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
