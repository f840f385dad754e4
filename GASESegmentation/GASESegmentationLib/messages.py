"""Error pop-ups shared by the GASE modules' panels (needs the Slicer application)."""
from __future__ import annotations

import logging
import traceback

from gase.errors import GaseError


def show_error(message: str, exc: BaseException) -> None:  # pragma: no cover - needs Slicer's GUI
    """A user error (:class:`~gase.errors.GaseError`) shows its own message; anything else also gets the
    traceback as details."""
    import slicer

    logging.error("%s %s", message, exc)
    details = None if isinstance(exc, GaseError) else traceback.format_exc()
    slicer.util.errorDisplay(f"{message}\n\n{exc}", detailedText=details)
