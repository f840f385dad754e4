"""Where a training run's events go besides the caller: a live CSV log, TensorBoard scalars, style previews.

:func:`gase.training.loop.train` reports through one ``on_event`` callable; ``gase train`` chains these
sinks behind it (on rank 0 only). Each sink is a callable taking the event dict.

- :class:`ScalarLog`: ``progress`` and ``validation`` events -> ``training/scalars.csv`` (long format
  ``iteration,seconds,name,value``; appended and flushed per event, so it survives a kill; a resume
  drops the rows after the checkpoint it resumes from) and, when the ``tensorboard`` package is
  installed, TensorBoard scalars in ``training/tensorboard/``. Without ``tensorboard`` nothing else happens.
- :class:`PreviewSink`: after each ``checkpoint`` event (and at ``done``) writes the style-interpolation
  preview ``training/preview.npz`` (see :mod:`gase.preview`) and reports ``{"event": "preview", ...}``.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..labels import LabelInfo
from ..volume import Volume

log = logging.getLogger(__name__)

EventFn = Callable[[dict], None]
SCALARS_NAME = "scalars.csv"
PREVIEW_NAME = "preview.npz"
_FIELDS = ("iteration", "seconds", "name", "value")


def chain(*sinks: EventFn | None) -> EventFn:
    """One callable that passes each event to every sink in order."""
    live = [s for s in sinks if s is not None]

    def emit(event: dict) -> None:
        for sink in live:
            sink(event)

    return emit


class ScalarLog:
    """Live CSV (always) and TensorBoard (if installed) log of losses, ETA and validation Dice."""

    def __init__(self, work_dir: Path, *, fresh: bool = False):
        self.path = Path(work_dir) / SCALARS_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.path.exists():  # a run that starts afresh (no checkpoint, or --no-resume)
            self.path.unlink()
        self._tb = _tensorboard_writer(Path(work_dir) / "tensorboard")

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "resumed":
            self._drop_after(int(event.get("iteration", 0)))
            return
        it = int(event.get("iteration", -1))
        seconds = event.get("seconds", "")
        # the source expert's run (see gase.training.loop.train) is logged under its own names
        prefix = "source_expert/" if event.get("phase") == "source expert" else ""
        if kind == "progress":
            values = {f"{prefix}loss/{k}": v for k, v in event.get("losses", {}).items()}
            values[f"{prefix}eta_s"] = event.get("eta_s", float("nan"))
        elif kind in ("validation", "phase validation"):
            values = {f"{prefix}val_dice/{k}": v for k, v in event.get("dice", {}).items()}
        else:
            return
        rows = [{"iteration": it, "seconds": _num(seconds), "name": k, "value": _num(v)} for k, v in values.items()]
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, it)
            self._tb.flush()

    def _drop_after(self, iteration: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _num(v):
    try:
        return round(float(v), 6)
    except (TypeError, ValueError):
        return ""


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the CSV log is always written
        return None
    return SummaryWriter(str(folder), flush_secs=10)


class PreviewSink:
    """Writes the style preview after each checkpoint (from ``checkpoint.pt``) and from the final model folder.

    ``pairs`` are the training pairs (image, label array, name); the first two give the example slices.
    A failing preview is logged and skipped: it must never stop a training.
    """

    def __init__(self, work_dir: Path, pairs: Sequence[tuple[Volume, np.ndarray, str]], plane: str,
                 spacing: float | None, table: Sequence[LabelInfo], emit: EventFn):
        self.work_dir = Path(work_dir)
        self.pairs = list(pairs[:2])
        self.plane, self.spacing = plane, spacing
        self.n_classes = max(t.value for t in table) + 1
        self.emit = emit
        self._slices = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind not in ("checkpoint", "done"):
            return
        try:
            preview = self._from_model(Path(event["model_folder"])) if kind == "done" else self._from_checkpoint()
            if preview is None:
                return
            path = preview.save(self.work_dir / PREVIEW_NAME)
        except Exception as exc:  # noqa: BLE001 - a preview is a picture; training goes on without it
            log.warning("style preview skipped: %s", exc)
            return
        self.emit({"event": "preview", "iteration": preview.iteration, "path": str(path)})

    def _example(self):
        from ..preview import example_slices

        if self._slices is None:
            self._slices = example_slices(self.pairs, self.plane, self.spacing)
        return self._slices

    def _from_checkpoint(self):
        from ..preview import preview_from_checkpoint
        from .checkpoint import load_checkpoint

        state = load_checkpoint(self.work_dir)
        if state is None or "G" not in state:
            return None
        return preview_from_checkpoint(state, self.n_classes, self._example())

    def _from_model(self, folder: Path):
        from ..model_card import load_card
        from ..preview import example_slices, preview_from_model

        card = load_card(folder, verify=False)
        if "generator.safetensors" not in card.files:
            return None
        slices = example_slices(self.pairs, self.plane, card.input_spacing_mm)
        return preview_from_model(folder, slices)
