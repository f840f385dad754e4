"""Atomic, resumable training checkpoints (loaded with ``weights_only=True``: no code runs on load)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict, folder: Path) -> Path:
    """Write ``folder/checkpoint.pt`` via a temporary file and an atomic rename (a kill never leaves half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".pt", dir=str(folder))
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
