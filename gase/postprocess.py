"""Anatomical post-processing learned from the training labels: structures that are one connected object.

A femur, a tibia, a bladder is one piece in every labelled scan; a slice-wise segmenter can still label
a bright blob elsewhere in the volume as bone (measured on the knee benchmark: the GASE model labelled
soft tissue in the outermost sagittal slices as tibia, 38,500 false voxels next to 56,500 true ones;
keeping the largest connected part lifted that volume's tibia Dice from 0.73 to 0.96).

Training finds the labels that form a single connected object in every training label map
(:func:`single_object_labels`) and writes them into the model card; the predictor then keeps only the
largest connected component of each (:func:`keep_largest_component`). Which labels qualify is learned
from the user's own annotations, not hard-coded: thin structures (cartilage) and structures in several
pieces (pelvic bones) do not.

A structure can also stay attached to a false region through a neck: on fat-suppressed knee scans the
segmenter labels the dark fat and muscle below the tibia as tibia, and the false part touches the bone
(benchmark, data seed 1, FLASH water excitation: tibia Dice 0.85). For each single-object label, training
also learns the largest ball radius (of :data:`OPENING_RADII_MM`) by which a morphological opening keeps
>= 99% of the structure in every training map (:func:`opening_radii`); the predictor then keeps only what
lies within that radius of the largest connected part of the eroded prediction (:func:`keep_opened_component`):
parts joined to the structure by a neck narrower than the ball go. Same models, without -> with the opening
(``benchmarks/results/cpu-1000-data1-pp``; radii knee femur 2 / tibia 5 mm, pelvis 3-4 mm): FLASH-WE tibia
0.848 -> 0.936, mean unseen-style Dice knee 0.839 -> 0.852 and pelvis 0.770 -> 0.779, source 0.880 -> 0.886
and 0.871 -> 0.877; checked first on 6 subjects per style of another seed stream (150): knee unseen 0.833 ->
0.849, pelvis 0.752 -> 0.763.

Not MONAI's ``KeepLargestConnectedComponent``: it labels the whole full-resolution volume with
``skimage.measure.label`` (an int64 component map, 3.4 GB on a 1024 x 1024 x 400 scan, against the
4 GB budget of ``gase segment``) and knows nothing of the confidence map, which must follow the edit.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

# the largest 6-connected part must hold this share of a label's voxels in every training map (annotation
# specks allowed): knee femoral cartilage (0.984-0.996) and pelvic bone (0.56) fail it, femur/tibia/bladder pass
SINGLE_OBJECT_FRACTION = 0.99
MAX_GRID_VOXELS = 1 << 25  # connected components are labelled on a grid of at most this size (int32: 128 MB)
OPENING_GRID_VOXELS = 1 << 22  # the opening's distance transforms run on at most this many cells (~50 bytes each)
# ball radii (mm) tried for the opening of a single-object label, smallest first
OPENING_RADII_MM = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0)


def largest_component_fraction(mask: np.ndarray) -> float:
    """Share of ``mask``'s voxels in its largest 6-connected component (NaN for an empty mask)."""
    comp, n = ndimage.label(mask)
    if n == 0:
        return float("nan")
    sizes = np.bincount(comp.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def single_object_labels(label_maps: Iterable[np.ndarray], values: Sequence[int],
                         fraction: float = SINGLE_OBJECT_FRACTION) -> list[int]:
    """The ``values`` that form one connected object in every label map that contains them (and occur in
    at least one)."""
    seen: dict[int, bool] = {}
    for labels in label_maps:
        for v in values:
            f = largest_component_fraction(np.asarray(labels) == v)
            if math.isfinite(f):
                seen[v] = seen.get(v, True) and f >= fraction
    return [v for v in values if seen.get(v, False)]


def _grid_factor(shape: tuple[int, ...], max_voxels: int) -> int:
    f = 1
    while math.prod(math.ceil(n / f) for n in shape) > max_voxels:
        f += 1
    return f


def _block_any(plane: np.ndarray, f: int) -> np.ndarray:
    """(J, I) bool -> (ceil(J/f), ceil(I/f)): True where any voxel of the f x f block is."""
    j, i = plane.shape
    padded = np.zeros((math.ceil(j / f) * f, math.ceil(i / f) * f), dtype=bool)
    padded[:j, :i] = plane
    return padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).any(axis=(1, 3))


