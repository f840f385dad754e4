"""Learn the shipped demo model's post-processing again (0.2.3 -> 0.2.4): the same weights and manifolds, the
post-processing fitted as training fits it since 2026-12-06: the single-object labels and, for each, the radius
of the opening that cuts off regions hanging on a structure by a neck (:func:`gase.postprocess.fit_postprocessing`,
on the training and validation label maps), and the prior offsets that undo the class prior of the balanced
training crops (:func:`gase.training.loop.card_prior_entry`, on the training volumes), on the recipe's own
phantoms and its own train / validation split (the card's train_cases / val_cases).

    .venv/bin/python Resources/Models/knee-demo.refit-postprocessing.py
"""
import sys
from pathlib import Path

from gase.model_card import default_model_folder, load_card, write_card
from gase.postprocess import fit_postprocessing
from gase.training.loop import card_prior_entry
from knee_demo_phantoms import recipe_pairs

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_folder()
card = load_card(folder)
train, val = recipe_pairs(card)
before = dict(card.postprocessing)
card.postprocessing = {**fit_postprocessing([(lab, vol.spacing[::-1]) for vol, lab, _ in [*train, *val]], card.labels),
                       **card_prior_entry(card, train)}
card.version = "0.2.4"
write_card(card, folder)
print(f"{folder}: post-processing {before.get('largest_component')} -> {card.postprocessing['largest_component']}, "
      f"opening {card.postprocessing['opening_mm']} mm, prior offsets {card.postprocessing['prior_offsets']}")
