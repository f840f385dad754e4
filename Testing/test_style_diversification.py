"""Feature-space style mixing and cross-view consistency (GASE's D training)."""
from __future__ import annotations

import pytest
import torch

from gase.nets import SegDiscriminator
from gase.training.augment import FeatureStyleMix
from gase.training.losses import view_consistency


def _features(b=6, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, c, 16, 16, generator=g)
    scale = torch.rand(b, c, 1, 1, generator=g) * 3 + 0.5
    shift = torch.randn(b, c, 1, 1, generator=g) * 2
    return base * scale + shift


def test_zero_probability_leaves_features_untouched():
    h = _features()
    mix = FeatureStyleMix(6, torch.Generator().manual_seed(1), 0.0, (-0.5, 1.5), "cpu")
    assert torch.equal(mix(h, 0), h)


def test_mixing_moves_statistics_but_keeps_the_layout_and_the_protected_views():
    h = _features()
    mix = FeatureStyleMix(6, torch.Generator().manual_seed(1), 1.0, (-0.5, 1.5), "cpu", keep_first=2)
    out = mix(h, 0)
    assert torch.equal(out[:2], h[:2])  # the real view keeps its own style
    changed = out[2:]
    assert not torch.allclose(changed.mean(dim=(2, 3)), h[2:].mean(dim=(2, 3)), atol=1e-2)
    # the normalised map (the anatomy) is the same up to a positive per-channel scale
    def norm(t):
        return (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)
    assert torch.allclose(norm(changed), norm(h[2:]), atol=1e-3)


def test_same_partner_and_weight_at_every_level():
    mix = FeatureStyleMix(4, torch.Generator().manual_seed(3), 1.0, (0.5, 0.5), "cpu")
    h = _features(4)
    a, b = mix(h, 0), mix(h, 0)
    assert torch.equal(a, b)  # deterministic for one forward pass


def test_segmenter_accepts_feature_style_and_gradients_flow():
    seg = SegDiscriminator(5)
    x = torch.rand(4, 1, 64, 64, requires_grad=True)
    mix = FeatureStyleMix(4, torch.Generator().manual_seed(0), 1.0, (-0.5, 1.5), "cpu")
    out = seg(x, feature_style=mix)
    out.logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    plain = seg(x)
    assert not torch.allclose(plain.logits, out.logits)


def test_view_consistency_is_zero_for_equal_views_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(3, 5, 8, 8, generator=g)
    assert float(view_consistency(torch.cat([one, one]), 2)) < 1e-6
    other = torch.randn(3, 5, 8, 8, generator=g)
    assert float(view_consistency(torch.cat([one, other]), 2)) > 0.05


def test_synthetic_view_weight_changes_only_their_share_of_the_loss(knee_cases):
    import numpy as np

    from gase.labels import KNEE_LABELS
    from gase.preprocess import Normalization
    from gase.training.config import TrainConfig
    from gase.training.data import SliceSet
    from gase.training.loop import Trainer

    pairs = [(img, lab.array.astype(np.uint8), f"c{i}") for i, (img, lab) in enumerate(knee_cases[:2])]
    sset = SliceSet.build(pairs, "sagittal", 1.2, Normalization())
    seg = {}
    for w in (1.0, 0.0):
        trainer = Trainer(TrainConfig(method="gase", device="cpu", batch_size=2, crop=64, gen_warmup=0.0,
                                      w_syn_seg=w, seed=3), KNEE_LABELS, 5)
        seg[w] = trainer.step(*sset.sample(torch.Generator().manual_seed(0), 2, 64))["seg"]
    assert np.isfinite(seg[0.0]) and np.isfinite(seg[1.0])
    assert seg[0.0] != seg[1.0]  # with weight 0 only the real and curve views count


