"""A network prepared for prediction: batch norm folded into the convolution before it.

In evaluation mode a batch-norm layer is an affine map per channel with fixed statistics,
so it can be folded into the weights and bias of the convolution that feeds it
(``torch.nn.utils.fusion``): one pass over the activations fewer per layer, the same
function (up to float rounding). The trained network is left as it is; a copy is fused.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVOLUTIONS = (nn.Conv2d, nn.Conv3d)


def fused_for_inference(network: nn.Module) -> nn.Module:
    """A copy of ``network`` in evaluation mode, each ``Conv -> BatchNorm`` pair inside a
    ``Sequential`` folded into one convolution (the batch norm becomes an identity).

    Batch-norm layers that keep no running statistics (they normalise by the batch even in
    evaluation mode) and group norm are left as they are.
    """
    fused = copy.deepcopy(network).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            _fuse_pairs(module)
    return fused


def _fuse_pairs(sequence: nn.Sequential) -> None:
    names = list(sequence._modules)
    for first, second in zip(names, names[1:]):
        conv, norm = sequence._modules[first], sequence._modules[second]
        if isinstance(conv, _CONVOLUTIONS) and _foldable(conv, norm):
            assert isinstance(norm, nn.modules.batchnorm._BatchNorm)
            sequence._modules[first] = fuse_conv_bn_eval(conv, norm)
            sequence._modules[second] = nn.Identity()


def _foldable(conv: nn.Conv2d | nn.Conv3d, norm: nn.Module | None) -> bool:
    return (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
        and conv.out_channels == norm.num_features
    )
