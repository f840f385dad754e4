"""benchmarks.seeds: runs with different training seeds side by side (means, per-seed differences, checks)."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks.seeds import BEGIN, END, SeedsError, build_markdown, main, summarize


def _run(train_seed: int, gase_unseen: float, peer_unseen: float, *, seed: int = 0, iterations: int = 1000,
         legacy: bool = False, crop_sampling: str | None = "balanced") -> dict:
    def summary(source, unseen, extra=None):
        s = {"segmentation": {"source": {"dice": source}, "unseen": {"dice": unseen}}}
        return {**s, **(extra or {})}

    gase_extra = {"confidence": {"voxel": {"confidence": {"auroc_all": 0.92, "ece_all": 0.03}},
                                 "volume": {"expected_dice": {"spearman": 0.7 + 0.01 * train_seed}}},
                  "validity": {"auroc": 1.0, "false_invalid_source": 0.0}}
    methods = {"erm": {"summary": summary(0.89, 0.63)}, "randcurve": {"summary": summary(0.83, peer_unseen)},
               "gase": {"summary": summary(0.78 + 0.02 * train_seed, gase_unseen, gase_extra)}}
    meta = {"seed": seed, "iterations": iterations, "batch_size": 8, "crop": 128, "scale": 1.0,
            "test_subjects": 6, "ood_subjects": 3}
    if crop_sampling is not None:  # None: a run from before the setting was recorded (foreground sampling)
        meta["crop_sampling"] = crop_sampling
    if legacy:  # a run from before --train-seed: it trained with the data seed
        meta["seed"] = train_seed
    else:
        meta["train_seed"] = train_seed
    return {"meta": meta, "anatomies": {"knee": {"methods": methods}}}


def test_means_and_per_seed_differences():
    s = summarize([_run(0, 0.737, 0.763), _run(1, 0.780, 0.740)])
    knee = s["anatomies"]["knee"]
    assert s["train_seeds"] == [0, 1]
    assert knee["methods"]["gase"]["unseen Dice"] == [0.737, 0.780]
    assert knee["differences"]["unseen Dice, GASE - peer"] == pytest.approx([-0.026, 0.040])
    assert knee["differences"]["unseen Dice, GASE - ERM"] == pytest.approx([0.107, 0.150])
    assert knee["differences"]["source Dice, GASE - ERM"] == pytest.approx([-0.11, -0.09])
    assert knee["gase"]["Spearman(expected Dice, Dice)"] == pytest.approx([0.70, 0.71])
    md = build_markdown(s)
    assert "| GASE | unseen Dice | 0.737 | 0.780 | **0.758** |" in md  # the mean of the two seeds
    assert "| difference | unseen Dice, GASE - peer | -0.026 | +0.040 | **+0.007** |" in md


def test_a_run_from_before_train_seed_counts_its_data_seed_as_training_seed():
    s = summarize([_run(0, 0.7, 0.7, legacy=True), _run(1, 0.7, 0.7)])
    assert s["train_seeds"] == [0, 1]


def test_runs_from_before_crop_sampling_was_recorded_compare_as_foreground_sampling():
    s = summarize([_run(0, 0.7, 0.7, crop_sampling=None), _run(1, 0.7, 0.7, crop_sampling="foreground")])
    assert s["crop_sampling"] == "foreground"
    assert "foreground crop sampling" in build_markdown(s)


@pytest.mark.parametrize("runs, message", [
    ([_run(0, 0.7, 0.7)], "at least two runs"),
    ([_run(0, 0.7, 0.7), _run(0, 0.7, 0.7)], "training seeds repeat"),
    ([_run(0, 0.7, 0.7), _run(1, 0.7, 0.7, iterations=500)], "differ in iterations"),
    ([_run(0, 0.7, 0.7), _run(1, 0.7, 0.7, seed=3)], "differ in seed"),
    ([_run(0, 0.7, 0.7), _run(1, 0.7, 0.7, crop_sampling="foreground")], "differ in crop_sampling"),
    ([_run(0, 0.7, 0.7), _run(1, 0.7, 0.7, crop_sampling=None)], "differ in crop_sampling"),
])
def test_runs_that_cannot_be_compared_are_refused(runs, message):
    with pytest.raises(SeedsError, match=message):
        summarize(runs)


def test_cli_writes_the_tables_and_only_the_readme_section(tmp_path, capsys):
    folders = []
    for seed, g in ((0, 0.737), (1, 0.780)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_run(seed, g, 0.75)))
        folders.append(str(d))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    assert main([str(tmp_path / "out"), *folders, "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\noutro\n") and "old" not in text
    assert "How much the numbers move with the training seed" in text
    saved = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert saved["anatomies"]["knee"]["methods"]["gase"]["unseen Dice"] == [0.737, 0.780]
    assert "| GASE | unseen Dice |" in (tmp_path / "out" / "SEEDS.md").read_text()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "out2"), folders[0], str(tmp_path / "missing")])
    assert "does not exist" in capsys.readouterr().err
    assert math.isfinite(saved["anatomies"]["knee"]["gase"]["ECE"][0])


def test_a_gase_only_run_compares_with_full_runs_on_gase_alone():
    """--methods gase: a GASE model re-evaluated on its own (no ERM / peer in its results) next to full runs."""
    from benchmarks.seeds import only_methods

    full = _run(0, 0.74, 0.72)
    alone = _run(1, 0.76, 0.72)
    alone["anatomies"]["knee"]["methods"] = {"gase": alone["anatomies"]["knee"]["methods"]["gase"]}
    with pytest.raises(SeedsError, match="different methods"):
        summarize([full, alone])
    s = summarize(only_methods([full, alone], ["gase"]))
    knee = s["anatomies"]["knee"]
    assert list(knee["methods"]) == ["gase"] and knee["differences"] == {}
    assert knee["methods"]["gase"]["unseen Dice"] == [0.74, 0.76]
    assert math.isnan(knee["gase"]["Spearman(stability, Dice)"][0])  # these runs did not measure it: n/a
    assert "| GASE | Spearman(stability, Dice) | n/a | n/a | **n/a** |" in build_markdown(s)
    with pytest.raises(SeedsError, match="no randcurve"):
        only_methods([full, alone], ["randcurve"])