def test_detached_adversarial_heads_leave_the_segmentation_features_alone():
    seg = SegDiscriminator(5)
    x = torch.rand(2, 1, 64, 64, requires_grad=True)
    out = seg(x, heads="train", detach_adv=True)
    (out.fake_pixel.mean() + out.fake_image.mean()).backward()
    assert seg.fake_pixel_head.weight.grad is not None and seg.fake_image_head.weight.grad is not None
    assert all(p.grad is None for name, p in seg.named_parameters() if not name.startswith("fake_"))
    assert x.grad is None  # detached: no gradient reaches the input either
    seg.zero_grad(set_to_none=True)
    out = seg(x, heads="train")  # attached (forward's default; the generator step uses it): gradients reach the trunk
    out.fake_pixel.mean().backward()
    assert seg.seg_head.weight.grad is None and seg.enc[0][0].weight.grad is not None


def test_fewer_synthetic_views_per_batch(knee_cases):
    import numpy as np

    from gase.errors import InputError
    from gase.labels import KNEE_LABELS
    from gase.preprocess import Normalization
    from gase.training.config import TrainConfig
    from gase.training.data import SliceSet
    from gase.training.loop import Trainer

    pairs = [(img, lab.array.astype(np.uint8), f"c{i}") for i, (img, lab) in enumerate(knee_cases[:2])]
    sset = SliceSet.build(pairs, "sagittal", 1.2, Normalization())
    cfg = TrainConfig(method="gase", device="cpu", batch_size=4, crop=64, gen_every=1, gen_warmup=0.0,
                      syn_fraction=0.5, adv_detach=True)
    trainer = Trainer(cfg, KNEE_LABELS, 5)
    seen = []
    forward = trainer.seg.forward
    trainer.seg.forward = lambda x, **kw: (seen.append(x.shape[0]), forward(x, **kw))[1]
    losses = trainer.step(*sset.sample(trainer.gen, 4, 64))
    assert seen[0] == 4 + 4 + 2 + 2  # real, curves, 2 synthetic, 2 mixed
    assert seen[1] == 2  # the real/fake pass on the synthetic crops
    assert all(np.isfinite(v) for v in losses.values()) and {"adv_d", "rec"} <= set(losses)
    with pytest.raises(InputError, match="syn_fraction"):
        TrainConfig(syn_fraction=0.0).validate()
    with pytest.raises(InputError, match="w_consistency"):
        TrainConfig(syn_fraction=0.5, w_consistency=0.5).validate()


def _stripes(b=4, n_classes=3, size=32):
    """Images whose class 1 holds two tissues (a dark rim and a bright core), like cortex and marrow."""
    y = torch.zeros(b, size, size, dtype=torch.long)
    y[:, 8:24, 8:24] = 1
    y[:, 12:20, 26:30] = 2
    x = torch.full((b, 1, size, size), 0.3)
    x[:, 0, 8:24, 8:24] = 0.05          # rim
    x[:, 0, 11:21, 11:21] = 0.85        # core
    x[:, 0, 12:20, 26:30] = 0.5
    return x, y


def test_flatten_luts_squeezes_the_chosen_curves_only():
    from gase.training.augment import flatten_luts
    g = torch.Generator().manual_seed(0)
    luts = torch.rand(400, 256, generator=g)
    out = flatten_luts(luts, torch.Generator().manual_seed(1), prob=0.5, max_spread=0.3)
    spread_in = luts.amax(1) - luts.amin(1)
    spread_out = out.amax(1) - out.amin(1)
    changed = ~torch.isclose(out, luts).all(1)
    assert 120 < int(changed.sum()) < 280               # about half of them
    assert torch.all(spread_out[changed] <= 0.3 * spread_in[changed] + 1e-6)
    assert torch.equal(out[~changed], luts[~changed])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(flatten_luts(luts, torch.Generator().manual_seed(1), prob=0.0, max_spread=0.3), luts)


