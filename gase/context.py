"""Through-plane context: the slice a 2D network segments, with its neighbours as extra input channels (2.5D).

A model card with ``architecture.context = {"slices": C, "spacing_mm": d}`` (C odd) segments slice ``s`` of the
canonical volume from C channels: the slice itself in the middle and, on either side, the image ``d``, ``2d``...
millimetres away along the slice normal. The neighbours are interpolated linearly between the volume's own
slices, so a scan with thinner or thicker slices than the training scans shows the network the same anatomy at
the same distances (clamped at the first and last slice). Without the field (C = 1) a model sees one slice.

Why: a 2D network cannot tell a structure from tissue that looks like it in one slice but not in the next
(below the prostate apex the fat inside the levator funnel, benchmark diagnosis of 2026-12-06).

>>> ctx = Context(3, 4.0)
>>> ctx.offsets(2.0).tolist()          # slices away from the centre, for a 2 mm scan
[-2.0, 0.0, 2.0]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:  # torch only where a tensor is stacked: a model card is read without it (the Slicer panel)
    import torch

MAX_CONTEXT_SLICES = 9


@dataclass(frozen=True)
class Context:
    """``slices`` input channels (odd; 1 = no context) spaced ``spacing_mm`` apart along the slice normal."""

    slices: int = 1
    spacing_mm: float = 0.0

    @property
    def centre(self) -> int:
        """The channel of the slice being segmented."""
        return self.slices // 2

    @property
    def used(self) -> bool:
        return self.slices > 1

    def offsets(self, slice_mm: float) -> np.ndarray:
        """Channel positions relative to the centre slice, in slices of a volume with ``slice_mm`` spacing."""
        if not self.used:
            return np.zeros(1)
        step = self.spacing_mm / max(float(slice_mm), 1e-6)
        return (np.arange(self.slices) - self.centre) * step

    def to_json(self) -> dict:
        return {"slices": self.slices, "spacing_mm": round(float(self.spacing_mm), 4)}

    @staticmethod
    def from_json(d: dict | None, where: str = "model.json") -> "Context":
        """The card's ``architecture.context`` (absent or None: no context); :class:`ModelError` if malformed."""
        if d is None:
            return Context()
        if not isinstance(d, dict):
            raise ModelError(f"{where}: architecture.context must be an object {{\"slices\": n, \"spacing_mm\": d}}.")
        n, sp = d.get("slices"), d.get("spacing_mm", 0.0)
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CONTEXT_SLICES and n % 2 == 1):
            raise ModelError(f"{where}: architecture.context.slices must be an odd number 1..{MAX_CONTEXT_SLICES}.")
        if not isinstance(sp, (int, float)) or isinstance(sp, bool) or not np.isfinite(sp) or \
                (n > 1 and not 0.05 <= sp <= 50):
            raise ModelError(f"{where}: architecture.context.spacing_mm must be a distance in mm (0.05..50).")
        return Context(n, float(sp))


def _positions(centres: np.ndarray, n: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, frac), each (B, C): the slices each channel lies between and its weight on the second."""
    pos = np.clip(np.asarray(centres, np.float64)[:, None] + np.asarray(offsets, np.float64)[None, :], 0, n - 1)
    i0 = np.floor(pos + 1e-9).astype(np.int64).clip(0, n - 1)
    frac = (pos - i0).clip(0.0, 1.0)
    frac[frac < 1e-6] = 0.0
    return i0, np.minimum(i0 + 1, n - 1), frac


def stack_array(canon: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Context stacks (B, C, H, W) float32 of the raw canonical slices ``canon`` (S, H, W) around ``centres``.

    Only the slices needed are read (``canon`` may be a strided view of a large volume). A channel that falls on
    a slice takes it exactly (the centre always does): a NaN in a neighbour never reaches the centre channel."""
    i0, i1, frac = _positions(centres, canon.shape[0], offsets)
    rows = np.unique(np.concatenate([i0.ravel(), i1[frac > 0].ravel()]))
    data = np.asarray(canon[rows], dtype=np.float32)
    j0, j1 = np.searchsorted(rows, i0), np.searchsorted(rows, i1)
    out = data[j0]  # (B, C, H, W): a copy
    blend = frac > 0
    if blend.any():
        f = frac[blend].astype(np.float32)[:, None, None]
        out[blend] = out[blend] * (1 - f) + data[j1[blend]] * f
    return out


def stack_tensor(volume: torch.Tensor, centres: torch.Tensor | np.ndarray, offsets: np.ndarray,
                 nearest: bool = False) -> torch.Tensor:
    """:func:`stack_array` for a tensor volume (S, H, W) -> (B, C, H, W) in its dtype; ``nearest`` takes the
    closest slice instead of interpolating (label maps)."""
    import torch

    centres = np.asarray(centres.cpu() if isinstance(centres, torch.Tensor) else centres)
    i0, i1, frac = _positions(centres, volume.shape[0], offsets)
    if nearest:
        return volume[torch.from_numpy(np.where(frac >= 0.5, i1, i0))]
    out = volume[torch.from_numpy(i0)]
    if (frac > 0).any():
        f = torch.from_numpy(frac.astype(np.float32))[:, :, None, None].to(volume.device)
        out = out.float() * (1 - f) + volume[torch.from_numpy(i1)].float() * f
    return out.to(volume.dtype)
