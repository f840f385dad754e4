"""End to end: the real ``gase segment`` in a background process, and ``GASESegmentationLogic.process``
on real MRML nodes. Uses the session's tiny trained model (Testing/conftest.py); the README screenshot
is rendered with the shipped demo model when it is there (``GASE_UPDATE_SCREENSHOT=1`` writes it)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from gase.volume import Volume, write_volume

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "GASESegmentation.png"


@pytest.fixture(scope="module")
def knee_nrrd(tmp_path_factory, knee_cases):
    image, _ = knee_cases[3]
    return write_volume(image, tmp_path_factory.mktemp("input") / "knee.nrrd")


@pytest.fixture(scope="module")
def direct(tiny_model, knee_nrrd):
    """What the predictor gives in this process, to compare the background path against."""
    from gase.predictor import Predictor
    from gase.volume import read_volume

    return Predictor.from_folder(tiny_model, device="cpu").predict(read_volume(knee_nrrd))


def test_background_process_on_a_real_nrrd(tiny_model, knee_nrrd, direct, tmp_path):
    from GASESegmentationLib.outputs import load_result
    from GASESegmentationLib.process import JobState, SegmentationProcess, segment_command

    job = SegmentationProcess.start(segment_command(knee_nrrd, tiny_model, tmp_path / "out", "cpu"))
    seen = []
    outputs = job.wait(progress=lambda f, m: seen.append((f, m)), interval_s=0.05, timeout_s=120)
    assert job.state is JobState.SUCCEEDED, job.stderr_tail
    fractions = [f for f, _ in seen]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("slices" in m for _, m in seen)
    assert all(p.is_file() for p in (outputs.segmentation, outputs.confidence, outputs.report))
    result = load_result(outputs, grid=direct.labels.ijk_to_ras)
    assert np.array_equal(result.labels.array, direct.labels.array)
    assert np.allclose(result.confidence.array, direct.confidence.array, atol=1e-6)
    assert result.validity.valid == direct.validity.valid
    assert result.validity.score == pytest.approx(direct.validity.score, abs=1e-3)
    assert np.isfinite(direct.stability_overall)  # the stability comes back through the report
    assert result.stability_overall == pytest.approx(direct.stability_overall, abs=1e-4)
    assert result.stability_per_label == pytest.approx(direct.stability_per_label, abs=1e-4, nan_ok=True)


def test_cancel_stops_the_real_process_within_two_seconds(tiny_model, knee_cases, tmp_path):
    from gase.phantoms import SOURCE_STYLE, make_case
    from GASESegmentationLib.process import JobState, SegmentationProcess, segment_command

    image, _ = make_case("knee", SOURCE_STYLE["knee"], 11, scale=1.0)  # big enough to still be running
    path = write_volume(image, tmp_path / "big.nrrd")
    job = SegmentationProcess.start(segment_command(path, tiny_model, tmp_path / "out", "cpu"))
    deadline = time.monotonic() + 90
    while not any("segment" in e.message for e in job.poll()):
        assert job.state is JobState.RUNNING and time.monotonic() < deadline, job.error or job.stderr_tail
        time.sleep(0.05)
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 2.0
    assert job.state is JobState.CANCELLED
    assert not (tmp_path / "out" / "big.seg.nrrd").exists()


def _mildly_oblique(volume: Volume) -> Volume:
    """The same voxels with axes permuted/flipped and a 12 degree tilt: what a scanner export can look like."""
    arr = np.ascontiguousarray(np.transpose(volume.array, (1, 0, 2))[:, :, ::-1])  # (J, K, I) with i flipped
    m = volume.ijk_to_ras
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    tilt = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    cols = tilt @ np.stack([-m[:3, 0], m[:3, 2], m[:3, 1]], axis=1)
    out = np.eye(4)
    out[:3, :3] = cols
    out[:3, 3] = tilt @ (m[:3, 3] + m[:3, 0] * (volume.shape[2] - 1))
    return Volume(arr, out)


def test_process_puts_aligned_results_in_the_scene_and_reruns_in_place(slicer_app_logic, tiny_model, knee_cases):
    import slicer

    from gase.predictor import Predictor
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node, ijk_to_ras_of, volume_from_node

    scene = slicer_app_logic.GetMRMLScene()
    volume = _mildly_oblique(knee_cases[4][0])
    node = add_volume_node(scene, volume, "oblique knee")
    user = add_volume_node(scene, Volume(np.zeros((2, 2, 2), np.float32), np.eye(4)), "mine")
    user_time = user.GetMTime()
    logic = GASESegmentationLogic()
    progress = []
    outputs = logic.process(node, tiny_model, "cpu", progress=lambda f, m: progress.append(f), timeout_s=120)
    expected = Predictor.from_folder(tiny_model, device="cpu").predict(volume)

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = [outputs.segmentation.GetSegmentation().GetNthSegmentID(n) for n in range(4)]
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        outputs.segmentation, ids, labelmap, node, 0)
    exported = volume_from_node(labelmap)
    assert np.allclose(exported.ijk_to_ras, volume.ijk_to_ras, atol=1e-9)
    assert np.array_equal(exported.array, expected.labels.array)            # voxel for voxel
    confidence = volume_from_node(outputs.confidence)
    assert np.allclose(ijk_to_ras_of(outputs.confidence), volume.ijk_to_ras, atol=1e-9)
    assert np.allclose(confidence.array, expected.confidence.array, atol=1e-6)
    assert outputs.verdict.valid == expected.validity.valid
    assert outputs.plane == "sagittal" and progress[-1] == 1.0
    names = [outputs.segmentation.GetSegmentation().GetSegment(i).GetName() for i in ids]
    assert names == ["femur", "femoral cartilage", "tibia", "tibial cartilage"]

    again = logic.process(node, tiny_model, "cpu", timeout_s=120)
    assert (again.segmentation.GetID(), again.confidence.GetID()) == (outputs.segmentation.GetID(),
                                                                      outputs.confidence.GetID())
    assert user.GetMTime() == user_time


def test_start_refuses_an_output_as_input(slicer_app_logic, knee_result):
    from gase.errors import InputError
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node

    case = knee_result(shape=(8, 24, 24))
    node = add_volume_node(slicer_app_logic.GetMRMLScene(), case.image, "knee")
    logic = GASESegmentationLogic()
    outputs = logic.show_result(node, case.result, plane="sagittal")
    with pytest.raises(InputError, match="output of GASE"):
        logic.start(outputs.confidence)


def test_red_view_of_a_real_result(slicer_app_logic, tiny_model, knee_cases, tmp_path):
    """The screenshot: a knee phantom segmented by the demo model (tiny model when it is not shipped)."""
    from gase.model_card import default_model_folder
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node
    from GASESegmentationLib.render import SliceViewRenderer

    demo = default_model_folder()
    model = demo if (demo / "model.json").is_file() else tiny_model
    scene = slicer_app_logic.GetMRMLScene()
    image, _ = knee_cases[3]
    node = add_volume_node(scene, image, "knee phantom")
    view = SliceViewRenderer(slicer_app_logic, "Red", orientation="Sagittal", size=(640, 640))
    try:
        logic = GASESegmentationLogic()
        outputs = logic.process(node, model, "cpu", threshold=0.6, timeout_s=120)
        regions = logic.review_regions(outputs, 0.6)
        view.set_layers(node, outputs.confidence, opacity=0.6)
        view.set_verdict(outputs.verdict)
        if regions:
            view.jump_to(regions[0].centroid_ras)
        png = view.write_png(tmp_path / "red.png")
    finally:
        view.close()
    from test_slicer_segmentation_render import read_png

    px = read_png(png)
    banner = px[2:18, 320 - 80:320 + 80].reshape(-1, 3)
    colour = (banner[:, 1] > banner[:, 0] + 40) if outputs.verdict.valid else (banner[:, 0] > banner[:, 1] + 60)
    assert colour.mean() > 0.4
    assert np.ptp(px[200:440, 200:440].reshape(-1, 3), axis=0).max() > 60  # an image, not a blank view
    if os.environ.get("GASE_UPDATE_SCREENSHOT") == "1" and model == demo:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(png.read_bytes())


def test_models_list_the_shipped_and_the_installed_ones(tiny_model, tmp_path, monkeypatch):
    from gase.errors import ModelError
    from GASESegmentationLib.logic import GASESegmentationLogic

    monkeypatch.setenv("GASE_USER_MODELS_DIR", str(tmp_path / "user-models"))
    logic = GASESegmentationLogic()
    before = {c.name for c in logic.models()}
    card = logic.install_model(tiny_model)
    assert card.folder == (tmp_path / "user-models" / card.name).resolve()
    assert {c.name for c in logic.models()} == before | {card.name}
    with pytest.raises(ModelError, match="already installed"):
        logic.install_model(tiny_model)
    extra = GASESegmentationLogic(models_dirs=[tiny_model])
    assert any(c.folder == tiny_model.resolve() for c in extra.models())


def test_an_installed_model_with_an_earlier_threshold_rule_is_pointed_at_and_updated(tiny_model, tmp_path,
                                                                                     monkeypatch):
    """The model selector says when an installed model's validity threshold follows an earlier rule, and the
    logic behind its Update threshold button sets this version's (the earlier one kept in the card); a card
    that cannot be updated gets an error saying why and what to do."""
    import json

    from gase.errors import InputError
    from gase.model_card import load_card
    from gase.validity import VERDICT_MARGIN
    from GASESegmentationLib.logic import GASESegmentationLogic

    monkeypatch.setenv("GASE_USER_MODELS_DIR", str(tmp_path / "user-models"))
    logic = GASESegmentationLogic()
    card = logic.install_model(tiny_model)
    assert not logic.validity_threshold_outdated(card) and "earlier rule" not in logic.model_info(card)
    data = json.loads((card.folder / "model.json").read_text())
    data["validity"]["margin"], data["validity"]["threshold"] = 1.25, 1.0  # as exported before 2026-12-06
    (card.folder / "model.json").write_text(json.dumps(data))
    old = next(c for c in logic.models() if c.folder == card.folder)
    assert logic.validity_threshold_outdated(old)
    info = logic.model_info(old)
    assert "earlier rule" in info and "Update threshold" in info and old.description in info
    before, after = logic.update_validity_threshold(card.folder)
    new = load_card(card.folder)
    assert before == 1.0 and after == new.validity["threshold"] > 1.0 and new.validity["margin"] == VERDICT_MARGIN
    assert new.validity["earlier_thresholds"][0]["threshold"] == 1.0
    assert not logic.validity_threshold_outdated(new) and "earlier rule" not in logic.model_info(new)
    assert "earlier_thresholds" not in load_card(tiny_model).validity  # the installed copy only, not its source
    data = json.loads((card.folder / "model.json").read_text())
    data["validity"].pop("heldout_volume_scores")
    data["validity"]["margin"] = 1.25
    (card.folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="train the model again"):
        logic.update_validity_threshold(card.folder)
    assert json.loads((card.folder / "model.json").read_text())["validity"]["threshold"] == after


def test_the_model_panel_needs_no_torch(tmp_path):
    """The panel lists the models and describes them (whether their threshold is outdated included) when the
    module opens, before the first Apply installs torch: that path must not import torch (or scikit-learn)."""
    import subprocess
    import sys

    code = ("import sys; from GASESegmentationLib.logic import GASESegmentationLogic as L; cards = L().models(); "
            "texts = [L.model_info(c) for c in cards]; outdated = [L.validity_threshold_outdated(c) for c in cards]; "
            "print('torch' in sys.modules, 'sklearn' in sys.modules, len(cards) > 0, "
            "all(c.description in t for c, t in zip(cards, texts)), any(outdated))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "GASESegmentation"), str(ROOT)]),
           "GASE_USER_MODELS_DIR": str(tmp_path)}  # the shipped demo model only
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True", "True", "False"]
