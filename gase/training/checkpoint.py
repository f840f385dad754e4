"""Atomic, resumable training checkpoints (loaded with ``weights_only=True``: no code runs on load)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..fsutil import temp_file

CHECKPOINT_NAME = "checkpoint.pt"


TEMP_PREFIX = ".checkpoint-"


def save_checkpoint(state: dict, folder: Path) -> Path:
    """Write ``folder/checkpoint.pt`` via a temporary file and an atomic rename (a kill never leaves half a
    file). Temporary files a killed earlier save left behind (SIGKILL runs no cleanup) are deleted: one
    training run writes to a folder at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{TEMP_PREFIX}*.pt"):
        stale.unlink(missing_ok=True)
    fd, tmp = temp_file(folder, TEMP_PREFIX, ".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, folder / CHECKPOINT_NAME)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return folder / CHECKPOINT_NAME


def load_checkpoint(folder: Path) -> dict | None:
    p = Path(folder) / CHECKPOINT_NAME
    if not p.is_file():
        return None
    return torch.load(p, map_location="cpu", weights_only=True)
