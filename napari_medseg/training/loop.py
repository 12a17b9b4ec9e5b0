"""Running a :class:`~.plan.TrainingPlan`: batches, the optimisation loop of each network.

:func:`train_network` trains one network and is a generator of step reports; the members
of an ensemble are trained by :func:`train_members` one after the other.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..augmentation import AugmentConfig, augment
from ..batches import PrefetchedBatches, SerialBatches
from ..losses import class_weights_from_counts
from ..models.calibration import batch_norm_layers
from ..sampling import AnnotatedPatchSampler, unknown_region
from .config import TrainConfig
from .guard import Guard
from .optimisation import Optimisation
from .plan import TrainingPlan
from .preview import LivePreview, SlicePreview
from .validation import ValidationScore

PlaneSampler = tuple[AnnotatedPatchSampler, tuple[float, ...]]


@dataclass
class StepReport:
    """What :func:`train_network` yields: a step's loss, or a note (``message``)."""

    step: int
    loss: float
    message: str = ""
    validation: float | None = None
    preview: SlicePreview | None = None


@dataclass
class NetworkResult:
    """A trained network and how its run ended."""

    network: torch.nn.Module
    steps: int
    reason: str
    losses: list[float]
    calibration_tiles: int | None = None
    validation: ValidationScore | None = None
    scores: list[ValidationScore] = field(default_factory=list)


@dataclass
class _RunState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds_per_step: float = 0.0
    _last: float = field(default_factory=time.perf_counter)

    def record(self, loss: float) -> None:
        now = time.perf_counter()
        took, self._last = now - self._last, now
        self.step += 1
        self.losses.append(loss)
        rate = self.seconds_per_step
        self.seconds_per_step = took if self.step == 1 else 0.8 * rate + 0.2 * took

    def pause(self) -> None:
        """Time spent since the last step (scoring) does not count as a step's."""
        self._last = time.perf_counter()


def plane_patch(plan: TrainingPlan, axis: int, shape: Sequence[int]) -> tuple[int, ...]:
    """The training patch of plane ``axis``'s view of a volume of ``shape`` (view order)."""
    from .defaults import patch_shape_for

    order = (axis, *(b for b in range(3) if b != axis))
    view_shape = tuple(shape[b] for b in order)
    return patch_shape_for(plan.config, view_shape, tuple(plan.spacing[b] for b in order))


