"""Refit the post-processing entry of a benchmark run's model cards from the run's training data.

The post-processing (:func:`gase.postprocess.fit_postprocessing`) is learned from the training labels alone,
not from the networks, so a model trained before a change of that rule can get the new rule without being
trained again. Every method's card (ERM, the peer, GASE) gets the same entry, as training would have given
it; then re-evaluate the run (``REUSE=1 bash benchmarks/run_cpu.sh RUN``). Prints each card's old and new
entry. The networks, their weights and the validity files are not touched.

    python -m benchmarks.refit_postprocessing benchmarks/results/cpu-1000-data1-pp --data-seed 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from gase.errors import InputError
from gase.model_card import load_card, write_card
from gase.phantoms import SOURCE_STYLE, make_case
from gase.postprocess import fit_postprocessing
from gase.training.loop import card_prior_entry

from .data import N_TRAIN, N_VAL, DataSpec, _seeds


def training_cases(anatomy: str, data_seed: int, scale: float = 1.0) -> list[tuple]:
    """(image, uint8 labels (K, J, I), name) of the benchmark's training volumes, then its validation volume."""
    spec = DataSpec(anatomy, (), seed=data_seed, scale=scale)
    cases = []
    for i, s in enumerate(_seeds(spec, "train", N_TRAIN + N_VAL)):
        image, labels = make_case(anatomy, SOURCE_STYLE[anatomy], s, scale=scale)
        cases.append((image, labels.array.astype("uint8"), f"{'train' if i < N_TRAIN else 'val'}{i}"))
    return cases


def training_label_maps(anatomy: str, data_seed: int, scale: float = 1.0) -> list[tuple]:
    """(labels (K, J, I), voxel size along K, J, I) of the benchmark's training and validation volumes."""
    return [(lab, image.spacing[::-1]) for image, lab, _ in training_cases(anatomy, data_seed, scale)]


def refit(run: Path, anatomy: str, data_seed: int, scale: float = 1.0) -> dict:
    """Refit every model card of ``run``'s ``anatomy``: the post-processing from the training and validation
    label maps, the prior offsets from the training volumes (as training computes them, with each card's crop
    size and sampling). Returns the last card's entry."""
    folders = sorted(p for p in (run / anatomy / "models").glob("*") if (p / "model.json").is_file())
    if not folders:
        raise InputError(f"No model folders under {run / anatomy / 'models'}; give a benchmark run folder.")
    cases = training_cases(anatomy, data_seed, scale)
    maps = [(lab, image.spacing[::-1]) for image, lab, _ in cases]
    post: dict = {}
    for folder in folders:
        card = load_card(folder, verify=False)
        post = {**fit_postprocessing(maps, card.labels), **card_prior_entry(card, cases[:N_TRAIN])}
        print(f"{folder}:\n  old {json.dumps(card.postprocessing.get('largest_component'))} "
              f"{json.dumps(card.postprocessing.get('opening_mm'))} {json.dumps(card.postprocessing.get('prior_offsets'))}"
              f"\n  new {json.dumps(post['largest_component'])} {json.dumps(post['opening_mm'])} "
              f"{json.dumps(post['prior_offsets'])}")
        write_card(dataclasses.replace(card, postprocessing=post), folder)
    return post


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="benchmark run folder (with <anatomy>/models/)")
    ap.add_argument("--data-seed", type=int, required=True, help="the run's data seed (DATA_SEED of run_cpu.sh)")
    ap.add_argument("--anatomy", nargs="+", default=["knee", "pelvis"], choices=sorted(SOURCE_STYLE))
    ap.add_argument("--scale", type=float, default=1.0, help="the run's phantom scale (1 for the full benchmark)")
    a = ap.parse_args(argv)
    for anatomy in a.anatomy:
        refit(a.run, anatomy, a.data_seed, a.scale)


if __name__ == "__main__":
    main()
