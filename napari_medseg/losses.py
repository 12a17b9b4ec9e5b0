"""Losses on partially labelled volumes: unknown voxels (target ``-1``) weigh nothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .annotation import IGNORE_INDEX


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted cross-entropy over annotated voxels only.

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, C, *spatial)`` raw scores.
    target : torch.Tensor
        ``(N, *spatial)`` int64 class indices, ``-1`` where not annotated.
    class_weights : torch.Tensor, optional
        ``(C,)`` weights balancing rare structures.

    Returns
    -------
    torch.Tensor
        Scalar loss; ``0`` (with a gradient path) when the batch has no annotated voxel.
    """
    known = target != IGNORE_INDEX
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(
        logits.float(), target, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="mean"
    )


def masked_soft_dice(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - mean soft Dice`` of the structures (background excluded), annotated voxels only.

    Dice is computed over the whole batch ("batch Dice"), which is stable when a patch holds
    few foreground voxels. Structures absent from both prediction and annotation in the batch
    contribute a Dice of 1 through the smoothing term.
    """
    n_classes = logits.shape[1]
    known = (target != IGNORE_INDEX).unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * known
    onehot = F.one_hot(target.clamp(min=0), n_classes).movedim(-1, 1).float() * known
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice[1:].mean()


def class_weights_from_counts(
    counts: Sequence[int] | torch.Tensor, power: float = 0.5
) -> torch.Tensor:
    """Inverse-frequency class weights ``(total / count) ** power``, normalised to mean 1.

    Classes with no annotated voxel get weight 0.
    """
    counts_t = torch.as_tensor(counts, dtype=torch.float64)
    weights = torch.zeros_like(counts_t)
    present = counts_t > 0
    weights[present] = (counts_t.sum() / counts_t[present]) ** power
    weights = weights / weights[present].mean()
    return weights.float()
