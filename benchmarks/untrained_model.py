"""An untrained GASE model folder with the default architecture, for timing and memory benchmarks.

The weights are random and the validity manifold is fitted on the random network's features of
random smooth images, so the folder loads through the same safe path as a trained model
(card schema, checksums, safetensors) and costs exactly the same to run. Its segmentations mean
nothing: benchmarks that use it say so in their output.

>>> folder = build_untrained_model(Path("/tmp/untrained"), input_spacing_mm=0.4)  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import torch

from gase.labels import ANATOMY_LABELS
from gase.model_card import ModelCard, write_card
from gase.predictor import SliceModel
from gase.preprocess import Normalization
from gase.training.config import TrainConfig
from gase.validity import StyleManifold

ENCODER_CHANNELS = [16, 32, 64, 96]
UNTRAINED_NOTE = "UNTRAINED (random weights, validity fitted on random features): timing only"


def _random_smooth_slices(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 1, size, size) float32 in 0..1: upsampled noise, roughly image-like statistics."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 1, size // 8, size // 8), generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp_(0, 1)


def build_untrained_model(folder: Path, *, anatomy: str = "knee", plane: str = "sagittal",
                          input_spacing_mm: float = 0.4, seed: int = 0) -> Path:
    """Write a complete model folder (``model.json`` + safetensors) with random default-architecture weights."""
    from gase.fsutil import save_tensors

    from gase.predictor import build_encoder, build_segmenter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig()
    table = ANATOMY_LABELS[anatomy]
    card = ModelCard(
        name=f"untrained-{anatomy}", title=f"Untrained {anatomy} model ({UNTRAINED_NOTE})", version="0.0.0",
        anatomy=anatomy, plane=plane, input_spacing_mm=float(input_spacing_mm), labels=tuple(table),
        architecture={"segmenter_channels": list(cfg.segmenter_channels), "style_dim": cfg.style_dim,
                      "encoder_channels": ENCODER_CHANNELS, "z_dim": cfg.z_dim, "method": "untrained"},
        normalization=Normalization().to_json(), validity={"threshold": 2.0}, files={},
        description=UNTRAINED_NOTE)
    torch.manual_seed(seed)
    seg, enc = build_segmenter(card), build_encoder(card)
    model = SliceModel(seg, enc).eval()
    with torch.inference_mode():
        feats = torch.cat([model(_random_smooth_slices(16, 64, seed + i))[2] for i in range(4)]).numpy()
    manifold = StyleManifold.fit(feats)
    tensors = {**{f"segmenter.{k}": v.detach().float().contiguous() for k, v in seg.state_dict().items()},
               **{f"style_encoder.{k}": v.detach().float().contiguous() for k, v in enc.state_dict().items()}}
    save_tensors(tensors, folder / "weights.safetensors")
    save_tensors({k: v.contiguous() for k, v in manifold.to_tensors().items()}, folder / "validity.safetensors")
    write_card(card, folder)
    return folder
