"""Fitting a model's style manifold and calibrating its validity threshold (at export, or again for a trained
model with :func:`refit_validity`).

The manifold is fitted on the training slices and on ``copies`` augmented copies of them (the standard
augmentation the segmenter trains with: rotation, scale, gamma, coil bias, noise). Four training subjects do
not span the subjects a scanner sees; fitted on them alone, the manifold scored most new source-style pelves
far off its subspace (data seed 1: 4 of 6 source-style test pelves invalid). The copies add variation the
segmenter has learnt to accept. They also bring some corruptions closer (data seed 1's GASE knee model):
inverted test knees scored 1.85-3.26 against the threshold 1.48 (3.73-5.59 against 1.95 before), and 1 of 3
inverted knees of another subject stream 1.43, under it.

The threshold is calibrated as before (:func:`gase.validity.calibrate_threshold`): each training volume is
scored, unaugmented, against a manifold fitted on the others (with their copies), the validation volumes
against the full manifold.

The held-out volumes are scored as they are and as ``HELDOUT_COPIES`` augmented copies each (since the evening
of 2026-12-05): five held-out volumes describe the centre of new subjects' scores but not their tail. Data seed
1's GASE pelvis model called 10 of 400 new source-style subjects invalid (2.5%; scores median 1.11, 99th
percentile 1.56, max 1.72, against 1.51; ``benchmarks/false_invalid.py``), while its held-out volumes scored
1.04-1.28. Their augmented copies score higher on the pelvis (1.3-1.6) and not on the knee (1.0-1.3), so the
upper quartile of all of them moves the pelvis threshold to 1.77 and the knee's to 1.50 (knee motion-corrupted
volumes, which only the style score catches, score 1.66 and more). Chosen after seeing those 400 pelvis
subjects; checked on 400 others (README, Results).

A source expert's manifold is a router, not a verdict: it decides which scans the expert (trained on the
source style alone, standard augmentation) segments under ``--route style``. It stays strict: fitted on the
training slices alone, 1.1 x the upper quartile (:data:`ROUTER`). Fitted like the verdict's, it handed the
expert scans of styles it cannot segment (data seed 1, knee PD-FS: 2 of 6, Dice 0.72 -> 0.62 on the style).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..fsutil import save_tensors
from ..model_card import load_card, write_card
from ..preprocess import Normalization, pad_to_multiple
from ..validity import (VERDICT_MARGIN, StyleManifold, calibrate_threshold, heldout_volume_scores,
                        threshold_from_volume_scores)
from .augment import standard_augment

AUGMENTED_COPIES = 4  # augmented copies of each training slice the manifold is fitted on
HELDOUT_COPIES = 4    # augmented copies of each held-out volume scored for the threshold (see the module's doc)
ROUTER = {"copies": 0, "margin": 1.1, "heldout_copies": 0}  # a source expert's routing manifold (module doc)
CALIBRATION = "upper quartile of the volume scores of leave-one-volume-out training volumes and validation volumes"


@dataclass
class ValidityFit:
    manifold: StyleManifold
    threshold: float
    heldout_scores: list[np.ndarray]  # content-slice scores of each held-out volume
    fitted_on_slices: int
    copies: int
    margin: float = VERDICT_MARGIN
    heldout_copies: int = 0

    def card_fields(self) -> dict:
        """The ``validity`` entries of a model card that describe this fit."""
        return {"threshold": round(self.threshold, 4),
                "score": "median over slices of (Mahalanobis in PCA subspace + off-subspace residual)/2, "
                         "1 ~ training slices",
                "calibration": calibration_text(self.margin, self.heldout_copies),
                "margin": self.margin,
                "heldout_volume_scores": [round(v, 4) for v in heldout_volume_scores(self.heldout_scores)],
                "fitted_on_slices": self.fitted_on_slices,
                "augmented_copies": self.copies,
                "heldout_augmented_copies": self.heldout_copies}


def calibration_text(margin: float, heldout_copies: int) -> str:
    """The card's ``validity.calibration`` wording of a threshold rule."""
    return f"{margin:g} x {CALIBRATION}" + (
        f", each also as {heldout_copies} augmented copies" if heldout_copies else "")


