"""The input-validity verdict as words and colours: the panel banner and the slice-view text.

One source for both, so the panel and the views never disagree.

>>> from gase.result import FOREGROUND_LIMIT, Validity
>>> import numpy as np
>>> v = Verdict.from_validity(Validity(False, 3.2, 2.0, np.zeros(0)))
>>> v.headline
"Outside the model's competence"
>>> print(v.slice_view_text())
GASE: OUTSIDE the model's competence
score 3.20 > threshold 2.00: do not trust this result
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

from gase.result import (FOREGROUND_LIMIT, STABILITY_FLOOR, Validity, ct_comparison, inverted_comparison,
                         looks_inverted, looks_like_ct, quality_score, segmenter_text)
from gase.validity_map import INVALID_RGB, VALID_RGB


@dataclass(frozen=True)
class Verdict:
    """Validity of one input: ``valid`` when ``score <= threshold`` (distance to the style manifold)."""

    valid: bool
    score: float
    threshold: float
    reliability: float | None = None  # the model's expected Dice, mean over structures (None if unknown)
    foreground_ratio: float | None = None  # segmented structures / largest training total (None if unknown)
    foreground_limit: float = FOREGROUND_LIMIT
    ct_fraction: float | None = None  # fraction of voxels below CT_AIR_HU (None if not measured)
    segmented_by: str | None = None  # which network segmented (models with a source expert), for the banner
    stability: float | None = None  # Validity.stability: how much of the mask survives small contrast/size changes
    stability_floor: float = STABILITY_FLOOR  # below it the input is invalid (gase.result.Validity)
    background_level: float | None = None  # gase.result.background_level: bright corners = an inverted image

    @staticmethod
    def from_validity(validity: Validity, reliability: float | None = None,
                      segmented_by: str | None = None) -> "Verdict":
        return Verdict(bool(validity.valid), float(validity.score), float(validity.threshold), reliability,
                       validity.foreground_ratio, float(validity.foreground_limit), validity.ct_fraction, segmented_by,
                       _finite_or_none(validity.stability),
                       float(validity.stability_floor), _finite_or_none(validity.background_level))

    @staticmethod
    def from_json(report: dict) -> "Verdict":
        """From a ``<case>_report.json`` dict (``validity`` and optional ``reliability`` entries)."""
        v = report["validity"]
        rel = (report.get("reliability") or {}).get("expected_dice")
        stab = v.get("stability", (report.get("reliability") or {}).get("stability"))  # (older reports)
        ratio, ct = v.get("foreground_ratio"), v.get("ct_fraction")
        return Verdict(bool(v["valid"]), float(v["score"]), float(v["threshold"]),
                       None if rel is None else float(rel), None if ratio is None else float(ratio),
                       float(v.get("foreground_limit", FOREGROUND_LIMIT)), None if ct is None else float(ct),
                       segmenter_text(report.get("source_expert")), _finite_or_none(stab),
                       float(v.get("stability_floor", STABILITY_FLOOR)), _finite_or_none(v.get("background_level")))

    @property
    def stability_valid(self) -> bool:
        return self.stability is None or self.stability >= self.stability_floor

    @property
    def quality_score(self) -> float | None:
        """The number to rank scans by (:func:`gase.result.quality_score`: the mean of the expected Dice and
        the stability); None if neither is known."""
        q = quality_score(self.reliability, self.stability)
        return q if math.isfinite(q) else None

    @property
    def estimates(self) -> str:
        """The two estimates the quality comes from ("expected Dice 0.87, stability 0.91"); empty if unknown."""
        parts = ([] if self.reliability is None else [f"expected Dice {self.reliability:.2f}"]) + \
            ([] if self.stability is None else [f"stability {self.stability:.2f}"])
        return ", ".join(parts)

    @property
    def quality(self) -> str:
        """The model's own quality estimates in words ("quality 0.89, expected Dice 0.87, stability 0.91");
        empty if unknown."""
        q = self.quality_score
        return ", ".join(t for t in ("" if q is None else f"quality {q:.2f}", self.estimates) if t)

    @property
    def size_valid(self) -> bool:
        return self.foreground_ratio is None or self.foreground_ratio <= self.foreground_limit

    @property
    def modality_valid(self) -> bool:
        return not looks_like_ct(self.ct_fraction)

    @property
    def polarity_valid(self) -> bool:
        return not looks_inverted(self.background_level)

    @property
    def headline(self) -> str:
        return "Input valid" if self.valid else "Outside the model's competence"

    @property
    def style_comparison(self) -> str:
        sign = "<=" if self.score <= self.threshold else ">"
        return f"score {self.score:.2f} {sign} threshold {self.threshold:.2f}"

    @property
    def size_comparison(self) -> str:
        """Empty unless the structures found are too large for the model's training anatomy."""
        return "" if self.size_valid else \
            f"structures {self.foreground_ratio:.1f}x training size > {self.foreground_limit:g}x"

    @property
    def modality_comparison(self) -> str:
        """Empty unless the image looks like a CT (Hounsfield units), not an MR image."""
        return "" if self.modality_valid else ct_comparison(self.ct_fraction)

    @property
    def polarity_comparison(self) -> str:
        """Empty unless the image looks inverted (bright corners where MR has dark air)."""
        return "" if self.polarity_valid else inverted_comparison(self.background_level)

    @property
    def stability_comparison(self) -> str:
        """Empty unless the mask is unstable (see :data:`gase.result.STABILITY_FLOOR`)."""
        return "" if self.stability_valid else f"stability {self.stability:.2f} < {self.stability_floor:g}"

    @property
    def comparison(self) -> str:
        return ", ".join(t for t in (self.modality_comparison, self.polarity_comparison, self.style_comparison,
                                     self.size_comparison, self.stability_comparison) if t)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return VALID_RGB if self.valid else INVALID_RGB

    @property
    def hex_color(self) -> str:
        return "#" + "".join(f"{round(c * 255):02x}" for c in self.rgb)

    def slice_view_text(self) -> str:
        """Two short lines for the slice views (they must fit a small view of a four-up layout)."""
        if self.valid:
            q = "" if self.quality_score is None else f", quality {self.quality_score:.2f}"
            return f"GASE: input valid{q}\n{', '.join(t for t in (self.comparison, self.estimates) if t)}"
        why = (self.modality_comparison if not self.modality_valid else
               self.polarity_comparison if not self.polarity_valid else
               f"score {self.score:.2f} > threshold {self.threshold:.2f}" if self.score > self.threshold else
               f"structures {self.foreground_ratio:.1f}x training size (> {self.foreground_limit:g}x)"
               if not self.size_valid else f"unstable mask: stability {self.stability:.2f} < {self.stability_floor:g}")
        return f"GASE: OUTSIDE the model's competence\n{why}: do not trust this result"

    def explanation(self) -> str:
        if self.valid:
            return ("The image style lies within the range of images the model learned from, so its "
                    "segmentation and confidence can be used (review low-confidence regions).")
        if not self.modality_valid:
            return ("The image looks like a CT (Hounsfield units: air and fat below zero), not an MR image: the "
                    "model segments MR images. The segmentation and the confidence map are not reliable.")
        if not self.polarity_valid:
            return ("The image looks inverted (a negative image): its corners, where an MR image has dark air, are "
                    "bright. Check the export (photometric interpretation MONOCHROME1, an intensity inversion) or "
                    "whether the field of view cuts inside the body. The segmentation and the confidence map are "
                    "not reliable.")
        if self.score <= self.threshold and self.size_valid:  # familiar style and size; an unstable mask
            return ("The segmentation changes a lot when the contrast or size of the image changes a little: "
                    "this looks like another anatomy or an image unlike the training data. The segmentation and "
                    "the confidence map are not reliable.")
        if self.score <= self.threshold:  # the style is familiar; what it segmented is not
            return ("The structures the model found are far larger than in any of its training label maps: "
                    "this looks like another anatomy or a much larger field of view. The segmentation and the "
                    "confidence map are not reliable.")
        return ("The image style is far from every image the model learned from (other sequence, modality, "
                "anatomy or a corrupted image). The segmentation and the confidence map are not reliable.")

    def banner_html(self) -> str:
        """Rich text for the module panel's banner label."""
        # no quality estimate for an input outside the model's competence: the model's own would mislead
        rel = "" if not self.quality or not self.valid else \
            "".join(f" &nbsp;|&nbsp; {q}" for q in self.quality.split(", "))
        return (f"<div style='background-color:{self.hex_color}; color:white; padding:6px;'>"
                f"<b>{html.escape(self.headline)}</b> &nbsp; ({html.escape(self.comparison)}){rel}"
                f"<br/><small>{html.escape(self.explanation())}</small>"
                + (f"<br/><small>{html.escape(self.segmented_by[0].upper() + self.segmented_by[1:])}.</small>"
                   if self.segmented_by else "") + "</div>")


def _finite_or_none(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)
