"""benchmarks.diagnose: where a model's Dice goes, and the slice oracle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.diagnose import case_numbers, main, reliability_markdown, reliability_summary, slice_oracle, summarize

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
    assert "reliability" not in res  # only when asked
    with pytest.raises(SystemExit):  # never overwrites
        main([str(tiny_model), "--subjects", "1", "--out", str(out)])
    with pytest.raises(SystemExit):
        main([str(tiny_model), "--styles", "no_such_style", "--subjects", "1"])


def _rel_row(prostate_dice, prostate_quality, body_dice, body_quality, ratio):
    per = {"body": {"dice": body_dice, "quality": body_quality, "expected_dice": body_quality,
                    "stability": body_quality, "size_ratio": 1.0},
           "prostate": {"dice": prostate_dice, "quality": prostate_quality, "expected_dice": prostate_quality,
                        "stability": float("nan"), "size_ratio": ratio}}
    dice = (prostate_dice + body_dice) / 2
    return {"per_structure": per, "volume": {"dice": dice, "quality": (prostate_quality + body_quality) / 2,
                                             "expected_dice": (prostate_quality + body_quality) / 2,
                                             "stability": body_quality}}


def test_reliability_summary_tells_a_structure_the_model_sees_from_one_it_does_not():
    # the body's scores follow its Dice; the prostate's stay flat (confident) while its Dice swings with size
    rows = [_rel_row(pd, 0.88 + 0.001 * i, bd, bd - 0.01, r)
            for i, (pd, bd, r) in enumerate([(0.55, 0.95, 2.5), (0.85, 0.96, 1.0), (0.60, 0.97, 2.2),
                                              (0.80, 0.94, 1.1), (0.70, 0.93, 1.6)])]
    s = reliability_summary(rows)
    assert s["per_structure"]["body"]["spearman_quality"] == pytest.approx(1.0)
    assert s["per_structure"]["prostate"]["spearman_quality"] < 0.5
    assert np.isnan(s["per_structure"]["prostate"]["spearman_stability"])  # no stability: NaN, not a number
    assert s["per_structure"]["prostate"]["dice_sd"] > 5 * s["per_structure"]["body"]["dice_sd"]
    assert s["per_structure"]["prostate"]["size_ratio_median"] == pytest.approx(1.6)
    assert s["volume"]["cases"] == 5
    table = reliability_markdown(s)
    assert "| prostate |" in table and "| 1.60 |" in table and "| volume (mean Dice) |" in table


def test_the_volume_ranking_gets_its_interval_once_there_are_enough_cases():
    """Five cases: the Spearman alone (no interval from so few); 36: the quality's with its 95% interval,
    which holds the point value and is short of the perfect 1 when the ranking is imperfect."""
    few = reliability_summary([_rel_row(0.6 + 0.05 * i, 0.9, 0.95, 0.94, 1.2) for i in range(5)])
    assert all(np.isnan(few["volume"]["spearman_quality_95"]))
    assert "95%" not in reliability_markdown(few)
    rng = np.random.default_rng(3)
    pds = rng.uniform(0.5, 0.9, 36)
    rows = [_rel_row(pd, 0.6 + 0.4 * pd + rng.normal(0, 0.04), 0.95, 0.94, 1.2) for pd in pds]
    s = reliability_summary(rows)
    lo, hi = s["volume"]["spearman_quality_95"]
    assert lo < s["volume"]["spearman_quality"] < hi < 1.0
    assert f"| volume (mean Dice) | {s['volume']['spearman_quality']:.2f} (95%: {lo:.2f}-{hi:.2f}) |" \
        in reliability_markdown(s)


def test_cli_reliability_on_the_tiny_model(tiny_model, tmp_path, capsys, one_thread):
    from conftest import TINY_SCALE

    out = tmp_path / "r.json"
    assert main([str(tiny_model), "--styles", "pd_fse", "t2_fse", "--subjects", "2", "--stream", "150",
                 "--scale", str(TINY_SCALE), "--reliability", "--out", str(out)]) == 0
    assert "Which errors the model sees (4 cases)" in capsys.readouterr().out
    rel = json.loads(out.read_text())["reliability"]
    assert len(rel["cases"]) == 4 and {c["style"] for c in rel["cases"]} == {"pd_fse", "t2_fse"}
    for c in rel["cases"]:
        assert 0.0 <= c["volume"]["dice"] <= 1.0
        assert any(np.isfinite(v["stability"]) for v in c["per_structure"].values())  # the stability check ran
    assert set(rel["summary"]["per_structure"]) == set(rel["cases"][0]["per_structure"])