def test_random_curves_with_flattening_can_render_the_two_tissues_of_a_class_alike():
    from gase.training.augment import random_curves
    x, y = _stripes(b=64)
    contrast = []
    for flatten in (0.0, 1.0):
        out = random_curves(x, y, 3, torch.Generator().manual_seed(2), per_class_prob=1.0, flatten_prob=flatten)
        rim, core = out[:, 0, 10, 10:22].mean(1), out[:, 0, 14:18, 14:18].mean((1, 2))
        contrast.append((core - rim).abs())
    # a curve over the source intensities gives rim and core independent values; flattening makes them close
    assert float(contrast[1].median()) < 0.5 * float(contrast[0].median())
    assert float(contrast[1].max()) <= 0.31


def test_flattening_off_draws_nothing_extra():
    """The peer (``randcurve``) and earlier runs draw the same random numbers as before the option."""
    from gase.training.augment import random_curves
    x, y = _stripes()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = random_curves(x, y, 3, g1)
    b = random_curves(x, y, 3, g2, flatten_prob=0.0)
    assert torch.equal(a, b) and torch.equal(g1.get_state(), g2.get_state())


def test_curve_flatten_setting_is_checked():
    from gase.errors import InputError
    from gase.training.config import TrainConfig
    assert TrainConfig(curve_flatten=0.5).validate().curve_flatten == 0.5
    with pytest.raises(InputError, match="curve_flatten"):
        TrainConfig(curve_flatten=1.5).validate()


