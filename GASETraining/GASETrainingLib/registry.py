"""A trained model folder -> the user's models folder, where the GASE Segmentation module's selector lists it.

Only the card and the safetensors files it names are copied (never ``training/`` with its pickled
checkpoint), into a hidden folder first and renamed at the end, so the selector never meets half a model.

>>> card = register_model(run.out_dir, name="knee-mine")       # doctest: +SKIP
>>> card.folder                                                 # doctest: +SKIP
PosixPath('/home/me/.gase/models/knee-mine')
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from gase.errors import ModelError
from gase.model_card import ModelCard, load_card, user_models_dir, write_card

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_model_name(name: str) -> str:
    """A model name is also its folder name: letters, digits, '.', '_', '-' (at most 64, no leading dot)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(f"Model name {name!r} cannot be used: use 1-64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit (it becomes the model's folder name).")
    return name


def unique_model_name(base: str, models_dir: Path | None = None) -> str:
    """``base``, or ``base-2``, ``base-3``, ... whichever is not installed yet."""
    models_dir = Path(models_dir) if models_dir else user_models_dir()
    check_model_name(base)
    name, n = base, 2
    while (models_dir / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def register_model(folder: Path, models_dir: Path | None = None, *, name: str | None = None,
                   title: str | None = None, overwrite: bool = False) -> ModelCard:
    """Install the model in ``folder`` (checksums verified) as ``models_dir/<name>`` and return its card.

    ``models_dir`` defaults to :func:`gase.model_card.user_models_dir`; ``name`` / ``title`` default to the
    card's. An installed model of the same name raises :class:`ModelError` unless ``overwrite``.
    """
    card = load_card(Path(folder), verify=True)
    models_dir = Path(models_dir) if models_dir else user_models_dir()
    name = check_model_name(name or card.name)
    dest = models_dir / name
    if dest.exists() and not overwrite:
        raise ModelError(f"A model named {name!r} is already installed ({dest}). Choose another name or replace it.")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=str(models_dir)))
    try:
        for file_name in card.files:
            shutil.copy2(card.path(file_name), staging / file_name)
        card.name, card.title = name, title or (card.title if card.name == name else name)
        write_card(card, staging)  # recomputes the checksums from the copies
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_card(dest, verify=True)
