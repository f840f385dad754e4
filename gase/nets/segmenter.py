"""Segmentation-based discriminator D: a 2D U-Net with segmentation, real/fake and confidence heads.

One forward pass gives everything inference needs: segmentation logits, a per-pixel confidence
logit, and appearance statistics of the encoder used by the validity check. The real/fake heads
(image-level from the bottleneck, per-pixel from the decoder, as in U-Net GAN) are used only in
training and are skipped at inference (``heads="infer"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import DoubleConv, channel_stats, conv_norm_act


@dataclass
class SegOutput:
    """Shapes: logits (B, K, H, W); conf_logit (B, 1, H, W); features (B, F) for validity;
    fake_pixel (B, 1, H, W) and fake_image (B, 1) only when training heads are requested."""

    logits: torch.Tensor
    conf_logit: torch.Tensor
    features: torch.Tensor
    fake_pixel: torch.Tensor | None = None
    fake_image: torch.Tensor | None = None


class SegDiscriminator(nn.Module):
    """U-Net (B, C, H, W) -> :class:`SegOutput`; H and W must be divisible by 2**(len(channels)-1).

    ``in_channels`` (C, odd): the slice to segment with its neighbours on either side as extra channels
    (2.5D input, centre channel in the middle; 1: the slice alone). See :mod:`gase.context`."""

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (16, 24, 48, 96, 192), in_channels: int = 1):
        super().__init__()
        self.channels = tuple(channels)
        self.n_classes = n_classes
        self.in_channels = int(in_channels)
        # full resolution holds one conv per side: it dominates the cost on CPU, and the thin structures
        # (cartilage) are resolved by the skip connection, not by depth at that level.
        self.enc = nn.ModuleList([conv_norm_act(self.in_channels, channels[0])] +
                                 [DoubleConv(channels[i - 1], channels[i], stride=2) for i in range(1, len(channels))])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(channels[i], channels[i - 1], 2, stride=2))
            self.dec.append(DoubleConv(2 * channels[i - 1], channels[i - 1]) if i > 1
                            else conv_norm_act(2 * channels[i - 1], channels[i - 1]))
        c0, c1 = channels[0], channels[1]
        self.seg_head = nn.Conv2d(c0, n_classes, 1)
        # confidence: multi-scale decoder features (detached in training) + the softmax itself
        self.conf_head = nn.Sequential(nn.Conv2d(c0 + c1 + n_classes, 16, 1), nn.LeakyReLU(0.2),
                                       nn.Conv2d(16, 1, 3, padding=1))
        self.fake_pixel_head = nn.Conv2d(c0, 1, 1)
        self.fake_image_head = nn.Linear(channels[-1], 1)
        self.divisor = 2 ** (len(channels) - 1)
        self.feature_dim = 2 * (channels[-1] + channels[-2])

    def forward(self, x: torch.Tensor, heads: str = "infer", detach_conf: bool = True,
                feature_style=None, detach_adv: bool = False) -> SegOutput:
        """``feature_style(h, level)`` (training only) may re-style the shallow encoder features of
        levels 0 and 1 (see :class:`gase.training.augment.FeatureStyleMix`). ``detach_adv``: the real/fake
        heads read detached features, so D's adversarial loss trains the heads only (gradients to the
        input, which the generator step uses, still flow through the whole network when not detached)."""
        skips = []
        h = x
        for level, layer in enumerate(self.enc):
            h = layer(h)
            if feature_style is not None and level < 2:
                h = feature_style(h, level)
            skips.append(h)
        bottleneck = h
        feats = torch.cat([channel_stats(skips[-1]), channel_stats(skips[-2])], dim=1)
        dec_feats = []
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            h = dec(torch.cat([up(h), skip], dim=1))
            dec_feats.append(h)
        d0, d1 = dec_feats[-1], dec_feats[-2]
        logits = self.seg_head(d0)
        conf_in = torch.cat([d0, F.interpolate(d1, size=d0.shape[-2:], mode="bilinear", align_corners=False),
                             torch.softmax(logits, 1)], dim=1)
        if detach_conf:
            conf_in = conf_in.detach()  # confidence learning must not bend the segmentation features
        conf_logit = self.conf_head(conf_in)
        out = SegOutput(logits=logits, conf_logit=conf_logit, features=feats)
        if heads == "train":
            d_adv, b_adv = (d0.detach(), bottleneck.detach()) if detach_adv else (d0, bottleneck)
            out.fake_pixel = self.fake_pixel_head(d_adv)
            out.fake_image = self.fake_image_head(b_adv.mean(dim=(2, 3)))
        return out
