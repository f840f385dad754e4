"""How a running ``gase train`` is asked to stop cleanly: SIGTERM or a stop file.

Either makes :class:`StopRequest` (the ``should_stop`` of :func:`gase.training.loop.train`) return True;
the loop then finishes its iteration, writes a checkpoint and raises :class:`gase.errors.CancelledError`,
which ``gase`` turns into exit code 3. Running the same command again resumes from that checkpoint.

The stop file is the portable way (Windows cannot deliver SIGTERM to a Python handler) and reaches every
``torchrun`` process on a shared filesystem; SIGTERM is what process managers and ``kill`` send.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path


class StopRequest:
    """Callable: True once SIGTERM has arrived or ``stop_file`` exists. Use as a context manager (or call
    :meth:`close`) so that the previous SIGTERM handler comes back.

    A stop file that exists when the request is created is left from an earlier stop and is removed, so a
    resumed run does not stop at once.
    """

    def __init__(self, stop_file: str | Path | None = None, *, handle_sigterm: bool = True):
        self.stop_file = Path(stop_file) if stop_file else None
        if self.stop_file is not None and self.stop_file.exists():
            self.stop_file.unlink()
        self.signalled = False
        self._previous = None
        # Python only installs signal handlers from the main thread.
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or (self.stop_file is not None and self.stop_file.exists())

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
