"""Built-in architecture ``unet``: a configurable 2D/3D U-Net with same-size convolutions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configs import ArchitectureConfig, ConfigError
from ..interfaces import Architecture
from ..registry import register


@register("architecture", "unet")
@dataclass(frozen=True, kw_only=True)
class UNetConfig(ArchitectureConfig):
    """A U-Net of ``depth`` levels (``depth - 1`` 2x downsamplings).

    Level ``i`` has ``num_fmaps * fmap_inc_factor**i`` feature maps; the output has
    ``num_fmaps_out`` (default ``num_fmaps``). ``dims`` is 2 or 3.
    """

    dims: int = 2
    in_channels: int = 1
    num_fmaps: int = 8
    fmap_inc_factor: int = 2
    depth: int = 3
    num_fmaps_out: int | None = None
    kernel_size: int = 3

    def check(self) -> None:
        if self.dims not in (2, 3):
            raise ConfigError(f"dims must be 2 or 3, got {self.dims}")
        for name in ("in_channels", "num_fmaps", "fmap_inc_factor", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_fmaps_out is not None and self.num_fmaps_out < 1:
            raise ConfigError(f"num_fmaps_out must be >= 1, got {self.num_fmaps_out}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")

    def build(self) -> "UNet":
        return UNet(self)


def conv_block(dims: int, in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Two same-size convolutions, each followed by a ReLU."""
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    padding = kernel_size // 2
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size, padding=padding),
        nn.ReLU(inplace=True),
        conv(out_channels, out_channels, kernel_size, padding=padding),
        nn.ReLU(inplace=True),
    )


class UNet(Architecture):
    """The network of a :class:`UNetConfig`: max-pool down, transposed-convolution up, skip
    connections by concatenation."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.dims = config.dims
        self.in_channels = config.in_channels
        self.out_channels = config.num_fmaps_out or config.num_fmaps
        self.downsample_factor = 2 ** (config.depth - 1)
        fmaps = [config.num_fmaps * config.fmap_inc_factor**level for level in range(config.depth)]
        pool = nn.MaxPool2d if self.dims == 2 else nn.MaxPool3d
        up = nn.ConvTranspose2d if self.dims == 2 else nn.ConvTranspose3d
        k = config.kernel_size
        self.encoder = nn.ModuleList(
            conv_block(self.dims, self.in_channels if level == 0 else fmaps[level - 1], fmaps[level], k)
            for level in range(config.depth)
        )
        self.pool = pool(2)
        self.upsample = nn.ModuleList(
            up(fmaps[level + 1], fmaps[level], kernel_size=2, stride=2) for level in range(config.depth - 1)
        )
        self.decoder = nn.ModuleList(
            conv_block(self.dims, 2 * fmaps[level], self.out_channels if level == 0 else fmaps[level], k)
            for level in range(config.depth - 1)
        )
        self.output = (
            conv_block(self.dims, fmaps[0], self.out_channels, k) if config.depth == 1 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(len(self.decoder))):
            x = self.upsample[level](x)
            x = self.decoder[level](torch.cat([skips.pop(), x], dim=1))
        return self.output(x)
