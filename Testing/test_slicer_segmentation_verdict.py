"""The validity verdict's wording (panel banner, slice-view text) and the style-manifold picture."""
from __future__ import annotations

import numpy as np
import pytest

from gase.result import Validity


def test_valid_and_invalid_texts():
    from GASESegmentationLib.verdict import Verdict

    valid = Verdict.from_validity(Validity(True, 1.234, 2.0, np.zeros(3)), reliability=0.871)
    assert valid.headline == "Input valid"
    assert valid.slice_view_text() == "GASE: input valid, quality 0.87\nscore 1.23 <= threshold 2.00, expected Dice 0.87"
    assert valid.hex_color == "#2e9e40"
    invalid = Verdict.from_validity(Validity(False, 3.5, 2.0, np.zeros(3)))
    assert invalid.headline == "Outside the model's competence"
    assert invalid.slice_view_text() == ("GASE: OUTSIDE the model's competence\n"
                                         "score 3.50 > threshold 2.00: do not trust this result")
    html = invalid.banner_html()
    assert "Outside the model&#x27;s competence" in html and "score 3.50 &gt; threshold 2.00" in html
    assert invalid.hex_color in html
    assert "expected Dice 0.87" in valid.banner_html()
    assert "expected Dice" not in Verdict.from_validity(Validity(False, 3.5, 2.0, np.zeros(3)), 0.8).banner_html()
    report = {"validity": {"valid": False, "score": 3.5, "threshold": 2.0},
              "reliability": {"overall": 0.9, "expected_dice": 0.4}}
    assert Verdict.from_json(report) == Verdict(False, 3.5, 2.0, 0.4)
    report["reliability"] = {"overall": 0.9}  # a report without the expected Dice: no number, not the wrong one
    assert Verdict.from_json(report) == Verdict(False, 3.5, 2.0, None)


def test_the_stability_is_shown_next_to_the_expected_dice():
    """The stability and the expected Dice, and their mean (the quality, the number to rank scans by), are shown
    in the slice views and the banner for a valid input, never for an invalid one."""
    from GASESegmentationLib.verdict import Verdict

    valid = Verdict.from_validity(Validity(True, 1.234, 2.0, np.zeros(3)).with_stability(0.914), reliability=0.871)
    assert valid.slice_view_text() == ("GASE: input valid, quality 0.89\n"
                                       "score 1.23 <= threshold 2.00, expected Dice 0.87, stability 0.91")
    assert "quality 0.89 &nbsp;|&nbsp; expected Dice 0.87 &nbsp;|&nbsp; stability 0.91" in valid.banner_html()
    assert valid.quality_score == pytest.approx((0.871 + 0.914) / 2)
    # not checked (stability off) or NaN: nothing said
    for stab in (None, float("nan")):
        v = Verdict.from_validity(Validity(True, 1.234, 2.0, np.zeros(3)).with_stability(stab), reliability=0.871)
        assert v.stability is None and "stability" not in v.slice_view_text() + v.banner_html()
    invalid = Verdict.from_validity(Validity(False, 3.5, 2.0, np.zeros(3)).with_stability(0.9), 0.8)
    assert "stability" not in invalid.slice_view_text() + invalid.banner_html()
    report = {"validity": {"valid": True, "score": 1.2, "threshold": 2.0},
              "reliability": {"expected_dice": 0.8, "stability": 0.7}}
    assert Verdict.from_json(report).stability == 0.7 and Verdict.from_json(report).quality == \
        "quality 0.75, expected Dice 0.80, stability 0.70"
    assert "quality" not in invalid.slice_view_text() + invalid.banner_html()


def test_a_familiar_style_with_far_too_much_anatomy_is_outside_the_competence():
    """A knee model given a pelvis can find its MR style familiar and still paint bone all over it."""
    from GASESegmentationLib.verdict import Verdict

    validity = Validity(False, 1.9, 2.0, np.zeros(3), foreground_ml=1432.0, training_foreground_ml=388.0)
    assert validity.style_valid and not validity.size_valid
    assert validity.foreground_ratio == pytest.approx(3.69, abs=0.01)
    (reason,) = validity.reasons()
    assert "1432 mL, 3.7x the largest total in its training label maps (388 mL; limit 2.5x)" in reason
    assert validity.to_json()["foreground_ratio"] == pytest.approx(3.691, abs=1e-3)
    verdict = Verdict.from_validity(validity)
    assert verdict.slice_view_text() == ("GASE: OUTSIDE the model's competence\n"
                                         "structures 3.7x training size (> 2.5x): do not trust this result")
    assert "score 1.90 &lt;= threshold 2.00, structures 3.7x training size &gt; 2.5x" in verdict.banner_html()
    assert "another anatomy" in verdict.explanation()
    assert Verdict.from_json({"validity": validity.to_json()}).slice_view_text() == verdict.slice_view_text()
    # within the limit, or a model that does not know its training size: only the style decides
    assert Validity(True, 1.9, 2.0, np.zeros(3), foreground_ml=900.0, training_foreground_ml=388.0).size_valid
    assert Validity(True, 1.9, 2.0, np.zeros(3), foreground_ml=9000.0).size_valid
    assert Validity(False, 2.5, 2.0, np.zeros(3)).reasons() == [
        "its image style is far from every image the model learned from (distance 2.50 > threshold 2.00)"]


