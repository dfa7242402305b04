"""The trainable model: an architecture followed by a task's prediction head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .interfaces import Architecture


class Model(nn.Module):
    """``architecture`` followed by a 1x1 convolution to ``out_channels``.

    Any spatial size is accepted: inputs are padded (edge values repeated) up to a multiple of
    the architecture's downsample factor and the output is cropped back. State dict keys are
    ``architecture.*`` and ``head.*``.
    """

    def __init__(self, architecture: Architecture, out_channels: int) -> None:
        super().__init__()
        self.architecture = architecture
        conv = nn.Conv2d if architecture.dims == 2 else nn.Conv3d
        self.head = conv(architecture.out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        factor = self.architecture.downsample_factor
        padding = [(-size) % factor for size in spatial]
        if any(padding):
            # F.pad takes (last dim before, after, second-to-last ...) pairs
            x = F.pad(x, [p for amount in reversed(padding) for p in (0, amount)], mode="replicate")
        y = self.head(self.architecture(x))
        return y[(..., *(slice(0, size) for size in spatial))]
