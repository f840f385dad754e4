"""Reorient a volume to the model's slice plane, and back.

A model sees 2D slices in one anatomical plane with a fixed in-plane layout. Any stored orientation
(axial, flipped, permuted, mildly oblique) is brought to that layout by permuting and flipping voxel
axes, chosen from the direction matrix by nearest anatomical axis. No resampling happens, so the
result maps back to the input grid voxel for voxel.

Canonical layouts (array ``(S, H, W)``: slice, row, column):

======== ============================ ============================ ============================
plane    slice axis (increasing)      rows (top to bottom)         columns (left to right)
======== ============================ ============================ ============================
sagittal R (left to right of patient) S to I (superior on top)     A to P (anterior on the left)
coronal  A (posterior to anterior)    S to I                       R to L (radiological)
axial    S (inferior to superior)     A to P                       R to L (radiological)
======== ============================ ============================ ============================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GeometryError, InputError
from .volume import Volume

PLANES = ("sagittal", "coronal", "axial")

# For each plane: RAS axis index and sign for (slice, row, column); sign +1 means the index grows
# along +RAS axis (R, A, S).
_LAYOUT = {
    "sagittal": ((0, +1), (2, -1), (1, -1)),
    "coronal": ((1, +1), (2, -1), (0, -1)),
    "axial": ((2, +1), (1, -1), (0, -1)),
}


@dataclass(frozen=True)
class Reorientation:
    """How an input array (K, J, I) maps to the canonical (S, H, W) array.

    ``axes[n]`` is the input array axis (0 = k, 1 = j, 2 = i) that becomes canonical axis n;
    ``flips[n]`` says whether it is reversed. ``spacing`` is (slice, row, column) spacing in mm.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]

    def forward(self, array: np.ndarray) -> np.ndarray:
        """(K, J, I) input-ordered array -> (S, H, W) canonical view (no copy)."""
        out = np.transpose(array, self.axes)
        idx = tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)
        return out[idx]

    def backward(self, array: np.ndarray) -> np.ndarray:
        """(S, H, W) canonical array -> (K, J, I) input-ordered array (no copy)."""
        idx = tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)
        out = array[idx]
        inverse = tuple(int(np.argsort(self.axes)[n]) for n in range(3))
        return np.transpose(out, inverse)


def reorientation_for(volume: Volume, plane: str, *, max_obliquity_deg: float = 40.0) -> Reorientation:
    """The permutation and flips bringing ``volume`` into the canonical layout of ``plane``."""
    if plane not in _LAYOUT:
        raise InputError(f"Unknown slice plane {plane!r}; use one of {', '.join(PLANES)}.")
    d = volume.direction  # columns: RAS direction of i, j, k
    # voxel axis (i=0, j=1, k=2) -> nearest RAS axis
    ras_of_voxel = np.argmax(np.abs(d), axis=0)
    if len(set(ras_of_voxel.tolist())) != 3:
        raise GeometryError("Two image axes point along the same anatomical direction; the direction "
                            "matrix is degenerate. Fix the image header.")
    cos = np.abs(d[ras_of_voxel, np.arange(3)])
    worst = float(np.degrees(np.arccos(np.clip(cos.min(), -1.0, 1.0))))
    if worst > max_obliquity_deg:
        raise GeometryError(f"The image is {worst:.0f} degrees oblique to the nearest anatomical axis; "
                            "resample it to a plane aligned with the patient axes first.")
    axes, flips, spacing = [], [], []
    spacing_ijk = volume.spacing
    for ras_axis, sign in _LAYOUT[plane]:
        vox = int(np.where(ras_of_voxel == ras_axis)[0][0])  # 0=i, 1=j, 2=k
        array_axis = 2 - vox  # array is [k, j, i]
        positive = d[ras_axis, vox] > 0
        axes.append(array_axis)
        flips.append(bool(positive != (sign > 0)))
        spacing.append(float(spacing_ijk[vox]))
    return Reorientation(tuple(axes), tuple(flips), tuple(spacing))  # type: ignore[arg-type]


def plane_of_slices(volume: Volume) -> str:
    """The anatomical plane that the volume's k axis (its stored slices) is normal to."""
    ras_axis = int(np.argmax(np.abs(volume.direction[:, 2])))
    return ("sagittal", "coronal", "axial")[ras_axis]
