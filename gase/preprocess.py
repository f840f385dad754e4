"""Intensity normalisation and in-plane resampling, shared by training and inference.

Both run on canonical slices (see :mod:`gase.orientation`), so that a model sees the same kind of
input whether it is learning or predicting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .errors import InputError


@dataclass(frozen=True)
class Normalization:
    """Percentile normalisation: the ``low``..``high`` percentiles of the volume map to 0..1, then clip.

    Percentiles are taken over voxels above the volume's minimum (the air/background floor), so a large
    empty field of view does not decide the scaling.
    """

    low: float = 0.5
    high: float = 99.5
    clip: tuple[float, float] = (0.0, 1.0)

    def to_json(self) -> dict:
        return {"method": "percentile", "low": self.low, "high": self.high, "clip": list(self.clip)}

    @staticmethod
    def from_json(d: dict) -> "Normalization":
        return Normalization(float(d.get("low", 0.5)), float(d.get("high", 99.5)),
                             tuple(float(c) for c in d.get("clip", (0.0, 1.0))))  # type: ignore[arg-type]

    def intensity_range(self, array: np.ndarray, max_samples: int = 2_000_000,
                        device: torch.device | str | None = None) -> tuple[float, float]:
        """(lo, hi) intensities of ``array`` that map to 0 and 1. Raises for NaN/Inf or constant images.

        ``device``: a CUDA device sorts the sample there (the same percentiles, without tens of
        milliseconds of CPU partitioning in front of a GPU run)."""
        flat = _sample(array, max_samples)
        finite = np.isfinite(flat)
        if not finite.all():
            raise InputError(f"The image contains {int((~finite).sum())} NaN or infinite voxel values (in a "
                             "sample). Fix or mask them (e.g. replace with 0) before segmenting.")
        floor = flat.min()
        fg = flat[flat > floor]
        if fg.size < 0.001 * flat.size or fg.size == 0:
            raise InputError("The image is constant (every voxel has the same value); there is nothing to "
                             "segment. Check that the right image was loaded.")
        lo, hi = _percentiles(fg, (self.low, self.high), device)
        if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
            lo, hi = float(floor), float(fg.max())
        return float(lo), float(hi)

    def apply(self, array: np.ndarray, lo: float, hi: float) -> np.ndarray:
        out = (array.astype(np.float32) - lo) / max(hi - lo, 1e-6)
        return np.clip(out, *self.clip, out=out)

    def apply_tensor(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """:meth:`apply` for a tensor of any dtype, on its own device (float32, same arithmetic; ``x`` is
        never modified). Lets the predictor move raw int16 voxels to the GPU and normalise there."""
        out = (x.float() - lo) / max(hi - lo, 1e-6)
        return out.clamp_(*self.clip)


def _sample(array: np.ndarray, max_samples: int) -> np.ndarray:
    """About ``max_samples`` voxels of ``array`` spread over the volume, as a 1-D float32 array.

    A contiguous array gives every n-th row (reading a fraction of its memory, where a fine element
    stride would read all of it); a non-contiguous view is strided along every axis, so that only the
    sample is copied, never the whole volume."""
    step = max(1, int(np.ceil(array.size / max_samples)))
    if step == 1:
        flat = array.reshape(-1)
    elif array.flags.c_contiguous and array.ndim > 1 and array.shape[-1] * 64 <= max_samples:
        flat = array.reshape(-1, array.shape[-1])[::step].reshape(-1)
    elif array.flags.c_contiguous:
        flat = array.reshape(-1)[::step]
    else:
        flat = array[(slice(None, None, int(np.ceil(step ** (1 / array.ndim)))),) * array.ndim].reshape(-1)
    return flat.astype(np.float32, copy=False)


def _percentiles(values: np.ndarray, qs: tuple[float, float], device) -> tuple[float, float]:
    """Linear-interpolated percentiles ``qs`` (0..100) of 1-D ``values``, as :func:`numpy.percentile`;
    sorted on the GPU when ``device`` is a CUDA device."""
    if device is not None and torch.device(device).type == "cuda":
        try:
            return _percentiles_gpu(values, qs, device)
        except torch.cuda.OutOfMemoryError:  # the GPU is full: the CPU gives the same numbers
            torch.cuda.empty_cache()
    lo, hi = np.percentile(values, list(qs))
    return float(lo), float(hi)


def _percentiles_gpu(values: np.ndarray, qs: tuple[float, float], device) -> tuple[float, float]:
    ordered = torch.sort(torch.from_numpy(np.ascontiguousarray(values)).to(device)).values
    n = ordered.numel()
    pos = torch.tensor([q / 100.0 * (n - 1) for q in qs], dtype=torch.float64)
    i = pos.floor().long()
    a = ordered[i.to(device)].double().cpu()
    b = ordered[(i + 1).clamp(max=n - 1).to(device)].double().cpu()
    v = a + (b - a) * (pos - i)
    return float(v[0]), float(v[1])


def resample_slices(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size), bilinear (antialiased when shrinking) or nearest."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def working_size(hw: tuple[int, int], spacing_hw: tuple[float, float], model_spacing: float) -> tuple[int, int]:
    """In-plane size (rows, cols) after resampling ``hw`` pixels of ``spacing_hw`` mm to ``model_spacing``."""
    return tuple(max(8, int(round(n * s / model_spacing))) for n, s in zip(hw, spacing_hw))  # type: ignore[return-value]


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) at the bottom/right to multiples of ``divisor``; returns the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)
