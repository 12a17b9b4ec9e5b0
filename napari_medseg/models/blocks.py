"""Building blocks shared by the networks: conv blocks, padding, slice folding, init.

Every network in :mod:`napari_medseg.models` takes ``(N, C, D, H, W)`` and returns logits
``(N, n_classes, D, H, W)`` of exactly the input's spatial size. Networks that need sizes
divisible by their total down-sampling factor pad internally (:func:`pad_to_divisor`) and
crop their output back; 2D networks fold ``D`` into the batch (:class:`SliceWise2D`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Triple = tuple[int, int, int]

#: Padding used to bring an input to a multiple of a network's divisor.
DEFAULT_PAD_MODE = "replicate"


def conv_norm_relu(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int],
    batch_norm: bool,
    norm_groups: int = 0,
) -> nn.Sequential:
    """One convolution with 'same' padding, optional batch (or group) norm, and ReLU.

    Parameters
    ----------
    ndim : int
        2 or 3 spatial dimensions.
    in_channels, out_channels : int
        Channel counts.
    kernel_size : sequence of int
        Odd kernel size per spatial axis (``ndim`` entries).
    batch_norm : bool
        Add a normalisation layer after the convolution; the convolution then has no bias.
    norm_groups : int
        0: that layer is batch norm. ``g > 0``: group norm over ``gcd(g, out_channels)``
        groups of channels, per patch (what the batch holds does not matter, and training
        and prediction normalise alike).

    Returns
    -------
    nn.Sequential
        ``Conv -> [BatchNorm | GroupNorm] -> ReLU``.
    """
    kernel = tuple(int(k) for k in kernel_size)
    if len(kernel) != ndim or any(k < 1 or k % 2 == 0 for k in kernel):
        raise ValueError(f"kernel size {kernel} must hold {ndim} odd positive ints")
    conv_cls: Callable[..., nn.Module] = nn.Conv3d if ndim == 3 else nn.Conv2d
    norm_cls = nn.BatchNorm3d if ndim == 3 else nn.BatchNorm2d
    layers: list[nn.Module] = [
        conv_cls(
            in_channels,
            out_channels,
            kernel,
            padding=tuple(k // 2 for k in kernel),
            bias=not batch_norm,
        )
    ]
    if batch_norm and norm_groups > 0:
        layers.append(nn.GroupNorm(math.gcd(norm_groups, out_channels), out_channels))
    elif batch_norm:
        layers.append(norm_cls(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Two :func:`conv_norm_relu` blocks, optionally followed by channel dropout.

    Parameters
    ----------
    ndim : int
        2 or 3.
    in_channels, mid_channels, out_channels : int
        Channels into the first conv, between the two, and out of the second.
    kernel_size : sequence of int
        Odd kernel size per spatial axis, used by both convolutions.
    batch_norm : bool
        Batch norm after each convolution.
    dropout : float
        Probability of :class:`torch.nn.Dropout3d` / ``Dropout2d`` after the block (0 = none).
    norm_groups : int
        Group norm with this many groups instead of batch norm (0: batch norm).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        batch_norm: bool,
        dropout: float = 0.0,
        norm_groups: int = 0,
    ) -> None:
        layers: list[nn.Module] = [
            conv_norm_relu(ndim, in_channels, mid_channels, kernel_size, batch_norm, norm_groups),
            conv_norm_relu(ndim, mid_channels, out_channels, kernel_size, batch_norm, norm_groups),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout) if ndim == 3 else nn.Dropout2d(dropout))
        super().__init__(*layers)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (ReLU gain) init for all convolutions; batch norm to identity.

    Parameters
    ----------
    module : nn.Module
        Initialised in place, recursively.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def padded_size(size: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is ``>= size`` (and ``>= divisor``)."""
    return max(divisor, math.ceil(size / divisor) * divisor)


def pad_to_divisor(
    x: torch.Tensor,
    divisor: Sequence[int],
    mode: str = DEFAULT_PAD_MODE,
    min_bottleneck_voxels: int = 1,
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial axes of ``x`` (centred) up to multiples of ``divisor``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with ``len(divisor)`` spatial axes (2 or 3).
    divisor : sequence of int
        Required multiple per spatial axis.
    mode : str
        ``"replicate"`` (default), ``"reflect"`` or ``"constant"`` (zeros), as for
        :func:`torch.nn.functional.pad`.
    min_bottleneck_voxels : int
        Grow the last axis (by whole divisors) until ``N * prod(padded / divisor)`` reaches
        this; batch norm in training mode needs at least 2 values per channel at the
        coarsest level.

    Returns
    -------
    padded : torch.Tensor
        The padded tensor (``x`` itself when no padding is needed).
    crop : tuple of slice
        Index that crops a ``(N, K, *padded_spatial)`` output back to the input size.
    """
    spatial = tuple(x.shape[2:])
    if len(spatial) != len(divisor):
        raise ValueError(f"expected {len(divisor)} spatial axes, got shape {tuple(x.shape)}")
    target = [padded_size(s, int(d)) for s, d in zip(spatial, divisor)]
    cells = x.shape[0] * math.prod(t // int(d) for t, d in zip(target, divisor))
    if cells < min_bottleneck_voxels:
        extra = math.ceil(min_bottleneck_voxels / cells)
        target[-1] = target[-1] * extra
    before = [(t - s) // 2 for t, s in zip(target, spatial)]
    after = [t - s - b for t, s, b in zip(target, spatial, before)]
    crop = (slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(before, spatial))
    if not any(before) and not any(after):
        return x, crop
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after)):
        pads.extend((b, a))
    if mode == "reflect":
        # reflect needs pad < size; fall back to replicate where it would fail
        if any(p >= s for p, s in zip(before + after, spatial + spatial)):
            mode = "replicate"
    return F.pad(x, pads, mode=mode), crop


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` contains any batch-norm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class PaddedNetwork(nn.Module):
    """Base class: pads the input to :attr:`divisor`, runs :meth:`forward_padded`, crops back.

    Subclasses set ``self.divisor`` (per spatial axis of the tensor that
    :meth:`forward_padded` receives) and ``self.pad_mode``, and implement
    :meth:`forward_padded`.
    """

    divisor: tuple[int, ...]
    pad_mode: str = DEFAULT_PAD_MODE

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Run the network on an input whose spatial sizes are multiples of the divisor."""
        raise NotImplementedError

    def _pad_run_crop(self, x: torch.Tensor) -> torch.Tensor:
        need = 2 if (self.training and has_batch_norm(self)) else 1
        padded, crop = pad_to_divisor(x, self.divisor, self.pad_mode, need)
        return self.forward_padded(padded)[crop]


class SliceWise2D(PaddedNetwork):
    """Base class of the 2D networks: applies a 2D network slice by slice along ``D``.

    ``forward`` takes ``(N, C, D, H, W)``, folds ``D`` into the batch, pads ``(H, W)`` to
    ``self.divisor`` (2 entries), runs :meth:`forward_padded` on ``(N*D, C, H', W')``, crops,
    and unfolds to ``(N, K, D, H, W)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment every slice of ``x`` (``(N, C, D, H, W)``) independently."""
        if x.ndim != 5:
            raise ValueError(f"expected input (N, C, D, H, W), got shape {tuple(x.shape)}")
        n, c, d, h, w = x.shape
        folded = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        out = self._pad_run_crop(folded)
        k = out.shape[1]
        return out.reshape(n, d, k, h, w).permute(0, 2, 1, 3, 4)
