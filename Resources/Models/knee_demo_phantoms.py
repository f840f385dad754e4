"""The demo model's training data, made again: the recipe's 5 knee phantoms (PD FSE, seed 0) split as the
card records (``training.train_cases`` / ``training.val_cases``). Shared by the demo's refit scripts."""
import tempfile
from pathlib import Path

from gase.cli import main as gase_main
from gase.labels import ANATOMY_LABELS
from gase.training.data import load_pairs


def recipe_pairs(card) -> tuple[list, list]:
    """(train, val): lists of (image Volume, labels array, case name), as ``gase train`` read them."""
    with tempfile.TemporaryDirectory() as tmp:
        gase_main(["phantom", "--anatomy", "knee", "--style", "pd_fse", "--subjects", "5", "--seed", "0", "--out", tmp])
        images = sorted((Path(tmp) / "images").iterdir())
        labels = sorted((Path(tmp) / "labels").iterdir())
        pairs = {p[2]: p for p in load_pairs(list(zip(images, labels)), ANATOMY_LABELS["knee"])}
    return [pairs[n] for n in card.training["train_cases"]], [pairs[n] for n in card.training["val_cases"]]