def test_random_shallow_conv_changes_texture_within_range_and_is_seeded():
    from gase.training.augment import random_shallow_conv
    x, _ = _stripes(b=8)
    a = random_shallow_conv(x, torch.Generator().manual_seed(0))
    b = random_shallow_conv(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 + 1e-6
    assert not torch.allclose(a, x, atol=0.05)
    c = random_shallow_conv(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)


def test_gin_views_join_gase_training_only(knee_cases):
    import numpy as np

    from gase.labels import KNEE_LABELS
    from gase.preprocess import Normalization
    from gase.training.config import TrainConfig
    from gase.training.data import SliceSet
    from gase.training.loop import Trainer
    from gase.errors import InputError

    pairs = [(img, lab.array.astype(np.uint8), f"c{n}") for n, (img, lab) in enumerate(knee_cases[:2])]
    sset = SliceSet.build(pairs, "sagittal", 1.75, Normalization())
    cfg = TrainConfig(method="gase", iterations=2, batch_size=2, crop=64, device="cpu", gin_prob=1.0,
                      gen_warmup=0.0, source_expert=False)
    tr = Trainer(cfg, KNEE_LABELS, 5)
    seen = []
    original = tr._gin
    tr._gin = lambda v: seen.append(v.shape[0]) or original(v)
    losses = tr.step(*sset.sample(tr.gen, 2, 64))
    assert all(np.isfinite(v) for v in losses.values())
    assert seen == [2, 1]  # the curve views of the batch and the synthetic views (half of the batch)
    with pytest.raises(InputError, match="gin_prob"):
        TrainConfig(gin_prob=-0.1).validate()


def _three_tissues(b=4, noise=0.02, seed=0):
    """Dark rim (cortex, 0.1) around a bright core (fat marrow, 0.9) next to a grey band (cartilage, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((b, 1, 48, 48), 0.0)
    x[:, 0, 8:40, 8:24] = 0.1
    x[:, 0, 10:38, 10:22] = 0.9
    x[:, 0, 8:40, 24:28] = 0.5
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_suppress_bright_darkens_the_brightest_tissue_without_a_rim():
    from gase.training.augment import suppress_bright
    x = _three_tissues()
    out = suppress_bright(x, torch.Generator().manual_seed(0), levels=(0.7, 0.7))
    core, band, rim = out[:, 0, 12:36, 12:20], out[:, 0, 10:38, 25:27], out[:, 0, 8:40, 8]
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(core.mean()) < 0.3 * float(band.mean())        # fat-suppressed marrow: darker than cartilage
    assert float(band.mean()) > 0.8                              # rescaled: the grey band is now the brightest
    edge = out[:, 0, 10:38, 10]                                   # the core's outermost column: suppressed too
    assert float(edge.max()) < 0.5 * float(band.mean())
    assert abs(float(rim.mean()) - float(core.mean())) < 0.25   # cortex and marrow now alike (one dark bone)
    again = suppress_bright(x, torch.Generator().manual_seed(0), levels=(0.7, 0.7))
    assert torch.equal(out, again)


def test_suppress_bright_leaves_images_without_tissue_above_the_level_alone():
    from gase.training.augment import suppress_bright
    x = _three_tissues(noise=0.0) * 0.5                          # nothing above 0.45
    out = suppress_bright(x, torch.Generator().manual_seed(1), levels=(0.8, 0.9))
    # only the rescaling to the 99.5th foreground percentile (the old bright core, 0.45) changes the image
    assert torch.allclose(out, (x / 0.45).clamp(0, 1), atol=0.02)


def test_fatsat_views_join_gase_training_only(knee_cases, monkeypatch):
    import numpy as np

    from gase.errors import InputError
    from gase.labels import KNEE_LABELS
    from gase.preprocess import Normalization
    from gase.training import loop
    from gase.training.config import TrainConfig
    from gase.training.data import SliceSet

    pairs = [(img, lab.array.astype(np.uint8), f"c{n}") for n, (img, lab) in enumerate(knee_cases[:2])]
    sset = SliceSet.build(pairs, "sagittal", 1.75, Normalization())
    seen = []
    original = loop.suppress_bright
    monkeypatch.setattr(loop, "suppress_bright", lambda v, g: seen.append(v.shape[0]) or original(v, g))
    for method in ("gase", "randcurve"):
        cfg = TrainConfig(method=method, iterations=2, batch_size=2, crop=64, device="cpu", fatsat_prob=1.0,
                          gen_warmup=0.0, source_expert=False)
        tr = loop.Trainer(cfg, KNEE_LABELS, 5)
        losses = tr.step(*sset.sample(tr.gen, 2, 64))
        assert all(np.isfinite(v) for v in losses.values())
    assert seen == [2, 1]  # GASE: the curve views of the batch and the synthetic views; the peer: none
    with pytest.raises(InputError, match="fatsat_prob"):
        TrainConfig(fatsat_prob=1.5).validate()


def _organ_scene(b=2):
    """A body (label 1, 0.3) holding an organ disc (label 2, radius 8, 0.8 with a darker 0.6 core of
    radius 4: an inner pattern) at (30, 26), and a far marker (label 3, 0.1) in a corner."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    rho = ((yy - 30) ** 2 + (xx - 26) ** 2).sqrt()
    x = torch.zeros(b, 1, 64, 64)
    y = torch.zeros(b, 64, 64, dtype=torch.long)
    body = (yy > 2) & (yy < 62) & (xx > 2) & (xx < 62)
    x[:, 0][:, body], y[:, body] = 0.3, 1
    x[:, 0][:, rho <= 8], y[:, rho <= 8] = 0.8, 2
    x[:, 0][:, rho <= 4] = 0.6
    marker = (yy >= 54) & (yy < 60) & (xx >= 54) & (xx < 60)
    x[:, 0][:, marker], y[:, marker] = 0.1, 3
    return x, y


def test_organ_warp_grows_or_shrinks_the_structure_with_its_image_and_leaves_the_far_anatomy():
    from gase.training.augment import organ_warp
    x, y = _organ_scene()
    area = int((y[0] == 2).sum())
    for k in (0.75, 1.3):
        # the body covers most of the crop (not picked), the marker is picked half of the time: force the organ
        y1 = y.clone()
        y1[y1 == 3] = 1
        xo, yo = organ_warp(x, y1, torch.Generator().manual_seed(0), prob=1.0, scale=(k, k))
        ratio = float((yo == 2).sum(dim=(1, 2)).float().mean()) / area
        assert abs(ratio - k * k) < 0.15 * k * k, (k, ratio)
        inside = xo[:, 0][yo == 2]
        assert float((inside >= 0.55).float().mean()) > 0.97      # the image moved with the labels
        core = float((xo[:, 0][yo == 2] < 0.7).float().mean())      # the inner pattern scaled with it: about a
        assert 0.15 < core < 0.45                                    # quarter of the organ's area (the centre
                                                                     # scales a little more than the rim)
        assert torch.equal(yo[:, 54:60, 54:60], y1[:, 54:60, 54:60])  # the far corner stays where it was
        assert torch.allclose(xo[:, :, 54:60, 54:60], x[:, :, 54:60, 54:60], atol=0.01)
    again = organ_warp(x, y, torch.Generator().manual_seed(3), prob=1.0)
    assert all(torch.equal(a, b) for a, b in zip(again, organ_warp(x, y, torch.Generator().manual_seed(3), 1.0)))


def test_organ_warp_off_or_without_a_small_structure_changes_nothing_and_stacks_warp_alike():
    from gase.training.augment import organ_warp
    x, y = _organ_scene()
    xo, yo = organ_warp(x, y, torch.Generator().manual_seed(0), prob=0.0)
    assert torch.equal(xo, x) and torch.equal(yo, y)
    only_body = (y > 0).long()                                       # one structure covering most of the crop
    xo, yo = organ_warp(x, only_body, torch.Generator().manual_seed(0), prob=1.0)
    assert torch.allclose(xo, x, atol=1e-5) and torch.equal(yo, only_body)
    xs = x.repeat(1, 3, 1, 1)                                         # a context stack: (B, 3, H, W) labels too
    ys = y[:, None].repeat(1, 3, 1, 1)
    ys[:, 1][ys[:, 1] == 3] = 1
    xo, yo = organ_warp(xs, ys, torch.Generator().manual_seed(0), prob=1.0, scale=(1.3, 1.3))
    assert yo.shape == ys.shape and torch.equal(yo[:, 0] == 2, yo[:, 2] == 2) and torch.equal(xo[:, 0], xo[:, 2])
    assert int((yo[:, 1] == 2).sum()) > 1.3 * int((ys[:, 1] == 2).sum())


def test_organ_warp_joins_gase_training_only(knee_cases, monkeypatch):
    import numpy as np

    from gase.errors import InputError
    from gase.labels import KNEE_LABELS
    from gase.preprocess import Normalization
    from gase.training import loop
    from gase.training.config import LEGACY_DEFAULTS, TrainConfig
    from gase.training.data import SliceSet

    pairs = [(img, lab.array.astype(np.uint8), f"c{n}") for n, (img, lab) in enumerate(knee_cases[:2])]
    sset = SliceSet.build(pairs, "sagittal", 1.75, Normalization())
    seen = []
    original = loop.organ_warp
    monkeypatch.setattr(loop, "organ_warp", lambda x, y, g, p: seen.append(p) or original(x, y, g, p))
    for method, prob in (("gase", 0.0), ("gase", 0.5), ("erm", 0.5), ("randcurve", 0.5)):
        cfg = TrainConfig(method=method, iterations=2, batch_size=2, crop=64, device="cpu", gen_warmup=0.0,
                          source_expert=False, organ_warp_prob=prob)
        tr = loop.Trainer(cfg, KNEE_LABELS, 5)
        losses = tr.step(*sset.sample(tr.gen, 2, 64))
        assert all(np.isfinite(v) for v in losses.values())
    assert seen == [0.5]  # off by default; GASE only: ERM and the peer keep the published recipes
    assert TrainConfig().organ_warp_prob == 0.0
    assert LEGACY_DEFAULTS["organ_warp_prob"] == 0.0  # what models trained before it existed were trained with
    with pytest.raises(InputError, match="organ_warp_prob"):
        TrainConfig(organ_warp_prob=1.2).validate()
