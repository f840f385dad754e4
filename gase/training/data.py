"""Training data: image/label pairs -> checked -> canonical, normalised slices at the model spacing.

>>> pairs = match_pairs(Path("images"), Path("labels"))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..context import Context, stack_tensor
from ..errors import TrainingDataError
from ..labels import LabelInfo
from ..orientation import reorientation_for
from ..preprocess import Normalization, resample_slices, working_size
from ..volume import Volume, case_name, iter_image_files, read_volume
from .config import SAMPLING_MODES

MIN_TRAIN_VOLUMES = 2
ANY_STRUCTURE = 0  # SliceSet.sample: centre a crop on a voxel of any structure (background is never a target)
MARGIN_MM = 20.0   # SliceSet.sample: how far past a structure's end its margin crops reach


def match_pairs(images_dir: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    """Image and label files matched by case name (``a.nrrd`` <-> ``a.nrrd`` / ``a.seg.nrrd``)."""
    for d, what in ((images_dir, "--images"), (labels_dir, "--labels")):
        if not Path(d).is_dir():
            raise TrainingDataError(f"{d}: {what} must be a folder of image files.")
    images = {case_name(p): p for p in iter_image_files(images_dir)}
    labels = {case_name(p): p for p in iter_image_files(labels_dir)}
    if not images:
        raise TrainingDataError(f"{images_dir}: no image files (.nrrd, .nii, .nii.gz, .mha) found.")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise TrainingDataError(f"No label file for image(s) {', '.join(missing[:5])}: every image in {images_dir} "
                                f"needs a label map with the same name in {labels_dir}.")
    extra = sorted(set(labels) - set(images))
    if extra:
        raise TrainingDataError(f"Label file(s) {', '.join(extra[:5])} in {labels_dir} have no image with the same "
                                "name; remove them or add the images.")
    return [(images[k], labels[k]) for k in sorted(images)]


def check_pair(image: Volume, labels: Volume, table: Sequence[LabelInfo], name: str) -> np.ndarray:
    """Validate one training pair; return the label array as uint8. Raises :class:`TrainingDataError`."""
    if image.shape != labels.shape:
        raise TrainingDataError(f"{name}: image shape {image.shape} and label shape {labels.shape} differ. The label "
                                "map must be on the image's voxel grid (resample it onto the image).")
    if not np.allclose(image.ijk_to_ras, labels.ijk_to_ras, atol=1e-3 * max(1.0, min(image.spacing))):
        raise TrainingDataError(f"{name}: image and label map have different geometry (origin, spacing or "
                                "direction). Resample the label map onto the image grid.")
    if min(image.shape) < 2:
        raise TrainingDataError(f"{name}: a single slice (shape {image.shape}); training needs 3D volumes.")
    lab = labels.array
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or not np.allclose(lab, np.round(lab)):
            raise TrainingDataError(f"{name}: the label map has non-integer values; give an integer label map.")
        lab = np.round(lab)
    values = set(np.unique(lab).astype(np.int64).tolist()) - {0}
    known = {t.value for t in table}
    if not values:
        raise TrainingDataError(f"{name}: the label map is empty (only background). Every training volume needs "
                                "labelled structures.")
    unknown = sorted(values - known)
    if unknown:
        raise TrainingDataError(f"{name}: label values {unknown} are not in the label table "
                                f"({', '.join(f'{t.value}={t.name}' for t in table)}). Fix the label map or give "
                                "a --labels-json that lists them.")
    return lab.astype(np.uint8)


@dataclass
class SliceSet:
    """Canonical slices at the model spacing: ``images[v]`` (S, H, W) float32 in 0..1, ``labels[v]`` (S, H, W)
    uint8, one entry per volume; ``names[v]`` the case names; ``slice_mm[v]`` the slice spacing. With a
    ``context`` (:mod:`gase.context`), :meth:`sample` returns each crop with its neighbouring slices."""

    images: list[torch.Tensor]
    labels: list[torch.Tensor]
    names: list[str]
    slice_mm: list[float] = field(default_factory=list)
    context: Context = field(default_factory=Context)

    @staticmethod
    def build(pairs: Sequence[tuple[Volume, np.ndarray, str]], plane: str, spacing: float,
              norm: Normalization, context: Context | None = None) -> "SliceSet":
        images, labels, names, slice_mm = [], [], [], []
        for image, lab, name in pairs:
            reo = reorientation_for(image, plane)
            lo, hi = norm.intensity_range(image.array)
            x = torch.from_numpy(np.ascontiguousarray(norm.apply(reo.forward(image.array), lo, hi)))[:, None]
            y = torch.from_numpy(np.ascontiguousarray(reo.forward(lab))).float()[:, None]
            size = working_size(tuple(x.shape[-2:]), reo.spacing[1:], spacing)
            images.append(resample_slices(x, size)[:, 0].contiguous())
            labels.append(resample_slices(y, size, mode="nearest")[:, 0].to(torch.uint8).contiguous())
            names.append(name)
            slice_mm.append(float(reo.spacing[0]))
        return SliceSet(images, labels, names, slice_mm, context or Context())

    def __len__(self) -> int:
        return sum(int(x.shape[0]) for x in self.images)

    def all_slices(self, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every slice, centre-cropped/padded to ``size`` (default: the largest in-plane size)."""
        xs, ys = [], []
        for x, y in zip(self.images, self.labels):
            xs.append(x)
            ys.append(y)
        if size is None:
            size = max(max(x.shape[-2:]) for x in xs)
        return (torch.cat([_fit(x, size) for x in xs]), torch.cat([_fit(y, size) for y in ys]))

    def sample(self, gen: torch.Generator, batch: int, crop: int, mode: str = "balanced",
               any_prob: float = 1 / 3, margin_prob: float = 0.0,
               margin_mm: float = MARGIN_MM) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops (B, 1, crop, crop) float32 and (B, crop, crop) int64. With a :attr:`context` of C
        slices: (B, C, crop, crop) float32, the crop's slice in the middle channel and its neighbours around it
        (interpolated, :func:`gase.context.stack_tensor`), and their labels (B, C, crop, crop) int64 (nearest
        slice): the loss reads the middle one, the style augmentations all of them.

        ``mode="balanced"`` (default): a crop is centred, with probability ``any_prob``, anywhere on any slice
        (so the slices beyond the anatomy, which hold no label, are learnt as background); otherwise on a
        voxel of one structure drawn uniformly among those the volume holds, on a slice that holds it (so a
        thin or small structure is seen as often as a large one). As nnU-Net's foreground oversampling and
        MONAI's ``RandCropByLabelClasses`` do, on precomputed per-structure slice lists.
        ``mode="foreground"`` (models before 2026-11-28): 90% of crops centred on a voxel of any structure
        on a slice that has one, 10% anywhere.

        ``margin_prob`` (balanced mode): that share of the structure-centred crops is moved off the structure's
        end along the slice axis: on a slice 1 to ``margin_mm`` mm beyond its first or last slice, at the
        place of one of its voxels on that end slice. Those crops teach what lies just past a structure, which
        a 2D network sees rarely otherwise (below the prostate apex, the fat inside the levator funnel looks
        like prostate in one slice and was labelled so in every style; benchmark diagnosis of 2026-12-06).
        """
        if mode not in SAMPLING_MODES:
            raise ValueError(f"Unknown crop sampling {mode!r}; use one of {', '.join(SAMPLING_MODES)}.")
        xs, ys = [], []
        for _ in range(batch):
            v = int(torch.randint(len(self.images), (1,), generator=gen))
            x, y = self.images[v], self.labels[v]
            h, w = x.shape[-2:]
            index = self._index(v)
            centre = None  # the label value the crop is centred on (ANY_STRUCTURE: any of them); None: anywhere
            if mode == "foreground":
                if ANY_STRUCTURE in index and float(torch.rand(1, generator=gen)) < 0.9:
                    centre = ANY_STRUCTURE
            else:
                classes = [c for c in index if c != ANY_STRUCTURE]
                if classes and float(torch.rand(1, generator=gen)) >= any_prob:
                    centre = classes[int(torch.randint(len(classes), (1,), generator=gen))]
            margin = centre is not None and centre != ANY_STRUCTURE and margin_prob > 0 and \
                float(torch.rand(1, generator=gen)) < margin_prob
            if margin:
                slices = index[centre]
                below = float(torch.rand(1, generator=gen)) < 0.5
                ref = int(slices[0] if below else slices[-1])
                reach = max(1, int(round(margin_mm / max(self._slice_mm(v), 1e-3))))
                k = int(torch.randint(1, reach + 1, (1,), generator=gen))
                s = min(max(ref - k if below else ref + k, 0), x.shape[0] - 1)
                cy, cx = _near(y[ref] == centre, gen, crop)
            elif centre is None:
                s = int(torch.randint(x.shape[0], (1,), generator=gen))
                cy, cx = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
            else:
                slices = index[centre]
                s = int(slices[torch.randint(len(slices), (1,), generator=gen)])
                cy, cx = _near(y[s] > 0 if centre == ANY_STRUCTURE else y[s] == centre, gen, crop)
            if self.context.used:
                offsets = self.context.offsets(self.slice_mm[v])
                xs.append(_crop(stack_tensor(x, [s], offsets)[0], cy, cx, crop))
                ys.append(_crop(stack_tensor(y, [s], offsets, nearest=True)[0], cy, cx, crop))
                continue
            xs.append(_crop(x[s], cy, cx, crop))
            ys.append(_crop(y[s], cy, cx, crop))
        if self.context.used:
            return torch.stack(xs).float(), torch.stack(ys).long()
        return torch.stack(xs)[:, None].float(), torch.stack(ys).long()

    def _slice_mm(self, v: int) -> float:
        return self.slice_mm[v] if v < len(self.slice_mm) else 1.0

    def inputs(self) -> list[torch.Tensor]:
        """Each volume's slices as the network reads them: :attr:`images` (S, H, W) without a context, else their
        context stacks (S, C, H, W) (:func:`gase.context.stack_tensor`)."""
        if not self.context.used:
            return list(self.images)
        return [stack_tensor(x, np.arange(x.shape[0]), self.context.offsets(sp))
                for x, sp in zip(self.images, self.slice_mm)]

    def _index(self, v: int) -> dict[int, torch.Tensor]:
        """Volume ``v``'s slices per label value present (ANY_STRUCTURE: slices with any structure); cached."""
        cache = self.__dict__.setdefault("_slice_index", {})
        if v not in cache:
            flat = self.labels[v].flatten(1).long()
            present = torch.zeros(flat.shape[0], int(flat.max()) + 1, dtype=torch.bool)
            present.scatter_(1, flat, True)
            index = {int(c): torch.nonzero(present[:, c]).flatten() for c in range(1, present.shape[1])
                     if bool(present[:, c].any())}
            if index:
                index[ANY_STRUCTURE] = torch.nonzero(present[:, 1:].any(1)).flatten()
            cache[v] = index
        return cache[v]


