"""Merging per-anatomy benchmark runs (run side by side) into one results folder; the small dg_probe check."""
from __future__ import annotations

import pytest

from benchmarks.merge import merge


def _run(anatomy, total, iterations=1000, command="cmd"):
    meta = {"mode": "full", "iterations": iterations, "batch_size": 8, "crop": 128, "scale": 1.0, "test_subjects": 6,
            "ood_subjects": 3, "seed": 0, "machine": "CPU", "command": f"{command} {anatomy}",
            "training": {f"{anatomy}/erm": {"iterations": iterations, "seconds": 10.0}},
            "wall_s": {"data": 1.0, f"train {anatomy}/erm": 10.0, "total": total}}
    return {"anatomies": {anatomy: {"source_style": "s"}}, "meta": meta}


def test_merge_joins_anatomies_and_keeps_every_command():
    m = merge([_run("knee", 100.0), _run("pelvis", 120.0)])
    assert list(m["anatomies"]) == ["knee", "pelvis"]
    assert list(merge([_run("pelvis", 120.0), _run("knee", 100.0)])["anatomies"]) == ["knee", "pelvis"]
    assert set(m["meta"]["training"]) == {"knee/erm", "pelvis/erm"}
    assert m["meta"]["wall_s"]["total"] == 120.0  # side by side: the longest run
    assert m["meta"]["wall_s"]["data"] == 2.0
    assert [p["anatomies"] for p in m["meta"]["parts"]] == [["knee"], ["pelvis"]]
    assert "cmd knee" in m["meta"]["command"] and "cmd pelvis" in m["meta"]["command"]
    named = merge([_run("knee", 100.0), _run("pelvis", 120.0)], machine="CPU, side by side")
    assert named["meta"]["machine"] == "CPU, side by side"
    assert m["meta"]["machine"] == _run("knee", 1.0)["meta"]["machine"]  # without: the first run's


def test_merge_refuses_different_protocols_and_duplicate_anatomies():
    with pytest.raises(ValueError, match="iterations"):
        merge([_run("knee", 1.0), _run("pelvis", 1.0, iterations=500)])
    with pytest.raises(ValueError, match="knee"):
        merge([_run("knee", 1.0), _run("knee", 1.0)])
    balanced = _run("pelvis", 1.0)
    balanced["meta"]["crop_sampling"] = "balanced"  # the knee run has no record: foreground sampling
    with pytest.raises(ValueError, match="crop_sampling"):
        merge([_run("knee", 1.0), balanced])


def test_merge_joins_one_anatomys_methods_trained_side_by_side():
    gase = _run("pelvis", 7000.0)
    gase["anatomies"]["pelvis"]["methods"] = {"gase": {"summary": 3}}
    gase["meta"]["training"] = {"pelvis/gase": {"iterations": 1000, "seconds": 6000.0}}
    others = _run("pelvis", 4000.0)
    others["anatomies"]["pelvis"]["methods"] = {"randcurve": {"summary": 2}, "erm": {"summary": 1}}
    others["meta"]["training"]["pelvis/randcurve"] = {"iterations": 1000, "seconds": 2000.0}
    m = merge([gase, others])
    assert list(m["anatomies"]["pelvis"]["methods"]) == ["erm", "randcurve", "gase"]  # the report's order
    assert m["anatomies"]["pelvis"]["methods"]["gase"] == {"summary": 3}
    assert m["anatomies"]["pelvis"]["source_style"] == "s"
    assert set(m["meta"]["training"]) == {"pelvis/erm", "pelvis/randcurve", "pelvis/gase"}
    assert m["meta"]["wall_s"]["total"] == 7000.0
    assert gase["anatomies"]["pelvis"]["methods"] == {"gase": {"summary": 3}}  # the inputs are left as they were
    with pytest.raises(ValueError, match="same methods \\(erm\\)"):
        merge([others, _run("pelvis", 1.0) | {"anatomies": {"pelvis": {"source_style": "s",
                                                                         "methods": {"erm": {}}}}}])
    other_test_set = _run("pelvis", 1.0)
    other_test_set["anatomies"]["pelvis"] = {"source_style": "t2_3t", "methods": {"erm": {}}}
    with pytest.raises(ValueError, match="different source_style"):
        merge([gase, other_test_set])


