"""The module's sample data: a knee MR phantom in the demo model's training style, made on first use.

Nothing is downloaded and no image is stored in the repository: :func:`ensure_sample` draws the phantom
with :mod:`gase.phantoms` (numpy only, well under a second) into a cache folder the first time it is
asked for, and Slicer's Sample Data module loads it from there.
"""
from __future__ import annotations

from pathlib import Path

import gase

SAMPLE_NAME = "GASEKneePhantom"
SAMPLE_SEED = 7


def sample_path(cache_dir: str | Path) -> Path:
    """Where the sample lives in ``cache_dir`` (versioned, so a newer phantom generator makes a new file)."""
    return Path(cache_dir) / f"{SAMPLE_NAME}-{gase.__version__}-seed{SAMPLE_SEED}.nrrd"


def ensure_sample(cache_dir: str | Path) -> Path:
    """The sample's NRRD file, generated if it is not in ``cache_dir`` yet."""
    path = sample_path(cache_dir)
    if path.is_file():
        return path
    from gase.phantoms import SOURCE_STYLE, make_case
    from gase.volume import write_volume

    image, _ = make_case("knee", SOURCE_STYLE["knee"], SAMPLE_SEED)
    return write_volume(image, path, overwrite=True)
