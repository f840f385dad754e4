"""Errors a user can meet. Each message names the problem and the fix.

The CLI catches :class:`GaseError` and prints its message without a traceback; the Slicer modules
show it in a message box. Anything else escaping is a bug.
"""
from __future__ import annotations


class GaseError(Exception):
    """Base class of every error meant for the user (message = problem + fix)."""


class InputError(GaseError, ValueError):
    """An input image, label map or folder cannot be used as given."""


class GeometryError(InputError):
    """Spacing, direction or shape of an input is unusable (zero spacing, non-orthogonal axes, ...)."""


class ModelError(GaseError):
    """A model folder is missing, malformed, tampered with or unsafe to load."""


class TrainingDataError(InputError):
    """Training pairs are inconsistent (geometry mismatch, unknown labels, too little data, ...)."""


class OutputError(GaseError, OSError):
    """An output cannot be written (unwritable folder, existing file without --overwrite, ...)."""


class CancelledError(GaseError):
    """The user cancelled a running job."""
