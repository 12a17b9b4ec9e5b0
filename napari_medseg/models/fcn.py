"""FCN-8s (Long et al. 2015) on a small VGG-like backbone, applied slice by slice along ``D``.

Backbone: 5 stages of ``(conv3x3 -> [BN] -> ReLU) x 2 -> maxpool 2x2`` with widths
``b, 2b, 4b, 8b, 8b``. Score layers (1x1 convolutions) on the outputs of pools 3, 4 and 5
(strides 8, 16, 32) are fused like FCN-8s: ``up2(score32) + score16``, ``up2(.) + score8``,
then bilinear x8 to the (padded) input size and cropped. The 2x up-samplings are learnable
transposed convolutions initialised to bilinear interpolation; the stride-8 and stride-16
score layers start at zero, as in the paper, so training starts from the FCN-32s output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DEFAULT_PAD_MODE, DoubleConv, SliceWise2D, init_weights

STAGES = 5


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """Weight ``(channels, channels, size, size)`` of a per-channel bilinear up-sampling."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt1d = 1 - torch.abs(og - center) / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(channels, channels, size, size)
    for c in range(channels):
        weight[c, c] = filt
    return weight


class FCN2D(SliceWise2D):
    """FCN-8s on ``(N, C, D, H, W)`` input, one ``(H, W)`` slice at a time.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output channels (logits), background included.
    base_channels : int
        Width of the first stage; stages have ``b, 2b, 4b, 8b, 8b`` channels.
    batch_norm : bool
        Batch norm after every backbone convolution.
    norm_groups : int
        With ``batch_norm``: group norm with this many groups instead of batch norm (0).
    dropout : float
        Channel dropout on the stride-32 features (the paper's fc6/fc7 dropout).
    pad_mode : str
        How each slice is padded to a multiple of 32.
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
        self.divisor = (2**STAGES, 2**STAGES)
        self.pad_mode = pad_mode
        b = base_channels
        widths = [b, 2 * b, 4 * b, 8 * b, 8 * b]
        self.stages = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.stages.append(
                DoubleConv(2, channels, width, width, (3, 3), batch_norm, norm_groups=norm_groups)
            )
            channels = width
        self.pool = nn.MaxPool2d(2, stride=2)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.score8 = nn.Conv2d(widths[2], n_classes, 1)
        self.score16 = nn.Conv2d(widths[3], n_classes, 1)
        self.score32 = nn.Conv2d(widths[4], n_classes, 1)
        self.up32 = nn.ConvTranspose2d(n_classes, n_classes, 4, stride=2, padding=1, bias=False)
        self.up16 = nn.ConvTranspose2d(n_classes, n_classes, 4, stride=2, padding=1, bias=False)
        init_weights(self)
        with torch.no_grad():
            for up in (self.up32, self.up16):
                up.weight.copy_(bilinear_kernel(n_classes, 4))
            for score in (self.score8, self.score16):
                nn.init.zeros_(score.weight)
                assert score.bias is not None  # Conv2d(..., bias=True) above
                nn.init.zeros_(score.bias)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass on ``(B, C, H, W)`` slices padded to multiples of 32."""
        size = x.shape[-2:]
        pooled = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pooled.append(x)
        s32 = self.score32(self.dropout(pooled[4]))
        s16 = self.up32(s32) + self.score16(pooled[3])
        s8 = self.up16(s16) + self.score8(pooled[2])
        return F.interpolate(s8, size=size, mode="bilinear", align_corners=False)
