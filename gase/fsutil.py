"""Temporary files for atomic writes, with the permissions of an ordinary new file.

``tempfile.mkstemp`` creates files readable by their owner only (mode 0600). A file renamed from such a
temporary would keep that mode: a model folder or a segmentation written on a shared workstation would be
unreadable to the colleagues it is meant for. :func:`temp_file` gives the temporary the mode ``open()`` would
give a new file (0666 less the process's umask).
"""
from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask would briefly, for every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(folder: str | os.PathLike, prefix: str, suffix: str = "") -> tuple[int, str]:
    """``(fd, path)`` of a new empty file in ``folder`` (as :func:`tempfile.mkstemp`), mode 0666 & ~umask."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=str(folder))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except (AttributeError, OSError):  # no fchmod (Windows): the default mode stays
        pass
    return fd, path


def save_tensors(tensors: dict, path: str | os.PathLike) -> None:
    """Write a safetensors file atomically (a temporary file, then a rename), with an ordinary file's mode
    (``safetensors.torch.save_file`` on its own creates the file readable by its owner only)."""
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = temp_file(path.parent, ".weights-", ".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
