"""The GASE Training module's logic end to end on real MRML nodes: scene -> background ``gase train`` with
live progress -> Stop (checkpoint) -> Resume -> model registered and listed by GASE Segmentation."""
from __future__ import annotations

import time

import numpy as np
import pytest

from gase.errors import InputError

pytestmark = pytest.mark.slow

SETTINGS = dict(anatomy="knee", val_fraction=0.25, iterations=24, device="cpu", seed=1, checkpoint_every=4,
                config={"batch_size": 2, "crop": 64, "val_every": 10})


def _poll_until(run, condition, timeout_s=240.0):
    deadline = time.monotonic() + timeout_s
    events = []
    while time.monotonic() < deadline:
        events += run.poll()
        if condition():
            return events
        if run.done:
            raise AssertionError(f"the run ended early: {run.process.message}\n{run.process.stderr_tail[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out; status {run.status}")


def _wait(run, timeout_s=240.0):
    deadline = time.monotonic() + timeout_s
    events = []
    while not run.done and time.monotonic() < deadline:
        events += run.poll()
        time.sleep(0.1)
    assert run.done, run.status
    return events


def test_train_in_background_stop_resume_and_register(slicer_app_logic, mrml_scene, knee_cases, tmp_path,
                                                      monkeypatch):
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node
    from GASESegmentationLib.results import update_segmentation
    from GASETrainingLib.logic import GASETrainingLogic
    from GASETrainingLib.export import TrainingPair
    from GASETrainingLib.job import TrainingSettings
    from gase.labels import KNEE_LABELS

    monkeypatch.setenv("GASE_USER_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child process shares this machine's few cores
    pairs = []
    for n, (img, lab) in enumerate(knee_cases[:4]):
        volume = add_volume_node(mrml_scene, img, f"knee{n}")
        seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"knee{n} labels")
        update_segmentation(seg, volume, lab, KNEE_LABELS)
        pairs.append(TrainingPair(volume, seg))

    logic = GASETrainingLogic(work_root=tmp_path / "work")
    training_set = logic.export(pairs, "knee-test", anatomy="knee")
    assert training_set.cases == ["knee0", "knee1", "knee2", "knee3"]
    run = logic.start(training_set, "knee-test", TrainingSettings(**SETTINGS), scene=mrml_scene)
    assert "--stop-file" in run.process.command and "--progress-json" in run.process.command

    events = _poll_until(run, lambda: (run.status.checkpoint_iteration or 0) >= 4 and run.status.preview_path)
    assert any(e["event"] == "checkpoint" for e in events)
    preview = logic.preview_png(run)
    assert preview is not None and preview.stat().st_size > 1000

    logic.stop(run)  # stop file + SIGTERM: finish the iteration, checkpoint, exit 3
    _wait(run, timeout_s=90)
    assert run.stopped and run.process.returncode == 3, run.process.stderr_tail[-2000:]
    stopped_at = run.status.stopped_at
    assert stopped_at is not None and 4 <= stopped_at < 24
    assert not (run.out_dir / "model.json").exists()
    with pytest.raises(InputError, match="exists"):
        logic.start(training_set, "knee-test", TrainingSettings(**SETTINGS))
    with pytest.raises(InputError, match="not finished"):
        logic.register(run)

    resumed = logic.resume("knee-test", scene=mrml_scene)  # from run.json, as after a Slicer restart
    events = _wait(resumed)
    assert resumed.succeeded, resumed.process.message
    assert resumed.status.resumed_from == stopped_at
    # the source expert trained first (warm start) and is complete: only the GASE run goes on, from its checkpoint
    assert [(e.get("phase"), e["iteration"]) for e in events if e["event"] == "progress"] == \
        [("gase", i) for i in (10, 20, 24) if i > stopped_at]
    assert resumed.status.phase == "gase" and resumed.process.fraction == 1.0
    dice = resumed.status.final_dice
    assert 0.0 <= dice["mean"] <= 1.0 and set(dice) >= {"femur", "tibia", "mean"}

    # live curves in the scene: one row per progress event, one per validation
    charts = resumed.charts
    after_stop = len([i for i in (10, 20, 24) if i > stopped_at])  # this process's: 10, 20, 24 after the stop
    assert charts.losses.GetTable().GetNumberOfRows() == after_stop
    assert charts.dice.GetTable().GetNumberOfRows() == after_stop  # GASE's validations, not the expert's
    assert charts.chart.GetNumberOfPlotSeriesNodes() == charts.losses.GetTable().GetNumberOfColumns()  # losses + Dice
    assert np.isfinite(charts.dice.GetTable().GetValue(after_stop - 1, 1).ToDouble())

    card = logic.register(resumed)
    assert card.folder == (tmp_path / "models" / "knee-test").resolve()
    assert card.metrics["validation_dice"]["mean"] == pytest.approx(dice["mean"])
    assert not (card.folder / "training").exists()  # the checkpoint stays in the work folder
    names = [c.name for c in GASESegmentationLogic().models()]
    assert "knee-test" in names  # GASE Segmentation's selector lists the new model
    assert logic.preview_png(resumed) is not None
