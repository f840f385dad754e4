"""Fit the shipped demo model's style manifolds again (0.2.0 -> 0.2.1 -> 0.2.2): the same weights, the manifold
fitted as training fits it since 2026-12-05 (the training slices and augmented copies of them, threshold 1.25 x
the upper quartile of the held-out scores, since 0.2.2 with augmented copies of the held-out volumes too;
:mod:`gase.training.validity_fit`), on the recipe's own phantoms and its own train / validation split (the
card's train_cases / val_cases).

    .venv/bin/python Resources/Models/knee-demo.refit-validity.py
"""
import sys
import tempfile
from pathlib import Path

from gase.labels import ANATOMY_LABELS
from gase.model_card import default_model_folder, load_card, write_card
from gase.cli import main as gase_main
from gase.training.data import load_pairs
from gase.training.validity_fit import refit_validity

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_folder()
card = load_card(folder)
with tempfile.TemporaryDirectory() as tmp:
    gase_main(["phantom", "--anatomy", "knee", "--style", "pd_fse", "--subjects", "5", "--seed", "0", "--out", tmp])
    images = sorted((Path(tmp) / "images").iterdir())
    labels = sorted((Path(tmp) / "labels").iterdir())
    pairs = {p[2]: p for p in load_pairs(list(zip(images, labels)), ANATOMY_LABELS["knee"])}
    train = [pairs[n] for n in card.training["train_cases"]]
    val = [pairs[n] for n in card.training["val_cases"]]
    before = (card.validity["threshold"], card.source_expert["validity"]["threshold"])
    refit_validity(folder, train, val)
card = load_card(folder)
card.version = "0.2.2"
write_card(card, folder)
print(f"{folder}: thresholds (GASE segmenter, source expert) {before} -> "
      f"({card.validity['threshold']}, {card.source_expert['validity']['threshold']}); held-out "
      f"{card.validity['heldout_volume_scores']}")
