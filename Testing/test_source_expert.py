"""The source expert: trained with a GASE model, attached to its folder, and used where its own style
manifold finds a scan in the training style (see gase.predictor.Predictor.predict)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gase.errors import InputError, ModelError
from gase.labels import KNEE_LABELS, PELVIS_LABELS
from gase.model_card import EXPERT_FILES, attach_source_expert, load_card
from gase.predictor import Predictor
from gase.training.config import TrainConfig
from gase.training.loop import train
from gase.volume import Volume


def _with_expert_threshold(src: Path, dst: Path, threshold: float) -> Path:
    """A copy of the model folder whose expert accepts every scan (huge threshold) or none (tiny). The tiny
    model over-segments: the size check is widened so that only the style decides."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    card["source_expert"]["validity"]["threshold"] = threshold
    card["source_expert"]["route"] = "style"  # routed on style (the tiny model, warm-started, routes "gase")
    card["validity"]["training_foreground_ml"] = 1e6
    (dst / "model.json").write_text(json.dumps(card))
    return dst


def test_gase_training_attaches_the_erm_run_as_its_source_expert(tiny_model, knee_cases, tmp_path):
    card = load_card(tiny_model)
    assert card.source_expert and set(EXPERT_FILES.values()) <= set(card.files)
    assert card.training["config"]["source_expert"] is True
    assert card.source_expert["training"]["config"]["method"] == "erm"
    assert card.source_expert["training"]["iterations"] == card.training["iterations"]
    # the expert is exactly the "erm" run with the same settings (CPU training is deterministic)
    torch.set_num_threads(1)
    pairs = [(img, lab.array.astype("uint8"), f"case{n}") for n, (img, lab) in enumerate(knee_cases)]
    cfg = TrainConfig(method="erm", iterations=12, batch_size=4, crop=64, val_every=12, checkpoint_every=6,
                      device="cpu", seed=0)
    erm = train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "erm", cfg, anatomy="knee", plane="sagittal")
    a, b = load_file(str(tiny_model / EXPERT_FILES["weights"])), load_file(str(erm.model_folder / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # its manifold in the GASE folder is a strict router: the training slices alone, 1.1 x (the ERM model's own
    # verdict manifold has augmented copies, 1.35 x)
    erm_validity = load_card(erm.model_folder).validity
    assert erm_validity["augmented_copies"] == 4 and card.source_expert["validity"]["augmented_copies"] == 0
    assert card.source_expert["validity"]["fitted_on_slices"] * 5 == erm_validity["fitted_on_slices"]
    # ... and a GASE run given that folder attaches the same files instead of training it again
    gase_cfg = TrainConfig(method="gase", iterations=12, batch_size=4, crop=64, val_every=12, checkpoint_every=6,
                           device="cpu", seed=0)
    again = train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "gase", gase_cfg, anatomy="knee",
                  plane="sagittal", source_expert_from=erm.model_folder)
    assert again.card.files[EXPERT_FILES["weights"]] == card.files[EXPERT_FILES["weights"]]
    assert not (tmp_path / "gase" / "training" / "source-expert").exists()


def test_a_warm_started_model_segments_every_scan_with_the_gase_segmenter(tiny_model, knee_cases, tmp_path):
    """Warm start (the default): the GASE segmenter began from the expert's weights and segments every scan; the
    expert stays in the folder for ``route="style"`` / ``"expert"``, and the card has both validation Dices."""
    card = load_card(tiny_model)
    assert card.training["config"]["warm_start"] is True and card.source_expert["route"] == "gase"
    assert "GASE segmenter started from its weights" in card.source_expert["description"]
    val, style = card.metrics["validation_dice"], card.metrics["validation_dice_style_route"]
    assert set(val) == set(style) and "mean" in val
    folder = _with_expert_threshold(tiny_model, tmp_path / "m", 1e6)  # an expert that would take every scan...
    data = json.loads((folder / "model.json").read_text())
    data["source_expert"]["route"] = "gase"
    (folder / "model.json").write_text(json.dumps(data))
    p = Predictor.from_folder(folder, device="cpu")
    assert p.route == "auto" and p.route_in_use() == "gase"

    def not_expected(*args, **kwargs):
        raise AssertionError("the expert ran on a model that routes every scan to the GASE segmenter")

    p.expert._predict = p.expert._validity_pass = not_expected
    image = knee_cases[4][0]
    res = p.predict(image)  # ... is never asked
    alone = Predictor.from_folder(folder, device="cpu")
    alone.expert = None
    np.testing.assert_array_equal(res.labels.array, alone.predict(image).labels.array)
    assert "source_expert" not in res.extra
    routed = Predictor.from_folder(folder, device="cpu")
    routed.route = "style"  # asked for: the expert takes the scans in its style
    assert routed.route_in_use() == "style" and routed.predict(image).extra["source_expert"]["used"] is True


def test_route_of_older_models_and_bad_routes(tiny_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    data = json.loads((folder / "model.json").read_text())
    del data["source_expert"]["route"]  # a model from before routes were recorded: it routes on style
    (folder / "model.json").write_text(json.dumps(data))
    p = Predictor.from_folder(folder, device="cpu")
    assert p.route_in_use() == "style"
    p.route = "best"
    with pytest.raises(InputError, match="Unknown route 'best'; use one of auto, style, expert, gase"):
        p.route_in_use()
    data["source_expert"]["route"] = "sometimes"
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match='source_expert.route must be "style" or "gase"'):
        load_card(folder, verify=False)
    with pytest.raises(ValueError, match="route must be"):
        attach_source_expert(folder, tiny_model, route="expert")


def test_training_without_warm_start_routes_on_style(tiny_erm, knee_cases, tmp_path):
    pairs = _tiny_pairs(knee_cases)
    cfg = TrainConfig(method="gase", iterations=2, batch_size=4, crop=64, val_every=2, checkpoint_every=2,
                      device="cpu", seed=0, warm_start=False)
    card = train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "gase", cfg, anatomy="knee", plane="sagittal",
                 source_expert_from=tiny_erm).card
    card = load_card(tmp_path / "gase")
    assert card.source_expert["route"] == "style"
    assert "validation_dice_without_expert" in card.metrics and "validation_dice_style_route" not in card.metrics
    assert Predictor.from_folder(tmp_path / "gase", device="cpu").route_in_use() == "style"


