"""Style-interpolation previews: what the generator has learned, as synthetic images with exact labels.

For one label slice y and the style codes w_a = E(x_a), w_b = E(x_b) of two training slices, a preview
is the row G(y, lerp(w_a, w_b, a)) for a in ``alphas`` (a < 0 and a > 1 extrapolate, as the training's
style diversification does). Every image of the row has y as its exact label map, so drawing y's
outlines over them shows whether the anatomy holds while the appearance moves.

>>> slices = example_slices(pairs, "sagittal", spacing=1.2)                       # doctest: +SKIP
>>> preview = preview_from_model("Resources/Models/knee-demo", slices)            # doctest: +SKIP
>>> preview.images.shape, preview.labels.shape                                    # doctest: +SKIP
((7, 128, 128), (128, 128))

Networks are built and run on the CPU inside :func:`torch.random.fork_rng`: a preview made during
training neither slows the GPU nor changes the training's random stream (runs stay repeatable and
resumable).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .errors import ModelError
from .fsutil import temp_file
from .preprocess import Normalization
from .volume import Volume

DEFAULT_ALPHAS: tuple[float, ...] = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
MAX_PREVIEW_SIZE = 256  # pixels per side; previews are pictures, not training data
PREVIEW_SEED = 0


@dataclass
class ExampleSlices:
    """Two training slices and the label slice the preview draws: (H, W) arrays at the model spacing,
    H and W multiples of 4. ``x_a``, ``x_b`` float32 normalised (0..1); ``labels`` uint8 (of x_a)."""

    x_a: np.ndarray
    x_b: np.ndarray
    labels: np.ndarray


@dataclass
class StylePreview:
    """``images`` (A, H, W) float32 = G(labels, lerp(w_a, w_b, alphas[n])); ``labels`` (H, W) uint8;
    ``real_a``/``real_b`` (H, W) the slices whose styles are w_a and w_b; ``iteration`` when known."""

    images: np.ndarray
    labels: np.ndarray
    alphas: tuple[float, ...]
    real_a: np.ndarray
    real_b: np.ndarray
    iteration: int = -1

    def save(self, path: str | os.PathLike) -> Path:
        """Write as ``.npz`` (plain arrays, no pickle), atomically: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent, ".preview-", ".npz")
        os.close(fd)
        try:
            np.savez_compressed(tmp, images=self.images, labels=self.labels, alphas=np.asarray(self.alphas),
                                real_a=self.real_a, real_b=self.real_b, iteration=np.asarray(self.iteration))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> "StylePreview":
        with np.load(Path(path), allow_pickle=False) as d:
            return StylePreview(d["images"].astype(np.float32), d["labels"].astype(np.uint8),
                                tuple(float(a) for a in d["alphas"]), d["real_a"].astype(np.float32),
                                d["real_b"].astype(np.float32), int(d["iteration"]))


def example_slices(pairs: Sequence[tuple[Volume, np.ndarray, str]], plane: str, spacing: float | None = None,
                   norm: Normalization | None = None) -> ExampleSlices:
    """The most-labelled canonical slice of the first two volumes of ``pairs`` (one volume: its two
    most-labelled slices), normalised and resampled as in training (``spacing`` mm; default: their
    median in-plane spacing), centre-fitted to one square size."""
    from .orientation import reorientation_for
    from .training.data import SliceSet

    pairs = list(pairs[:2])
    if not pairs:
        raise ValueError("example_slices needs at least one (image, labels, name) pair")
    if spacing is None:
        spacing = float(np.median([s for v, _, _ in pairs for s in reorientation_for(v, plane).spacing[1:]]))
    sset = SliceSet.build(pairs, plane, float(spacing), norm or Normalization())
    side = min(MAX_PREVIEW_SIZE, max(max(x.shape[-2:]) for x in sset.images))
    side += (-side) % 4
    xs, ys = sset.all_slices(side)
    bounds = np.cumsum([0] + [int(x.shape[0]) for x in sset.images])
    fg = (ys > 0).flatten(1).sum(1).numpy()
    picks = [int(bounds[v] + np.argmax(fg[bounds[v]:bounds[v + 1]])) for v in range(len(sset.images))]
    if len(picks) == 1:  # one volume: its second most-labelled slice gives the other style
        order = np.argsort(-fg[: bounds[1]], kind="stable")
        picks.append(int(order[1] if len(order) > 1 else order[0]))
    a, b = picks[:2]
    return ExampleSlices(xs[a].numpy().astype(np.float32), xs[b].numpy().astype(np.float32),
                         ys[a].numpy().astype(np.uint8))


