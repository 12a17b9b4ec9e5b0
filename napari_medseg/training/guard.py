"""Watching a network train on its held-out voxels: when to score, which weights to keep,
and when a run has failed.

A :class:`Guard` scores the network on the run's :class:`~.validation.ValidationSet` every
so many steps (spending at most :data:`EVAL_SHARE` of the run on it), remembers the best
weights, and at the end keeps the last weights unless the best scored clearly higher. It
reports a structure the network has not found on its held-out voxels by half-way through
the run, so that the run can start again (:mod:`.run`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .plan import TrainingPlan
from .validation import HeldOut, ValidationScore, ValidationSet, hold_out, score

if TYPE_CHECKING:
    from .loop import NetworkResult

#: The most of a run's time spent scoring.
EVAL_SHARE = 0.1
#: Steps between two scores, at least, and before the first.
MIN_INTERVAL = 25
#: The last weights are kept unless the best scored this much more.
FINAL_TOLERANCE = 0.01
#: From this fraction of the run, a structure never found makes the run start again.
MISSED_AFTER = 0.5

#: A run started again needs this much of its time budget left.
MIN_RETRY_SECONDS = 5.0
#: Added to the seed of a run started again.
RETRY_SEED = 7919

Snapshot = dict[str, torch.Tensor]


@dataclass
class Guard:
    """The held-out voxels of a run, the scores so far and the best weights."""

    vset: ValidationSet
    held: HeldOut
    scores: list[ValidationScore] = field(default_factory=list)
    best: ValidationScore | None = None
    best_state: Snapshot | None = None
    next_step: int = 2 * MIN_INTERVAL

    def fresh(self) -> Guard:
        """The same held-out voxels, no scores (for a network trained again)."""
        return Guard(self.vset, self.held)

    def due(self, step: int) -> bool:
        """Whether the network is to be scored after ``step`` steps."""
        return step >= self.next_step

    def measure(
        self, predict: Callable[[np.ndarray], np.ndarray], snapshot: Callable[[], Snapshot],
        step: int, seconds_per_step: float,
    ) -> ValidationScore:
        """Score the network now; remember its weights when they are the best so far."""
        began = time.perf_counter()
        result = score(predict, self.vset, step)
        took = time.perf_counter() - began
        self.scores.append(result)
        if self.best is None or not result.score < self.best.score:
            self.best, self.best_state = result, snapshot()
        wait = took / (EVAL_SHARE * max(seconds_per_step, 1e-6))
        self.next_step = step + max(MIN_INTERVAL, math.ceil(wait))
        return result

    def choose(self, load: Callable[[Snapshot], None]) -> ValidationScore | None:
        """At the end (after a last :meth:`measure`): the best weights go back into the
        network when they scored clearly higher than the last; returns the kept score."""
        if not self.scores:
            return None
        last, best = self.scores[-1], self.best
        if best is not None and self.best_state is not None and best is not last:
            if best.score > last.score + FINAL_TOLERANCE:
                load(self.best_state)
                return best
        return last

    def missed(self, fraction: float) -> list[int]:
        """Structures (``1..``) held out but never found by the network at any score, once
        :data:`MISSED_AFTER` of the run is done (otherwise none)."""
        if fraction < MISSED_AFTER or len(self.scores) < 2:
            return []
        present = self.scores[-1].present
        return [
            k + 1 for k in range(len(present))
            if present[k] and not any(s.found[k] for s in self.scores)
        ]


def validation_record(
    held: HeldOut, chosen: ValidationScore | None, scores: Sequence[ValidationScore],
    class_names: Sequence[str], restarted: bool,
) -> dict[str, Any]:
    """The run's validation as the model's history keeps it (JSON-ready)."""
    record: dict[str, Any] = {"held_out": held.describe(), "restarted": restarted}
    if chosen is None:
        return record | {"score": None}
    names = list(class_names)[1:]
    present = [k for k, shown in enumerate(chosen.present) if shown]
    record |= {
        "score": round(chosen.score, 4),
        "step": chosen.step,
        "dice": {names[k]: round(chosen.dice[k], 4) for k in present},
        "missed": [names[k] for k in present if not chosen.found[k]],
        "curve": [[s.step, round(s.score, 4)] for s in scores],
    }
    return record


def build_guard(
    annotation: np.ndarray, normalized: np.ndarray, axis: int, patch: Sequence[int],
    n_classes: int, rng: np.random.Generator,
) -> Guard | None:
    """The held-out voxels of a run and their windows, cut in the view of plane ``axis`` (a
    3D network: 0) with that view's training ``patch``; ``None`` when nothing can be spared.

    ``normalized`` is ``(C, z, y, x)``; the guard's ``held.mask`` is in array order.
    """
    order = (axis, *(b for b in range(3) if b != axis))
    array_patch = [0, 0, 0]
    for position, b in enumerate(order):
        array_patch[b] = int(patch[position])
    held = hold_out(annotation, array_patch, n_classes, rng)
    if held is None:
        return None
    target = annotation.astype(np.int64) - 1
    vset, used = ValidationSet.build(
        np.moveaxis(normalized, axis + 1, 1), np.moveaxis(target, axis, 0),
        np.moveaxis(held.mask, axis, 0), patch, n_classes, rng,
    )
    return Guard(vset, replace(held, mask=np.moveaxis(used, 0, axis)))


def missed_names(plan: TrainingPlan, result: NetworkResult) -> list[str]:
    """The structures held out that the network's kept weights did not find."""
    chosen = result.validation
    if chosen is None:
        return []
    return [
        plan.class_names[k + 1] for k, shown in enumerate(chosen.present)
        if shown and not chosen.found[k]
    ]


def retry_plan(plan: TrainingPlan, steps_done: int, started: float) -> TrainingPlan | None:
    """The plan of a network trained again at half the learning rate in the budget left
    (``None`` when too little is left)."""
    member = plan.member_config
    left_time = None
    if member.time_budget is not None:
        left_time = member.time_budget - (time.perf_counter() - started)
        if left_time < MIN_RETRY_SECONDS:
            return None
    left_steps = None if member.iterations is None else member.iterations - steps_done
    if left_steps is not None and left_steps < 2 * MIN_INTERVAL:
        return None
    config = replace(
        plan.config,
        learning_rate=plan.config.learning_rate / 2,
        time_budget=None if left_time is None else left_time * plan.members,
        iterations=left_steps,
    )
    return replace(plan, config=config)

