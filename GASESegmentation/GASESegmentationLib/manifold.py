"""The style-manifold picture that explains a validity verdict, as a PNG (matplotlib, no GUI backend).

Left: each input slice's two distances to the learned styles (:mod:`gase.validity_map`), against the
training slices (grey) and the accepted region below the threshold line; slices coloured by whether each
lies within the threshold. Results of older models or reports without those distances get the 2D PCA
map of the style codes instead. Right: each input slice's distance to the manifold (the mean of the two)
against the calibrated threshold. Points above the line, on either side, are what "outside the model's
competence" means.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gase.result import Validity
from gase.validity_map import INVALID_RGB, VALID_RGB, REFERENCE_LABEL, draw_distance_map

from .verdict import Verdict


def write_manifold_png(validity: Validity, path, *, size_in: tuple[float, float] = (7.0, 3.2),
                       dpi: int = 110) -> Path:
    """Draw the manifold picture of ``validity`` to ``path`` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    verdict = Verdict.from_validity(validity)
    scores = np.asarray(validity.slice_scores, dtype=np.float64).reshape(-1)
    fig = Figure(figsize=size_in, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.3]})

    if validity.distances_2d is not None and len(validity.distances_2d):
        draw_distance_map(left, validity.threshold, [(validity.distances_2d, "slices", None, validity.score)],
                          validity.reference_distances, fontsize=7)
        left.set_title("Distance to the learned styles", fontsize=9)
        left.legend(fontsize=6, loc="best", markerscale=0.6, framealpha=0.8)
    else:
        _draw_pca_map(left, validity, scores, verdict)

    index = np.arange(scores.size)
    finite = np.isfinite(scores)
    if finite.any():
        colors = np.where(scores[finite] <= validity.threshold, "tab:green", "tab:red")
        right.bar(index[finite], scores[finite], color=colors, width=1.0)
    right.axhline(validity.threshold, color="black", linestyle="--", linewidth=1)
    right.text(0.01, validity.threshold, f" threshold {validity.threshold:.2f}", va="bottom", fontsize=7,
               transform=right.get_yaxis_transform())
    right.set_xlabel("slice (model plane)", fontsize=8)
    right.set_ylabel("distance to manifold", fontsize=8)
    right.tick_params(labelsize=7)
    right.set_title(f"Volume score {validity.score:.2f}", fontsize=9)

    others = ", ".join(t for t in (verdict.modality_comparison, verdict.size_comparison) if t)  # the checks besides style
    others = f"\n{others}" if others else ""
    fig.suptitle(f"{verdict.headline} ({verdict.style_comparison}){others}", fontsize=10, color=verdict.rgb,
                 fontweight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path


def _draw_pca_map(ax, validity: Validity, scores: np.ndarray, verdict: Verdict) -> None:
    """The 2D PCA map of the style codes, for results without the two distances (older models' reports)."""
    reference = None if validity.reference_2d is None else np.asarray(validity.reference_2d, dtype=np.float64)
    embedding = None if validity.embedding_2d is None else np.asarray(validity.embedding_2d, dtype=np.float64)
    if reference is not None and len(reference):
        ax.scatter(reference[:, 0], reference[:, 1], s=6, c="0.65", alpha=0.6, linewidths=0, label=REFERENCE_LABEL)
    if embedding is not None and len(embedding):
        per_point = scores[: len(embedding)] if scores.size >= len(embedding) else np.full(len(embedding), np.nan)
        inside = np.where(np.isfinite(per_point), per_point <= validity.threshold, verdict.valid)
        for keep, rgb, label in ((inside, VALID_RGB, "input slices, within threshold"),
                                 (~inside, INVALID_RGB, "input slices, beyond threshold")):
            if keep.any():
                ax.scatter(embedding[keep, 0], embedding[keep, 1], s=12, color=rgb, linewidths=0, label=label)
    if reference is None and embedding is None:
        ax.text(0.5, 0.5, "no manifold map\nin this result", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Style manifold (PCA of style codes)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=6, loc="best", frameon=False)
