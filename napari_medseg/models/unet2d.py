"""2D U-Net (Ronneberger et al. 2015), applied slice by slice along ``D``.

Four 2x2 max-pool down-sampling steps, two 3x3 convolutions (+ optional batch norm) + ReLU
per level, 2x2 transposed-convolution up-sampling, skip concatenation, 1x1 head. Unlike the
paper, convolutions are 'same'-padded so the output has the input's size (the input is
padded internally to a multiple of 16 and the logits cropped back).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DEFAULT_PAD_MODE, DoubleConv, SliceWise2D, init_weights

STEPS = 4


class UNet2D(SliceWise2D):
    """2D U-Net on ``(N, C, D, H, W)`` input, one ``(H, W)`` slice at a time.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output channels (logits), background included.
    base_channels : int
        Width of the first level; level ``i`` has ``base_channels * 2**i`` channels
        (the paper uses 64).
    batch_norm : bool
        Batch norm after every convolution.
    norm_groups : int
        With ``batch_norm``: group norm with this many groups instead of batch norm (0).
    dropout : float
        Channel dropout at the end of the contracting path (as in the paper).
    pad_mode : str
        How each slice is padded to a multiple of 16.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 16,
        batch_norm: bool = True,
        norm_groups: int = 0,
        dropout: float = 0.0,
        pad_mode: str = DEFAULT_PAD_MODE,
    ) -> None:
        super().__init__()
        self.divisor = (2**STEPS, 2**STEPS)
        self.pad_mode = pad_mode
        widths = [base_channels * 2**i for i in range(STEPS + 1)]
        k = (3, 3)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for level in range(STEPS):
            self.encoders.append(
                DoubleConv(
                    2,
                    channels,
                    widths[level],
                    widths[level],
                    k,
                    batch_norm,
                    norm_groups=norm_groups,
                )
            )
            channels = widths[level]
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bottleneck = DoubleConv(
            2, channels, widths[-1], widths[-1], k, batch_norm, dropout, norm_groups=norm_groups
        )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(STEPS)):
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoders.append(
                DoubleConv(
                    2,
                    2 * widths[level],
                    widths[level],
                    widths[level],
                    k,
                    batch_norm,
                    norm_groups=norm_groups,
                )
            )
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass on ``(B, C, H, W)`` slices padded to multiples of 16."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, up(x)], dim=1))
        logits: torch.Tensor = self.head(x)
        return logits
