"""benchmarks.diagnose: where a model's Dice goes, and the slice oracle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.diagnose import case_numbers, main, slice_oracle, summarize

NAMES = {0: "background", 1: "body", 2: "prostate"}


def _case():
    truth = np.ones((6, 8, 8), np.uint8)
    truth[2:4, 2:6, 2:6] = 2                 # the prostate on slices 2-3
    pred = truth.copy()
    pred[0:2, 2:6, 2:6] = 2                  # a false prostate on slices 0-1 (none there)
    pred[3, 2:4, 2:6] = 1                    # and half of slice 3's prostate missed
    return pred, truth


def test_slice_oracle_gives_voxels_on_slices_without_the_structure_their_true_label():
    pred, truth = _case()
    oracle = slice_oracle(pred, truth, [1, 2])
    assert (oracle[0:2] == truth[0:2]).all()  # the false prostate is gone
    assert (oracle[3] == pred[3]).all()       # a miss on a slice that has the structure stays
    n = case_numbers(pred, truth, NAMES)
    # prostate: 32 true voxels, 24 found, 32 false -> 48 / 88; the oracle leaves 24 of 32 found, none false
    assert n["dice"]["prostate"] == pytest.approx(48 / 88)
    assert n["slice_oracle"]["prostate"] == pytest.approx(48 / 56)
    conf = np.array(n["confusion"])
    assert conf[1, 2] == 32 and conf[2, 1] == 8 and conf.sum() == truth.size


def test_summary_shares_of_missed_and_false_voxels():
    pred, truth = _case()
    s = summarize({"t2": [case_numbers(pred, truth, NAMES)] * 2}, NAMES)["t2"]
    assert s["missed_to"]["prostate"] == {"body": 0.25}   # 8 of 32 true prostate voxels called body
    assert s["false_from"]["prostate"] == {"body": 0.5714}  # 32 of the 56 predicted
    assert s["n"] == 2 and s["dice_mean"] == pytest.approx(np.mean(list(s["dice"].values())))


def test_cli_on_the_tiny_model(tiny_model, tmp_path, capsys, one_thread):
    from conftest import TINY_SCALE

    out = tmp_path / "d.json"
    assert main([str(tiny_model), "--styles", "pd_fse", "t2_fse", "--subjects", "1", "--stream", "150",
                 "--scale", str(TINY_SCALE), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| pd_fse |" in text and "| t2_fse |" in text and "slice oracle" in text
    res = json.loads(out.read_text())
    assert res["anatomy"] == "knee" and set(res["per_style"]) == {"pd_fse", "t2_fse"}
    d = res["per_style"]["t2_fse"]
    assert all(0.0 <= v <= 1.0 for v in d["dice"].values())
    assert all(d["slice_oracle"][k] >= d["dice"][k] - 1e-9 for k in d["dice"])  # the oracle only removes errors
    assert res["unseen_slice_oracle"] >= res["unseen_dice"] - 1e-9
    with pytest.raises(SystemExit):  # never overwrites
        main([str(tiny_model), "--subjects", "1", "--out", str(out)])
    with pytest.raises(SystemExit):
        main([str(tiny_model), "--styles", "no_such_style", "--subjects", "1"])
