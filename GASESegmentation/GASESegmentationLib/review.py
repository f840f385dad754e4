"""Low-confidence regions to review: connected voxels below a confidence threshold, in or near structures.

"Near" means within ``margin_mm`` millimetres (true distance, anisotropic spacing included) of a
predicted structure, so uncertain boundaries count but noise far out in the background does not.
Regions are 26-connected. Pure numpy/scipy on :class:`gase.volume.Volume` arrays: no Slicer needed.

>>> regions = find_regions(labels, confidence, label_table, threshold=0.5)   # doctest: +SKIP
>>> regions[0].centroid_ras, regions[0].volume_ml                           # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from gase.labels import LabelInfo
from gase.volume import Volume

SORT_KEYS = ("size", "confidence")


@dataclass(frozen=True)
class ReviewRegion:
    """One connected low-confidence region. ``centroid_ras`` is a voxel of the region (the one nearest its
    centre of mass, so it lies inside even a curved region), in RAS millimetres."""

    rank: int
    voxels: int
    volume_ml: float
    mean_confidence: float
    min_confidence: float
    centroid_ras: tuple[float, float, float]
    centroid_ijk: tuple[int, int, int]
    structure: str

    def describe(self) -> str:
        return (f"#{self.rank} {self.structure}: {self.volume_ml * 1000:.0f} mm\u00b3, mean confidence "
                f"{self.mean_confidence:.2f} (min {self.min_confidence:.2f})")


def near_structures(labels: Volume, margin_mm: float) -> np.ndarray:
    """Bool (K, J, I): voxels inside a predicted structure or within ``margin_mm`` of one."""
    foreground = labels.array > 0
    if margin_mm <= 0 or not foreground.any():
        return foreground
    spacing_kji = np.asarray(labels.spacing[::-1])
    pad = np.ceil(margin_mm / spacing_kji).astype(int) + 1
    # The distance transform only needs the foreground's bounding box plus the margin.
    box = ndimage.find_objects(foreground.astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, foreground.shape))
    distance = ndimage.distance_transform_edt(~foreground[box], sampling=spacing_kji)
    near = np.zeros_like(foreground)
    near[box] = distance <= margin_mm
    return near


def low_confidence_mask(labels: Volume, confidence: Volume, threshold: float, *, margin_mm: float = 3.0) -> Volume:
    """uint8 (K, J, I) mask of voxels with confidence < ``threshold`` in or near predicted structures."""
    if labels.shape != confidence.shape:
        raise ValueError(f"Labels {labels.shape} and confidence {confidence.shape} are on different grids.")
    mask = (confidence.array < threshold) & near_structures(labels, margin_mm)
    return labels.with_array(mask.astype(np.uint8))


def find_regions(labels: Volume, confidence: Volume, label_table: Sequence[LabelInfo], threshold: float, *,
                 margin_mm: float = 3.0, min_voxels: int = 5, sort_by: str = "size",
                 max_regions: int = 500) -> list[ReviewRegion]:
    """Connected low-confidence regions, largest first (``sort_by="size"``) or least confident first
    (``sort_by="confidence"``). Regions smaller than ``min_voxels`` are dropped as noise."""
    if sort_by not in SORT_KEYS:
        raise ValueError(f"sort_by must be one of {SORT_KEYS}, not {sort_by!r}.")
    mask = low_confidence_mask(labels, confidence, threshold, margin_mm=margin_mm).array.astype(bool)
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    keep = index[sizes >= min_voxels]
    if keep.size == 0:
        return []
    conf = confidence.array.astype(np.float64, copy=False)
    sums = np.bincount(components.ravel(), weights=conf.ravel(), minlength=count + 1)[1:]
    minima = np.asarray(ndimage.minimum(conf, components, keep), dtype=np.float64).reshape(-1)
    centres = np.asarray(ndimage.center_of_mass(mask, components, keep), dtype=np.float64).reshape(-1, 3)
    boxes = ndimage.find_objects(components)
    names = {lab.value: lab.name for lab in label_table}
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    spacing_kji = np.asarray(labels.spacing[::-1])
    regions = []
    for n, (label_id, centre, minimum) in enumerate(zip(keep, centres, minima)):
        box = boxes[label_id - 1]
        inside = components[box] == label_id
        voxel = _voxel_nearest(inside, centre - [s.start for s in box]) + np.array([s.start for s in box])
        k, j, i = (int(x) for x in voxel)
        ras = labels.ijk_to_ras @ np.array([i, j, k, 1.0])
        size = int(sizes[label_id - 1])
        regions.append(ReviewRegion(
            rank=0, voxels=size, volume_ml=size * voxel_ml,
            mean_confidence=float(sums[label_id - 1] / size), min_confidence=float(minimum),
            centroid_ras=(float(ras[0]), float(ras[1]), float(ras[2])), centroid_ijk=(i, j, k),
            structure=_structure_of(labels.array, box, inside, names, spacing_kji, margin_mm)))
    if sort_by == "size":
        regions.sort(key=lambda r: (-r.voxels, r.mean_confidence))
    else:
        regions.sort(key=lambda r: (r.mean_confidence, -r.voxels))
    return [ReviewRegion(**{**r.__dict__, "rank": n + 1}) for n, r in enumerate(regions[:max_regions])]


def _voxel_nearest(inside: np.ndarray, centre: np.ndarray) -> np.ndarray:
    points = np.argwhere(inside)
    return points[np.argmin(((points - centre) ** 2).sum(axis=1))]


def _structure_of(labels: np.ndarray, box: tuple[slice, ...], inside: np.ndarray, names: dict[int, str],
                  spacing_kji: np.ndarray, margin_mm: float) -> str:
    """The predicted structure the region lies in (most voxels), else the nearest one within the margin."""
    values = labels[box][inside]
    values = values[values > 0]
    if values.size:
        return names.get(int(np.bincount(values).argmax()), "structure")
    pad = np.ceil(max(margin_mm, 0.0) / spacing_kji).astype(int) + 1
    grown = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, labels.shape))
    region = np.zeros(tuple(g.stop - g.start for g in grown), bool)
    region[tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown))] = inside
    around = labels[grown]
    distance = ndimage.distance_transform_edt(~region, sampling=spacing_kji)
    candidates = (around > 0) & (distance <= margin_mm + 1e-6)
    if candidates.any():
        nearest = np.argmin(np.where(candidates, distance, np.inf))
        return "near " + names.get(int(around.ravel()[nearest]), "structure")
    return "near structures"


def slice_confidence(labels: Volume, confidence: Volume, reorientation,
                     threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per canonical slice: (mean confidence in predicted structures, fraction of structure voxels below
    ``threshold``). ``reorientation`` is :func:`gase.orientation.reorientation_for` of the model plane.
    NaN where a slice holds no structure. Both (S,) float64."""
    lab = reorientation.forward(labels.array) > 0
    conf = reorientation.forward(confidence.array)
    n = lab.shape[0]
    counts = lab.reshape(n, -1).sum(axis=1)
    sums = np.where(lab, conf, 0).reshape(n, -1).sum(axis=1, dtype=np.float64)
    low = (lab & (conf < threshold)).reshape(n, -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan), np.where(counts > 0, low / counts, np.nan)
