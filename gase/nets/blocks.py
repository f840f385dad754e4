"""Small building blocks shared by the GASE networks (MONAI convolutions underneath)."""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn


def conv_norm_act(cin: int, cout: int, stride: int = 1, norm: str | tuple = ("instance", {"affine": True}),
                  kernel: int = 3) -> nn.Module:
    """3x3 convolution + norm + LeakyReLU(0.2) (MONAI ``Convolution``)."""
    return Convolution(2, cin, cout, strides=stride, kernel_size=kernel, norm=norm,
                       act=("leakyrelu", {"negative_slope": 0.2, "inplace": True}), bias=False)


class DoubleConv(nn.Module):
    """Two conv_norm_act layers, the first optionally strided: (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.a = conv_norm_act(cin, cout, stride)
        self.b = conv_norm_act(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def channel_stats(f: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C): per-channel spatial mean and std, the appearance ("style") statistics."""
    mean = f.mean(dim=(2, 3))
    std = (f.var(dim=(2, 3), unbiased=False) + eps).sqrt()
    return torch.cat([mean, std], dim=1)
