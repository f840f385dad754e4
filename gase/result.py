"""The one result type the predictor returns and every front end (CLI, Slicer) consumes."""
from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np

from .labels import LabelInfo
from .volume import Volume


def label_voxel_counts(labels: np.ndarray, slab_voxels: int = 1 << 24) -> np.ndarray:
    """Voxels per label value (256,) int64 of a uint8 label map, counted slab by slab.

    ``np.bincount`` converts its input to int64 first: on a whole 1024 x 1024 x 400 label map that is a
    3.4 GB temporary (measured: it raised the peak RSS of ``gase segment`` from 3.8 to 6.0 GB). Slabs of
    ``slab_voxels`` keep the temporary at 128 MB.
    """
    counts = np.zeros(256, dtype=np.int64)
    if labels.size == 0:
        return counts
    per_slice = max(1, labels[:1].size)
    step = max(1, slab_voxels // per_slice)
    for s in range(0, labels.shape[0], step):
        counts += np.bincount(np.asarray(labels[s:s + step], dtype=np.uint8).ravel(), minlength=256)[:256]
    return counts


def _json_number(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


VERDICT_MARGIN = 1.35  # validity threshold = this x the upper quartile of held-out volume scores (gase.validity)
FOREGROUND_LIMIT = 2.5  # segmented structures larger than this many times the largest training total: invalid
# A mask whose stability (gase.predictor.Predictor.stability: Dice against re-segmented views under small contrast
# and size changes) is below this is not a segmentation of the anatomy the model learnt: invalid. Warm-started
# GASE knee models segment too little of a pelvis for the size check (1.5-1.8x) and can find its style familiar;
# measured 2026-12-05 (GASE models of four benchmark runs, 12 pelvis phantoms; the demo model 0.2.0 and a
# warm-started retrain, 3 each): pelvis phantoms 0.40-0.63, every knee MR test volume of every style 0.78-0.93
# (144), every pelvis MR test volume 0.68-0.91 (144). Chosen on those records; no MR test volume falls under it.
STABILITY_FLOOR = 0.65
# A CT, not an MR image: MR magnitude images have no negative values, a CT in Hounsfield units has air at
# -1000 and fat at -100. The benchmark's volumes (2026-11-28): CT-like knees 43-51% and pelvises 48-56% of
# voxels below -500; its 72 MR test volumes (6 styles) and every other OOD kind 0%.
CT_AIR_HU = -500.0
CT_FRACTION_LIMIT = 0.05


# An inverted (negative) image: an MR magnitude image has dark air around the body, so the corners of the
# volume are its darkest part; an inverted one has them bright. The check compares the darkest of the
# volume's 8 corner blocks with the volume's 75th percentile (:func:`background_level`). Phantoms
# (2026-12-05, every knee and pelvis style, 2 subjects each): MR 0.03-0.12; inverted 1.0; pure noise 0.7.
# It is added because the manifold fitted with augmented copies (gase.training.validity_fit) lets some
# inverted knees through on style (1 of 3 on new subjects, both knee models checked).
INVERTED_BACKGROUND_LEVEL = 0.8


def quality_score(expected_dice: float | None, stability: float | None) -> float:
    """The number to rank segmentations by (which to review first): the mean of the model's expected Dice
    and its stability, or whichever of the two is known (NaN if neither).

    The two fail differently. The expected Dice comes from the softmax, so a model that is wrong with
    confidence overrates itself; the stability (the mask against re-segmented views under small contrast and
    size changes) misses errors that every view makes the same way, and a structure's stability can stay
    high when the post-processing repaired its mask. Spearman(score, Dice) over the 36 test volumes of the
    benchmark's GASE models (12 earlier CPU runs x 2 anatomies, seeds and recipes of 2026-11-28 to 12-06,
    ``benchmarks/results/*/``): expected Dice mean 0.69 (lowest 0.15), stability 0.71 (0.07), their mean
    0.79 (0.39); the 8 runs before the 6 Dec choice: 0.65, 0.68 and 0.76. Not a calibrated Dice: the expected
    Dice alone is closer to the true Dice in absolute terms (mean absolute error 0.047 against 0.060).
    Neither sees an error the network makes with confidence: the pelvis network trained for 2000 iterations
    on the phantom before its prostate capsule (7 Dec) labels the fat around a small prostate as prostate,
    and on new subjects the prostate's scores do not follow its Dice (Spearman -0.14) while every other
    structure's do (0.76-0.96); its volumes rank at 0.70 (``python -m benchmarks.diagnose MODEL
    --reliability``; ``benchmarks/results/cpu-2000-data1/``). With the capsule drawn, the network follows
    the gland's outline and the prostate's quality its Dice (0.90; volumes 0.95;
    ``benchmarks/results/cpu-2000-data1-capsule/``).
    It ranks scans of different styles (protocols) far better than scans of one: on the default run's test
    volumes it orders the six styles' mean Dice at 0.94 (knee) / 0.94 (pelvis) and the volumes within a style
    at 0.05 / 0.36 (``benchmarks.summary.ranking_by_style``).
    """
    vals = [float(v) for v in (expected_dice, stability) if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def quality_text(expected_dice: float | None, stability: float | None) -> str:
    """"quality 0.85 (expected Dice 0.78, stability 0.93)"; "n/a" for an unknown number, "" if both are."""
    def fmt(v: float | None) -> str:
        return f"{v:.2f}" if v is not None and np.isfinite(v) else "n/a"

    if fmt(expected_dice) == fmt(stability) == "n/a":
        return ""
    return (f"quality {fmt(quality_score(expected_dice, stability))} (expected Dice {fmt(expected_dice)}, "
            f"stability {fmt(stability)})")


def background_level(array: np.ndarray, max_voxels: int = 1 << 22) -> float | None:
    """The median of the darkest of the volume's 8 corner blocks (a tenth of each axis) over the volume's
    75th percentile (both on a regular subsample of at most about ``max_voxels``). None when it cannot be
    measured: an empty volume, a 75th percentile <= 0 (a CT in Hounsfield units; its own check), an image
    without contrast (5th percentile within 5% of the 75th) or only NaN corners."""
    a = np.asarray(array)
    if a.size == 0 or a.ndim == 0:
        return None
    step = max(1, int(np.ceil((a.size / max_voxels) ** (1.0 / a.ndim))))
    with warnings.catch_warnings():  # all-NaN parts: not measured, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        p5, p75 = (float(v) for v in np.nanpercentile(a[(slice(None, None, step),) * a.ndim].astype(np.float32),
                                                      [5, 75]))
        if not np.isfinite(p75) or p75 <= 0 or p5 >= 0.95 * p75:  # (a CT; an image without contrast)
            return None
        ends = [(slice(0, max(1, n // 10)), slice(n - max(1, n // 10), n)) for n in a.shape]
        medians = []
        for corner in itertools.product(*ends):
            block = a[corner]
            bstep = max(1, int(np.ceil((block.size / max_voxels) ** (1.0 / a.ndim))))
            medians.append(float(np.nanmedian(block[(slice(None, None, bstep),) * a.ndim].astype(np.float32))))
    medians = [m for m in medians if np.isfinite(m)]  # (a corner of NaN voxels says nothing)
    return min(medians) / p75 if medians else None


def looks_inverted(level: float | None) -> bool:
    """The inverted-image rule (None: not measured, e.g. a report from before the check, or a CT)."""
    return level is not None and level >= INVERTED_BACKGROUND_LEVEL


def inverted_comparison(level: float) -> str:
    """The inverted-image check's short text, e.g. "bright background: darkest corner 0.98 x p75"."""
    return f"bright background: darkest corner {level:.2f} x the 75th percentile"


def looks_like_ct(ct_fraction: float | None) -> bool:
    """The CT rule (None: not measured, e.g. a report from before the check)."""
    return ct_fraction is not None and ct_fraction > CT_FRACTION_LIMIT


def ct_comparison(ct_fraction: float) -> str:
    """The CT check's short text for titles and banners, e.g. "CT intensities: 45% of voxels < -500"."""
    return f"CT intensities: {ct_fraction:.0%} of voxels < {CT_AIR_HU:g}"


def fraction_below(array: np.ndarray, limit: float, slab_voxels: int = 1 << 24) -> float:
    """Fraction of ``array``'s voxels below ``limit``, slab by slab (no whole-volume temporary); 0.0 at once
    for unsigned integer images, which cannot hold a negative value."""
    if array.size == 0 or (array.dtype.kind == "u" and limit <= 0):
        return 0.0
    per_slice = max(1, array[:1].size)
    step = max(1, slab_voxels // per_slice)
    below = sum(int(np.count_nonzero(np.asarray(array[s:s + step]) < limit)) for s in range(0, array.shape[0], step))
    return below / array.size


@dataclass
class Validity:
    """Is the input inside the style manifold the model learned, and does what it segments there look
    like the anatomy it learned?

    ``score`` is the volume's distance to the manifold (higher = further away). ``foreground_ml`` is the
    total volume of the structures the network segmented (before post-processing) and
    ``training_foreground_ml`` the largest such total in the model's training label maps (None for
    models saved before 2026-11-28). The input is ``valid`` when ``score <= threshold`` and the
    structures are at most ``foreground_limit`` times that size: a knee model given a pelvis can find
    the pelvis's MR style familiar, but then paints bone all over it. Measured on phantoms (2026-11-28):
    pelvis images 2.7-3.7x for the demo model and 4.3-5.1x for the benchmark's GASE knee model; knees of
    every style, CT-like, noisy, motion-corrupted and inverted knees 0.7-1.4x. ``ct_fraction`` is the
    fraction of the input's voxels below :data:`CT_AIR_HU` (None where not measured): more than
    :data:`CT_FRACTION_LIMIT` of them is a CT in Hounsfield units, not an MR image, and invalid too (a
    GASE model's style-invariant features can find a CT's contrast close to the MR styles it learned).
    ``background_level`` (:func:`background_level`) at or above :data:`INVERTED_BACKGROUND_LEVEL` is an
    inverted image, invalid too.

    ``slice_scores`` (S,) float32 are per canonical slice (NaN where a slice was skipped as empty). ``embedding_2d`` (S, 2) are the slices' positions on the manifold map
    (PCA of style codes); ``reference_2d`` (N, 2) the training slices'. ``distances_2d`` (S, 2) are
    the slices' two distances to the manifold [within its subspace, off it] whose mean is the slice score,
    and ``reference_distances`` (N, 2) the training slices' (None for older models): the axes of the
    picture that explains the verdict (:mod:`gase.validity`).
    """

    valid: bool
    score: float
    threshold: float
    slice_scores: np.ndarray
    embedding_2d: np.ndarray | None = None
    reference_2d: np.ndarray | None = None
    distances_2d: np.ndarray | None = None
    reference_distances: np.ndarray | None = None
    foreground_ml: float | None = None
    training_foreground_ml: float | None = None
    foreground_limit: float = FOREGROUND_LIMIT
    ct_fraction: float | None = None
    background_level: float | None = None  # :func:`background_level` (None: not measured)
    stability: float | None = None  # the mask's stability (None: not checked)
    stability_floor: float = STABILITY_FLOOR

    @property
    def verdict(self) -> str:
        return "valid" if self.valid else "outside the model's competence"

    @property
    def style_valid(self) -> bool:
        return bool(self.score <= self.threshold)

    @property
    def foreground_ratio(self) -> float | None:
        """Segmented structures' total / the largest training total (None when either is unknown)."""
        if self.foreground_ml is None or not self.training_foreground_ml:
            return None
        return float(self.foreground_ml) / float(self.training_foreground_ml)

    @property
    def size_valid(self) -> bool:
        ratio = self.foreground_ratio
        return ratio is None or ratio <= self.foreground_limit

    @property
    def modality_valid(self) -> bool:
        return not looks_like_ct(self.ct_fraction)

    @property
    def polarity_valid(self) -> bool:
        """False for an inverted (negative) image: bright corners, where MR has dark air."""
        return not looks_inverted(self.background_level)

    @property
    def stability_valid(self) -> bool:
        return self.stability is None or not np.isfinite(self.stability) or self.stability >= self.stability_floor

    def with_stability(self, stability: float | None) -> "Validity":
        """This verdict with the mask's stability checked too (``valid`` only if it also holds)."""
        s = None if stability is None or not np.isfinite(stability) else float(stability)
        out = dataclasses.replace(self, stability=s)
        out.valid = bool(self.valid and out.stability_valid)
        return out

    def reasons(self) -> list[str]:
        """Why the input is outside the model's competence (empty when valid), one sentence per reason."""
        out = []
        if not self.modality_valid:
            out.append(f"it looks like a CT, not an MR image: {self.ct_fraction:.0%} of its voxels are below "
                       f"{CT_AIR_HU:g} (air in Hounsfield units; an MR image has no negative values)")
        if not self.polarity_valid:
            out.append(f"it looks inverted (a negative image): its corners, where an MR image has dark air, are "
                       f"bright ({self.background_level:.2f} x the volume's 75th percentile): an inverted export "
                       "(photometric interpretation MONOCHROME1), or a field of view cut inside the body")
        if not self.style_valid:
            out.append(f"its image style is far from every image the model learned from (distance "
                       f"{self.score:.2f} > threshold {self.threshold:.2f})")
        if not self.size_valid:
            out.append(f"the structures the model found add up to {self.foreground_ml:.0f} mL, "
                       f"{self.foreground_ratio:.1f}x the largest total in its training label maps "
                       f"({self.training_foreground_ml:.0f} mL; limit {self.foreground_limit:g}x): another anatomy "
                       "or a much larger field of view?")
        if not self.stability_valid:
            out.append(f"the segmentation changes a lot when the contrast or size changes a little (stability "
                       f"{self.stability:.2f} < {self.stability_floor:g}): another anatomy, or an image unlike "
                       "the training data")
        return out

    def to_json(self) -> dict:
        ratio = self.foreground_ratio
        return {"valid": bool(self.valid), "score": round(float(self.score), 4),
                "threshold": round(float(self.threshold), 4), "verdict": self.verdict,
                "reasons": self.reasons(),
                "foreground_ml": None if self.foreground_ml is None else round(float(self.foreground_ml), 2),
                "training_foreground_ml": None if self.training_foreground_ml is None
                else round(float(self.training_foreground_ml), 2),
                "foreground_ratio": None if ratio is None else round(ratio, 3),
                "foreground_limit": float(self.foreground_limit),
                "ct_fraction": None if self.ct_fraction is None else round(float(self.ct_fraction), 4),
                "background_level": None if self.background_level is None else round(float(self.background_level), 4),
                "stability": None if self.stability is None else round(float(self.stability), 4),
                "stability_floor": float(self.stability_floor),
                "slice_scores": [None if not np.isfinite(s) else round(float(s), 4) for s in self.slice_scores]}


def segmenter_text(info) -> str | None:
    """The report's ``source_expert`` entry in words (None when there is none: a model without an expert)."""
    if not isinstance(info, dict):
        return None
    if info.get("route") == "expert":
        return "segmented by the source-style expert (route: expert)"
    if info.get("used"):
        return "segmented by the source-style expert (the scan is in the training style)"
    return "segmented by the GASE segmenter (the scan is outside the training style)"


@dataclass
class SegmentationResult:
    """Everything GASE says about one input volume, in the input's own geometry.

    - ``labels``: uint8 label map (K, J, I); values are ``LabelInfo.value``, 0 = background.
    - ``confidence``: float32 (K, J, I) in [0, 1], the probability that the voxel's label is right.
    - ``reliability``: mean confidence in the predicted foreground, ``overall`` and per label name
      (the paper's mask reliability).
    - ``expected_dice``: the Dice the model expects for each structure and their mean (see
      :func:`gase.predictor.expected_dice`).
    - ``stability``: per label name and overall, how much of the mask survives small changes of
      contrast and size (mean Dice against re-segmented views, see :meth:`gase.predictor.Predictor.stability`).
    - ``validity``: input-validity verdict.
    """

    labels: Volume
    confidence: Volume
    label_table: tuple[LabelInfo, ...]
    reliability_overall: float
    reliability_per_label: dict[str, float]
    validity: Validity
    model_name: str = ""
    device: str = "cpu"
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    expected_dice_overall: float = float("nan")
    expected_dice_per_label: dict[str, float] = field(default_factory=dict)
    stability_overall: float = float("nan")
    stability_per_label: dict[str, float] = field(default_factory=dict)

    @property
    def quality_overall(self) -> float:
        """The score to rank scans by: :func:`quality_score` of the overall expected Dice and stability."""
        return quality_score(self.expected_dice_overall, self.stability_overall)

    @property
    def quality_per_label(self) -> dict[str, float]:
        """:func:`quality_score` per structure (the labels with an expected Dice or a stability)."""
        names = list(self.expected_dice_per_label) + [k for k in self.stability_per_label
                                                      if k not in self.expected_dice_per_label]
        return {k: quality_score(self.expected_dice_per_label.get(k), self.stability_per_label.get(k)) for k in names}

    def quality_text(self) -> str:
        """"quality 0.85 (expected Dice 0.78, stability 0.93)" (n/a where a number is unknown), for
        one-line summaries."""
        return quality_text(self.expected_dice_overall, self.stability_overall)

    def segmenter_text(self) -> str | None:
        """Which network segmented the scan, for models with a source expert (None for other models)."""
        return segmenter_text(self.extra.get("source_expert"))

    def report(self) -> dict:
        """The JSON report written next to the outputs (``<case>_report.json``)."""
        counts = label_voxel_counts(self.labels.array)
        vox_ml = float(np.prod(self.labels.spacing)) / 1000.0
        return {
            "model": self.model_name,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "validity": self.validity.to_json(),
            "reliability": {"overall": _json_number(self.reliability_overall),
                            "per_label": {k: _json_number(v) for k, v in self.reliability_per_label.items()},
                            "expected_dice": _json_number(self.expected_dice_overall),
                            "expected_dice_per_label": {k: _json_number(v)
                                                        for k, v in self.expected_dice_per_label.items()},
                            "quality": _json_number(self.quality_overall),
                            "quality_per_label": {k: _json_number(v) for k, v in self.quality_per_label.items()},
                            "stability": _json_number(self.stability_overall),
                            "stability_per_label": {k: _json_number(v) for k, v in self.stability_per_label.items()}},
            "volumes_ml": {lab.name: round(float(counts[lab.value]) * vox_ml, 3) for lab in self.label_table},
            **self.extra,
        }
