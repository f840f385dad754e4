"""The validity threshold: calibrated on held-out in-distribution volumes, robust to one odd subject."""
from __future__ import annotations

import numpy as np
import pytest

from gase.validity import calibrate_threshold, heldout_volume_scores


def _slices(volume_scores, seed=0):
    """Slice scores whose median is each given volume score (plus NaNs for slices without content)."""
    rng = np.random.default_rng(seed)
    out = []
    for v in volume_scores:
        s = v + np.concatenate([-rng.random(10), [0.0], rng.random(10)])
        out.append(np.concatenate([s, [np.nan, np.inf]]))
    return out


def test_volume_scores_are_medians_of_finite_slices():
    assert heldout_volume_scores(_slices([1.5, 2.0])) == pytest.approx([1.5, 2.0])
    assert heldout_volume_scores([np.array([np.nan, np.nan])]) == []


def test_threshold_is_upper_quartile_with_margin():
    held = [1.2768, 1.0633, 1.2063, 1.0953, 1.0364]  # held-out scores, the data-seed-1 pelvis GASE model
    thr = calibrate_threshold(_slices(held))
    assert thr == pytest.approx(1.35 * 1.2063)
    # 12 new source-style pelves (two subject streams) stay valid; the lowest OOD pelvis (CT-like) is flagged
    assert max([0.94, 1.12, 1.17, 1.18, 1.28, 1.32, 1.06, 1.07, 1.33, 1.42, 1.43, 1.49]) < thr < 1.94
    # the margin before 2026-12-05 (1.1) called 4 of them invalid
    assert calibrate_threshold(_slices(held), margin=1.1) < 1.33


def test_the_margin_keeps_the_margin_runs_pelves_and_flags_its_corruptions():
    """benchmarks/results/cpu-1000-data1-margin, GASE pelvis: held-out volume scores (its card) and the highest
    style scores of new source-style subjects 400-799 and of the run's motion-corrupted and CT-like pelves."""
    held = [1.0878, 1.3067, 1.3411, 1.2787, 1.3147, 1.0246, 1.1858, 1.1635, 1.2395, 1.2027, 1.1746, 1.347, 1.3612,
            1.3716, 1.365, 1.0368, 1.2747, 1.2661, 1.3429, 1.2003, 0.9962, 1.3333, 1.236, 1.2439, 1.1854]
    top_new = [1.658, 1.687, 1.702, 1.717, 1.809, 2.053]
    from gase.validity import threshold_from_volume_scores

    thr = threshold_from_volume_scores(held)
    assert thr == pytest.approx(1.80, abs=0.005)
    assert sum(s > thr for s in top_new) == 2  # 1.25 (threshold 1.67) called all but the first invalid
    assert sum(s > threshold_from_volume_scores(held, margin=1.25) for s in top_new) == 5
    assert thr < min(2.72, 2.09)  # lowest motion-corrupted and CT-like pelvis


def test_one_outlying_subject_does_not_open_the_gate():
    held = [2.307, 2.762, 3.551, 3.724, 12.392]  # pelvis: one training subject unlike the others
    thr = calibrate_threshold(_slices(held))
    assert thr == pytest.approx(1.35 * 3.724)  # the outlier does not set it
    assert calibrate_threshold(_slices(held), quantile=1.0, margin=1.0) == pytest.approx(12.392)


def test_no_heldout_scores_is_an_error():
    with pytest.raises(ValueError, match="no held-out"):
        calibrate_threshold([np.array([np.nan])])


# ---- fitting the manifold with augmented copies (gase.training.validity_fit) ----

def _stats_features(images):
    """Toy validity features of canonical slices (S, H, W): an intensity histogram and a texture measure."""
    import torch

    x = images.float().clamp(0, 1)
    hist = torch.stack([torch.histc(s, bins=24, min=0.0, max=1.0) for s in x]) / x[0].numel()
    grad = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(1, 2))[:, None]
    return torch.cat([hist, x.mean(dim=(1, 2))[:, None], x.std(dim=(1, 2))[:, None], grad], 1).numpy()