def content_scores(scores: np.ndarray, images: torch.Tensor) -> np.ndarray:
    """Slice scores of the slices with content (as the predictor counts them, on the centre slice of context
    stacks)."""
    if images.dim() == 4:
        images = images[:, images.shape[1] // 2]
    content = ((images > 0.05).float().mean(dim=(1, 2)) > 0.02).numpy()
    return scores[content] if content.any() else scores


def augmented(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One augmented copy (standard augmentation) of canonical slices (S, H, W) or of context stacks (S, C, H, W)
    (the same transform for a stack's channels)."""
    if images.dim() == 4:
        return standard_augment(images.float(), torch.zeros((images.shape[0], *images.shape[2:]), dtype=torch.long),
                                gen)[0]
    x, _ = standard_augment(images[:, None].float(), torch.zeros(images.shape, dtype=torch.long), gen)
    return x[:, 0]


def fit_validity(features_of: Callable[[torch.Tensor], np.ndarray], train_images: Sequence[torch.Tensor],
                 val_images: Sequence[torch.Tensor], *, copies: int = AUGMENTED_COPIES, margin: float = VERDICT_MARGIN,
                 heldout_copies: int = HELDOUT_COPIES, seed: int = 0) -> ValidityFit:
    """Fit the manifold and calibrate the threshold. ``features_of`` maps canonical slices (S, H, W) at the
    model spacing, or their context stacks (S, C, H, W) for a model with context, to validity features (S, F); ``train_images`` / ``val_images`` hold one such tensor per
    volume. Each held-out volume is scored as it is and as ``heldout_copies`` augmented copies (drawn after
    the fit's own copies, so the manifold does not depend on them)."""
    if copies < 0 or heldout_copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies} and {heldout_copies}")
    gen = torch.Generator().manual_seed(seed)
    feats = [[features_of(images)] + [features_of(augmented(images, gen)) for _ in range(copies)]
             for images in train_images]
    manifold = StyleManifold.fit(np.concatenate([f for fs in feats for f in fs]))
    held = []

    def score_heldout(m: StyleManifold, images: torch.Tensor, own: np.ndarray) -> None:
        held.append(content_scores(m.score(own)[0], images))
        for _ in range(heldout_copies):
            held.append(content_scores(m.score(features_of(augmented(images, gen)))[0], images))

    for i, images in enumerate(train_images):
        others = [f for j, fs in enumerate(feats) if j != i for f in fs]
        if others:
            score_heldout(StyleManifold.fit(np.concatenate(others)), images, feats[i][0])
    for images in val_images:
        score_heldout(manifold, images, features_of(images))
    return ValidityFit(manifold, calibrate_threshold(held, margin=margin), held,
                       int(sum(len(f) for fs in feats for f in fs)), copies, margin, heldout_copies)


def _model_features(folder: Path, weights: str, validity: str,
                    device: str = "cpu") -> Callable[[torch.Tensor], np.ndarray]:
    """Validity features of canonical slices through the network stored in ``weights`` of the model in ``folder``."""
    from ..predictor import _load_network, resolve_device  # the predictor's own loading and checks

    card = load_card(folder)
    model, _ = _load_network(card, weights, validity, folder)
    dev = resolve_device(device)
    model.eval().to(dev)

    def features_of(images: torch.Tensor, batch: int = 16) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, images.shape[0], batch):
                x = images[s:s + batch]
                x = x[:, None] if x.dim() == 3 else x
                xp, _ = pad_to_multiple(x.float().to(dev), model.segmenter.divisor)
                out.append(model.features(xp).float().cpu())
        return torch.cat(out).numpy()
    return features_of


def refit_validity(folder: str | Path, train_pairs, val_pairs, *, copies: int = AUGMENTED_COPIES,
                   segmenter: bool = True, expert: bool = True, device: str = "cpu") -> dict[str, ValidityFit]:
    """Fit the style manifold of the trained model in ``folder`` again, on its training pairs (``(image, labels,
    name)``, as :func:`gase.training.loop.train` takes them) and recalibrate its threshold; rewrites
    ``validity.safetensors`` and the card's ``validity`` (atomically, other fields kept). A source expert in the
    folder is refitted too, as a router (:data:`ROUTER`; ``expert_validity.safetensors``,
    ``source_expert.validity``). ``segmenter`` / ``expert`` False leaves that one as it is; ``device`` runs the
    networks. Returns the fits by file name.

    For models exported before the augmented fit (2026-12-05): the same data they were trained on gives the
    fit their training now does. Training itself calls it for the expert it attaches."""
    from .data import SliceSet
    from ..model_card import EXPERT_FILES

    folder = Path(folder)
    card = load_card(folder)
    sets = [SliceSet.build(p, card.plane, float(card.input_spacing_mm), Normalization.from_json(card.normalization),
                           card.context) for p in (train_pairs, val_pairs)]
    fits = {}
    images = (sets[0].inputs(), sets[1].inputs())
    if segmenter:
        fits["validity.safetensors"] = fit_validity(
            _model_features(folder, "weights.safetensors", "validity.safetensors", device), *images, copies=copies)
    if expert and card.source_expert:
        fits[EXPERT_FILES["validity"]] = fit_validity(
            _model_features(folder, EXPERT_FILES["weights"], EXPERT_FILES["validity"], device), *images, **ROUTER)
    # everything computed first: the files and the card (their checksums) are written one right after the other
    for name, f in fits.items():
        save_tensors({k: v.contiguous() for k, v in f.manifold.to_tensors().items()}, folder / name)
    if "validity.safetensors" in fits:
        card.validity = {**card.validity, **fits["validity.safetensors"].card_fields()}
    if EXPERT_FILES["validity"] in fits:
        ev = fits[EXPERT_FILES["validity"]].card_fields()
        card.source_expert["validity"] = {**card.source_expert.get("validity", {}),
                                          **{k: ev[k] for k in ("threshold", "calibration", "margin",
                                                                "heldout_volume_scores", "fitted_on_slices",
                                                                "augmented_copies", "heldout_augmented_copies")}}
    write_card(card, folder)
    return fits


def recalibrate_threshold(folder: str | Path, margin: float = VERDICT_MARGIN) -> tuple[float, float]:
    """Set the validity threshold of the model in ``folder`` to ``margin`` x the upper quartile of the held-out
    volume scores its card stores (``validity.heldout_volume_scores``): the threshold rule of this version for a
    model exported under an earlier one (the margin was 1.25 from 2026-12-05 to 2026-12-06), without running
    its network. The manifold and a source expert's routing threshold stay as they are; the threshold replaced
    is kept in the card (``validity.earlier_thresholds``). Rewrites the card atomically; returns the (old, new)
    threshold (the same twice, and nothing written, when the card already has this margin)."""
    folder = Path(folder)
    card = load_card(folder)
    scores = card.validity.get("heldout_volume_scores") or []
    if not scores:
        raise ValueError(f"{folder}: the model card stores no validity.heldout_volume_scores; fit its validity "
                         "again (gase.training.validity_fit.refit_validity) instead")
    before = float(card.validity["threshold"])
    if card.validity.get("margin") == margin:
        return before, before
    after = round(threshold_from_volume_scores(scores, margin=margin), 4)
    earlier = [*card.validity.get("earlier_thresholds", []),
               {"threshold": before, "calibration": card.validity.get("calibration", "")}]
    card.validity = {**card.validity, "threshold": after, "margin": margin, "earlier_thresholds": earlier,
                     "calibration": calibration_text(margin, int(card.validity.get("heldout_augmented_copies", 0)))}
    write_card(card, folder)
    return before, after
