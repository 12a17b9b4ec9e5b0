"""Continuing from an earlier model: the network it fixes, its weights grown for new structures,
and the record of each round.

A warm start keeps the earlier model's network (architecture, width, normalisation layers,
planes, patch) and its intensity normalisation, so its weights fit; only the output grows
when a structure is painted that the model did not know. Each run adds a round to the
model's history: how it started, what was painted, how it ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..annotation import content_checksum
from ..model import TrainedModel
from ..models import Ensemble
from ..painted_slices import painted_per_plane
from .config import TrainConfig
from .defaults import BASE_CHANNELS

#: The time budget of a round that continues from a model, unless one is given (seconds).
WARM_START_BUDGET = 20.0


def adopt_network(config: TrainConfig, init: TrainedModel) -> TrainConfig:
    """``config`` with the network-defining settings of ``init``: architecture, width,
    normalisation layers, planes and ensemble size (the 3D U-Net's patch too, which its
    pooling was planned for)."""
    net = init.config.network
    values: dict[str, Any] = {
        "arch": net.arch,
        "base_channels": net.base_channels,
        "batch_norm": net.batch_norm,
        "group_norm": net.norm_groups > 0,
        "planes": "three" if len(init.config.planes) > 1 else "one",
        "ensemble": max(1, int(net.members)),
    }
    if net.arch == "unet3d":
        values["patch_shape"] = tuple(int(p) for p in init.config.patch_shape)
    return replace(config, **values)


def network_differs(config: TrainConfig, init: TrainedModel) -> list[str]:
    """The network-defining settings of ``config`` that ``init`` does not share (a setting
    left to its automatic value matches whatever the model has)."""
    adopted = adopt_network(config, init)
    different = []
    for name in ("arch", "base_channels", "batch_norm", "group_norm", "planes", "ensemble",
                 "patch_shape"):
        mine = getattr(config, name)
        if mine is None or (name == "planes" and adopted.arch == "unet3d"):
            continue
        if mine != getattr(adopted, name):
            different.append(name)
    if config.base_channels is None and adopted.base_channels != BASE_CHANNELS:
        different.append("base_channels")
    return different


def with_warm_budget(config: TrainConfig) -> TrainConfig:
    """A continued round's settings: the default time budget becomes the shorter one of a
    warm start (:data:`WARM_START_BUDGET`); a budget the user chose stays."""
    default = TrainConfig.__dataclass_fields__["time_budget"].default
    if config.time_budget == default:
        return replace(config, time_budget=WARM_START_BUDGET)
    return config


def member_states(init: TrainedModel) -> list[dict[str, torch.Tensor]]:
    """The weights of each network of ``init`` (one for a single network)."""
    network = init.network
    if isinstance(network, Ensemble):
        return [member.state_dict() for member in network.members]
    return [network.state_dict()]


def grown_state(
    fresh: dict[str, torch.Tensor], earlier: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``fresh`` (a newly built network's weights) with ``earlier``'s copied in.

    A tensor of the same shape is taken whole; one that grew (the output layers, when the
    new network has more classes) keeps the earlier values in its leading block and the
    fresh initialisation for the new classes.
    """
    state = {}
    for name, tensor in fresh.items():
        old = earlier.get(name)
        if old is None or old.ndim != tensor.ndim:
            raise ValueError(f"the earlier model has no weights {name!r} of this shape")
        if old.shape == tensor.shape:
            state[name] = old.detach().clone()
            continue
        if any(o > n for o, n in zip(old.shape, tensor.shape)):
            raise ValueError(f"the earlier model's {name!r} is larger than the new network's")
        grown = tensor.detach().clone()
        grown[tuple(slice(0, s) for s in old.shape)] = old
        state[name] = grown
    return state


def round_record(
    annotation: np.ndarray,
    config: TrainConfig,
    history: dict[str, Any],
    continued: bool,
    earlier_rounds: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """One training round as the model's history keeps it."""
    painted = {
        name: len(slices) for name, slices in zip("zyx", painted_per_plane(annotation))
    }
    return {
        "round": len(earlier_rounds) + 1,
        "start": "continued" if continued else "scratch",
        "annotation_checksum": content_checksum(annotation),
        "painted_voxels": int(np.count_nonzero(annotation)),
        "painted_slices": painted,
        "time_budget": config.time_budget,
        "iterations": config.iterations,
        "seed": config.seed,
        "steps": history["steps"],
        "seconds": history["seconds"],
        "stop_reason": history["stop_reason"],
        "final_loss": history["final_loss"],
    }


def earlier_rounds(init: TrainedModel | None) -> list[dict[str, Any]]:
    """The rounds recorded in ``init``'s history (none for a fresh start, or a model file
    written before rounds were recorded: then its own run counts as the first)."""
    if init is None:
        return []
    rounds = init.config.history.get("rounds")
    if isinstance(rounds, list):
        return [dict(r) for r in rounds if isinstance(r, dict)]
    return [{"round": 1, "start": "scratch", "steps": init.config.history.get("steps")}]


def class_names_for(n_classes: int, init: TrainedModel, names: Sequence[str] | None) -> list[str]:
    """Background, then each structure's name: the one given now, else the earlier model's,
    else ``structure k``."""
    known = list(init.config.class_names)
    given = list(names or [])
    if given and given[0].lower() == "background":
        given = given[1:]
    out = ["background"]
    for k in range(1, n_classes):
        if k - 1 < len(given):
            out.append(given[k - 1])
        else:
            out.append(known[k] if k < len(known) else f"structure {k}")
    return out