def test_dg_probe_reports_dice_per_style_and_the_unseen_mean(tmp_path):
    import numpy as np
    import torch

    from benchmarks.data import DEFAULT_UNSEEN
    from benchmarks.dg_probe import probe
    from gase.labels import KNEE_LABELS
    from gase.training.config import TrainConfig
    from gase.training.loop import Trainer

    torch.set_num_threads(1)
    # fine-tuning from a checkpoint (the networks of an earlier run), with a style besides the default ones
    settings = {"batch_size": 2, "crop": 64}
    earlier = Trainer(TrainConfig(method="erm", device="cpu", **settings), KNEE_LABELS, 5)
    torch.save(earlier.state_dict(), tmp_path / "checkpoint.pt")
    res = probe("erm", 2, settings, test_subjects=1, init=tmp_path / "checkpoint.pt", extra_styles=("dess",),
                eval_stream=150)
    assert set(res["dice"]) == {"pd_fse", *DEFAULT_UNSEEN["knee"], "dess"}
    assert all(0.0 <= v <= 1.0 for d in res["dice"].values() for v in d.values())
    assert res["unseen_mean"] == round(float(np.mean([res["dice"][s]["mean"] for s in DEFAULT_UNSEEN["knee"]])), 3)
    assert res["extra_mean"] == res["dice"]["dess"]["mean"]
    assert res["settings"] == settings and res["init"] == str(tmp_path / "checkpoint.pt")
    other = Trainer(TrainConfig(method="erm", device="cpu", segmenter_channels=(8, 16, 32, 64, 128), **settings),
                    KNEE_LABELS, 5)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="size mismatch"):  # the checkpoint's networks are really loaded
        probe("erm", 1, settings, test_subjects=1, init=tmp_path / "other.pt")


def test_the_report_header_counts_the_source_expert_once():
    """GASE's training seconds include its source expert's, which is the ERM model of the same anatomy when
    both are in the run: the header's training total counts those seconds once (it said 10139 s for a run of
    8767 s: ERM 1372 + peer 2145 + GASE 6622 with the ERM expert inside)."""
    from benchmarks.report import run_line, training_seconds

    records = {"pelvis/erm": {"seconds": 1372.0}, "pelvis/randcurve": {"seconds": 2145.0},
               "pelvis/gase": {"seconds": 6622.0, "source_expert_seconds": 1372.0},
               "knee/gase": {"seconds": 500.0, "source_expert_seconds": 100.0}}
    # the knee's expert was trained inside GASE's run (no knee ERM here): its seconds are GASE's own
    assert training_seconds(records) == 1372.0 + 2145.0 + 6622.0 + 500.0 - 1372.0
    assert training_seconds(records, ["pelvis/gase"]) == 6622.0  # alone, GASE's run holds its expert
    assert training_seconds(records, ["pelvis/erm", "pelvis/gase"]) == 6622.0
    meta = {"mode": "Full", "date": "2026-12-06", "machine": "CPU", "torch": "2.13.0", "monai": "1.6.1",
            "iterations": 2000, "batch_size": 8, "crop": 128, "scale": 1.0, "test_subjects": 6, "ood_subjects": 3,
            "training": {k: v for k, v in records.items() if k.startswith("pelvis")}, "wall_s": {"total": 9000.0}}
    assert "8767 s of it training" in run_line(meta)
    reused = {**meta, "training": {k: {**v, "reused_from": "x"} for k, v in meta["training"].items()}}
    assert "(8767 s of training)" in run_line(reused)
    # --reuse-models --retrain gase: GASE trained anew on top of the reused ERM model, its expert; the line
    # counts what was trained here (it said 6622 s, the reused expert's 1372 s included)
    retrained = {**meta, "training": {**reused["training"], "pelvis/gase": records["pelvis/gase"]}}
    line = run_line(retrained)
    assert "pelvis/gase trained here (5250 s of training)" in line and "pelvis/erm, pelvis/randcurve" in line
    assert "8767" not in line
