"""Training crops: the balanced sampler shows every structure and the empty slices; the earlier
"foreground" sampler is kept bit for bit (models and benchmark runs before 2026-11-28 used it)."""
from __future__ import annotations

import json

import pytest
import torch

from gase.errors import InputError
from gase.training.config import TrainConfig
from gase.training.data import SliceSet


def _toy_set() -> SliceSet:
    """One volume of 10 slices, 64 x 64: a large structure (1) on slices 2-7, a small one (2, 4 x 4
    voxels) only on slice 5; slices 0-1 and 8-9 hold no label."""
    labels = torch.zeros(10, 64, 64, dtype=torch.uint8)
    labels[2:8, 10:50, 10:50] = 1
    labels[5, 30:34, 30:34] = 2
    images = labels.float() / 2 + 0.1
    return SliceSet([images], [labels], ["toy"])


def _crops(sset: SliceSet, mode: str, n: int = 400, crop: int = 32):
    x, y = sset.sample(torch.Generator().manual_seed(0), n, crop, mode=mode)
    return x, y


def test_balanced_crops_show_the_small_structure_and_the_empty_slices():
    sset = _toy_set()
    _, y_bal = _crops(sset, "balanced")
    _, y_fg = _crops(sset, "foreground")
    small_bal = float((y_bal == 2).flatten(1).any(1).float().mean())
    small_fg = float((y_fg == 2).flatten(1).any(1).float().mean())
    empty_bal = float((y_bal.flatten(1).amax(1) == 0).float().mean())
    empty_fg = float((y_fg.flatten(1).amax(1) == 0).float().mean())
    # structure 2 is drawn for about 1/2 of the 2/3 of crops centred on a structure
    assert 0.25 < small_bal < 0.45, small_bal
    assert small_fg < 0.2, small_fg
    # about 1/3 of the crops are drawn anywhere: 4 of 10 slices are empty, plus corners of labelled ones
    assert 0.1 < empty_bal < 0.3, empty_bal
    assert empty_fg < 0.08, empty_fg


def test_crops_keep_image_and_labels_aligned():
    sset = _toy_set()
    for mode in ("balanced", "foreground"):
        x, y = _crops(sset, mode, n=50)
        # the toy image is labels / 2 + 0.1 inside the volume and 0 in the zero padding of edge crops
        inside = x[:, 0] > 0
        assert torch.allclose(x[:, 0][inside], y[inside].float() / 2 + 0.1)


def test_foreground_mode_reproduces_the_earlier_sampler():
    """The draws of the pre-2026-11-28 sampler, written out: same generator stream, same crops."""
    sset = _toy_set()
    gen = torch.Generator().manual_seed(7)
    _, y_new = sset.sample(gen, 20, 32, mode="foreground")
    gen = torch.Generator().manual_seed(7)
    ys = []
    y_all = sset.labels[0]
    for _ in range(20):
        v = int(torch.randint(1, (1,), generator=gen))
        assert v == 0
        fg = torch.nonzero(y_all.flatten(1).amax(1) > 0).flatten()
        if float(torch.rand(1, generator=gen)) < 0.9:
            s = int(fg[torch.randint(len(fg), (1,), generator=gen)])
            pts = torch.nonzero(y_all[s] > 0)
            cy, cx = pts[int(torch.randint(len(pts), (1,), generator=gen))].tolist()
            jit = torch.randint(-8, 9, (2,), generator=gen).tolist()
            cy, cx = cy + jit[0], cx + jit[1]
        else:
            s = int(torch.randint(10, (1,), generator=gen))
            cy, cx = int(torch.randint(64, (1,), generator=gen)), int(torch.randint(64, (1,), generator=gen))
        lab = torch.zeros(32, 32, dtype=torch.uint8)
        y0, x0 = cy - 16, cx - 16
        for i in range(32):
            for j in range(32):
                if 0 <= y0 + i < 64 and 0 <= x0 + j < 64:
                    lab[i, j] = y_all[s, y0 + i, x0 + j]
        ys.append(lab.long())
    assert torch.equal(y_new, torch.stack(ys))


def test_unknown_sampling_is_refused():
    with pytest.raises(InputError, match="crop_sampling"):
        TrainConfig(crop_sampling="random").validate()
    with pytest.raises(ValueError, match="balanced"):
        _toy_set().sample(torch.Generator(), 2, 32, mode="random")
    assert TrainConfig().crop_sampling == "balanced"
    assert TrainConfig.from_json({"crop_sampling": "foreground"}).crop_sampling == "foreground"


def test_reused_model_from_before_the_setting_counts_as_foreground_sampling(tmp_path):
    from benchmarks.dg_benchmark import reused_training

    cfg = TrainConfig(method="erm", iterations=10, batch_size=2, crop=64, seed=0)
    old = {k: v for k, v in cfg.to_json().items() if k != "crop_sampling"}
    (tmp_path / "model.json").write_text(json.dumps({"training": {"config": old, "iterations": 10, "seconds": 1.0}}))
    with pytest.raises(InputError, match="crop_sampling foreground instead of balanced"):
        reused_training(tmp_path, cfg)
    cfg.crop_sampling = "foreground"
    assert reused_training(tmp_path, cfg)["iterations"] == 10


def test_margin_crops_lie_just_past_a_structure_along_the_slice_axis():
    """Margin crops sit on slices 1..margin_mm beyond a structure's first or last slice, at its place there."""
    y = torch.zeros(30, 64, 64, dtype=torch.uint8)
    y[10:20, 20:40, 20:40] = 1
    sset = SliceSet([y.float() / 2], [y], ["toy"], [2.0])
    x, lab = sset.sample(torch.Generator().manual_seed(0), 400, 32, margin_prob=1.0, any_prob=0.0, margin_mm=6.0)
    # every crop is off the structure (slices 7-9 and 20-22 hold none of it) but near where it was
    assert int(lab.sum()) == 0
    assert float(x.sum()) == 0.0
    plain = sset.sample(torch.Generator().manual_seed(0), 400, 32, any_prob=0.0)[1]
    assert bool((plain.flatten(1).amax(1) == 1).all())  # without margins each crop holds the structure
    # a draw without margins is the same as before the option existed (no extra random numbers)
    a = sset.sample(torch.Generator().manual_seed(5), 8, 32)
    b = sset.sample(torch.Generator().manual_seed(5), 8, 32, margin_prob=0.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
