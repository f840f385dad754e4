"""benchmarks.refit_postprocessing: a run's model cards get the post-processing learned from the run's own
training label maps; nothing else in the model folder changes."""
from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.refit_postprocessing import refit, training_cases, training_label_maps
from gase.errors import InputError
from gase.labels import ANATOMY_LABELS
from gase.model_card import load_card
from gase.postprocess import fit_postprocessing
from gase.training.loop import card_prior_entry

from conftest import TINY_SCALE


def test_refit_writes_the_learned_rule_into_every_card(tiny_model, tmp_path):
    run = tmp_path / "run"
    for method in ("erm", "gase"):
        shutil.copytree(tiny_model, run / "knee" / "models" / f"knee-{method}")
        card = json.loads((run / "knee" / "models" / f"knee-{method}" / "model.json").read_text())
        card["postprocessing"] = {"largest_component": ["femur"]}  # as an older model's card
        (run / "knee" / "models" / f"knee-{method}" / "model.json").write_text(json.dumps(card))
    files_before = load_card(run / "knee" / "models" / "knee-gase").files
    post = refit(run, "knee", data_seed=3, scale=TINY_SCALE)
    want = {**fit_postprocessing(training_label_maps("knee", 3, TINY_SCALE), ANATOMY_LABELS["knee"]),
            **card_prior_entry(load_card(tiny_model), training_cases("knee", 3, TINY_SCALE)[:4])}
    assert post == want and "opening_mm" in post
    # balanced crops show the small structures more often than the slices do: their logits are lowered
    assert set(post["prior_offsets"]) == {t.name for t in ANATOMY_LABELS["knee"]}
    assert post["prior_offsets"]["tibial cartilage"] < 0 and post["prior_offsets"]["femoral cartilage"] < 0
    for method in ("erm", "gase"):
        card = load_card(run / "knee" / "models" / f"knee-{method}")  # checksums verified: weights untouched
        assert card.postprocessing == want
        assert card.files == files_before
    assert refit(run, "knee", data_seed=3, scale=TINY_SCALE) == want  # again: the same


def test_refit_names_a_folder_without_models(tmp_path):
    with pytest.raises(InputError, match="No model folders"):
        refit(tmp_path, "knee", data_seed=0)