def _subject(seed, n=16, size=48):
    """A toy volume: a bright ball (subject-specific size and contrast) on a dark background, one slice per
    section through it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = 14 + 6 * float(torch.rand(1, generator=g))
    level = 0.45 + 0.35 * float(torch.rand(1, generator=g))
    rows = []
    for k in range(n):
        r2 = max(radius ** 2 - (2.0 * (k - n / 2)) ** 2, 4.0)
        disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < r2).float()
        rows.append(0.1 + level * disc + 0.03 * torch.randn(size, size, generator=g))
    return torch.stack(rows)


def test_fit_counts_the_augmented_copies_and_is_deterministic():
    from gase.training.validity_fit import fit_validity

    train, val = [_subject(s) for s in range(4)], [_subject(10)]
    fit = fit_validity(_stats_features, train, val, copies=3)
    assert fit.fitted_on_slices == 4 * 16 * (1 + 3) and fit.copies == 3
    # each training volume (left out) and the validation volume, as it is and as 4 augmented copies
    assert len(fit.heldout_scores) == 5 * (1 + 4) and fit.heldout_copies == 4
    fields = fit.card_fields()
    assert fields["augmented_copies"] == 3 and fields["threshold"] == round(fit.threshold, 4) > 0
    assert fields["heldout_augmented_copies"] == 4 and len(fields["heldout_volume_scores"]) == 25
    assert "1.35 x upper quartile" in fields["calibration"] and "4 augmented copies" in fields["calibration"]
    assert fields["margin"] == 1.35
    again = fit_validity(_stats_features, train, val, copies=3)
    assert again.threshold == fit.threshold
    plain = fit_validity(_stats_features, train, val, copies=0, heldout_copies=0)
    assert plain.fitted_on_slices == 4 * 16 and len(plain.heldout_scores) == 5
    assert "augmented" not in plain.card_fields()["calibration"]
    # the held-out copies are drawn after the fit's own: the manifold does not depend on them
    no_heldout_copies = fit_validity(_stats_features, train, val, copies=3, heldout_copies=0)
    assert (no_heldout_copies.manifold.to_tensors()["mean"] == fit.manifold.to_tensors()["mean"]).all()
    assert [float(s.mean()) for s in no_heldout_copies.heldout_scores] == \
        [float(s.mean()) for s in fit.heldout_scores[::5]]
    with pytest.raises(ValueError, match="copies"):
        fit_validity(_stats_features, train, val, copies=-1)
    with pytest.raises(ValueError, match="copies"):
        fit_validity(_stats_features, train, val, heldout_copies=-1)


def test_refit_rewrites_the_manifolds_of_a_trained_model_and_its_expert(tiny_model, knee_cases, tmp_path):
    """A model exported before the augmented fit gets it from its training pairs: both manifolds (the GASE
    segmenter's and the source expert's) and the card's thresholds; the weights and the rest of the card stay."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from gase.model_card import load_card
    from gase.predictor import Predictor
    from gase.training.validity_fit import refit_validity

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    card = json.loads((folder / "model.json").read_text())
    # what training writes now: the segmenter's manifold with augmented copies, the expert's a strict router
    assert card["validity"]["augmented_copies"] == 4 and card["source_expert"]["validity"]["augmented_copies"] == 0
    assert card["validity"]["heldout_augmented_copies"] == 4
    assert card["source_expert"]["validity"]["heldout_augmented_copies"] == 0
    assert card["source_expert"]["validity"]["calibration"].startswith("1.1 x")
    expert_threshold = card["source_expert"]["validity"]["threshold"]
    for v in (card["validity"], card["source_expert"]["validity"]):
        v.pop("augmented_copies")
        v["threshold"] = 99.0  # as an older model had it
    (folder / "model.json").write_text(json.dumps(card))
    pairs = [(img, lab.array.astype("uint8"), f"case{n}") for n, (img, lab) in enumerate(knee_cases)]
    fits = refit_validity(folder, pairs[:3], pairs[3:4])
    new = load_card(folder)
    assert new.validity["augmented_copies"] == 4
    assert new.validity["threshold"] == round(fits["validity.safetensors"].threshold, 4) != 99.0
    assert new.source_expert["validity"]["augmented_copies"] == 0
    assert new.source_expert["validity"]["threshold"] == pytest.approx(expert_threshold, abs=1e-3)
    assert new.files["weights.safetensors"] == card["files"]["weights.safetensors"]
    assert new.files["expert.safetensors"] == card["files"]["expert.safetensors"]
    assert new.labels == load_card(tiny_model).labels and new.metrics == load_card(tiny_model).metrics
    # the same data and settings as the training's own fit: the same manifolds and thresholds (to float
    # rounding: the thread count of the process changes the last bits)
    assert new.validity["threshold"] == pytest.approx(load_card(tiny_model).validity["threshold"], abs=1e-3)
    for name in ("validity.safetensors", "expert_validity.safetensors"):
        a, b = load_file(str(tiny_model / name)), load_file(str(folder / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4) for k in a)
    res = Predictor.from_folder(folder, device="cpu").predict(pairs[4][0])  # checksums hold, verdict uses it
    assert res.validity.threshold == pytest.approx(new.validity["threshold"])


