"""An exponential moving average of a network's weights, the one a run validates and keeps.

High learning rates let a small network's weights swing from one step to the next (a brain
tumour's Dice moved 0.38-0.86 between scores 25 steps apart); the average smooths that out.
Floating-point buffers (batch-norm statistics) are averaged too; counters are copied.
"""

from __future__ import annotations

import copy

import torch

#: Decay of the average once warmed up (about the last 100 steps count).
EMA_DECAY = 0.99


def ema_decay(step: int) -> float:
    """The decay at ``step``: short at first, so that early weights fade fast."""
    return min(EMA_DECAY, (1 + step) / (10 + step))


class WeightAverage:
    """A copy of ``network`` holding the running average of its weights."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.model = copy.deepcopy(network)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        """Move the average towards ``network``'s weights after a step."""
        weight = 1.0 - ema_decay(self.updates)
        self.updates += 1
        mine: list[torch.Tensor] = list(self.model.parameters())
        torch._foreach_lerp_(mine, [p.detach() for p in network.parameters()], weight)
        for own, live in zip(self.model.buffers(), network.buffers()):
            if own.is_floating_point():
                own.lerp_(live, weight)
            else:
                own.copy_(live)

    @torch.no_grad()
    def reset(self, network: torch.nn.Module) -> None:
        """Start the average again from ``network``'s weights."""
        self.model.load_state_dict(network.state_dict())
        self.updates = 0
