"""``GASETrainingLogic``: the GASE Training module without its GUI.

From Slicer's Python console (blocking; the panel uses :meth:`~GASETrainingLogic.start` and polls)::

    from GASETrainingLib import GASETrainingLogic, TrainingPair, TrainingSettings
    logic = GASETrainingLogic()
    pairs = [TrainingPair(getNode("knee1"), getNode("knee1 labels")), ...]      # 3 or more labelled scans
    card = logic.train(pairs, "knee-mine", TrainingSettings(anatomy="knee", max_minutes=30))
    card.metrics["validation_dice"]                 # measured on the held-out scans
    # the model is now in ~/.gase/models/knee-mine and in GASE Segmentation's model selector

Each training run lives in ``<work_root>/<name>/``: ``data/`` (the exported training set), ``model/``
(``gase train --out``: checkpoint, logs, previews, and at the end the model folder), ``run.json``
(the command, so that Resume works after restarting Slicer) and ``stop`` (the stop file).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gase.errors import InputError
from gase.labels import ANATOMY_LABELS
from gase.model_card import ModelCard, user_models_dir

from GASESegmentationLib.process import JobState

from .export import TrainingPair, TrainingSet, export_training_set
from .job import TrainingProcess, TrainingSettings, TrainingStatus, start_training, train_command
from .preview import preview_png_from_file, preview_png_from_model
from .registry import check_model_name, register_model

RUN_FILE = "run.json"


def default_work_root() -> Path:
    """``~/.gase/training`` (next to the user's models folder, so ``GASE_USER_MODELS_DIR`` moves both)."""
    return user_models_dir().parent / "training"


@dataclass
class TrainingRun:
    """One training run: its folder, training set, process and live status."""

    name: str
    folder: Path
    training_set: TrainingSet
    settings: TrainingSettings
    process: TrainingProcess
    charts: object | None = None  # progress.TrainingCharts when a scene is given

    @property
    def out_dir(self) -> Path:
        return self.folder / "model"

    @property
    def stop_file(self) -> Path:
        return self.folder / "stop"

    @property
    def status(self) -> TrainingStatus:
        return self.process.status

    @property
    def done(self) -> bool:
        return self.process.done

    @property
    def succeeded(self) -> bool:
        return self.process.state is JobState.SUCCEEDED

    @property
    def stopped(self) -> bool:
        return self.process.state is JobState.CANCELLED

    def poll(self) -> list[dict]:
        """New events of the process (never blocks); updates :attr:`status` and the charts."""
        events = self.process.poll()
        if events and self.charts is not None:
            self.charts.update(self.status)
        return events


class GASETrainingLogic:
    """Qt-free logic of the module; every method works from the Python console (see the module docstring)."""

    def __init__(self, work_root: Path | None = None, models_dir: Path | None = None):
        self.work_root = Path(work_root) if work_root else default_work_root()
        self.models_dir = Path(models_dir) if models_dir else None  # None: gase.model_card.user_models_dir()

    # -- data ------------------------------------------------------------------------------------
    def run_folder(self, name: str) -> Path:
        return self.work_root / check_model_name(name)

    def export(self, pairs: Sequence[TrainingPair], name: str, *, folders: Sequence[tuple[Path, Path]] = (),
               anatomy: str | None = None) -> TrainingSet:
        """Write the scene pairs (and folders) as the run's training set, checked as ``gase train`` checks it.
        Segments named like the anatomy's built-in structures keep the built-in values and codes."""
        return export_training_set(pairs, self.run_folder(name) / "data", folders=folders,
                                   base_table=ANATOMY_LABELS.get(anatomy or "", ()))

    # -- running ---------------------------------------------------------------------------------
    def start(self, training_set: TrainingSet, name: str, settings: TrainingSettings, *, scene=None,
              overwrite: bool = False) -> TrainingRun:
        """Start training in a background process; poll the returned run. With ``scene``, the loss and
        Dice curves are kept in the scene as a plot chart. An earlier run of the same name is refused
        (Resume it instead) unless ``overwrite``."""
        folder = self.run_folder(name)
        out = folder / "model"
        if out.exists():
            if not overwrite:
                raise InputError(f"A training run named {name!r} exists ({folder}). Resume it, or choose another "
                                 "name (or replace it).")
            shutil.rmtree(out)
        command = train_command(training_set, out, settings.validate(), stop_file=folder / "stop",
                                config_path=folder / "config.json", name=name)
        (folder / RUN_FILE).write_text(json.dumps({"name": name, "command": command,
                                                   "settings": settings.to_json()}, indent=2))
        return self._launch(name, folder, training_set, settings, command, scene)

    def resume(self, run_or_name, *, scene=None) -> TrainingRun:
        """Run the same command again: training continues from the run's last checkpoint (works after a
        Slicer restart too, from ``run.json``)."""
        if isinstance(run_or_name, TrainingRun):
            run = run_or_name
            if not run.done:
                raise InputError(f"Training {run.name!r} is still running.")
            name, folder, training_set, settings = run.name, run.folder, run.training_set, run.settings
            command = run.process.command
        else:
            name = str(run_or_name)
            folder = self.run_folder(name)
            if not (folder / RUN_FILE).is_file():
                raise InputError(f"No training run named {name!r} in {self.work_root}; nothing to resume.")
            saved = json.loads((folder / RUN_FILE).read_text())
            command, settings = saved["command"], TrainingSettings(**saved["settings"])
            training_set = TrainingSet.open(folder / "data")
        return self._launch(name, folder, training_set, settings, command, scene)

    def _launch(self, name, folder, training_set, settings, command, scene) -> TrainingRun:
        process = start_training(command, stop_file=folder / "stop")
        charts = None
        if scene is not None:
            from .progress import TrainingCharts

            charts = TrainingCharts.for_run(scene, name)
        return TrainingRun(name, folder, training_set, settings, process, charts)

    @staticmethod
    def stop(run: TrainingRun) -> None:
        """Ask the run to stop after its current iteration, with a checkpoint (returns at once; keep polling)."""
        run.process.request_stop()

    # -- results ---------------------------------------------------------------------------------
    def register(self, run: TrainingRun, *, name: str | None = None, title: str | None = None,
                 overwrite: bool = False) -> ModelCard:
        """Install a finished run's model into the user's models folder (GASE Segmentation lists it)."""
        if not run.succeeded:
            raise InputError(f"Training {run.name!r} has not finished successfully; there is no model to save.")
        return register_model(run.out_dir, self.models_dir, name=name or run.name, title=title, overwrite=overwrite)

    @staticmethod
    def preview_png(run: TrainingRun, path: Path | None = None) -> Path | None:
        """The latest style preview of ``run`` as a PNG (None before the first one exists)."""
        path = Path(path) if path else run.folder / "preview.png"
        if run.status.preview_path is not None and run.status.preview_path.is_file():
            return preview_png_from_file(run.status.preview_path, run.training_set.table, path)
        if run.succeeded and (run.out_dir / "generator.safetensors").is_file():
            return preview_png_from_model(run.out_dir, run.training_set, path)
        return None

    def train(self, pairs: Sequence[TrainingPair], name: str, settings: TrainingSettings, *,
              folders: Sequence[tuple[Path, Path]] = (), scene=None, overwrite: bool = False,
              on_event: Callable[[dict], None] | None = None, timeout_s: float | None = None) -> ModelCard:
        """Export, train (blocking), and register the model; returns its installed card.

        :param pairs: volume + segmentation node pairs (:class:`TrainingPair`); ``folders`` adds
            (images folder, labels folder) pairs of files.
        :param name: the model's name (its folder name in the user's models folder).
        :param settings: budget, device, validation fraction, ... (:class:`TrainingSettings`).
        :param on_event: called with each event dict of the process (progress, validation, ...).
        :raises gase.errors.TrainingDataError: bad training data, before anything runs.
        """
        training_set = self.export(pairs, name, folders=folders, anatomy=settings.anatomy)
        run = self.start(training_set, name, settings, scene=scene, overwrite=overwrite)
        try:
            run.process.wait_done(timeout_s=timeout_s, on_event=on_event)
        finally:
            if run.charts is not None:
                run.charts.update(run.status)
        return self.register(run, overwrite=overwrite)