@pytest.mark.parametrize("accepts", [True, False])
def test_routing_uses_the_expert_only_on_scans_it_accepts(tiny_model, knee_cases, tmp_path, accepts):
    folder = _with_expert_threshold(tiny_model, tmp_path / "m", 1e6 if accepts else 1e-6)
    routed = Predictor.from_folder(folder, device="cpu")
    image = knee_cases[4][0]
    res = routed.predict(image)
    expert_alone = routed.expert.predict(image)
    gase_alone = Predictor.from_folder(folder, device="cpu")
    gase_alone.expert = None
    gase = gase_alone.predict(image)
    assert res.extra["source_expert"]["used"] is accepts
    assert res.extra["source_expert"]["style_score"] == pytest.approx(expert_alone.validity.score, abs=1e-3)
    chosen = expert_alone if accepts else gase
    np.testing.assert_array_equal(res.labels.array, chosen.labels.array)
    np.testing.assert_allclose(res.confidence.array, chosen.confidence.array, atol=1e-6)
    assert res.expected_dice_overall == pytest.approx(chosen.expected_dice_overall, nan_ok=True)
    assert res.stability_per_label == pytest.approx(chosen.stability_per_label, nan_ok=True)
    # the validity verdict is always the GASE segmenter's (the encoder-only pass gives the same features)
    assert res.validity.score == pytest.approx(gase.validity.score, rel=1e-4)
    # (its style and size checks; the stability check reads the mask the chosen network made)
    assert res.validity.style_valid == gase.validity.style_valid and res.validity.size_valid == gase.validity.size_valid
    assert res.validity.stability == pytest.approx(chosen.stability_overall, nan_ok=True)
    np.testing.assert_allclose(res.validity.embedding_2d, gase.validity.embedding_2d, atol=1e-3)
    assert res.model_name == gase.model_name
    report = res.report()
    assert report["source_expert"]["used"] is accepts
    json.dumps(report)


def test_routing_reports_progress_once_through(tiny_model, knee_cases, tmp_path):
    steps = []
    for accepts in (True, False):
        folder = _with_expert_threshold(tiny_model, tmp_path / f"m{accepts}", 1e6 if accepts else 1e-6)
        seen = []
        Predictor.from_folder(folder, device="cpu").predict(knee_cases[4][0], progress=lambda f, m: seen.append(f))
        assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
        assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:])), seen
        steps.append(seen)


def test_stability_switch_reaches_the_expert(tiny_model, knee_cases, tmp_path):
    folder = _with_expert_threshold(tiny_model, tmp_path / "m", 1e6)
    p = Predictor.from_folder(folder, device="cpu")
    p.stability_slices = 0
    res = p.predict(knee_cases[4][0])
    assert res.extra["source_expert"]["used"] and res.stability_per_label == {}


