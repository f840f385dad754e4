"""The picture that explains a validity verdict: each slice's two distances to the learned styles.

A slice's validity score is the mean of its distance *within* the style manifold's subspace (how unusual
its style is among the learned ones) and its distance *off* that subspace (how much of it the learned
styles cannot describe at all): :meth:`gase.validity.StyleManifold.distances`. Both are about 1 on the
training slices. Drawn against each other, the slices the model accepts lie below the line
within + off = 2 x threshold, so the picture shows the verdict and why, which a PCA map of the style
codes cannot (it drops the off-subspace part; a CT-like knee sits inside the training cloud there).

Used by the GASE Segmentation module's panel and by ``gase demo``; matplotlib only, no GUI backend.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

VALID_RGB = (0.18, 0.62, 0.25)     # green: within the model's competence
INVALID_RGB = (0.85, 0.20, 0.12)   # red: outside it
WITHIN_LABEL = "distance within the learned styles"
OFF_LABEL = "distance off the learned styles"
# the reference sample: since 2026-12-05 the manifold is fitted on the training slices and augmented copies
# of them (gase.training.validity_fit); a model fitted before that has the training slices alone
REFERENCE_LABEL = "training slices (and augmented copies)"
LOG_ABOVE = 8.0  # axes turn logarithmic when a point lies beyond this many thresholds


def volume_point(distances: np.ndarray, score: float) -> np.ndarray | None:
    """Where a volume goes on the map: the median of its slices' two distances (the typical balance between
    them), moved along that direction until the mean of the two equals the volume's score. So it lies on
    the accepted side of the threshold line exactly when the volume is valid. None without finite slices."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1, 2)
    d = d[np.isfinite(d).all(axis=1)]
    if not len(d) or not np.isfinite(score):
        return None
    m = np.median(d, axis=0)
    return m * (float(score) / m.mean()) if m.mean() > 0 else np.array([score, score], dtype=np.float64)


def draw_accepted_region(ax, threshold: float, points: np.ndarray) -> bool:
    """Axes of the distance map sized to ``points`` (N, 2), the accepted region (green) and the threshold
    line within + off = 2 x threshold; the axes are logarithmic (returns True) when a point lies beyond
    ``LOG_ABOVE`` thresholds."""
    t2 = 2.0 * float(threshold)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    top = max(1.15 * t2, float(pts.max()) * 1.1 if pts.size else 0.0)
    log = pts.size > 0 and float(pts.max()) > LOG_ABOVE * threshold
    if log:
        low = max(1e-3, float(pts[pts > 0].min()) / 1.5) if (pts > 0).any() else 1e-2
        low = min(low, 0.1 * threshold)
        xs = np.geomspace(low, t2 - low, 400)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, top)
        ax.set_ylim(low, top)
    else:
        xs = np.linspace(0.0, t2, 400)
        ax.set_xlim(0.0, top)
        ax.set_ylim(0.0, top)
    line = t2 - xs
    ax.fill_between(xs, np.maximum(line, ax.get_ylim()[0]), ax.get_ylim()[0], color=VALID_RGB, alpha=0.12,
                    linewidth=0, label="accepted region")
    ax.plot(xs, line, "--", color="black", linewidth=1, label=f"threshold {threshold:.2f}")
    return log


def draw_distance_map(ax, threshold: float, cases: Sequence[tuple[np.ndarray, str, object, float]],
                      reference: np.ndarray | None = None, *, fontsize: float = 8.0) -> None:
    """Draw on matplotlib ``ax``: the accepted region, the threshold line, the training slices
    (``reference``, (N, 2); omitted when None) and for each case ``(distances (S, 2), label, colour,
    volume score)`` its slices (small dots) and the volume (a star, :func:`volume_point`). A colour of None
    colours each slice by its own verdict and the star by the volume's (green within, red beyond)."""
    points = [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d, _, _, _ in cases]
    points = [p[np.isfinite(p).all(axis=1)] for p in points]
    stars = [volume_point(d, score) for d, _, _, score in cases]
    everything = np.concatenate(points + [s[None] for s in stars if s is not None] +
                                ([np.asarray(reference, np.float64).reshape(-1, 2)] if reference is not None else []) +
                                [np.zeros((0, 2))])
    log = draw_accepted_region(ax, threshold, everything)
    if reference is not None and len(reference):
        ref = np.asarray(reference, dtype=np.float64)
        ax.scatter(ref[:, 0], ref[:, 1], s=6, c="0.6", alpha=0.6, linewidths=0, label=REFERENCE_LABEL)
    for p, star, (_, label, colour, score) in zip(points, stars, cases):
        if colour is None:
            inside = p.mean(axis=1) <= threshold
            for keep, rgb, suffix in ((inside, VALID_RGB, "within threshold"), (~inside, INVALID_RGB, "beyond threshold")):
                if keep.any():
                    ax.scatter(p[keep, 0], p[keep, 1], s=9, color=rgb, alpha=0.6, linewidths=0,
                               label=f"{label}, {suffix}")
            star_colour, star_label = (VALID_RGB if score <= threshold else INVALID_RGB), "the volume"
        else:
            if len(p):
                ax.scatter(p[:, 0], p[:, 1], s=8, color=colour, alpha=0.45, linewidths=0)
            star_colour, star_label = colour, f"{label} (volume)"
        if star is not None:
            ax.scatter([star[0]], [star[1]], s=220, marker="*", color=star_colour, edgecolors="black",
                       linewidths=0.8, zorder=5, label=star_label)
    ax.set_xlabel(WITHIN_LABEL + (" (log)" if log else ""), fontsize=fontsize)
    ax.set_ylabel(OFF_LABEL + (" (log)" if log else ""), fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)
