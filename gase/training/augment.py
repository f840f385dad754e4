"""Batched augmentation and style diversification, on the training device.

- :func:`standard_augment`: what every method gets (rotation/scale, gamma, noise, bias): the "ERM" recipe.
- :func:`random_curves`: random intensity curves per class and/or globally (non-monotone allowed, so
  contrasts can invert), the location-scale style extrapolation of SLAug/BigAug. Class masks are
  softened so that no hard label edge is painted into the image (that would be a shortcut).
- :func:`suppress_bright`: the brightest tissue suppressed (fat saturation, water excitation, STIR), no labels.
- :func:`organ_warp`: one structure grown or shrunk within its surroundings (image and labels together), so
  that a structure's size cannot be read off the anatomy around it.
- :func:`diversify_styles`: GASE's style-space interpolation/extrapolation and mapping-network samples.
- :func:`gaussian_cutout`: random Gaussian-shaped occlusions that regularise the discriminator.

Shapes: images (B, 1, H, W) float in about 0..1, labels (B, H, W) int64. A model with through-plane context
(:mod:`gase.context`) trains on stacks (B, C, H, W) with labels (B, C, H, W): every function draws one set of
random parameters per stack and applies it to all its channels (one scan has one style and one pose).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _rand(gen: torch.Generator, *shape, lo=0.0, hi=1.0, device="cpu") -> torch.Tensor:
    return (torch.rand(*shape, generator=gen) * (hi - lo) + lo).to(device)


def standard_augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation (+-15 deg), scale (0.85-1.15), gamma (0.7-1.5), smooth bias field and Gaussian noise."""
    b, dev = x.shape[0], x.device
    ang = _rand(gen, b, lo=-math.pi / 12, hi=math.pi / 12, device=dev)
    sc = _rand(gen, b, lo=0.85, hi=1.15, device=dev)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    yy = y[:, None] if y.dim() == 3 else y  # (B, H, W) or context labels (B, C, H, W)
    yy = F.grid_sample(yy.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
    y = yy[:, 0] if y.dim() == 3 else yy
    gamma = torch.exp(_rand(gen, b, 1, 1, 1, lo=math.log(0.7), hi=math.log(1.5), device=dev))
    x = x.clamp(0, 1) ** gamma
    x = x * smooth_field(gen, x.shape, strength=0.25, device=dev)
    sigma = _rand(gen, b, 1, 1, 1, lo=0.0, hi=0.05, device=dev)
    x = x + sigma * torch.randn(x.shape, generator=gen).to(dev)
    return x, y


def smooth_field(gen: torch.Generator, shape, strength: float, device="cpu") -> torch.Tensor:
    """A smooth multiplicative field around 1 (coil-bias-like), (B, 1, H, W)."""
    b, _, h, w = shape
    coarse = torch.randn(b, 1, 4, 4, generator=gen).to(device) * strength
    return torch.exp(F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False))


def _curve_lut(gen: torch.Generator, n: int, knots: int = 6, device="cpu") -> torch.Tensor:
    """(n, 256) random intensity curves on 0..1: random knot values, piecewise linear, mildly smoothed."""
    vals = torch.rand(n, knots, generator=gen)
    lut = F.interpolate(vals[:, None], size=256, mode="linear", align_corners=True)[:, 0]
    return lut.to(device)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x (N, P) in 0..1, lut (N, 256) -> (N, P), linear interpolation in the table."""
    pos = x.clamp(0, 1) * 255
    i0 = pos.floor().long().clamp(0, 254)
    frac = pos - i0
    return torch.gather(lut, 1, i0) * (1 - frac) + torch.gather(lut, 1, i0 + 1) * frac


def global_curve(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image re-rendered through one random intensity curve (no label masks): a style-scrambled
    copy that keeps every tissue's shape, used as the generator's content channel."""
    b = x.shape[0]
    return _apply_lut(x.reshape(b, -1), _curve_lut(gen, b, device=x.device)).reshape_as(x)