def test_a_damaged_expert_is_refused_clearly(tiny_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    (folder / EXPERT_FILES["validity"]).unlink()
    with pytest.raises(ModelError, match="expert_validity.safetensors but the file is missing"):
        Predictor.from_folder(folder, device="cpu")
    card = json.loads((folder / "model.json").read_text())
    del card["files"][EXPERT_FILES["validity"]]
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="source expert but does not list expert_validity"):
        load_card(folder)
    card["files"][EXPERT_FILES["validity"]] = "0" * 64
    card["source_expert"]["validity"]["threshold"] = -1
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="positive number"):
        load_card(folder, verify=False)


def test_an_expert_for_other_labels_is_refused(tiny_model, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    card = json.loads((other / "model.json").read_text())
    card["labels"] = [lab.to_json() for lab in PELVIS_LABELS]
    card.pop("source_expert")
    card["postprocessing"] = {}
    (other / "model.json").write_text(json.dumps(card))
    target = tmp_path / "target"
    shutil.copytree(tiny_model, target)
    before = (target / "model.json").read_text()
    with pytest.raises(ModelError, match="differ in labels"):
        attach_source_expert(target, other)
    assert (target / "model.json").read_text() == before  # nothing changed


def test_cli_switch_and_config(tmp_path):
    from gase.cli import build_parser
    from gase.training.run import build_config

    args = build_parser().parse_args(["train", "--images", "i", "--labels", "l", "--out", "o", "--no-source-expert"])
    assert build_config(args).source_expert is False
    args = build_parser().parse_args(["train", "--images", "i", "--labels", "l", "--out", "o"])
    assert build_config(args).source_expert is True and build_config(args).warm_start is True
    args = build_parser().parse_args(["train", "--images", "i", "--labels", "l", "--out", "o", "--no-warm-start"])
    assert build_config(args).warm_start is False and build_config(args).source_expert is True
    # an expert-less or baseline run has nothing to start from
    assert TrainConfig(method="erm").validate().warm_start is False
    assert TrainConfig(source_expert=False).validate().warm_start is False


def test_training_panel_progress_spans_both_phases():
    from GASETrainingLib.job import TrainingStatus

    # the run says where each phase starts and what share of the whole it is (warm start: the expert first)
    st = TrainingStatus(iteration=1000, total=2000, phase="source expert", phase_span=(0.0, 0.2))
    assert st.fraction == pytest.approx(0.1) and st.summary().startswith("source expert: iteration 1000/2000")
    st = TrainingStatus(iteration=1000, total=2000, phase="gase", phase_span=(0.2, 0.8))
    assert st.fraction == pytest.approx(0.6)
    # events of runs before phase_span: GASE first, then the expert
    assert TrainingStatus(iteration=1000, total=2000, phase="gase").fraction == pytest.approx(0.4)
    assert TrainingStatus(iteration=1000, total=2000, phase="source expert").fraction == pytest.approx(0.9)
    assert TrainingStatus(iteration=500, total=2000).fraction == pytest.approx(0.25)


def _tiny_pairs(knee_cases):
    return [(img, lab.array.astype("uint8"), f"case{n}") for n, (img, lab) in enumerate(knee_cases)]


@pytest.fixture(scope="module")
def tiny_erm(knee_cases, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = TrainConfig(method="erm", iterations=6, batch_size=4, crop=64, val_every=6, checkpoint_every=6,
                      device="cpu", seed=0)
    pairs = _tiny_pairs(knee_cases)
    return train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path_factory.mktemp("erm") / "erm", cfg, anatomy="knee",
                 plane="sagittal").model_folder


@pytest.mark.parametrize("warm", [True, False])
def test_warm_start_the_gase_segmenter_starts_from_the_experts_weights(tiny_erm, knee_cases, tmp_path, warm):
    """With warm_start (the default) the GASE segmenter begins where the source expert ended. At learning rate 0
    its weights stay what they began as: the expert's exactly, or (no warm start) a fresh initialisation."""
    pairs = _tiny_pairs(knee_cases)
    cfg = TrainConfig(method="gase", iterations=2, batch_size=4, crop=64, val_every=2, checkpoint_every=2,
                      device="cpu", seed=0, lr=0.0, warm_start=warm)
    events = []
    res = train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "gase", cfg, anatomy="knee", plane="sagittal",
                source_expert_from=tiny_erm, on_event=events.append)
    ours = {k: v for k, v in load_file(str(res.model_folder / "weights.safetensors")).items() if k.startswith("segmenter.")}
    expert = {k: v for k, v in load_file(str(tiny_erm / "weights.safetensors")).items() if k.startswith("segmenter.")}
    assert ours.keys() == expert.keys()
    same = all(torch.equal(ours[k], expert[k]) for k in ours)
    assert same is warm
    assert any(e["event"] == "warm start" for e in events) is warm
    assert res.card.training["config"]["warm_start"] is warm
    # the expert was given (not trained here): the GASE run is the whole of the progress
    assert {tuple(e["phase_span"]) for e in events if e["event"] == "progress"} == {(0.0, 1.0)}