def sampling_prior_offsets(slices: SliceSet, crop: int, mode: str = "balanced", n_crops: int = 4096,
                           seed: int = 0, margin_prob: float = 0.0) -> dict[int, float]:
    """Per label value, ``log(p_slices / p_crops)`` minus the same for the background: the logit adjustment
    (Menon et al., ICLR 2021) that undoes the class prior of :meth:`SliceSet.sample`.

    Balanced sampling centres crops on small structures as often as on large ones, so the network learns
    from crops in which they are far commoner than in the whole slices it segments, and it labels too much
    as them (benchmark, data seed 1, 3 new subjects per style: 26-49% of the predicted knee cartilage and
    41-49% of the predicted source-style prostate was another label). Adding these offsets to the logits turns
    the crops' prior back into the slices' one. ``p_slices``: the label's share of every slice's pixels;
    ``p_crops``: its share in ``n_crops`` crops drawn as training draws them (a fixed seed: the same offsets
    every time). A label the crops never show gets 0."""
    n = max(int(y.max()) for y in slices.labels) + 1
    whole = torch.zeros(n, dtype=torch.float64)
    for y in slices.labels:
        whole += torch.bincount(y.flatten().long(), minlength=n).double()
    crops = torch.zeros(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_crops, 64):
        _, y = slices.sample(gen, min(64, n_crops - start), crop, mode=mode, margin_prob=margin_prob)
        if y.dim() == 4:  # context stacks: the loss reads the middle slice's labels
            y = y[:, y.shape[1] // 2]
        crops += torch.bincount(y.flatten(), minlength=n).double()[:n]
    p_whole, p_crops = whole / whole.sum(), crops / crops.sum()
    ok = (p_whole > 0) & (p_crops > 0)
    ratio = torch.log(p_whole.clamp_min(1e-12) / p_crops.clamp_min(1e-12))
    return {v: round(float(ratio[v] - ratio[0]), 4) if bool(ok[v] and ok[0]) else 0.0 for v in range(1, n)}


def _near(mask: torch.Tensor, gen: torch.Generator, crop: int) -> tuple[int, int]:
    """A crop centre: a random pixel of ``mask`` (H, W), moved by up to a quarter crop either way."""
    pts = torch.nonzero(mask)
    cy, cx = pts[int(torch.randint(len(pts), (1,), generator=gen))].tolist()
    jitter = torch.randint(-crop // 4, crop // 4 + 1, (2,), generator=gen).tolist()
    return cy + jitter[0], cx + jitter[1]


def _crop(a: torch.Tensor, cy: int, cx: int, crop: int) -> torch.Tensor:
    """Crop (..., H, W) around (cy, cx) to (..., crop, crop), zero-padding outside."""
    h, w = a.shape[-2:]
    y0, x0 = cy - crop // 2, cx - crop // 2
    out = torch.zeros((*a.shape[:-2], crop, crop), dtype=a.dtype)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(h, y0 + crop), min(w, x0 + crop)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = a[..., sy0:sy1, sx0:sx1]
    return out


def _fit(a: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop/pad (S, H, W) to (S, size, size)."""
    s, h, w = a.shape
    out = torch.zeros((s, size, size), dtype=a.dtype)
    y0, x0 = (size - h) // 2, (size - w) // 2
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    hh, ww = min(h - sy0, size - dy0), min(w - sx0, size - dx0)
    out[:, dy0:dy0 + hh, dx0:dx0 + ww] = a[:, sy0:sy0 + hh, sx0:sx0 + ww]
    return out


def load_pairs(pairs: Sequence[tuple[Path, Path]], table: Sequence[LabelInfo]) -> list[tuple[Volume, np.ndarray, str]]:
    """Read and check image/label files."""
    out = []
    for img_path, lab_path in pairs:
        image = read_volume(img_path)
        labels = read_volume(lab_path)
        out.append((image, check_pair(image, labels, table, case_name(img_path)), case_name(img_path)))
    return out


# Largest / smallest linear size (cube root of the labelled volume) among one anatomy's training cases.
# Phantoms and real scans: adult vs child knee ~1.4, knee vs pelvis ~3.
MAX_ANATOMY_SIZE_RATIO = 2.5


def check_same_anatomy(pairs: Sequence[tuple[Volume, np.ndarray, str]], table: Sequence[LabelInfo]) -> None:
    """Refuse a training set that mixes anatomies (one model learns one anatomy). Raises :class:`TrainingDataError`.

    ``pairs`` are checked pairs (image, label array (K, J, I) uint8, case name). Either sign is enough:

    - the labelled structures differ: a volume shares less than half of its labels with the labels that
      most volumes (more than half) carry, or no label is common to most volumes;
    - the labelled anatomy's size differs wildly: the cube root of the labelled volume (mL) of the
      largest case exceeds :data:`MAX_ANATOMY_SIZE_RATIO` times the smallest case's.

    The plane the volumes were acquired in is deliberately not a sign: every volume is reoriented to
    the model's plane before training, so axial and sagittal knees train one knee model.
    """
    if len(pairs) < 2:
        return
    names = {t.value: t.name for t in table}
    present = [set(np.unique(lab).tolist()) - {0} for _, lab, _ in pairs]
    counts: dict[int, int] = {}
    for s in present:
        for v in s:
            counts[v] = counts.get(v, 0) + 1
    common = {v for v, c in counts.items() if c > len(pairs) / 2}

    def listed(values) -> str:
        return ", ".join(names.get(int(v), str(v)) for v in sorted(values)) or "none"

    if not common:
        raise TrainingDataError("The training volumes label different structures: no label is present in most of "
                                f"them ({'; '.join(f'{n}: {listed(s)}' for s, (_, _, n) in zip(present, pairs))}). "
                                "Mixed anatomies? Train one model per anatomy, with the same structures labelled "
                                "in every volume.")
    for s, (_, _, name) in zip(present, pairs):
        if len(s & common) / len(s | common) < 0.5:
            raise TrainingDataError(f"{name}: its labels ({listed(s)}) differ from those of the other training "
                                    f"volumes ({listed(common)}). Mixed anatomies? Train one model per anatomy: "
                                    f"remove {name} or label the same structures in every volume.")
    sizes = []
    for image, lab, _ in pairs:
        voxel_ml = float(np.prod(image.spacing)) / 1000.0
        sizes.append((np.count_nonzero(lab) * voxel_ml) ** (1.0 / 3.0))
    small, large = int(np.argmin(sizes)), int(np.argmax(sizes))
    if sizes[large] > MAX_ANATOMY_SIZE_RATIO * sizes[small]:
        raise TrainingDataError(
            f"The labelled anatomy of {pairs[large][2]} ({sizes[large] ** 3:.0f} mL) is "
            f"{(sizes[large] / sizes[small]) ** 3:.0f} times larger than that of {pairs[small][2]} "
            f"({sizes[small] ** 3:.0f} mL). Mixed anatomies, or a label map on the wrong image? Train one model "
            "per anatomy, and check the image spacing in the file headers.")
