"""Fit the shipped demo model's style manifolds again (0.2.0 -> 0.2.1 -> 0.2.2): the same weights, the manifold
fitted as training fits it since 2026-12-05 (the training slices and augmented copies of them, threshold 1.25 x
the upper quartile of the held-out scores, since 0.2.2 with augmented copies of the held-out volumes too;
:mod:`gase.training.validity_fit`), on the recipe's own phantoms and its own train / validation split (the
card's train_cases / val_cases).

    .venv/bin/python Resources/Models/knee-demo.refit-validity.py
"""
import sys
from pathlib import Path

from gase.model_card import default_model_folder, load_card, write_card
from gase.training.validity_fit import refit_validity
from knee_demo_phantoms import recipe_pairs

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_folder()
card = load_card(folder)
train, val = recipe_pairs(card)
before = (card.validity["threshold"], card.source_expert["validity"]["threshold"])
refit_validity(folder, train, val)
card = load_card(folder)
card.version = "0.2.2"
write_card(card, folder)
print(f"{folder}: thresholds (GASE segmenter, source expert) {before} -> "
      f"({card.validity['threshold']}, {card.source_expert['validity']['threshold']}); held-out "
      f"{card.validity['heldout_volume_scores']}")
