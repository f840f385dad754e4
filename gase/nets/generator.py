"""Style-learning generator G(y, w) -> image.

The label map y sets the layout through spatially-adaptive normalisation (SPADE); the style code w
sets the appearance through AdaIN-style modulation and an explicit per-class intensity term
(``class_mean(w)``), so that moving w moves tissue contrasts in an interpretable way. Per-pixel noise
injection gives texture. Output is one channel in the normalised intensity space (about 0..1).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SpadeAdaIN(nn.Module):
    """Instance-normalise h, then modulate by label-map (SPADE) and style-code (AdaIN) scale/shift."""

    def __init__(self, channels: int, n_classes: int, style_dim: int, hidden: int = 16):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(n_classes, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma_y = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta_y = nn.Conv2d(hidden, channels, 3, padding=1)
        self.affine_w = nn.Linear(style_dim, 2 * channels)

    def forward(self, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(y, size=h.shape[-2:], mode="nearest")
        s = self.shared(y)
        gw, bw = self.affine_w(w).chunk(2, dim=1)
        gamma = self.gamma_y(s) + gw[:, :, None, None]
        beta = self.beta_y(s) + bw[:, :, None, None]
        return self.norm(h) * (1 + gamma) + beta


class GenBlock(nn.Module):
    """Residual block: (SPADE-AdaIN -> LeakyReLU -> conv) x 2 with noise injection."""

    def __init__(self, cin: int, cout: int, n_classes: int, style_dim: int):
        super().__init__()
        self.n1 = SpadeAdaIN(cin, n_classes, style_dim)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.n2 = SpadeAdaIN(cout, n_classes, style_dim)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.noise_strength = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = self.c1(F.leaky_relu(self.n1(h, y, w), 0.2))
        out = out + self.noise_strength * torch.randn_like(out)
        out = self.c2(F.leaky_relu(self.n2(out, y, w), 0.2))
        return out + self.skip(h)


class StyleGenerator(nn.Module):
    """(B, K + C, H, W) layout + (B, style_dim) style -> (B, 1, H, W) image. H, W divisible by 4.

    The layout is the one-hot label map (K channels), followed by ``content_channels`` (C) channels of
    unlabelled anatomy: a style-scrambled rendering of the real image (random intensity curve), so
    that the tissues nobody labelled (muscle, fat, patella, fluid...) keep their shapes in the
    synthetic image instead of becoming a blur. With C = 0 the generator sees the labels only.
    """

    def __init__(self, n_classes: int, style_dim: int = 64, channels: tuple[int, int, int] = (16, 32, 64),
                 content_channels: int = 0):
        super().__init__()
        c0, c1, c2 = channels
        n_layout = n_classes + content_channels
        self.stem = nn.Conv2d(n_layout, c0, 3, padding=1)
        self.down1 = nn.Conv2d(c0, c1, 4, stride=2, padding=1)
        self.down2 = nn.Conv2d(c1, c2, 4, stride=2, padding=1)
        self.mid = GenBlock(c2, c2, n_layout, style_dim)
        self.up1 = GenBlock(c2 + c1, c1, n_layout, style_dim)
        self.up0 = GenBlock(c1 + c0, c0, n_layout, style_dim)
        self.to_img = nn.Conv2d(c0, 1, 1)
        self.class_mean = nn.Linear(style_dim, n_classes)
        self.n_classes = n_classes
        self.content_channels = content_channels

    def forward(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h0 = F.leaky_relu(self.stem(y), 0.2)
        h1 = F.leaky_relu(self.down1(h0), 0.2)
        h2 = F.leaky_relu(self.down2(h1), 0.2)
        h = self.mid(h2, y, w)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = self.up1(torch.cat([h, h1], 1), y, w)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = self.up0(torch.cat([h, h0], 1), y, w)
        base = (y[:, :self.n_classes] * self.class_mean(w)[:, :, None, None]).sum(1, keepdim=True)
        return base + self.to_img(F.leaky_relu(h, 0.2))
