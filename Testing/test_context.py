"""Through-plane context (2.5D input, gase.context): the stacks, the training crops, the augmentations, the
card field and the predictor."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gase.context import Context, stack_array, stack_tensor
from gase.errors import InputError, ModelError
from gase.labels import KNEE_LABELS
from gase.preprocess import Normalization
from gase.training.augment import gaussian_cutout, random_curves, random_shallow_conv, standard_augment, suppress_bright
from gase.training.config import TrainConfig
from gase.training.data import SliceSet
from gase.training.loop import Trainer, inflate_input


def test_context_offsets_follow_the_slice_spacing():
    ctx = Context(3, 4.0)
    assert ctx.centre == 1 and ctx.used
    assert ctx.offsets(4.0).tolist() == [-1.0, 0.0, 1.0]
    assert ctx.offsets(2.0).tolist() == [-2.0, 0.0, 2.0]   # thin slices: two slices away
    assert ctx.offsets(8.0).tolist() == [-0.5, 0.0, 0.5]   # thick slices: between two
    assert Context().offsets(3.0).tolist() == [0.0] and not Context().used
    assert Context.from_json(None) == Context()
    assert Context.from_json(ctx.to_json()) == ctx
    for bad in ({"slices": 2, "spacing_mm": 4.0}, {"slices": 11, "spacing_mm": 4.0}, {"slices": 3, "spacing_mm": 0},
                {"slices": True}, [3, 4.0]):
        with pytest.raises(ModelError, match="architecture.context"):
            Context.from_json(bad)


def test_stacks_interpolate_between_slices_and_keep_the_centre_exact():
    vol = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)  # slice k holds k
    out = stack_array(vol, np.array([0, 2, 4]), np.array([-0.5, 0.0, 0.5]))
    assert out.shape == (3, 3, 2, 3) and out.dtype == np.float32
    assert out[:, :, 0, 0].tolist() == [[0.0, 0.0, 0.5], [1.5, 2.0, 2.5], [3.5, 4.0, 4.0]]  # clamped at the ends
    # integer offsets take the slices themselves; a NaN next door stays out of the centre channel
    vol[3] = np.nan
    out = stack_array(vol, np.array([2]), np.array([-1.0, 0.0, 1.0]))
    assert out[0, :, 0, 0].tolist()[:2] == [1.0, 2.0] and np.isnan(out[0, 2]).all()
    # the tensor version, and nearest-slice labels
    t = torch.arange(5, dtype=torch.float32)[:, None, None].expand(5, 2, 3).contiguous()
    assert stack_tensor(t, [2], np.array([-0.6, 0.0, 0.6]))[0, :, 0, 0].tolist() == pytest.approx([1.4, 2.0, 2.6])
    lab = torch.arange(5, dtype=torch.uint8)[:, None, None].expand(5, 2, 3).contiguous()
    got = stack_tensor(lab, [2], np.array([-0.6, 0.0, 0.4]), nearest=True)
    assert got.dtype == torch.uint8 and got[0, :, 0, 0].tolist() == [1, 2, 2]


def _pairs(knee_cases, n=2):
    return [(img, lab.array.astype(np.uint8), f"c{i}") for i, (img, lab) in enumerate(knee_cases[:n])]


def test_context_crops_hold_the_2d_crop_in_the_middle(knee_cases):
    pairs = _pairs(knee_cases)
    flat = SliceSet.build(pairs, "sagittal", 1.2, Normalization())
    ctx = SliceSet.build(pairs, "sagittal", 1.2, Normalization(), Context(3, 3.0))
    x2, y2 = flat.sample(torch.Generator().manual_seed(4), 6, 64)
    x3, y3 = ctx.sample(torch.Generator().manual_seed(4), 6, 64)  # the same random draws: the same crops
    assert x3.shape == (6, 3, 64, 64) and y3.shape == (6, 3, 64, 64) and y3.dtype == torch.int64
    assert torch.equal(x3[:, 1], x2[:, 0]) and torch.equal(y3[:, 1], y2)
    assert not torch.equal(x3[:, 0], x3[:, 1])  # the neighbours are other slices
    inputs = ctx.inputs()
    assert inputs[0].shape == (flat.images[0].shape[0], 3, *flat.images[0].shape[1:])
    assert torch.equal(inputs[0][:, 1], flat.images[0])


def test_augmentations_render_a_stack_in_one_style():
    """A stack of identical slices stays a stack of identical slices: one pose, one style, one curve per scan."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(4, 1, 32, 32, generator=gen)
    lab = (torch.rand(4, 32, 32, generator=gen) * 4).long()
    x, y = base.expand(4, 3, 32, 32).contiguous(), lab[:, None].expand(4, 3, 32, 32).contiguous()
    xs, ys = standard_augment(x, y, gen)
    assert torch.equal(ys[:, 0], ys[:, 2]) and xs.shape == x.shape
    # one pose, gamma and bias field; the noise is each slice's own
    corr = torch.corrcoef(torch.stack([xs[:, 0].flatten(), xs[:, 2].flatten()]))[0, 1]
    assert corr > 0.9, corr
    views = [random_curves(x, y, 5, gen, flatten_prob=0.5), suppress_bright(x, gen), random_shallow_conv(x, gen),
             gaussian_cutout(x, gen, 1.0)]
    for v in views:
        assert v.shape == x.shape
        torch.testing.assert_close(v[:, 0], v[:, 1])
        torch.testing.assert_close(v[:, 2], v[:, 1])
    # and each single-slice result is what the stack's middle gets with the same random draws
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(random_curves(x, y, 5, g1)[:, 1:2], random_curves(base, lab, 5, g2))


