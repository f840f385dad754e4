"""``gase train --progress-json`` in a background process: start, poll, parse, stop, resume.

The process machinery (own process group, reader threads, JSON-line parsing, non-blocking
:meth:`~TrainingProcess.poll`) is the GASE Segmentation module's :class:`SegmentationProcess`; this
file adds what training needs on top:

- :class:`TrainingStatus`: iteration, total, ETA, the loss and validation-Dice history, the last
  checkpoint, the latest style preview and, at the end, the model folder and its validation Dice;
- a clean **stop**: the stop file and SIGTERM ask ``gase train`` to finish its iteration, write a
  checkpoint and exit with code 3; only if it has not exited after ``grace_s`` is it killed (it then
  resumes from its previous checkpoint). A stopped run ends in ``JobState.CANCELLED``;
- **resume**: the same command again (``gase train`` resumes from ``<out>/training/checkpoint.pt``).

Several processes (``nproc`` > 1, one per GPU) run under ``python -m torch.distributed.run``.

>>> job = TrainingProcess.start(train_command(training_set, "out", TrainingSettings(iterations=500)),
...                             stop_file="out/stop")                        # doctest: +SKIP
>>> job.poll(); job.status.iteration, job.status.eta_s                       # doctest: +SKIP
>>> job.request_stop()                                                        # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from gase.errors import CancelledError, InputError

from GASESegmentationLib.process import (JobState, SegmentationProcess, SegmentationProcessError,
                                         process_environment, python_executable)

from .export import TrainingSet

EXIT_STOPPED = 3  # gase.cli.EXIT_CANCELLED: stopped with a checkpoint
STOP_GRACE_S = 60.0  # one iteration plus a checkpoint, on a slow CPU
DEVICES = ("auto", "cpu", "cuda")


class TrainingProcessError(SegmentationProcessError):
    """The training process failed; the message is its own error (bad data, out of memory, ...)."""


@dataclass
class TrainingSettings:
    """What the panel (or a script) chooses; :func:`train_command` turns it into ``gase train`` options.

    ``iterations`` and ``max_minutes`` are the budget (None: the training config's default, 2000
    iterations); ``config`` holds further :class:`gase.training.config.TrainConfig` settings (e.g.
    ``batch_size``, ``crop``). ``nproc`` > 1 runs that many processes with ``torchrun`` (one per GPU).
    """

    anatomy: str = "knee"
    plane: str | None = None
    val_fraction: float = 0.2
    iterations: int | None = None
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0
    method: str = "gase"
    checkpoint_every: int | None = None
    nproc: int = 1
    config: dict = field(default_factory=dict)

    def validate(self) -> "TrainingSettings":
        from gase.training.config import TrainConfig

        if self.device not in DEVICES:
            raise InputError(f"Device must be one of {', '.join(DEVICES)}, not {self.device!r}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"The validation fraction must be in [0, 1), got {self.val_fraction}.")
        if self.iterations is not None and self.iterations < 1:
            raise InputError("The iteration budget must be at least 1.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError("The time budget must be positive (minutes).")
        if self.nproc < 1:
            raise InputError("The number of training processes must be at least 1.")
        TrainConfig.from_json(self.config)  # unknown or invalid settings fail here, not in the process
        return self

    def to_json(self) -> dict:
        return asdict(self)


def train_command(training_set: TrainingSet, out_dir, settings: TrainingSettings, *, stop_file=None,
                  config_path=None, python: str | None = None, name: str | None = None) -> list[str]:
    """Argument list of ``python -m gase.cli train ... --progress-json`` (under ``torch.distributed.run``
    when ``settings.nproc`` > 1). ``config_path`` is where ``settings.config`` is written as JSON."""
    settings.validate()
    command = [python or python_executable()]
    if settings.nproc > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(settings.nproc)]
    command += ["-m", "gase.cli", "train", "--images", str(training_set.images_dir), "--labels",
                str(training_set.labels_dir), "--labels-json", str(training_set.labels_json), "--out", str(out_dir),
                "--anatomy", settings.anatomy, "--val-fraction", repr(float(settings.val_fraction)),
                "--device", settings.device, "--seed", str(int(settings.seed)), "--method", settings.method,
                "--progress-json"]
    if name:
        command += ["--name", name]
    if settings.plane:
        command += ["--plane", settings.plane]
    if settings.iterations is not None:
        command += ["--iterations", str(int(settings.iterations))]
    if settings.max_minutes is not None:
        command += ["--max-minutes", repr(float(settings.max_minutes))]
    if settings.checkpoint_every is not None:
        command += ["--checkpoint-every", str(int(settings.checkpoint_every))]
    if settings.config:
        if config_path is None:
            raise ValueError("settings.config needs a config_path to be written to")
        Path(config_path).parent.mkdir(parents=True, exist_ok=True)
        Path(config_path).write_text(json.dumps(settings.config, indent=2))
        command += ["--config", str(config_path)]
    if stop_file is not None:
        command += ["--stop-file", str(stop_file)]
    return command


@dataclass
class TrainingStatus:
    """Everything the process reported so far (times in seconds; Dice 0..1)."""

    iteration: int = 0
    total: int = 0
    seconds: float = 0.0
    eta_s: float = float("nan")
    losses: dict = field(default_factory=dict)            # latest progress event's losses
    loss_history: list = field(default_factory=list)      # [(iteration, {name: value})]
    val_dice: dict = field(default_factory=dict)          # latest validation: {label: dice, "mean": ...}
    val_history: list = field(default_factory=list)       # [(iteration, mean Dice)]
    checkpoint_iteration: int | None = None
    resumed_from: int | None = None
    preview_path: Path | None = None
    preview_iteration: int | None = None
    model_folder: Path | None = None
    final_dice: dict = field(default_factory=dict)        # measured on the held-out volumes at the end
    stopped_at: int | None = None
    phase: str = ""                                       # "gase" / "source expert" (GASE models), else ""
    phase_span: tuple = ()                                # (start, share) of the whole training this phase is

    @property
    def fraction(self) -> float:
        """Share of the whole training done, over both phases of a GASE model (the run reports where each
        phase starts and how much of the whole it is: its source expert's run is about a fifth)."""
        f = min(1.0, self.iteration / self.total) if self.total else 0.0
        if len(self.phase_span) == 2:
            start, share = self.phase_span
            return min(1.0, start + share * f)
        return {"gase": 0.8 * f, "source expert": 0.8 + 0.2 * f}.get(self.phase, f)  # runs before phase_span

    def summary(self) -> str:
        """One line for the panel: "iteration 120/2000 - ETA 4 min 10 s - validation Dice 0.71"."""
        parts = [f"iteration {self.iteration}/{self.total or '?'}"]
        if self.phase == "source expert":
            parts[0] = "source expert: " + parts[0]
        if self.eta_s == self.eta_s and self.eta_s >= 0:  # not NaN
            minutes, seconds = divmod(int(round(self.eta_s)), 60)
            parts.append(f"ETA {minutes} min {seconds:02d} s" if minutes else f"ETA {seconds} s")
        if "mean" in self.val_dice:
            parts.append(f"validation Dice {self.val_dice['mean']:.3f}")
        return " - ".join(parts)


class TrainingProcess(SegmentationProcess):
    """One running ``gase train --progress-json`` (see the module docstring).

    :meth:`poll` returns the new event dicts (``progress``, ``validation``, ``checkpoint``, ``preview``,
    ``resumed``, ``stopped``, ``done``, ``error``) and keeps :attr:`status` up to date; ``fraction`` and
    ``message`` follow the iterations, as the segmentation process's do.
    """

    def __init__(self, popen: subprocess.Popen):
        self.status = TrainingStatus()
        self.stop_file: Path | None = None
        self.command: list[str] = []
        self._stop_deadline: float | None = None
        super().__init__(popen)

    @classmethod
    def start(cls, command: Sequence[str], *, env: dict | None = None, cwd=None,
              stop_file=None) -> "TrainingProcess":
        if stop_file is not None and Path(stop_file).exists():
            Path(stop_file).unlink()  # from an earlier stop: the new run must not stop at once
        job = super().start(command, env=env, cwd=cwd)
        job.command = list(command)
        job.stop_file = Path(stop_file) if stop_file is not None else None
        return job

    # -- events ----------------------------------------------------------------------------------
    def _handle(self, event: dict):
        st, kind = self.status, event.get("event")
        if kind == "progress":
            st.phase = str(event.get("phase", ""))
            span = event.get("phase_span")
            st.phase_span = tuple(float(v) for v in span) if isinstance(span, (list, tuple)) and len(span) == 2 else ()
            st.iteration, st.total = int(event.get("iteration", 0)), int(event.get("total", 0))
            st.seconds = float(event.get("seconds", 0.0))
            st.eta_s = _float(event.get("eta_s"))
            if st.phase != "source expert":  # the curves are the GASE run's; the expert's run only moves the bar
                st.losses = dict(event.get("losses", {}))
                st.loss_history.append((st.iteration, st.losses))
        elif kind == "validation":
            st.val_dice = dict(event.get("dice", {}))
            st.val_history.append((int(event.get("iteration", 0)), _float(st.val_dice.get("mean"))))
        elif kind == "checkpoint":
            st.checkpoint_iteration = int(event.get("iteration", 0))
        elif kind == "resumed":
            st.resumed_from = st.iteration = int(event.get("iteration", 0))
            st.loss_history = [h for h in st.loss_history if h[0] <= st.resumed_from]
            st.val_history = [h for h in st.val_history if h[0] <= st.resumed_from]
        elif kind == "preview":
            st.preview_path, st.preview_iteration = Path(event["path"]), int(event.get("iteration", -1))
        elif kind == "stopped":
            st.stopped_at = st.checkpoint_iteration = int(event.get("iteration", 0))
        elif kind == "done":
            st.model_folder = Path(event["model_folder"])
            st.final_dice = dict(event.get("val_dice") or {})
            st.iteration = int(event.get("iterations", st.iteration))
        elif kind == "error":
            self.error = str(event.get("message", "unknown error"))
        elif kind == "export":
            self.message = "saving the model: " + str(event.get("message", ""))
            return event
        else:
            return None
        if st.total:
            self.fraction = st.fraction
        if kind not in ("error",):
            self.message = st.summary()
        return event

    def _finish(self) -> None:
        for t in self._threads:
            t.join(timeout=1.0)
        code = self._popen.returncode
        if code == 0 and self.status.model_folder is not None:
            self.state, self.fraction, self.message = JobState.SUCCEEDED, 1.0, "done"
        elif code == EXIT_STOPPED or self._stop_deadline is not None:
            self.state = JobState.CANCELLED
            at = self.status.stopped_at if self.status.stopped_at is not None else self.status.checkpoint_iteration
            self.message = (f"stopped at iteration {at}; Resume continues from there" if at is not None else
                            "stopped before the first checkpoint; Resume starts again")
        else:
            self.state = JobState.FAILED
            if self.error is None:
                tail = "\n".join(list(self._stderr)[-8:]) or "no error output"
                self.error = (f"The training process stopped unexpectedly (exit code {code}). Last output:\n{tail}"
                              if code != 0 else "The training process finished without writing a model.")
            self.message = self.error

    # -- control ---------------------------------------------------------------------------------
    def poll(self) -> list:
        events = super().poll()
        if self._stop_deadline is not None and self.state is JobState.RUNNING and self._popen.poll() is None \
                and time.monotonic() > self._stop_deadline:
            self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        return events

    def request_stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Ask the process to stop after its current iteration with a checkpoint (returns at once); if it
        is still running ``grace_s`` seconds later, :meth:`poll` kills it."""
        if self.state is not JobState.RUNNING or self._stop_deadline is not None:
            return
        self._stop_deadline = time.monotonic() + grace_s
        self.message = "stopping after the current iteration"
        if self.stop_file is not None:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.write_text("stop\n")
        if os.name != "nt":  # on Windows the stop file is the only clean way
            self._signal(signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S, timeout_s: float = 30.0) -> None:
        """Blocking :meth:`request_stop`: returns once the process has exited."""
        self.request_stop(grace_s)
        deadline = time.monotonic() + grace_s + timeout_s
        while self.state is JobState.RUNNING and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.1)

    def cancel(self, grace_s: float = STOP_GRACE_S) -> None:
        """For training, cancelling is stopping cleanly (the run stays resumable)."""
        self.stop(grace_s)

    def wait_done(self, interval_s: float = 0.2, timeout_s: float | None = None, on_event=None) -> TrainingStatus:
        """Block until the process ends; returns the status, raises :class:`CancelledError` for a stopped run
        and :class:`TrainingProcessError` for a failed one. ``on_event(event)`` sees every event."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.state is not JobState.RUNNING:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.stop()
                break
            time.sleep(interval_s)
        if self.state is JobState.CANCELLED:
            raise CancelledError(f"Training {self.message}.")
        if self.state is JobState.FAILED:
            raise TrainingProcessError(self.error or "The training failed.")
        return self.status


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def start_training(command: Sequence[str], *, stop_file=None, env: dict | None = None) -> TrainingProcess:
    """Start ``command`` (see :func:`train_command`) in the background with ``gase`` importable."""
    return TrainingProcess.start(command, env=process_environment() if env is None else env, stop_file=stop_file)
