"""Several networks of one configuration used as one: their class probabilities averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """Networks trained independently on the same annotation, applied as one.

    ``forward`` returns the logarithm of the members' mean class probabilities, so a softmax
    of its output is that mean: everything that applies a single network (tiled prediction,
    cross-validation, saving and loading) applies an ensemble unchanged. Its weights are
    stored as ``members.<i>.<name>``.

    Parameters
    ----------
    members : sequence of nn.Module
        At least two networks mapping the same input to logits of the same classes.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.divisor = getattr(members[0], "divisor", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean softmax of the members' logits (float32)."""
        total = torch.softmax(self.members[0](x).float(), dim=1)
        for member in self.members[1:]:
            total = total + torch.softmax(member(x).float(), dim=1)
        return torch.log((total / len(self.members)).clamp_min(1e-12))