def keep_largest_component(labels: np.ndarray, confidence: np.ndarray, value: int,
                           max_grid_voxels: int = MAX_GRID_VOXELS) -> tuple[int, float]:
    """Set every voxel of ``value`` outside its largest 6-connected component to background, in place.

    The confidence of a removed voxel becomes ``1 - c`` (c: the probability that it was ``value``): an
    upper bound of the probability that background is right, so the region still shows as uncertain
    where the model was unsure. Returns (voxels removed, their confidence summed before the change).

    Memory stays bounded on any volume: components are found on a grid coarsened by the smallest integer
    factor that brings it under ``max_grid_voxels`` (a coarse cell belongs to the structure if any of its
    voxels does, so nearby pieces may merge: the rule only ever keeps more); the volume is then edited
    slab by slab.
    """
    f = _grid_factor(labels.shape, max_grid_voxels)
    if f == 1:
        grid = labels == value
    else:
        grid = np.zeros(tuple(math.ceil(n / f) for n in labels.shape), dtype=bool)
        for g, k in enumerate(range(0, labels.shape[0], f)):
            grid[g] = _block_any((labels[k:k + f] == value).any(axis=0), f)
    comp, n = ndimage.label(grid)
    del grid
    if n <= 1:
        return 0, 0.0
    keep = int(np.argmax(np.bincount(comp.ravel())[1:])) + 1
    whole = tuple(slice(0, n) for n in labels.shape)
    return _drop_outside(labels, confidence, value, whole, f, lambda g: comp[g] == keep)


def _drop_outside(labels: np.ndarray, confidence: np.ndarray, value: int, box: tuple[slice, ...], f: int,
                  kept_cells) -> tuple[int, float]:
    """Set the voxels of ``value`` in ``box`` outside the kept cells to background, in place, slab of f slices
    by slab; ``kept_cells(g)``: the (J', I') bool cells of coarse slab g (cells of f x f voxels). The
    confidence of a removed voxel becomes ``1 - c``. Returns (voxels removed, their confidence summed before)."""
    shape = tuple(b.stop - b.start for b in box)
    removed, conf_removed = 0, 0.0
    for g, k in enumerate(range(box[0].start, box[0].stop, f)):
        e = min(k + f, box[0].stop)
        slab, conf = labels[k:e, box[1], box[2]], confidence[k:e, box[1], box[2]]  # views
        kept = kept_cells(g)
        if f > 1:
            kept = np.repeat(np.repeat(kept, f, axis=0), f, axis=1)[:shape[1], :shape[2]]
        drop = (slab == value) & ~kept
        if drop.any():
            c = conf[drop]
            removed += int(drop.sum())
            conf_removed += float(c.sum(dtype=np.float64))
            slab[drop] = 0
            conf[drop] = 1.0 - c
    return removed, conf_removed


def _reach_of_core(mask: np.ndarray, inside: np.ndarray, radius_mm: float, spacing_kji) -> np.ndarray | None:
    """The voxels of ``mask`` within ``radius_mm`` of the largest 6-connected part of its erosion by a ball of
    that radius (``inside``: the mask's distance transform, mm). None when the erosion leaves nothing."""
    comp, n = ndimage.label(inside > radius_mm)
    if n == 0:
        return None
    core = comp == int(np.argmax(np.bincount(comp.ravel())[1:])) + 1
    del comp
    return mask & (ndimage.distance_transform_edt(~core, sampling=spacing_kji) <= radius_mm)


def opened_fraction(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float]) -> float:
    """Share of ``mask``'s voxels that the opening of :func:`keep_opened_component` keeps (0 when the ball
    does not fit anywhere, NaN for an empty mask)."""
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
    kept = _reach_of_core(mask, inside, radius_mm, spacing_kji)
    return 0.0 if kept is None else float(kept.sum() / n)


def opening_radii(label_maps: Iterable[tuple[np.ndarray, Sequence[float]]], values: Sequence[int],
                  fraction: float = SINGLE_OBJECT_FRACTION, radii: Sequence[float] = OPENING_RADII_MM,
                  max_grid_voxels: int = 4 * OPENING_GRID_VOXELS) -> dict[int, float]:
    """For each of ``values`` (single-object labels): the largest radius of ``radii`` (ascending, mm) such that
    the opening keeps >= ``fraction`` of the label's voxels in every map, trying radii in order and stopping at
    the first that fails. ``label_maps``: (labels (K, J, I), voxel size along K, J, I in mm). Labels for which
    even the smallest radius fails are left out. Each label is measured on its bounding box, coarsened as in
    :func:`keep_opened_component` when the box is over ``max_grid_voxels`` (then its cells are counted, not its
    voxels, and a structure one or two voxels thick may pass a small ball; at full resolution such a structure
    is left whole, as nothing of it is thick enough to hold the ball)."""
    best: dict[int, int] = {v: len(radii) for v in values}  # index past the last radius still allowed
    for labels, spacing in label_maps:
        for v in values:
            if best[v] == 0:
                continue
            boxed = _boxed_grid(np.asarray(labels), v, max(radii), spacing, max_grid_voxels)
            if boxed is None:
                continue
            _, _, grid, sp = boxed
            inside = ndimage.distance_transform_edt(grid, sampling=sp)
            n, ok = int(grid.sum()), 0
            while ok < best[v]:
                kept = _reach_of_core(grid, inside, radii[ok], sp)
                if kept is None or kept.sum() < fraction * n:
                    break
                ok += 1
            best[v] = ok
    return {v: float(radii[i - 1]) for v, i in best.items() if i > 0}