def test_a_ct_is_named_as_such_in_every_text():
    from GASESegmentationLib.verdict import Verdict

    validity = Validity(False, 1.9, 2.0, np.zeros(3), ct_fraction=0.45)
    assert validity.style_valid and validity.size_valid and not validity.modality_valid
    verdict = Verdict.from_validity(validity)
    assert verdict.slice_view_text() == ("GASE: OUTSIDE the model's competence\n"
                                         "CT intensities: 45% of voxels < -500: do not trust this result")
    assert "CT intensities: 45% of voxels &lt; -500, score 1.90 &lt;= threshold 2.00" in verdict.banner_html()
    assert "not an MR image" in verdict.explanation()
    assert Verdict.from_json({"validity": validity.to_json()}) == verdict
    # a report written before the check: no CT fraction, nothing said about it
    assert Verdict.from_json({"validity": {"valid": True, "score": 1.0, "threshold": 2.0}}).modality_valid
    assert Validity(True, 1.0, 2.0, np.zeros(3), ct_fraction=0.0).reasons() == []


def test_an_inverted_image_is_named_as_such_in_every_text():
    from GASESegmentationLib.verdict import Verdict

    validity = Validity(False, 1.3, 2.0, np.zeros(3), background_level=0.98)
    assert validity.style_valid and validity.modality_valid and not validity.polarity_valid
    verdict = Verdict.from_validity(validity)
    assert verdict.slice_view_text() == ("GASE: OUTSIDE the model's competence\n"
                                         "bright background: darkest corner 0.98 x the 75th percentile: "
                                         "do not trust this result")
    assert "inverted" in verdict.explanation() and "MONOCHROME1" in verdict.explanation()
    assert Verdict.from_json({"validity": validity.to_json()}) == verdict
    assert Verdict.from_json({"validity": {"valid": True, "score": 1.0, "threshold": 2.0}}).polarity_valid
    assert Validity(True, 1.0, 2.0, np.zeros(3), background_level=0.05).reasons() == []


def _png(path):
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].astype(int)


@pytest.mark.parametrize("valid", [True, False])
@pytest.mark.parametrize("map_kind", ["distances", "pca"])
def test_manifold_picture_shows_the_input_against_the_training_styles(tmp_path, knee_result, valid, map_kind):
    """The distance map (the default) and the PCA map (older models' results, without the two distances)."""
    import dataclasses

    from GASESegmentationLib.manifold import write_manifold_png

    validity = knee_result(shape=(12, 30, 30), valid=valid).result.validity
    if map_kind == "pca":
        validity = dataclasses.replace(validity, distances_2d=None, reference_distances=None)
    path = write_manifold_png(validity, tmp_path / "manifold.png")
    px = _png(path)
    assert px.shape[0] > 250 and px.shape[1] > 600
    left = px[:, : px.shape[1] // 2].reshape(-1, 3)
    grey = (np.abs(left - 166).max(axis=1) < 40) & (np.ptp(left, axis=1) < 12)
    green = (left[:, 1] > left[:, 0] + 50) & (left[:, 1] > left[:, 2] + 50)
    red = (left[:, 0] > left[:, 1] + 80) & (left[:, 0] > left[:, 2] + 80)
    assert grey.sum() > 200                         # training slices
    assert (green.sum() > 50) == valid              # input slices within the threshold ...
    assert (red.sum() > 50) == (not valid)          # ... or beyond it
    # The title carries the verdict colour: the top strip has it.
    top = px[:30].reshape(-1, 3)
    title = (top[:, 1] > top[:, 0] + 50) if valid else (top[:, 0] > top[:, 1] + 80)
    assert title.sum() > 20


def test_the_volume_star_lies_on_the_side_of_the_threshold_its_verdict_says():
    from gase.validity_map import volume_point

    rng = np.random.default_rng(3)
    for _ in range(200):
        d = rng.lognormal(0.0, 0.6, (25, 2)) * rng.uniform(0.3, 3.0, 2)
        score = float(np.median(d.mean(axis=1)))
        threshold = float(rng.uniform(0.5, 4.0))
        star = volume_point(d, score)
        assert star.mean() == pytest.approx(score)
        assert (star.mean() <= threshold) == (score <= threshold)
    assert volume_point(np.full((3, 2), np.nan), 1.0) is None


def test_manifold_picture_without_map_points(tmp_path):
    from GASESegmentationLib.manifold import write_manifold_png

    validity = Validity(False, 2.5, 2.0, np.array([1.0, np.nan, 3.0], np.float32))
    assert write_manifold_png(validity, tmp_path / "m.png").stat().st_size > 1000


def test_an_unstable_mask_is_named_as_the_reason():
    from GASESegmentationLib.verdict import Verdict

    v = Validity(True, 1.6, 2.0, np.zeros(3), foreground_ml=500.0, training_foreground_ml=390.0).with_stability(0.44)
    verdict = Verdict.from_validity(v, 0.5)
    assert not verdict.valid
    assert verdict.slice_view_text() == ("GASE: OUTSIDE the model's competence\n"
                                         "unstable mask: stability 0.44 < 0.65: do not trust this result")
    assert "changes a lot when the contrast or size" in verdict.explanation()
    assert "stability 0.44 &lt; 0.65" in verdict.banner_html()
    report = {"validity": v.to_json(), "reliability": {"expected_dice": 0.5, "stability": 0.44}}
    back = Verdict.from_json(report)  # (the JSON rounds the size ratio)
    assert back.slice_view_text() == verdict.slice_view_text() and back.stability == verdict.stability
