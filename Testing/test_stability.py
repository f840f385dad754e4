"""Stability: how much of each mask survives small changes of contrast and size (test-time views)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gase.labels import KNEE_LABELS
from gase.predictor import STABILITY_VIEWS, Predictor, run_slices

DEMO_MODEL = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "knee-demo"


def _dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for lab in KNEE_LABELS:
        n = int((a == lab.value).sum() + (b == lab.value).sum())
        out[lab.value] = 2.0 * int(((a == lab.value) & (b == lab.value)).sum()) / n if n else float("nan")
    return out


def test_stability_matches_a_direct_computation(tiny_model, knee_cases, one_thread):
    """Every foreground slice segmented again under each view, Dice against the mask per view and label,
    averaged over the views: the same numbers, through several batches."""
    from gase.orientation import reorientation_for

    predictor = Predictor.from_folder(tiny_model, device="cpu", batch_size=3)
    predictor.card.postprocessing = {}  # compare with the network's own mask
    predictor.stability_slices = 10_000  # every foreground slice
    img, _ = knee_cases[2]
    res = predictor.predict(img)
    reo = reorientation_for(img, predictor.card.plane)
    canon, base = reo.forward(img.array), reo.forward(res.labels.array)
    fg = [i for i in range(base.shape[0]) if base[i].any()]
    assert fg, "the tiny model segments something"
    lo, hi = predictor.normalization.intensity_range(img.array)
    sp = reo.spacing[1:]
    per_view = []
    with torch.inference_mode():
        x, _ = predictor._to_device(canon[fg], lo, hi)
        for kind, amount in STABILITY_VIEWS:
            xv, spv = (x.clamp(min=0) ** amount, sp) if kind == "gamma" else (x, (sp[0] * amount, sp[1] * amount))
            out = run_slices(predictor.model, xv, spv, predictor.card.input_spacing_mm,
                             predictor.model.segmenter.divisor, False, offsets=predictor.offsets)
            per_view.append(_dice_per_label(base[fg], out.labels.numpy()))
    for lab in KNEE_LABELS:
        vals = [d[lab.value] for d in per_view]
        if all(math.isfinite(v) for v in vals):
            assert res.stability_per_label[lab.name] == pytest.approx(np.mean(vals), abs=1e-9)
        else:
            assert math.isnan(res.stability_per_label[lab.name])
    finite = [v for v in res.stability_per_label.values() if math.isfinite(v)]
    assert res.stability_overall == pytest.approx(np.mean(finite))
    rep = res.report()["reliability"]
    assert rep["stability"] == pytest.approx(res.stability_overall, abs=1e-4)
    assert set(rep["stability_per_label"]) == {t.name for t in KNEE_LABELS}


def test_stability_leaves_the_segmentation_alone_and_can_be_switched_off(tiny_model, knee_cases, one_thread):
    predictor = Predictor.from_folder(tiny_model, device="cpu")
    img, _ = knee_cases[1]
    with_check = predictor.predict(img)
    predictor.stability_slices = 0
    without = predictor.predict(img)
    np.testing.assert_array_equal(with_check.labels.array, without.labels.array)
    np.testing.assert_array_equal(with_check.confidence.array, without.confidence.array)
    assert with_check.expected_dice_overall == without.expected_dice_overall
    assert math.isfinite(with_check.stability_overall) and 0.0 <= with_check.stability_overall <= 1.0
    assert math.isnan(without.stability_overall) and without.stability_per_label == {}
    assert without.report()["reliability"]["stability"] is None


def test_nothing_segmented_means_no_stability(tiny_model, knee_cases, one_thread):
    """No foreground slice to check: no number (not a perfect score)."""
    from gase.orientation import reorientation_for

    predictor = Predictor.from_folder(tiny_model, device="cpu")
    img, _ = knee_cases[0]
    reo = reorientation_for(img, predictor.card.plane)
    canon = reo.forward(img.array)
    lo, hi = predictor.normalization.intensity_range(img.array)
    assert predictor.stability(canon, np.zeros(canon.shape, np.uint8), lo, hi, reo.spacing[1:]) == {}


def test_one_line_summary_names_both_numbers():
    from gase.result import SegmentationResult

    res = SegmentationResult.__new__(SegmentationResult)
    res.expected_dice_overall, res.stability_overall = 0.781, 0.9349
    assert res.quality_text() == "quality 0.86 (expected Dice 0.78, stability 0.93)"
    res.stability_overall = float("nan")  # no stability check: the quality is the expected Dice alone
    assert res.quality_text() == "quality 0.78 (expected Dice 0.78, stability n/a)"
    res.expected_dice_overall = float("nan")
    assert res.quality_text() == ""


def test_quality_is_the_mean_of_expected_dice_and_stability_per_label_and_overall():
    from gase.result import SegmentationResult, quality_score

    assert quality_score(0.7, 0.9) == pytest.approx(0.8)
    assert quality_score(None, 0.9) == pytest.approx(0.9)
    assert np.isnan(quality_score(float("nan"), None))
    res = SegmentationResult.__new__(SegmentationResult)
    res.expected_dice_overall, res.stability_overall = 0.6, 0.8
    res.expected_dice_per_label = {"femur": 0.9, "tibia": 0.3}
    res.stability_per_label = {"femur": 0.7, "cartilage": 0.5}
    assert res.quality_overall == pytest.approx(0.7)
    q = res.quality_per_label
    assert list(q) == ["femur", "tibia", "cartilage"]
    assert q == pytest.approx({"femur": 0.8, "tibia": 0.3, "cartilage": 0.5})


def test_segment_command_prints_and_reports_the_stability(tiny_model, knee_cases, tmp_path, capsys):
    import json
    import re

    from gase.cli import main
    from gase.volume import write_volume

    img, _ = knee_cases[3]
    src = write_volume(img, tmp_path / "knee.nrrd")
    code = main(["segment", str(src), "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "out" / "knee_report.json").read_text())
    stab = report["reliability"]["stability"]
    assert 0.0 <= stab <= 1.0 and set(report["reliability"]["stability_per_label"]) == {t.name for t in KNEE_LABELS}
    if report["validity"]["valid"]:
        assert re.search(rf"quality \d\.\d\d \(expected Dice \d\.\d\d, stability {stab:.2f}\)", stdout), stdout
        assert report["reliability"]["quality"] == pytest.approx((report["reliability"]["expected_dice"] + stab) / 2,
                                                                 abs=2e-4)
    else:
        assert "no quality estimate" in stdout


def test_a_view_past_the_working_size_limit_is_left_out(tiny_model, knee_cases, one_thread, monkeypatch):
    """Slices so large that reading them 1.25x bigger would pass the working-size limit still get a stability
    (from the other views) instead of an error."""
    import gase.predictor as gp

    predictor = Predictor.from_folder(tiny_model, device="cpu")
    img, _ = knee_cases[1]
    ref = predictor.predict(img)
    size = gp.checked_working_size(img.shape[1:], img.spacing[:2][::-1], predictor.card.input_spacing_mm)
    monkeypatch.setattr(gp, "MAX_WORKING_PIXELS", int(np.prod(size) * 1.2))  # 1.25x (1.56x pixels) is over it
    res = predictor.predict(img)
    np.testing.assert_array_equal(res.labels.array, ref.labels.array)
    assert math.isfinite(res.stability_overall) and res.stability_overall != ref.stability_overall


def test_a_view_never_needs_more_memory_than_the_segmentation(tiny_model, knee_cases, one_thread, monkeypatch):
    """On slices whose batch is one slice and over the free allowance, the enlarging view (1.25x: 1.56x the
    pixels) runs on a crop about the structures, so no forward pass of the check is larger than the main
    pass's; smaller views keep the whole slice. Below the allowance nothing changes."""
    import gase.predictor as gp

    from gase.orientation import reorientation_for

    predictor = Predictor.from_folder(tiny_model, device="cpu")
    predictor.card.postprocessing = {}
    predictor.route = "gase"  # one network's passes only
    img, _ = knee_cases[1]
    ref = predictor.predict(img)
    n_fg = sum(bool(s.any()) for s in reorientation_for(img, predictor.card.plane).forward(ref.labels.array))
    real = gp.run_slices
    sizes = []

    def recording(model, x, spacing_hw, model_spacing, *a, **k):
        sizes.append((x.shape[0], *gp.working_size(x.shape[-2:], spacing_hw, model_spacing)))
        return real(model, x, spacing_hw, model_spacing, *a, **k)

    monkeypatch.setattr(gp, "run_slices", recording)
    monkeypatch.setattr(predictor, "batch_size", 1)
    monkeypatch.setattr(gp, "STABILITY_FREE_PIXELS", 1)  # this small knee stands for a huge slice
    res = predictor.predict(img)
    np.testing.assert_array_equal(res.labels.array, ref.labels.array)
    main = max(h * w for n, h, w in sizes[:img.shape[0]])  # the main pass: one slice per batch
    check = sizes[img.shape[0]:]
    assert len(check) == 4 * min(16, n_fg)  # 4 views, one slice each
    assert all(n == 1 for n, _, _ in check) and max(h * w for _, h, w in check) <= main
    assert any(h * w < 0.8 * main for _, h, w in check)  # the enlarging view ran on a crop ...
    assert math.isfinite(res.stability_overall)           # ... and the check still gives its number
    # an ordinary slice size (under the allowance): whole slices, the same numbers as before
    monkeypatch.setattr(gp, "STABILITY_FREE_PIXELS", 768 * 768)
    sizes.clear()
    again = predictor.predict(img)
    assert max(h * w for _, h, w in sizes[img.shape[0]:]) > main
    # (``ref`` ran at the default batch size, ``again`` one slice per batch: on some CPUs (AVX512 kernels,
    # 7 Dec) the convolutions then sum in another order and a structure's stability moves by ~6e-6)
    assert again.stability_per_label == pytest.approx(ref.stability_per_label, abs=1e-4, nan_ok=True)