def _bounding_box(labels: np.ndarray, value: int, pad: Sequence[int], chunk: int = 16) -> tuple[slice, ...] | None:
    """The box around the voxels of ``value`` grown by ``pad`` voxels per axis (None if there are none),
    found slab by slab (no full-volume mask)."""
    ks, js, is_ = [], np.zeros(labels.shape[1], bool), np.zeros(labels.shape[2], bool)
    for k in range(0, labels.shape[0], chunk):
        m = labels[k:k + chunk] == value
        if m.any():
            ks += (k + np.flatnonzero(m.any(axis=(1, 2)))).tolist()
            js |= m.any(axis=(0, 2))
            is_ |= m.any(axis=(0, 1))
    if not ks:
        return None
    lo = (min(ks), int(np.argmax(js)), int(np.argmax(is_)))
    hi = (max(ks), len(js) - 1 - int(np.argmax(js[::-1])), len(is_) - 1 - int(np.argmax(is_[::-1])))
    return tuple(slice(max(0, a - p), min(n, b + 1 + p)) for a, b, p, n in zip(lo, hi, pad, labels.shape))


def _boxed_grid(labels: np.ndarray, value: int, pad_mm: float, spacing_kji: Sequence[float],
                max_grid_voxels: int) -> tuple[tuple[slice, ...], int, np.ndarray, tuple[float, ...]] | None:
    """(box, f, grid, grid spacing): the mask of ``value`` on its bounding box grown by ``pad_mm``, coarsened by
    the smallest integer factor f that brings the box under ``max_grid_voxels`` (a coarse cell belongs to the
    structure if any of its voxels does), built slab by slab. None if the label is absent."""
    sp = np.asarray(spacing_kji, dtype=np.float64)
    box = _bounding_box(labels, value, [int(math.ceil(pad_mm / s)) + 1 for s in sp])
    if box is None:
        return None
    shape = tuple(b.stop - b.start for b in box)
    f = _grid_factor(shape, max_grid_voxels)
    if f == 1:
        grid = labels[box] == value
    else:
        grid = np.zeros(tuple(math.ceil(n / f) for n in shape), dtype=bool)
        for g, k in enumerate(range(box[0].start, box[0].stop, f)):
            grid[g] = _block_any((labels[k:min(k + f, box[0].stop), box[1], box[2]] == value).any(axis=0), f)
    return box, f, grid, tuple(float(x) for x in sp * f)


def keep_opened_component(labels: np.ndarray, confidence: np.ndarray, value: int, radius_mm: float,
                          spacing_kji: Sequence[float], max_grid_voxels: int = OPENING_GRID_VOXELS) -> tuple[int, float]:
    """Set to background every voxel of ``value`` farther than ``radius_mm`` from the largest connected part of
    its erosion by a ball of that radius, in place: what hangs on the structure by a neck narrower than the
    ball goes. Confidence of a removed voxel becomes ``1 - c``, as in :func:`keep_largest_component`; returns
    (voxels removed, their confidence summed before). A structure too thin for the ball is left as it is.

    Works on the structure's bounding box, slab by slab; a box over ``max_grid_voxels`` is coarsened by the
    smallest integer factor f that brings it under (a coarse cell belongs to the structure if any of its
    voxels does; the ball is measured in mm, so only its resolution drops). The distance transforms take
    about 50 bytes per cell of that grid (measured: 1024 x 1024 x 400, a 335 x 934 x 635 box, 175 MB at its peak)."""
    boxed = _boxed_grid(labels, value, radius_mm, spacing_kji, max_grid_voxels)
    if boxed is None:
        return 0, 0.0
    box, f, grid, spg = boxed
    reach = _reach_of_core(grid, ndimage.distance_transform_edt(grid, sampling=spg), radius_mm, spg)
    del grid
    if reach is None:
        return 0, 0.0
    return _drop_outside(labels, confidence, value, box, f, lambda g: reach[g])


def fit_postprocessing(label_maps: Sequence[tuple[np.ndarray, Sequence[float]]], table) -> dict:
    """The card's ``postprocessing`` entry learned from training label maps ((K, J, I) labels, voxel size
    along K, J, I in mm) for the labels of ``table`` (:class:`gase.labels.LabelInfo`): the single-object labels
    (``largest_component``) and, for those, the opening radius (``opening_mm``, see :func:`opening_radii`)."""
    values = [t.value for t in table]
    single = single_object_labels((lab for lab, _ in label_maps), values)
    radii = opening_radii(label_maps, single)
    name = {t.value: t.name for t in table}
    return {"largest_component": [name[v] for v in values if v in single],
            "opening_mm": {name[v]: r for v, r in radii.items()},
            "rule": f"labels whose largest 6-connected part holds >= {SINGLE_OBJECT_FRACTION:.0%} of their voxels in "
                    "every training label map: only that part of the prediction is kept; then only what lies within "
                    "opening_mm of the largest part of the prediction eroded by a ball of that radius (the largest "
                    f"radius whose opening keeps >= {SINGLE_OBJECT_FRACTION:.0%} of the structure in every training map)"}
