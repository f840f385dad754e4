"""The shipped demo model: loads safely, accepts its own style, rejects what is not knee MR, and
`gase demo` (the README's main job) writes every output plus the overview PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gase.model_card import default_model_folder, load_card
from gase.phantoms import SOURCE_STYLE, make_case, make_ood
from gase.predictor import Predictor


@pytest.fixture(scope="module")
def demo():
    return Predictor.from_folder(default_model_folder(), device="cpu")


def test_card_documents_the_recipe_and_metrics():
    card = load_card(default_model_folder())
    assert card.name == "knee-demo" and card.plane == "sagittal"
    assert card.training["source_style"] == SOURCE_STYLE["knee"]
    assert card.training["recipe"].endswith("knee-demo.recipe.sh")
    assert 0.0 < card.metrics["validation_dice"]["mean"] <= 1.0
    size = sum(p.stat().st_size for p in default_model_folder().glob("*.safetensors"))
    assert size < 16 * 2**20  # a few MB each: the GASE segmenter, its source expert, the generator


def test_source_style_knee_is_valid_and_segmented(demo):
    img, lab = make_case("knee", SOURCE_STYLE["knee"], 4242)
    res = demo.predict(img)
    assert res.validity.valid, res.validity.to_json()
    femur = 2 * np.sum((res.labels.array == 1) & (lab.array == 1)) / (np.sum(res.labels.array == 1) + np.sum(lab.array == 1))
    assert femur > 0.7


@pytest.mark.parametrize("kind", ["noise", "ct", "motion"])
def test_not_knee_mr_is_flagged_invalid(demo, kind):
    """Noise and motion by the style score; the CT-like knee by the CT check (0.2.2: style 1.49 against 1.55,
    its threshold calibrated on augmented copies of the held-out volumes too; 0.2.1: 1.43 against 1.44)."""
    res = demo.predict(make_ood(kind, "knee", 4243))
    assert not res.validity.valid, res.validity.to_json()
    if kind == "ct":
        assert not res.validity.modality_valid
    else:
        assert res.validity.score > res.validity.threshold


def test_an_inverted_knee_is_flagged_even_where_its_style_passes(demo):
    """Inverted knees: with the manifold fitted on augmented copies (since 0.2.1) one of these scores under the
    threshold (seed 4246: 1.35 against 1.55 in 0.2.2); the inverted-image check flags all of them."""
    for seed in (4243, 4244, 4246):
        v = demo.predict(make_ood("inverted", "knee", seed)).validity
        assert not v.valid and not v.polarity_valid, v.to_json()


def test_a_pelvis_is_outside_the_knee_models_competence_by_what_it_segments(demo):
    """Other anatomy (make_ood "other_anatomy": a pelvis phantom): the knee model paints bone over much of
    it, several times the structures of any training knee; the report says so."""
    res = demo.predict(make_ood("other_anatomy", "knee", 4244))
    v = res.validity
    assert not v.valid and not v.size_valid, v.to_json()
    assert v.foreground_ratio > v.foreground_limit
    assert any("another anatomy" in r for r in res.report()["validity"]["reasons"])
    # ... and the mask is unstable (0.59 against the 0.65 floor; the warm-started retrain of the demo model
    # painted too little bone on pelves for the size check, 1.5-1.8x, and this alone flagged them: 0.61-0.63)
    assert not v.stability_valid and v.stability < v.stability_floor
    # a knee of the source style is nowhere near the limit
    knee = demo.predict(make_case("knee", SOURCE_STYLE["knee"], 4245)[0]).validity
    assert knee.size_valid and knee.foreground_ratio < 1.6


def test_gase_demo_writes_outputs_and_overview(tmp_path, capsys):
    from gase.cli import main

    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "overview.png" in out.replace(str(tmp_path) + "/", "")
    png = tmp_path / "overview.png"
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reports = sorted(tmp_path.glob("*_report.json"))
    assert len(reports) == 3
    verdicts = {p.name: json.loads(p.read_text())["validity"]["valid"] for p in reports}
    assert verdicts["knee_pd_fse_report.json"] is True
    assert verdicts["knee_ct_like_report.json"] is False
    for case in ("knee_pd_fse", "knee_t1_se", "knee_ct_like"):
        assert (tmp_path / f"{case}.seg.nrrd").is_file() and (tmp_path / f"{case}_confidence.nrrd").is_file()
    # a second run refuses to overwrite, and says how to
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err