@pytest.mark.parametrize("route", ["gase", "style"])
def test_an_unstable_mask_makes_the_input_invalid(tiny_model, knee_cases, one_thread, monkeypatch, route, tmp_path):
    """A mask that moves a lot under the small views is not a segmentation of the learnt anatomy (a warm-started
    knee model on a pelvis: stability 0.40-0.63; knees 0.78-0.93): the verdict says so, with the reason. With
    the check off (``stability_slices = 0``) only the other checks decide."""
    import json
    import shutil

    from gase.result import STABILITY_FLOOR

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    card = json.loads((folder / "model.json").read_text())
    card["source_expert"]["validity"]["threshold"] = 1e6  # style route: the expert takes the scan
    card["validity"]["threshold"] = 1e6
    card["validity"]["training_foreground_ml"] = 1e6  # only the stability can fail
    (folder / "model.json").write_text(json.dumps(card))
    predictor = Predictor.from_folder(folder, device="cpu")
    predictor.route = route
    img, _ = knee_cases[1]
    names = [lab.name for lab in KNEE_LABELS]
    for p in (predictor, predictor.expert):
        monkeypatch.setattr(p, "_stability_on", lambda *a, **k: dict.fromkeys(names, 0.5))
    res = predictor.predict(img)
    assert res.stability_overall == pytest.approx(0.5)
    v = res.validity
    assert v.stability == pytest.approx(0.5) and not v.stability_valid and not v.valid
    assert v.style_valid and v.size_valid and v.modality_valid
    assert any(f"stability 0.50 < {STABILITY_FLOOR:g}" in r for r in v.reasons())
    assert res.report()["validity"]["stability"] == pytest.approx(0.5)
    for p in (predictor, predictor.expert):
        monkeypatch.setattr(p, "_stability_on", lambda *a, **k: dict.fromkeys(names, 0.9))
    assert predictor.predict(img).validity.valid
    predictor.stability_slices = 0
    for p in (predictor, predictor.expert):
        monkeypatch.setattr(p, "_stability_on", lambda *a, **k: dict.fromkeys(names, 0.1))
    off = predictor.predict(img).validity
    assert off.valid and off.stability is None