# ---- the margin of the threshold rule (gase.validity.VERDICT_MARGIN) and re-thresholding older models ----

def test_threshold_from_stored_volume_scores_matches_the_calibration():
    from gase.validity import VERDICT_MARGIN, threshold_from_volume_scores

    held = [1.2768, 1.0633, 1.2063, 1.0953, 1.0364]
    assert threshold_from_volume_scores(held) == pytest.approx(calibrate_threshold(_slices(held)))
    assert threshold_from_volume_scores(held) == pytest.approx(VERDICT_MARGIN * 1.2063)
    assert threshold_from_volume_scores(held, margin=1.0, quantile=1.0) == pytest.approx(1.2768)
    with pytest.raises(ValueError, match="no held-out"):
        threshold_from_volume_scores([])


def test_recalibrate_sets_the_threshold_from_the_cards_scores_and_keeps_the_rest(tiny_model, tmp_path):
    """A model exported with another margin gets this version's threshold from the held-out scores its card
    stores, without its network: the manifolds, weights and the expert's routing threshold stay; the predictor
    then judges with the new threshold."""
    import json
    import shutil

    import numpy as np

    from gase.model_card import load_card
    from gase.predictor import Predictor
    from gase.training.validity_fit import recalibrate_threshold
    from gase.validity import VERDICT_MARGIN

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    card = json.loads((folder / "model.json").read_text())
    assert card["validity"]["margin"] == VERDICT_MARGIN  # training writes the margin it used
    uq = float(np.quantile(card["validity"]["heldout_volume_scores"], 0.75))
    card["validity"]["threshold"], card["validity"]["margin"] = round(1.1 * uq, 4), 1.1  # as an older export
    card["validity"]["calibration"] = card["validity"]["calibration"].replace(f"{VERDICT_MARGIN:g} x", "1.1 x")
    (folder / "model.json").write_text(json.dumps(card))
    before, after = recalibrate_threshold(folder)
    assert before == round(1.1 * uq, 4) and after == pytest.approx(VERDICT_MARGIN * uq, abs=1e-4)
    new = load_card(folder)  # checksums verified
    assert new.validity["threshold"] == after and new.validity["margin"] == VERDICT_MARGIN
    assert new.validity["calibration"].startswith(f"{VERDICT_MARGIN:g} x upper quartile")
    assert "4 augmented copies" in new.validity["calibration"]
    assert new.files == card["files"]
    assert new.source_expert["validity"] == card["source_expert"]["validity"]
    assert new.validity["earlier_thresholds"] == [{"threshold": before, "calibration": card["validity"]["calibration"]}]
    assert Predictor.from_folder(folder).card.validity["threshold"] == after
    assert recalibrate_threshold(folder) == (after, after)  # already at this margin: nothing written
    assert len(load_card(folder).validity["earlier_thresholds"]) == 1
    # a card without stored held-out scores cannot be re-thresholded this way: it says what to do instead
    card = json.loads((folder / "model.json").read_text())
    card["validity"].pop("heldout_volume_scores")
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="refit_validity"):
        recalibrate_threshold(folder)
    assert json.loads((folder / "model.json").read_text())["validity"]["threshold"] == after  # nothing written


def test_gase_models_recalibrate_and_the_listing_hint(tiny_model, tmp_path, capsys, monkeypatch):
    """`gase models` points at a model whose threshold follows an earlier rule; `gase models --recalibrate FOLDER`
    sets this version's, says so, and a second call changes nothing."""
    import json
    import shutil

    from gase.cli import main
    from gase.model_card import load_card

    models = tmp_path / "models"
    folder = models / "old-knee"
    shutil.copytree(tiny_model, folder)
    card = json.loads((folder / "model.json").read_text())
    card["validity"]["margin"], card["validity"]["threshold"] = 1.25, 1.0
    (folder / "model.json").write_text(json.dumps(card))
    monkeypatch.setenv("GASE_MODELS_DIR", str(models))
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "validity threshold by an earlier rule" in listing and f"--recalibrate {folder}" in listing
    assert main(["models", "--recalibrate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "validity threshold 1.0 ->" in out and "earlier_thresholds" in out
    assert load_card(folder).validity["threshold"] != 1.0
    assert main(["models", "--recalibrate", str(folder)]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "earlier rule" not in capsys.readouterr().out
    # a folder that is no model: the error names it
    assert main(["models", "--recalibrate", str(tmp_path / "nothing")]) != 0
    assert "no such model folder" in capsys.readouterr().err
