"""Style-interpolation previews (core tensors, Lib drawing) and model registration, on the tiny trained model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gase.errors import ModelError
from gase.labels import KNEE_LABELS


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, knee_cases):
    """A GASE model folder (generator included) after 4 iterations of small networks, on one thread (~5 s).
    Shadows conftest's ``tiny_model``: previews and registration need any GASE model, not a good one."""
    from gase.training.config import TrainConfig
    from gase.training.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("preview_model")
    pairs = [(img, lab.array.astype(np.uint8), f"case{n}") for n, (img, lab) in enumerate(knee_cases[:3])]
    cfg = TrainConfig(method="gase", iterations=4, batch_size=2, crop=64, val_every=4, checkpoint_every=4,
                      segmenter_channels=(8, 16, 32, 64), device="cpu", seed=0)
    train(pairs[:2], pairs[2:], KNEE_LABELS, out, cfg, anatomy="knee", plane="sagittal", name="preview-knee")
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def example(knee_cases):
    from gase.preview import example_slices

    pairs = [(img, lab.array.astype(np.uint8), f"c{n}") for n, (img, lab) in enumerate(knee_cases[:2])]
    return example_slices(pairs, "sagittal", 1.2)


def test_preview_from_model_interpolates_style_and_keeps_the_rng(tiny_model, example):
    from gase.preview import DEFAULT_ALPHAS, preview_from_model

    h, w = example.labels.shape
    assert h % 4 == 0 and w % 4 == 0 and example.labels.max() > 0
    state = torch.get_rng_state()
    preview = preview_from_model(tiny_model, example)
    assert torch.equal(state, torch.get_rng_state())  # previews never shift a training's random stream
    assert preview.images.shape == (len(DEFAULT_ALPHAS), h, w) and np.isfinite(preview.images).all()
    # moving along the style line changes the image, continuously: neighbours closer than the ends
    ends = np.abs(preview.images[0] - preview.images[-1]).mean()
    steps = [np.abs(preview.images[i + 1] - preview.images[i]).mean() for i in range(len(DEFAULT_ALPHAS) - 1)]
    assert ends > 0 and max(steps) < ends
    again = preview_from_model(tiny_model, example)
    np.testing.assert_array_equal(preview.images, again.images)  # same weights, same picture


def test_preview_png_draws_outlines_in_label_colours(tiny_model, example, tmp_path):
    from gase.preview import StylePreview, preview_from_model
    from GASETrainingLib.preview import outline_mask, preview_strip, write_preview_png

    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:5] = 2
    edge = outline_mask(labels)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any()  # the ring, not the inside

    preview = preview_from_model(tiny_model, example)
    path = preview.save(tmp_path / "p.npz")
    loaded = StylePreview.load(path)
    np.testing.assert_array_equal(loaded.images, preview.images)
    strip = preview_strip(loaded, KNEE_LABELS)
    h, w = example.labels.shape
    assert strip.shape == (h, (len(loaded.alphas) + 2) * (w + 2) - 2, 3)
    femur = np.asarray(KNEE_LABELS[0].color) * 255
    tile = strip[:, w + 2: 2 * w + 2]  # the first synthetic image
    on_edge = tile[outline_mask(example.labels) & (example.labels == 1)]
    assert len(on_edge) and np.allclose(on_edge, femur, atol=1)
    png = write_preview_png(loaded, KNEE_LABELS, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_register_copies_only_the_model_and_lists_it(tiny_model, tmp_path, monkeypatch):
    from gase.model_card import list_models, load_card
    from GASETrainingLib.registry import register_model, unique_model_name

    monkeypatch.setenv("GASE_USER_MODELS_DIR", str(tmp_path / "models"))
    assert (tiny_model / "training" / "checkpoint.pt").exists()
    card = register_model(tiny_model, name="my-knee", title="My knee")
    assert sorted(p.name for p in card.folder.iterdir()) == sorted(["model.json", *card.files])
    assert card.title == "My knee" and load_card(card.folder, verify=True).name == "my-knee"
    assert "my-knee" in [c.name for c in list_models()]
    with pytest.raises(ModelError, match="already installed"):
        register_model(tiny_model, name="my-knee")
    assert unique_model_name("my-knee") == "my-knee-2"
    with pytest.raises(ModelError, match="cannot be used"):
        register_model(tiny_model, name="../escape")
    register_model(tiny_model, name="my-knee", overwrite=True)
    assert not list((tmp_path / "models").glob(".*"))  # no staging folder left behind