def random_curves(x: torch.Tensor, y: torch.Tensor, n_classes: int, gen: torch.Generator,
                  per_class_prob: float = 0.8, flatten_prob: float = 0.0) -> torch.Tensor:
    """Re-render each image with random intensity curves, per class (prob ``per_class_prob``) or global.

    Class masks are blurred (sigma ~1.5 px) before blending, so boundaries stay as soft as the image's.
    ``flatten_prob``: the chance that a class's curve is squeezed towards one random level (its spread
    kept at 0-30%), so the tissues inside one label lose their contrast to each other: fat-suppressed
    marrow and cortex become one dark bone, which a curve over the source image's intensities rarely
    draws (both tissues need a low value on independent knots). See :func:`flatten_luts`.
    """
    b, c, h, w = x.shape
    dev = x.device
    flat = x.reshape(b, -1)
    global_lut = _curve_lut(gen, b, device=dev)
    out = _apply_lut(flat, global_lut).reshape_as(x)
    use_class = (torch.rand(b, generator=gen) < per_class_prob).to(dev)
    if use_class.any():
        yy = (y[:, None] if y.dim() == 3 else y).clamp(0, n_classes - 1)  # (B, C, H, W)
        onehot = F.one_hot(yy, n_classes).permute(0, 1, 4, 2, 3).reshape(b * c, n_classes, h, w).float()
        k = torch.tensor([0.05, 0.25, 0.4, 0.25, 0.05], device=dev)
        kern = (k[:, None] * k[None, :])[None, None].repeat(n_classes, 1, 1, 1)
        soft = F.conv2d(onehot, kern, padding=2, groups=n_classes).reshape(b, c, n_classes, h, w)
        soft = soft / soft.sum(2, keepdim=True).clamp_min(1e-6)
        luts = _curve_lut(gen, b * n_classes, device=dev)
        if flatten_prob > 0:
            luts = flatten_luts(luts, gen, flatten_prob)
        per = _apply_lut(flat.repeat_interleave(n_classes, 0), luts).reshape(b, n_classes, c, h, w)
        class_img = (per.transpose(1, 2) * soft).sum(2)
        out = torch.where(use_class[:, None, None, None], class_img, out)
    return out


def flatten_luts(luts: torch.Tensor, gen: torch.Generator, prob: float, max_spread: float = 0.3) -> torch.Tensor:
    """Each curve of ``luts`` (N, 256), with probability ``prob``: ``level + s (lut - mean(lut))`` with a
    random level in 0..1 and s in 0..``max_spread``, clamped to 0..1 (a class rendered nearly uniform)."""
    n = luts.shape[0]
    pick = (torch.rand(n, 1, generator=gen) < prob).to(luts.device)
    level = _rand(gen, n, 1, device=luts.device)
    spread = _rand(gen, n, 1, hi=max_spread, device=luts.device)
    flat = (level + spread * (luts - luts.mean(1, keepdim=True))).clamp(0, 1)
    return torch.where(pick, flat, luts)


