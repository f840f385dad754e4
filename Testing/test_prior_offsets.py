"""The prior offsets: the logit correction for the class prior of the balanced training crops (learned at
training from the training slices, stored in the card, added to the logits by the predictor)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from gase.errors import ModelError
from gase.training.data import SliceSet, sampling_prior_offsets


def _slices(n_vol=2):
    """Volumes of 10 slices 64x64: a big structure (1) on every slice, a small one (2) on two slices."""
    images, labels = [], []
    for _ in range(n_vol):
        y = torch.zeros(10, 64, 64, dtype=torch.uint8)
        y[:, 8:56, 8:56] = 1
        y[4:6, 30:34, 30:34] = 2
        labels.append(y)
        images.append(y.float() / 2)
    return SliceSet(images, labels, [f"v{i}" for i in range(n_vol)])


def test_balanced_crops_get_offsets_that_lower_the_small_structure():
    s = _slices()
    off = sampling_prior_offsets(s, crop=32, mode="balanced")
    assert set(off) == {1, 2}
    # the small structure is centred in a third of the crops but is 0.05% of the slices' pixels
    assert off[2] < -2.0
    assert off[2] < off[1]
    again = sampling_prior_offsets(s, crop=32, mode="balanced")
    assert again == off  # a fixed seed: the same card every time
    # the theory: log of the share in the slices over the share in the crops, relative to the background
    whole = torch.bincount(torch.cat([y.flatten() for y in s.labels]).long(), minlength=3).double()
    assert math.isfinite(off[1]) and abs(off[1]) < 3
    assert whole[2] / whole.sum() < 1e-3


def test_a_label_the_crops_never_show_gets_no_offset():
    s = _slices()
    s.labels[0][s.labels[0] == 2] = 3  # label 3 exists in volume 0 only
    s.labels[1][s.labels[1] == 2] = 1
    off = sampling_prior_offsets(s, crop=32, mode="balanced", n_crops=64)
    assert set(off) == {1, 2, 3} and off[2] == 0.0 and off[3] < 0


def test_training_writes_the_offsets_and_the_card_checks_them(tiny_model):
    from gase.model_card import load_card, parse_card

    card = load_card(tiny_model)
    assert set(card.prior_offsets) == {lab.name for lab in card.labels}
    assert card.prior_offsets["tibial cartilage"] < 0 and card.prior_offsets["femoral cartilage"] < 0
    assert "p_slices / p_crops" in card.postprocessing["prior_rule"]
    data = json.loads((tiny_model / "model.json").read_text())
    for bad in ({"no such label": 1.0}, {"femur": 50.0}, {"femur": float("nan")}, {"femur": "low"}, [1.0]):
        data["postprocessing"] = {**card.postprocessing, "prior_offsets": bad}
        with pytest.raises(ModelError, match="prior_offsets"):
            parse_card(data)


def test_the_predictor_adds_the_offsets_to_the_logits(tiny_model, knee_cases, tmp_path, one_thread):
    """A big offset for one label makes it win wherever the network was not sure; no offsets at all (an
    older card) leaves the network's own argmax; the confidence head does not see the offsets."""
    from gase.model_card import load_card, write_card
    from gase.predictor import Predictor

    img, truth = knee_cases[2]

    def predict_with(offsets):
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_model, folder)
        card = load_card(folder)
        post = {k: v for k, v in card.postprocessing.items() if k not in ("prior_offsets", "largest_component",
                                                                            "opening_mm")}
        if offsets is not None:
            post["prior_offsets"] = offsets
        card.postprocessing = post
        write_card(card, folder)
        p = Predictor.from_folder(folder, device="cpu")
        p.stability_slices = 0
        return p, p.predict(img)

    p0, none = predict_with(None)
    assert not p0.model.has_offsets
    p1, zero = predict_with({"femur": 0.0})
    np.testing.assert_array_equal(none.labels.array, zero.labels.array)
    p2, femur = predict_with({"femur": 8.0})
    assert p2.model.has_offsets and float(p2.model.logit_offsets[0, 1]) == 8.0
    n_none, n_femur = (none.labels.array == 1).sum(), (femur.labels.array == 1).sum()
    assert n_femur > n_none
    assert set(np.unique(femur.labels.array[none.labels.array == 1])) == {1}  # femur stays femur
    p3, low = predict_with({"femur": -8.0})
    assert (low.labels.array == 1).sum() < n_none
    # the confidence head reads the logits before the offsets: unchanged where the label did not change
    same = none.labels.array == femur.labels.array
    np.testing.assert_allclose(femur.confidence.array[same], none.confidence.array[same], rtol=1e-5, atol=1e-6)


def test_the_confidence_is_calibrated_on_the_labels_after_the_offsets():
    """Export fits the Platt calibration to whether the label the model outputs (after the offsets) is right."""
    from gase.labels import LabelInfo
    from gase.training.config import TrainConfig
    from gase.training.loop import Trainer, _fit_conf_calibration

    torch.manual_seed(0)
    table = (LabelInfo(1, "big", (1.0, 0.0, 0.0)), LabelInfo(2, "small", (0.0, 1.0, 0.0)))
    trainer = Trainer(TrainConfig(method="erm", device="cpu", amp=False), table, 3)
    s = _slices(1)
    images = s.inputs()[0]
    raw, _, _ = trainer.forward_slices(images)
    shifted, _, _ = trainer.forward_slices(images, offsets=torch.tensor([0.0, -100.0, -100.0]))
    assert bool((shifted == 0).all()) and not bool((raw == 0).all())  # the offsets decide the labels
    plain = _fit_conf_calibration(trainer, s)
    after = _fit_conf_calibration(trainer, s, prior_offsets={"big": -100.0, "small": -100.0})
    assert (after["scale"], after["bias"]) != (plain["scale"], plain["bias"])
    assert _fit_conf_calibration(trainer, s, prior_offsets={"big": 0.0, "small": 0.0}) == plain