@torch.no_grad()
def style_interpolation(generator: torch.nn.Module, encoder: torch.nn.Module, slices: ExampleSlices,
                        n_classes: int, alphas: Sequence[float] = DEFAULT_ALPHAS, iteration: int = -1) -> StylePreview:
    """G(y, lerp(E(x_a), E(x_b), a)) for each a of ``alphas``. ``generator`` and ``encoder`` must be CPU
    modules (they are not moved or switched to eval here); the global RNG state is left untouched."""
    if int(slices.labels.max()) >= n_classes:
        raise ModelError(f"The preview's label slice has value {int(slices.labels.max())}, but the generator "
                         f"knows {n_classes} classes. Use labels from the model's own training data.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PREVIEW_SEED)  # the generator's noise injection: same picture for the same weights
        xa = torch.from_numpy(np.ascontiguousarray(slices.x_a))[None, None]
        xb = torch.from_numpy(np.ascontiguousarray(slices.x_b))[None, None]
        w_a, w_b = encoder(xa), encoder(xb)
        a = torch.tensor([float(v) for v in alphas], dtype=torch.float32)[:, None]
        w = w_a + a * (w_b - w_a)  # (A, style_dim)
        y = torch.from_numpy(slices.labels.astype(np.int64))
        layout = F.one_hot(y, n_classes).permute(2, 0, 1).float()[None]
        if getattr(generator, "content_channels", 0):  # the unlabelled anatomy comes from x_a itself
            layout = torch.cat([layout, xa], 1)
        images = generator(layout.expand(len(a), -1, -1, -1).contiguous(), w)[:, 0].float().clamp(-0.2, 1.2).numpy()
    return StylePreview(images.astype(np.float32), slices.labels.copy(), tuple(float(v) for v in alphas),
                        slices.x_a.copy(), slices.x_b.copy(), int(iteration))


def preview_from_checkpoint(checkpoint: dict, n_classes: int, slices: ExampleSlices,
                            alphas: Sequence[float] = DEFAULT_ALPHAS) -> StylePreview:
    """Preview from a training checkpoint (see :meth:`gase.training.loop.Trainer.state_dict`)."""
    import json

    from .nets import StyleEncoder, StyleGenerator

    cfg = json.loads(checkpoint["config"])
    with torch.random.fork_rng(devices=[]):  # building the networks draws initial weights
        generator = StyleGenerator(n_classes, int(cfg["style_dim"]), content_channels=int(cfg.get("gen_content", False)))
        encoder = StyleEncoder(int(cfg["style_dim"]))
    generator.load_state_dict(checkpoint["G"])
    encoder.load_state_dict(checkpoint["enc"])
    generator.eval(), encoder.eval()
    return style_interpolation(generator, encoder, slices, n_classes, alphas, int(checkpoint["iteration"]))


def preview_from_model(folder: str | os.PathLike, slices: ExampleSlices,
                       alphas: Sequence[float] = DEFAULT_ALPHAS) -> StylePreview:
    """Preview from a model folder's ``generator.safetensors`` and style encoder (safetensors only)."""
    from .model_card import load_card, load_tensors, prefixed
    from .nets import StyleGenerator
    from .predictor import build_encoder

    card = load_card(Path(folder), verify=True)
    if "generator.safetensors" not in card.files:
        raise ModelError(f"{folder}: this model has no generator.safetensors (it was not trained with the GASE "
                         "method), so there is no style preview to show.")
    arch = card.architecture
    with torch.random.fork_rng(devices=[]):  # building the networks draws initial weights
        generator = StyleGenerator(card.n_classes, int(arch["style_dim"]),
                                   tuple(arch.get("generator_channels", (16, 32, 64))),
                                   content_channels=int(arch.get("generator_content_channels", 0)))
        encoder = build_encoder(card)
    gen_t = load_tensors(card, "generator.safetensors")
    enc_t = load_tensors(card, "weights.safetensors")
    try:
        generator.load_state_dict(prefixed(gen_t, "generator"))
        encoder.load_state_dict(prefixed(enc_t, "style_encoder"))
    except RuntimeError as exc:
        raise ModelError(f"{folder}: the generator weights do not match the card's architecture "
                         f"({str(exc).splitlines()[0]}). The model folder is damaged; re-export it.") from None
    generator.eval(), encoder.eval()
    return style_interpolation(generator, encoder, slices, card.n_classes, alphas,
                               int(card.training.get("iterations", -1)))
