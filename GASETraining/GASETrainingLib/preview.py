"""The style-interpolation preview as a PNG: what the generator has learned, with the label outlines.

One row: the real slice whose style is w_a, then G(y, lerp(w_a, w_b, a)) for each a (a < 0 and a > 1
extrapolate), then the real slice of style w_b. The outlines of y, in the segments' colours, are drawn
over every synthetic image: the anatomy should stay put while the appearance moves. The networks run
in the core (:mod:`gase.preview`); this file only draws.

>>> write_preview_png(StylePreview.load("out/training/preview.npz"), table, "preview.png")  # doctest: +SKIP
>>> preview_png_from_model("~/.gase/models/knee-mine", training_set, "preview.png")       # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from gase.labels import LabelInfo

if TYPE_CHECKING:  # gase.preview needs torch, which Start installs after the module has loaded
    from gase.preview import StylePreview

from .export import TrainingSet


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: labelled pixels with a 4-neighbour of another value (the inner boundary of each label)."""
    lab = np.asarray(labels)
    padded = np.pad(lab, 1, mode="edge")
    edge = np.zeros(lab.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + lab.shape[0], dx:dx + lab.shape[1]] != lab
    return edge & (lab > 0)


def with_outlines(image: np.ndarray, labels: np.ndarray, table: Sequence[LabelInfo]) -> np.ndarray:
    """(H, W) intensities (about 0..1) -> (H, W, 3) uint8 grey image with each label's outline in its colour."""
    grey = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edge = outline_mask(labels)
    for lab in table:
        rgb[edge & (labels == lab.value)] = lab.color
    return (rgb * 255 + 0.5).astype(np.uint8)


def preview_strip(preview: StylePreview, table: Sequence[LabelInfo], gap: int = 2) -> np.ndarray:
    """(H, (A + 2) * (W + gap) - gap, 3) uint8: real a | synthetic row with outlines | real b."""
    tiles = [with_outlines(preview.real_a, np.zeros_like(preview.labels), table)]
    tiles += [with_outlines(img, preview.labels, table) for img in preview.images]
    tiles.append(with_outlines(preview.real_b, np.zeros_like(preview.labels), table))
    h = tiles[0].shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for n, tile in enumerate(tiles):
        parts += ([spacer] if n else []) + [tile]
    return np.concatenate(parts, axis=1)


def write_preview_png(preview: StylePreview, table: Sequence[LabelInfo], path, *, dpi: int = 100) -> Path:
    """Draw the preview strip with column titles (real, a = ..., real) to ``path`` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    strip = preview_strip(preview, table)
    n = len(preview.images) + 2
    tile_w = (strip.shape[1] + 2) / n
    width_in = max(4.0, strip.shape[1] / 80.0)
    fig = Figure(figsize=(width_in, width_in * strip.shape[0] / strip.shape[1] + 0.45), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(strip, interpolation="nearest")
    titles = ["real (style a)"] + [f"a = {a:g}" for a in preview.alphas] + ["real (style b)"]
    ax.set_xticks([tile_w * (i + 0.5) for i in range(n)], titles, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    it = f" after {preview.iteration} iterations" if preview.iteration >= 0 else ""
    ax.set_xlabel(f"Synthetic images G(labels, lerp(style a, style b, a)){it}; outlines: the labels they are "
                  "generated for", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def preview_png_from_file(npz_path, table: Sequence[LabelInfo], path) -> Path:
    """The PNG of a preview that ``gase train`` wrote (``<out>/training/preview.npz``)."""
    from gase.preview import StylePreview

    return write_preview_png(StylePreview.load(npz_path), table, path)


def preview_png_from_model(model_folder, training_set: TrainingSet, path) -> Path:
    """The PNG of a trained model's generator (``generator.safetensors``), on two training cases' slices."""
    from gase.model_card import load_card
    from gase.preview import example_slices, preview_from_model
    from gase.training.data import load_pairs, match_pairs

    card = load_card(Path(model_folder), verify=False)
    pairs = load_pairs(match_pairs(training_set.images_dir, training_set.labels_dir)[:2], card.labels)
    preview = preview_from_model(model_folder, example_slices(pairs, card.plane, card.input_spacing_mm))
    return write_preview_png(preview, card.labels, path)
