"""Set the shipped demo model's validity threshold by this version's rule (0.2.4 -> 0.2.5): the same weights,
manifolds and held-out scores, the threshold :data:`gase.validity.VERDICT_MARGIN` x the upper quartile of the
held-out volume scores its card stores (:func:`gase.training.validity_fit.recalibrate_threshold`; the margin was
1.25 before 2026-12-06). The source expert's routing threshold stays.

    .venv/bin/python Resources/Models/knee-demo.recalibrate-threshold.py
"""
import sys
from pathlib import Path

from gase.model_card import default_model_folder, load_card, write_card
from gase.training.validity_fit import recalibrate_threshold

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_folder()
before, after = recalibrate_threshold(folder)
card = load_card(folder)
card.version = "0.2.5"
write_card(card, folder)
print(f"{folder}: threshold {before} -> {after} ({card.validity['calibration']})")
