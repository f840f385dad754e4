"""Network shapes and the single-pass contract of the segmentation discriminator."""
from __future__ import annotations

import pytest
import torch

from gase.nets import MappingNetwork, SegDiscriminator, StyleEncoder, StyleGenerator


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_segmenter_heads_and_feature_shapes():
    d = SegDiscriminator(5)
    x = torch.randn(2, 1, 64, 80)
    out = d(x, heads="train")
    assert out.logits.shape == (2, 5, 64, 80)
    assert out.conf_logit.shape == (2, 1, 64, 80)
    assert out.fake_pixel.shape == (2, 1, 64, 80) and out.fake_image.shape == (2, 1)
    assert out.features.shape == (2, d.feature_dim)
    inf = d(x)  # inference: no real/fake heads computed
    assert inf.fake_pixel is None and inf.fake_image is None
    torch.testing.assert_close(inf.logits, out.logits)


def test_confidence_training_does_not_bend_segmentation_features():
    d = SegDiscriminator(3)
    out = d(torch.randn(1, 1, 32, 32), heads="infer", detach_conf=True)
    out.conf_logit.sum().backward()
    assert all(p.grad is None for n, p in d.named_parameters() if not n.startswith("conf_head"))
    assert any(p.grad is not None for n, p in d.named_parameters() if n.startswith("conf_head"))


def test_style_encoder_mapping_and_generator_shapes():
    e, m, g = StyleEncoder(32), MappingNetwork(16, 32), StyleGenerator(4, 32)
    x = torch.rand(3, 1, 48, 64)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 48, 64)), 4).permute(0, 3, 1, 2).float()
    w = e(x)
    assert w.shape == (3, 32) and m(torch.randn(3, 16)).shape == (3, 32)
    img = g(y, w)
    assert img.shape == (3, 1, 48, 64)
    # another style gives another image for the same labels (style controls appearance)
    assert (g(y, w + 3.0) - img).abs().mean() > 1e-3


def test_style_code_ignores_anatomy_position():
    """E pools channel statistics: a circularly shifted image keeps almost the same style code."""
    e = StyleEncoder(16).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b = e(x), e(torch.roll(x, shifts=(16, 8), dims=(2, 3)))
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3