def suppress_bright(x: torch.Tensor, gen: torch.Generator, levels: tuple[float, float] = (0.4, 0.9),
                    fg_level: float = 0.05) -> torch.Tensor:
    """Each image re-rendered as if its brightest tissue had been suppressed, the way fat saturation, water
    excitation or an inversion pulse removes fat (bright on the T1, PD and T2 spin-echo scans a model is
    usually trained on): where the lightly blurred image (its 3x3 maximum) is above a random level in
    ``levels`` (a tissue decision, so noise inside one tissue does not speckle), the intensity is scaled
    down by 80-100%; then the image is rescaled so that its 99.5th foreground percentile (voxels above
    ``fg_level``) is 1 again, as :class:`gase.preprocess.Normalization` does for a real fat-suppressed scan.

    A level between fat and fluid leaves fluid bright in a dark surround (STIR, PD-FS); a lower one also
    darkens fluid (T1-weighted Dixon water images). Inside one label, bright marrow falls to the level of
    dark cortex, so a per-class curve drawn afterwards renders the bone as one dark region. No labels are
    used: nothing is painted along a label edge."""
    b, c, h, w = x.shape
    dev = x.device
    xf = x.float().clamp(0, 1)
    k = torch.tensor([0.25, 0.5, 0.25], device=dev)
    smooth = F.conv2d(F.pad(xf.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate"),
                      (k[:, None] * k[None, :])[None, None]).reshape(b, c, h, w)
    smooth = F.max_pool2d(smooth, 3, stride=1, padding=1)  # a bright tissue's edge voxels go with it: no bright rim
    t = _rand(gen, b, 1, 1, 1, lo=levels[0], hi=levels[1], device=dev)
    width = _rand(gen, b, 1, 1, 1, lo=0.01, hi=0.04, device=dev)
    strength = _rand(gen, b, 1, 1, 1, lo=0.8, hi=1.0, device=dev)
    out = xf * (1 - strength * torch.sigmoid((smooth - t) / width))
    flat, fg = out.reshape(b, -1), xf.reshape(b, -1) > fg_level
    n_fg = fg.sum(1).clamp_min(1)
    ordered = torch.where(fg, flat, torch.full_like(flat, float("inf"))).sort(1).values
    hi = ordered.gather(1, ((n_fg - 1).float() * 0.995).long()[:, None])
    hi = torch.where(torch.isfinite(hi), hi, torch.ones_like(hi)).clamp_min(0.05)
    return (out / hi[:, :, None, None]).clamp(0, 1).to(x.dtype)


def random_shallow_conv(x: torch.Tensor, gen: torch.Generator, layers: int = 4, width: int = 2) -> torch.Tensor:
    """Each image re-rendered by its own randomly initialised shallow convolutional network (GIN, Ouyang et
    al. 2022): ``layers`` convolutions of random kernel size (1 or 3) and weights, leaky ReLU between them,
    then blended with the input by a random factor and rescaled to 0..1. Changes local texture and the
    intensity relations of neighbouring tissues, which a curve over intensity cannot; the labels stay exact
    (3x3 kernels move no boundary by more than ``layers`` pixels of blur)."""
    b, c, h, w = x.shape
    dev = x.device
    out = x.transpose(0, 1)  # (C, B, H, W): a stack's channels go through the same network
    c_in = 1
    for i in range(layers):
        c_out = 1 if i == layers - 1 else width
        k = 1 if float(torch.rand(1, generator=gen)) < 0.5 else 3
        wt = torch.randn(b * c_out, c_in, k, k, generator=gen).to(dev, x.dtype)
        bias = (torch.randn(b * c_out, generator=gen) * 0.1).to(dev, x.dtype)
        out = F.conv2d(out, wt, bias, padding=k // 2, groups=b)
        if i < layers - 1:
            out = F.leaky_relu(out, 0.2)
        c_in = c_out
    out = out.transpose(0, 1)
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    out = (out - lo) / (hi - lo).clamp_min(1e-6)
    alpha = _rand(gen, b, 1, 1, 1, device=dev)
    return alpha * out + (1 - alpha) * x.clamp(0, 1)


def organ_warp(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, prob: float,
               scale: tuple[float, float] = (0.7, 1.35), max_share: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow or shrink one labelled structure within its surroundings, image and labels alike.

    With chance ``prob`` per crop, one structure of the (centre slice's) labels is picked at random among
    those present that cover less than ``max_share`` of the crop (organs, not the body), and the crop is
    warped radially about the structure's centroid: by a factor drawn log-uniformly from ``scale`` over the
    structure, fading to none within about its radius further out (a flat-topped profile, exp(-(r/R)^6) with R
    1.5 times the structure's equivalent radius), so the tissue right around it is squeezed or stretched while
    the anatomy beyond stays where it was. The warp is a smooth monotone map, the same for the
    image (bilinear) and the labels (nearest) and for every channel of a context stack.

    Why: with a handful of training subjects the network learns a structure's size from its surroundings.
    Where the structure's edge is faint (the phantom prostate against fat on T2 FSE before the phantom drew
    its capsule, 7 Dec), it then draws the size it saw in training, and the small glands of new subjects
    come out twice too large, with a confidence that cannot tell (``python -m benchmarks.diagnose MODEL
    --reliability``). Warped crops keep the structure's inner pattern (a prostate's transition zone scales
    with it) and decouple its size from the anatomy around it. Measured on the pelvis at 2000 iterations
    (``TrainConfig.organ_warp_prob``, off by default; numbers in :mod:`gase.training.loop`): the over-segmentation shrank (1.78 -> 1.64 times the
    true size) but did not go away, and the quality ranking did not improve.
    """
    if not 0.66 <= scale[0] <= scale[1] <= 2.0:
        raise ValueError(f"organ_warp: scale {scale} would fold the image; use factors from 0.66 to 2.")
    if prob <= 0:
        return x, y
    b, _, h, w = x.shape
    dev = x.device
    u_apply, u_pick, u_scale = (torch.rand(b, generator=gen) for _ in range(3))
    yc = y if y.dim() == 3 else y[:, y.shape[1] // 2]  # the slice being segmented decides
    n = int(yc.max()) + 1
    counts = F.one_hot(yc.reshape(b, -1).long(), n).sum(1).cpu()  # (B, n) voxels per label
    lo, hi = math.log(scale[0]), math.log(scale[1])
    yy = torch.arange(h, device=dev, dtype=torch.float32)[:, None].expand(h, w)
    xx = torch.arange(w, device=dev, dtype=torch.float32)[None, :].expand(h, w)
    grids = []
    for i in range(b):
        cy = cx = 0.0
        k, r0 = 1.0, 1.0
        if float(u_apply[i]) < prob:
            ok = [c for c in range(1, n) if 0 < int(counts[i, c]) < max_share * h * w]
            if ok:
                c = ok[min(len(ok) - 1, int(float(u_pick[i]) * len(ok)))]
                m = yc[i] == c
                cy, cx = float(yy[m].mean()), float(xx[m].mean())
                r0 = math.sqrt(int(counts[i, c]) / math.pi)
                k = math.exp(lo + float(u_scale[i]) * (hi - lo))
        dy, dx = yy - cy, xx - cx
        # sample the input at centre + d * f(|d|): f = 1/k over the structure, 1 far away; monotone (no fold)
        # while 1 + (1/k - 1) * min_t exp(-t) (1 - 6t) = 1 - 1.868 (1/k - 1) > 0, that is k > 0.652
        f = 1.0 + (1.0 / k - 1.0) * torch.exp(-(((dy * dy + dx * dx) / (1.5 * r0) ** 2) ** 3))
        sy, sx = cy + dy * f, cx + dx * f
        grids.append(torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], -1))
    grid = torch.stack(grids).to(x.dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    yy4 = y[:, None] if y.dim() == 3 else y
    yy4 = F.grid_sample(yy4.float(), grid.float(), mode="nearest", padding_mode="border", align_corners=False).long()
    return x, (yy4[:, 0] if y.dim() == 3 else yy4)


def gaussian_cutout(x: torch.Tensor, gen: torch.Generator, prob: float) -> torch.Tensor:
    """Multiply random images by 1 - a Gaussian blob (random centre, size 10-30% of the image)."""
    b, _, h, w = x.shape
    dev = x.device
    apply = (torch.rand(b, generator=gen) < prob).to(dev)
    cy, cx = _rand(gen, b, device=dev) * h, _rand(gen, b, device=dev) * w
    s = _rand(gen, b, lo=0.1, hi=0.3, device=dev) * min(h, w)
    yy = torch.arange(h, device=dev, dtype=x.dtype)[None, :, None]
    xx = torch.arange(w, device=dev, dtype=x.dtype)[None, None, :]
    blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * s[:, None, None] ** 2))
    mask = 1 - blob * apply[:, None, None].float()
    return x * mask[:, None]


def diversify_styles(w: torch.Tensor, mapped: torch.Tensor, gen: torch.Generator,
                     extrapolation: tuple[float, float]) -> torch.Tensor:
    """New style codes: lerp(w_a, w_b, a) with a in ``extrapolation`` (beyond 0..1 extrapolates) for half
    the batch, mapping-network samples ``mapped`` for the other half."""
    b = w.shape[0]
    perm = torch.randperm(b, generator=gen).to(w.device)
    a = _rand(gen, b, 1, lo=extrapolation[0], hi=extrapolation[1], device=w.device)
    lerp = w + a * (w[perm] - w)
    pick = (torch.rand(b, 1, generator=gen) < 0.5).to(w.device)
    return torch.where(pick, lerp, mapped)


class FeatureStyleMix:
    """Style interpolation/extrapolation in feature space: the channel means/stds of shallow segmenter
    features (the same statistics the style encoder reads as "style") of a random subset of the batch
    are replaced by ``lerp(own, other's, a)`` with ``a`` in ``extrapolation``, plus a Gaussian jitter
    of their spread across the batch (DSU-like uncertainty). Anatomy (the normalised feature map) is
    kept, so the labels stay exact. One instance per forward pass: the same partner and ``a`` per sample
    at every level. A ``prob`` of 0 leaves the features untouched.
    """

    def __init__(self, batch: int, gen: torch.Generator, prob: float, extrapolation: tuple[float, float],
                 device, keep_first: int = 0):
        self.prob = prob
        apply = torch.rand(batch, generator=gen) < prob
        apply[:keep_first] = False  # e.g. the real, un-augmented view keeps its own statistics
        self.apply = apply.to(device)[:, None, None, None]
        self.perm = torch.randperm(batch, generator=gen).to(device)
        self.a = _rand(gen, batch, 1, 1, 1, lo=extrapolation[0], hi=extrapolation[1], device=device)
        self._noise: dict[tuple[int, int], torch.Tensor] = {}
        self.gen = gen

    def __call__(self, h: torch.Tensor, level: int) -> torch.Tensor:
        if self.prob <= 0 or not bool(self.apply.any()):
            return h
        mu = h.mean(dim=(2, 3), keepdim=True)
        sig = (h.var(dim=(2, 3), keepdim=True) + 1e-5).sqrt()
        normed = (h - mu) / sig
        mu_t, sig_t = mu.detach(), sig.detach()
        mu_new = mu_t + self.a * (mu_t[self.perm] - mu_t)
        sig_new = (sig_t + self.a * (sig_t[self.perm] - sig_t)).clamp_min(1e-3)
        key = (level, h.shape[1])
        if key not in self._noise:
            self._noise[key] = torch.randn((2, *mu.shape), generator=self.gen).to(h.device, h.dtype)
        eps = self._noise[key]
        mu_new = mu_new + eps[0] * mu_t.std(dim=0, keepdim=True)
        sig_new = (sig_new + eps[1] * sig_t.std(dim=0, keepdim=True)).clamp_min(1e-3)
        return torch.where(self.apply, normed * sig_new + mu_new, h)
