"""``gase segment --progress-json`` in a background process: start, poll, progress, cancel, errors.

Slicer stays responsive because the network runs in another process; the GUI polls it from a timer
(:meth:`SegmentationProcess.poll` never blocks) and scripts wait for it (:meth:`SegmentationProcess.wait`).
Cancel stops the whole process group: SIGTERM, then SIGKILL after a short grace period, so it is gone
within about two seconds whatever the network is doing.

>>> job = SegmentationProcess.start(segment_command("knee.nrrd", "Models/knee-demo", "out"))  # doctest: +SKIP
>>> outputs = job.wait(progress=lambda f, m: print(f"{f:.0%} {m}"))                            # doctest: +SKIP
"""
from __future__ import annotations

import collections
import enum
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gase.errors import CancelledError, GaseError

STDERR_LINES_KEPT = 40
CANCEL_GRACE_S = 1.0


class JobState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProgressEvent:
    fraction: float   # 0..1 of the whole job
    message: str


@dataclass(frozen=True)
class JobOutputs:
    """The files ``gase segment`` wrote for one case."""

    segmentation: Path
    confidence: Path
    report: Path


class SegmentationProcessError(GaseError):
    """The background segmentation failed; the message says why (from the process's own error event)."""


def python_executable() -> str:
    """The Python that runs ``gase``: Slicer's ``PythonSlicer`` inside Slicer, else this interpreter."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("slicer"):  # the application binary, not a Python interpreter
        found = shutil.which("PythonSlicer", path=str(exe.parent)) or shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def gase_root() -> Path:
    """The folder that contains the ``gase`` package (the source tree or the extension's install)."""
    import gase

    return Path(gase.__file__).resolve().parent.parent


def segment_command(input_path, model_folder, out_dir, device: str = "auto", *,
                    python: str | None = None, overwrite: bool = True) -> list[str]:
    """Argument list of ``python -m gase.cli segment INPUT --model M --out O --device D --progress-json``."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    command = [python or python_executable(), "-m", "gase.cli", "segment", str(input_path),
               "--model", str(model_folder), "--out", str(out_dir), "--device", device, "--progress-json"]
    if overwrite:
        command.append("--overwrite")
    return command


def process_environment(base: dict | None = None) -> dict:
    """Environment for the child: ``gase`` importable, unbuffered output (progress arrives as it happens)."""
    env = dict(os.environ if base is None else base)
    root = str(gase_root())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in parts if p != root])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_event(line: str) -> dict | None:
    """The JSON event on a stdout line, or None for any other output."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class SegmentationProcess:
    """One running ``gase segment --progress-json`` (see the module docstring)."""

    def __init__(self, popen: subprocess.Popen):
        self._popen = popen
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.state = JobState.RUNNING
        self.fraction = 0.0
        self.message = "starting"
        self.outputs: JobOutputs | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self._stdout_done = False
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    @classmethod
    def start(cls, command: Sequence[str], *, env: dict | None = None, cwd=None) -> "SegmentationProcess":
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel reaches its children too
        try:
            popen = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, env=process_environment() if env is None else env, cwd=cwd, **kwargs)
        except OSError as exc:
            raise SegmentationProcessError(f"Cannot start the segmentation process ({command[0]}): {exc}. "
                                           "Check that GASE is installed completely.") from None
        return cls(popen)

    # -- reading -------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        for line in self._popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        for line in self._popen.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def done(self) -> bool:
        return self.state is not JobState.RUNNING

    def poll(self) -> list[ProgressEvent]:
        """Handle everything the process printed so far (never blocks); returns the new progress events.

        Updates :attr:`state`, :attr:`fraction`, :attr:`message`, :attr:`outputs` and :attr:`error`.
        """
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._stdout_done = True
                break
            event = parse_event(line)
            if event is not None:
                progress = self._handle(event)
                if progress is not None:
                    events.append(progress)
        if self.state is JobState.RUNNING and self._stdout_done and self._popen.poll() is not None:
            self._finish()
        return events

    def _handle(self, event: dict) -> ProgressEvent | None:
        kind = event.get("event")
        if kind == "progress":
            self.fraction = min(1.0, max(self.fraction, float(event.get("fraction", 0.0))))
            self.message = str(event.get("message", ""))
            return ProgressEvent(self.fraction, self.message)
        if kind in ("case_done", "done") and isinstance(event.get("outputs"), dict):
            out = event["outputs"]
            if all(k in out for k in ("segmentation", "confidence", "report")):
                self.outputs = JobOutputs(Path(out["segmentation"]), Path(out["confidence"]), Path(out["report"]))
        if kind == "error":
            self.error = str(event.get("message", "unknown error"))
        return None

    def _finish(self) -> None:
        for t in self._threads:
            t.join(timeout=1.0)
        code = self._popen.returncode
        if self.state is JobState.CANCELLED:
            return
        if code == 0 and self.outputs is not None:
            self.state, self.fraction, self.message = JobState.SUCCEEDED, 1.0, "done"
            return
        self.state = JobState.FAILED
        if self.error is None:
            tail = "\n".join(list(self._stderr)[-8:]) or "no error output"
            self.error = (f"The segmentation process stopped unexpectedly (exit code {code}). Last output:\n{tail}"
                          if code != 0 else "The segmentation process finished without writing its outputs.")
        self.message = self.error

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    # -- control -------------------------------------------------------------------------------
    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Stop the process (and its children): terminate, then kill after ``grace_s`` seconds."""
        if self.state is not JobState.RUNNING:
            return
        self.state = JobState.CANCELLED
        self.message = "cancelled"
        if self._popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
                self._popen.wait(timeout=5.0)
        for t in self._threads:
            t.join(timeout=1.0)

    def _signal(self, sig) -> None:
        try:
            if os.name == "nt":
                self._popen.kill() if sig != signal.SIGTERM else self._popen.terminate()
            else:
                os.killpg(os.getpgid(self._popen.pid), sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass  # already gone

    def wait(self, progress: Callable[[float, str], None] | None = None, cancel: Callable[[], bool] | None = None,
             interval_s: float = 0.1, timeout_s: float | None = None) -> JobOutputs:
        """Block until the job ends; call ``progress(fraction, message)`` on each event and stop when
        ``cancel()`` returns True. Raises :class:`CancelledError` or :class:`SegmentationProcessError`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for event in self.poll():
                if progress is not None:
                    progress(event.fraction, event.message)
            if self.state is not JobState.RUNNING:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise SegmentationProcessError(f"The segmentation did not finish within {timeout_s:.0f} s and "
                                               "was stopped.")
            if cancel is not None and cancel():
                self.cancel()
                break
            time.sleep(interval_s)
        if self.state is JobState.CANCELLED:
            raise CancelledError("Segmentation cancelled; no output was created.")
        if self.state is JobState.FAILED:
            raise SegmentationProcessError(self.error or "The segmentation failed.")
        assert self.outputs is not None
        return self.outputs