def plane_samplers(
    plan: TrainingPlan, normalized: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> list[PlaneSampler]:
    """A patch sampler and the voxel spacing of each plane's view of the volume.

    The view of plane ``a`` has axis ``a`` first: a 2D network reads its slices along it.
    """
    samplers = []
    for axis in plan.planes:
        order = (axis, *(b for b in range(3) if b != axis))
        view_spacing = tuple(plan.spacing[b] for b in order)
        patch = plane_patch(plan, axis, target.shape)
        sampler = AnnotatedPatchSampler(
            np.moveaxis(normalized, axis + 1, 1), np.moveaxis(target, axis, 0), patch, rng
        )
        samplers.append((sampler, view_spacing))
    return samplers


def make_batch(
    samplers: Sequence[PlaneSampler],
    size: int,
    aug_config: AugmentConfig | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``size`` patches of one plane and augment them (``aug_config`` None: as drawn).

    With more than one plane, the plane of the batch is drawn at random (all its patches
    share a shape).
    """
    pick = int(rng.integers(len(samplers))) if len(samplers) > 1 else 0
    sampler, spacing = samplers[pick]
    images, targets = sampler.batch(size, rng)
    if aug_config is None:
        return images, targets
    pairs = [augment(i, t, rng, aug_config, spacing) for i, t in zip(images, targets)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def lr_factor(fraction: float, step: int, warmup: int = 10) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 0.05."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


def run_fraction(config: TrainConfig, step: int, elapsed: float) -> float:
    """How much of the run is done, by steps or by time, whichever is further."""
    parts = []
    if config.iterations:
        parts.append(step / config.iterations)
    if config.time_budget:
        parts.append(elapsed / config.time_budget)
    return float(min(1.0, max(parts)))


def _stop_reason(
    config: TrainConfig, state: _RunState, stop: threading.Event | None, elapsed: float
) -> str | None:
    """Why training ends before the next step, or ``None`` to go on."""
    if stop is not None and stop.is_set():
        return "stopped"
    if config.iterations is not None and state.step >= config.iterations:
        return "finished"
    if config.time_budget is not None and state.step > 0:
        if elapsed + state.seconds_per_step > config.time_budget:
            return "finished"
    return None


def decided_region(
    normalized: np.ndarray, target: np.ndarray, patch_shape: Sequence[int]
) -> np.ndarray:
    """The image where prediction decides: the box of voxels nobody painted, grown by half a
    patch (the whole image when everything is painted)."""
    box = unknown_region(target, [p // 2 for p in patch_shape])
    return normalized if box is None else normalized[(slice(None), *box)]


def _measure(guard: Guard, run: Optimisation, state: _RunState) -> ValidationScore:
    result = guard.measure(run.predict_classes, run.snapshot, state.step, state.seconds_per_step)
    state.pause()
    return result


def _final_choice(
    guard: Guard, run: Optimisation, state: _RunState
) -> tuple[StepReport, ValidationScore | None]:
    """Score the last weights (unless just scored), keep them or the best; say which."""
    if state.step and (not guard.scores or guard.scores[-1].step != state.step):
        _measure(guard, run, state)
    chosen = guard.choose(run.load)
    loss = state.losses[-1] if state.losses else math.nan
    if chosen is None:
        return StepReport(step=state.step, loss=loss), None
    text = f"validation Dice {chosen.score:.3f}"
    if chosen.step != state.step:
        text += f" (weights of step {chosen.step} kept: they scored higher)"
    return StepReport(step=state.step, loss=loss, message=text, validation=chosen.score), chosen


def train_network(
    plan: TrainingPlan,
    batches: SerialBatches | PrefetchedBatches,
    stop: threading.Event | None,
    started: float,
    calibration_region: Callable[[], np.ndarray] | None = None,
    first: bool = True,
    initial_state: dict[str, torch.Tensor] | None = None,
    guard: Guard | None = None,
    live: LivePreview | None = None,
) -> Generator[StepReport, None, NetworkResult]:
    """Train one network of the plan on ``batches`` until its budget, a divergence or Stop.

    ``started`` is when its budget began (``time.perf_counter()``). The network comes back
    in eval mode on the CPU however the run ends. With ``calibration_region`` and the plan's
    ``calibrate_batch_norm``, batch norm is re-estimated there after a run that is kept (one
    that finished, or the ``first`` network), never after Stop. ``initial_state``: the
    weights to continue from (a warm start). With a ``guard`` the network is scored on the
    held-out voxels as it trains, ends with the better of its last and best weights, and
    ends early (reason ``"missed"``) when half-way through it has not found a structure.
    With ``live``, every few seconds a report carries the kept weights' labels of the slice
    the viewer shows.
    """
    config, member = plan.config, plan.member_config
    weights = class_weights_from_counts(plan.class_voxel_counts, power=plan.class_weight_power)
    run = Optimisation(config, plan.network, plan.device, weights, initial_state)
    state, reason, tiles, chosen = _RunState(), None, None, None
    try:
        while (reason := _stop_reason(member, state, stop, time.perf_counter() - started)) is None:
            images, targets = batches.next()
            fraction = run_fraction(member, state.step, time.perf_counter() - started)
            if plan.freeze_batch_norm and fraction >= 1 - plan.freeze_batch_norm:
                run.freeze_batch_norm()
            loss = run.step(images, targets, config.learning_rate * lr_factor(fraction, state.step))
            if not math.isfinite(loss):
                run.restore_last_good()
                reason = "diverged"
                note = "loss became NaN or infinite: training stopped, last good weights kept"
                yield StepReport(step=state.step, loss=loss, message=note)
                break
            state.record(loss)
            if state.step % 10 == 0:
                run.remember_good()
            report = StepReport(step=state.step, loss=loss)
            if guard is not None and guard.due(state.step):
                report.validation = _measure(guard, run, state).score
                reason = "missed" if guard.missed(fraction) else None
            if live is not None and live.due():
                report.preview = live.make(run.predict_classes, state.step)
                state.pause()
            yield report
            if reason is not None:
                break
        if guard is not None and reason != "stopped":
            final, chosen = _final_choice(guard, run, state)
            yield final
        kept = reason == "finished" or first
        ready = kept and config.calibrate_batch_norm and state.step and reason != "stopped"
        if ready and calibration_region is not None and batch_norm_layers(run.network):
            message = "calibrating batch norm on the unpainted region"
            yield StepReport(step=state.step, loss=state.losses[-1], message=message)
            tiles = run.calibrate(calibration_region(), plan.patch_shape)
    finally:
        run.release()
    scores = guard.scores if guard is not None else []
    return NetworkResult(
        run.network, state.step, reason or "finished", state.losses, tiles, chosen, scores
    )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set for the block (left alone for ``None``), then restored."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