def test_warm_start_order_and_progress_spans(knee_cases, tmp_path):
    """Trained here: the expert first (the first fifth of the progress), then the GASE run from its weights."""
    torch.set_num_threads(1)
    pairs = _tiny_pairs(knee_cases)
    cfg = TrainConfig(method="gase", iterations=10, batch_size=2, crop=64, val_every=10, checkpoint_every=10,
                      device="cpu", seed=0)
    events = []
    train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "gase", cfg, anatomy="knee", plane="sagittal",
          on_event=events.append)
    progress = [(e["phase"], e["iteration"], tuple(e["phase_span"])) for e in events if e["event"] == "progress"]
    assert progress == [("source expert", 10, (0.0, 0.2)), ("gase", 10, (0.2, 0.8))]
    warm = [e for e in events if e["event"] == "warm start"]
    assert len(warm) == 1 and Path(warm[0]["from"]) == tmp_path / "gase" / "training" / "source-expert"


def test_warm_start_from_another_architecture_is_refused(tiny_erm, knee_cases, tmp_path):
    pairs = _tiny_pairs(knee_cases)
    cfg = TrainConfig(method="gase", iterations=2, batch_size=4, crop=64, val_every=2, checkpoint_every=2,
                      device="cpu", seed=0, segmenter_channels=(8, 16, 32, 64, 128))
    with pytest.raises(ModelError, match="does not match this training's architecture"):
        train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "gase", cfg, anatomy="knee", plane="sagittal",
              source_expert_from=tiny_erm)
    assert not (tmp_path / "gase" / "model.json").exists()  # nothing half-written


@pytest.mark.parametrize("route", ["expert", "gase", "style"])
def test_segment_command_route_option(tiny_model, knee_cases, tmp_path, capsys, route):
    from gase.cli import main
    from gase.volume import write_volume

    write_volume(knee_cases[4][0], tmp_path / "knee.nrrd")
    assert main(["segment", str(tmp_path / "knee.nrrd"), "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--route", route]) == 0
    report = json.loads((tmp_path / "out" / "knee_report.json").read_text())
    printed = capsys.readouterr().out
    if route == "expert":
        assert report["source_expert"]["route"] == "expert" and report["source_expert"]["used"] is True
        assert "segmented by the source-style expert (route: expert)" in printed
    elif route == "style":  # the expert's manifold decides; the report says which network segmented
        assert isinstance(report["source_expert"]["used"], bool) and "route" not in report["source_expert"]
        assert "segmented by the" in printed
    else:  # the GASE segmenter alone: no expert pass, nothing to say about it
        assert "source_expert" not in report and "segmented by" not in printed
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path / "knee.nrrd"), "--model", str(tiny_model), "--out", str(tmp_path / "o2"),
              "--route", "best"])


def test_a_scan_declined_on_style_is_segmented_once(tiny_model, knee_cases, tmp_path):
    """The expert's style verdict comes from its encoders alone: a scan it declines on style never gets the
    expert's full pass (time, and the peak memory of a second set of outputs)."""
    folder = _with_expert_threshold(tiny_model, tmp_path / "m", 1e-6)
    p = Predictor.from_folder(folder, device="cpu")

    def not_expected(*args, **kwargs):
        raise AssertionError("the expert segmented a scan it declines on style")

    p.expert._predict = not_expected
    res = p.predict(knee_cases[4][0])
    assert res.extra["source_expert"]["used"] is False
    alone = Predictor.from_folder(folder, device="cpu").expert.predict(knee_cases[4][0])
    assert res.extra["source_expert"]["style_score"] == pytest.approx(alone.validity.score, abs=1e-3)


def test_warm_start_from_a_damaged_expert_is_refused(tiny_erm, knee_cases, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_erm, damaged)
    raw = bytearray((damaged / "weights.safetensors").read_bytes())
    raw[-8:] = b"\x00" * 8
    (damaged / "weights.safetensors").write_bytes(bytes(raw))
    pairs = _tiny_pairs(knee_cases)
    cfg = TrainConfig(method="gase", iterations=2, batch_size=4, crop=64, val_every=2, checkpoint_every=2,
                      device="cpu", seed=0)
    with pytest.raises(ModelError, match="weights.safetensors"):
        train(pairs[:3], pairs[3:4], KNEE_LABELS, tmp_path / "gase", cfg, anatomy="knee", plane="sagittal",
              source_expert_from=damaged)
    assert not (tmp_path / "gase" / "model.json").exists()
