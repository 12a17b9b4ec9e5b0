"""3D U-Net (Çiçek et al. 2016, "3D U-Net: learning dense volumetric segmentation from
sparse annotation").

Differences from the paper, on purpose:

* Channel widths. The paper's analysis level ``i`` goes ``w -> w -> 2w`` (32->64, 64->128,
  128->256, 256->512; the second convolution doubles). Here level ``i`` has width
  ``base * 2**i`` for both convolutions (``b, 2b, 4b, 8b``) and the up-convolution halves
  the channels like Ronneberger et al. 2015. With ``base_channels=16`` that is ~1.4 M
  parameters instead of ~19 M, and roughly 6x fewer FLOPs on the full-resolution level:
  a network that trains in minutes on a laptop CPU.
* 'Same' padding (the paper uses valid convolutions), so output size == input size; the
  input is padded internally to a multiple of the pooling product and the logits cropped.
* Anisotropic pooling / kernels (``(1, 2, 2)`` / ``(1, 3, 3)``) for thick-slice scans,
  following nnU-Net; the default is the paper's ``(2, 2, 2)`` pooling and ``(3, 3, 3)``
  kernels with 3 down-sampling steps (4 levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .blocks import DEFAULT_PAD_MODE, DoubleConv, PaddedNetwork, Triple, init_weights

DEFAULT_POOL: Triple = (2, 2, 2)
DEFAULT_KERNEL: Triple = (3, 3, 3)
DEFAULT_STEPS = 3


def resolve_pools_kernels(
    pool_sizes: Sequence[Sequence[int]] | None,
    kernel_sizes: Sequence[Sequence[int]] | None,
) -> tuple[list[Triple], list[Triple]]:
    """Fill in defaults: pools ``(2,2,2)`` x 3 and kernels ``(3,3,3)`` x (steps + 1).

    Raises
    ------
    ValueError
        If the number of kernel sizes is not the number of pooling steps + 1.
    """
    pools: list[tuple[int, ...]]
    kernels: list[tuple[int, ...]]
    if pool_sizes is None:
        steps = DEFAULT_STEPS if kernel_sizes is None else len(kernel_sizes) - 1
        pools = [DEFAULT_POOL] * steps
    else:
        pools = [tuple(int(v) for v in p) for p in pool_sizes]
    if kernel_sizes is None:
        kernels = [DEFAULT_KERNEL] * (len(pools) + 1)
    else:
        kernels = [tuple(int(v) for v in k) for k in kernel_sizes]
    if len(kernels) != len(pools) + 1:
        raise ValueError(
            f"kernel_sizes needs one entry per level ({len(pools) + 1} for "
            f"{len(pools)} pooling steps), got {len(kernels)}"
        )
    # the sizes are not length-checked here; a 3D network needs 3 values each
    return cast(list[Triple], pools), cast(list[Triple], kernels)


class UNet3D(PaddedNetwork):
    """3D U-Net with 'same' convolutions; output has exactly the input's spatial size.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output channels (logits), background included.
    base_channels : int
        Width of the first level; level ``i`` has ``base_channels * 2**i`` channels.
    batch_norm : bool
        Batch norm after every convolution (convolutions then have no bias).
    norm_groups : int
        With ``batch_norm``: group norm with this many groups instead of batch norm (0).
    pool_sizes : sequence of 3-tuples, optional
        Max-pool size (= up-convolution kernel and stride) per down-sampling step;
        default ``(2, 2, 2)`` x 3.
    kernel_sizes : sequence of 3-tuples, optional
        Odd convolution kernel per level (``len(pool_sizes) + 1`` entries); default
        ``(3, 3, 3)``.
    dropout : float
        Channel dropout after the bottleneck block.
    pad_mode : str
        How the input is padded to a multiple of :attr:`divisor`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 16,
        batch_norm: bool = True,
        norm_groups: int = 0,
        pool_sizes: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[Sequence[int]] | None = None,
        dropout: float = 0.0,
        pad_mode: str = DEFAULT_PAD_MODE,
    ) -> None:
        super().__init__()
        pools, kernels = resolve_pools_kernels(pool_sizes, kernel_sizes)
        self.pool_sizes = pools
        self.kernel_sizes = kernels
        self.pad_mode = pad_mode
        widths = [base_channels * 2**i for i in range(len(pools) + 1)]
        divisor = [1, 1, 1]
        for p in pools:
            divisor = [d * v for d, v in zip(divisor, p)]
        self.divisor = tuple(divisor)

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels = in_channels
        for level, pool in enumerate(pools):
            self.encoders.append(
                DoubleConv(
                    3,
                    channels,
                    widths[level],
                    widths[level],
                    kernels[level],
                    batch_norm,
                    norm_groups=norm_groups,
                )
            )
            self.pools.append(nn.MaxPool3d(pool, stride=pool))
            channels = widths[level]
        self.bottleneck = DoubleConv(
            3,
            channels,
            widths[-1],
            widths[-1],
            kernels[-1],
            batch_norm,
            dropout,
            norm_groups=norm_groups,
        )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(len(pools))):
            self.ups.append(
                nn.ConvTranspose3d(
                    widths[level + 1], widths[level], pools[level], stride=pools[level]
                )
            )
            self.decoders.append(
                DoubleConv(
                    3,
                    2 * widths[level],
                    widths[level],
                    widths[level],
                    kernels[level],
                    batch_norm,
                    norm_groups=norm_groups,
                )
            )
        self.head = nn.Conv3d(widths[0], n_classes, kernel_size=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes, D, H, W)`` for ``x`` of shape ``(N, C, D, H, W)``."""
        if x.ndim != 5:
            raise ValueError(f"expected input (N, C, D, H, W), got shape {tuple(x.shape)}")
        return self._pad_run_crop(x)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass on an input already padded to a multiple of :attr:`divisor`."""
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, up(x)], dim=1))
        logits: torch.Tensor = self.head(x)
        return logits
