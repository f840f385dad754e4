"""Style encoder E(x) -> w and mapping network M(z) -> w.

E reads appearance, not anatomy: it pools multi-scale channel means/stds (the statistics that
instance normalisation removes) and maps them to a style code with an MLP.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import channel_stats, conv_norm_act


class StyleEncoder(nn.Module):
    """(B, 1, H, W) normalised image -> (B, style_dim) style code.

    The image is average-pooled by 2 first: style is a global property, so half resolution is enough
    and keeps E cheap next to the segmenter.
    """

    def __init__(self, style_dim: int = 64, channels: tuple[int, ...] = (16, 32, 64, 96)):
        super().__init__()
        layers, cin = [], 1
        for c in channels:
            layers.append(conv_norm_act(cin, c, stride=2, norm=None))
            cin = c
        self.layers = nn.ModuleList(layers)
        stats_dim = 2 * sum(channels) + 2  # + image mean/std
        self.mlp = nn.Sequential(nn.Linear(stats_dim, 128), nn.LeakyReLU(0.2), nn.Linear(128, style_dim))
        self.style_dim = style_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(x, 2)
        stats = [channel_stats(h)]
        for layer in self.layers:
            h = layer(h)
            stats.append(channel_stats(h))
        return self.mlp(torch.cat(stats, dim=1))


class MappingNetwork(nn.Module):
    """StyleGAN-style MLP: (B, z_dim) Gaussian noise -> (B, style_dim) style code."""

    def __init__(self, z_dim: int = 64, style_dim: int = 64, depth: int = 4):
        super().__init__()
        layers, d = [], z_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(d, 128), nn.LeakyReLU(0.2)]
            d = 128
        layers.append(nn.Linear(d, style_dim))
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