def test_gase_steps_on_stacks_and_an_inflated_segmenter_starts_as_the_2d_one(knee_cases):
    torch.manual_seed(0)
    cfg = TrainConfig(method="gase", device="cpu", batch_size=2, crop=64, gen_every=1, gen_warmup=0.0,
                      context_slices=3)
    trainer = Trainer(cfg, KNEE_LABELS, 5)
    assert trainer.seg.in_channels == 3 and trainer.seg.enc[0].conv.weight.shape[1] == 3
    first = trainer.seg.enc[0].conv.weight.detach()
    assert float(first[:, 0].abs().sum()) == 0 and float(first[:, 2].abs().sum()) == 0  # starts as a 2D network
    assert float(first[:, 1].std()) == pytest.approx(float(Trainer(TrainConfig(method="erm", device="cpu"),
                                                                   KNEE_LABELS, 5).seg.enc[0].conv.weight.detach().std()),
                                                      rel=0.2)
    sset = SliceSet.build(_pairs(knee_cases), "sagittal", 1.2, Normalization(), Context(3, 3.0))
    losses = trainer.step(*sset.sample(trainer.gen, 2, 64))
    assert set(losses) >= {"seg", "adv_d", "rec", "adv_g", "gen_seg", "cycle"}
    assert all(np.isfinite(v) for v in losses.values())
    # inflation: zero weights on the neighbours, the 2D kernel on the centre
    flat = Trainer(TrainConfig(method="erm", device="cpu"), KNEE_LABELS, 5).seg.eval()
    trainer.seg.load_state_dict(inflate_input(flat.state_dict(), 3))
    trainer.seg.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trainer.seg(x).logits, flat(x[:, 1:2]).logits)


def test_config_checks_the_context():
    with pytest.raises(InputError, match="context_slices"):
        TrainConfig(context_slices=2).validate()
    with pytest.raises(InputError, match="context_mm"):
        TrainConfig(context_slices=3, context_mm=0.0).validate()


@pytest.fixture(scope="module")
def context_model(tmp_path_factory, knee_cases):
    """A 3-slice context model (erm, a few iterations: plumbing, not accuracy)."""
    from gase.training.loop import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("context_model")
    pairs = _pairs(knee_cases, 4)
    cfg = TrainConfig(method="erm", iterations=6, batch_size=2, crop=64, val_every=6, checkpoint_every=6,
                      device="cpu", seed=0, context_slices=3)
    train(pairs[:3], pairs[3:], KNEE_LABELS, out, cfg, anatomy="knee", plane="sagittal", name="ctx-knee")
    return out


def test_a_context_model_segments_whatever_the_batch(context_model, knee_cases):
    from gase.model_card import load_card
    from gase.predictor import Predictor
    from gase.volume import Volume

    card = load_card(context_model)
    from gase.orientation import reorientation_for

    spacing = float(np.median([reorientation_for(img, "sagittal").spacing[0] for img, _ in knee_cases[:3]]))
    assert card.architecture["context"] == {"slices": 3, "spacing_mm": pytest.approx(spacing, abs=1e-3)}
    assert card.context == Context(3, card.architecture["context"]["spacing_mm"])
    image = knee_cases[4][0]
    results = []
    for batch in (1, 5):  # the stacks must not depend on where a batch starts
        p = Predictor.from_folder(context_model, device="cpu", batch_size=batch)
        results.append(p.predict(image))
    a, b = results
    assert np.array_equal(a.labels.array, b.labels.array)
    np.testing.assert_allclose(a.confidence.array, b.confidence.array, atol=1e-5)
    assert np.isfinite(a.validity.score) and np.isfinite(a.expected_dice_overall)
    assert a.stability_per_label  # the stability views run on stacks too
    # a NaN anywhere is still refused with a clear error
    bad = image.array.astype(np.float32).copy()
    bad[3, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        Predictor.from_folder(context_model, device="cpu").predict(Volume(bad, image.ijk_to_ras))


def test_predictor_stacks_at_the_model_distance_whatever_the_slice_spacing(context_model):
    from gase.predictor import Predictor

    p = Predictor.from_folder(context_model, device="cpu")
    d = p.context.spacing_mm
    canon = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 4, 4), np.float32)
    thin = p._raw(canon, slice(4, 6), d / 2)   # slices half the model's distance apart: two slices away
    assert thin[:, :, 0, 0].tolist() == [[2.0, 4.0, 6.0], [3.0, 5.0, 7.0]]
    thick = p._raw(canon, np.array([4]), 2 * d)  # twice as far apart: half-way to the next slice
    assert thick[0, :, 0, 0].tolist() == [3.5, 4.0, 4.5]
    with pytest.raises(ValueError, match="slice_mm"):
        p.stability(canon, np.ones(canon.shape, np.uint8), 0.0, 9.0, (1.0, 1.0))


def test_a_bad_context_in_the_card_is_refused(context_model, tmp_path):
    import shutil

    from gase.model_card import load_card

    folder = tmp_path / "m"
    shutil.copytree(context_model, folder)
    card = json.loads((folder / "model.json").read_text())
    card["architecture"]["context"] = {"slices": 4, "spacing_mm": 3.0}
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="context.slices must be an odd number"):
        load_card(folder)
