"""Labelled MR phantoms of the knee and the male pelvis, rendered in named acquisition styles.

The generator exists for the robustness benchmark: train on one style, test on unseen ones. A
subject's anatomy depends only on ``(anatomy, seed)``; the style sets the contrast (signal equations
of spin echo, FSE, inversion recovery, spoiled GRE and DESS with the style's TR/TE/TI/flip, field
strength and fat suppression) and the acquisition (voxel size, slice thickness, coil bias, Rician
noise at the style's SNR, optional motion ghosting). So the same seed in two styles of the same grid
gives the same label map and different images.

>>> image, labels = make_case("knee", "pd_fse", seed=0, scale=0.5)
>>> image.array.dtype.name, labels.array.dtype.name, image.same_geometry(labels)
('float32', 'uint8', True)
>>> [s.name for s in list_styles("pelvis")][:2]
['t2_fse', 't1_se']

Modules: :mod:`.anatomy` (tissue tables, subjects; shapes in :mod:`.knee`, :mod:`.pelvis`,
:mod:`.shapes`), :mod:`.tissues` (T1/T2/PD/fat fraction/HU), :mod:`.sequences` (styles and
signal equations), :mod:`.acquisition` (geometry, partial volume, bias, noise, ghosting),
:mod:`.ood` (CT-like, noise, motion, inverted, wrong-plane and other-anatomy volumes).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError
from ..volume import Volume, check_output_path, write_volume
from .anatomy import ANATOMIES, check_anatomy
from .acquisition import acquire
from .ood import OOD_KINDS, make_ood
from .sequences import STYLES, Style

__all__ = ["ANATOMIES", "OOD_KINDS", "SOURCE_STYLE", "Style", "case_paths", "get_style", "list_styles",
           "make_case", "make_ood", "plan_cases", "subject_seed", "write_cases"]

SOURCE_STYLE: dict[str, str] = {a: next(s.name for s in STYLES[a] if s.source) for a in ANATOMIES}
FORMAT_SUFFIX = {"nrrd": ".nrrd", "nifti": ".nii.gz"}


def list_styles(anatomy: str | None = None) -> list[Style]:
    """All styles, or those of one anatomy; the source style of each anatomy comes first."""
    anatomies = ANATOMIES if anatomy is None else (check_anatomy(anatomy),)
    return [s for a in anatomies for s in STYLES[a]]


def get_style(anatomy: str, name: str) -> Style:
    """The style called ``name`` of ``anatomy``; :class:`InputError` listing the valid names if none."""
    for s in STYLES[check_anatomy(anatomy)]:
        if s.name == name:
            return s
    names = ", ".join(s.name for s in STYLES[anatomy])
    raise InputError(f"Unknown {anatomy} style {name!r}. Choose one of: {names} "
                     f"(list them with 'gase phantom --list-styles').")


def make_case(anatomy: str, style: str, seed: int, *, scale: float = 1.0) -> tuple[Volume, Volume]:
    """One subject in one style: (image, labels), both (K, J, I) in the same geometry.

    ``image`` is float32 raw signal (positive, arbitrary scanner units, not normalised); ``labels``
    is uint8 with the values of :data:`gase.labels.ANATOMY_LABELS[anatomy]`. Knee volumes are
    sagittal slices (k along R), pelvis volumes axial slices (k along S). ``scale`` < 1 makes the
    voxels 1/scale times larger (same field of view) for fast tests.
    """
    if not (0.05 <= float(scale) <= 2.0):
        raise InputError(f"scale must be between 0.05 and 2 (got {scale}); use 1 for the default matrix.")
    return acquire(check_anatomy(anatomy), get_style(anatomy, style), int(seed), float(scale))


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a set drawn with ``seed`` (sets of different seeds do not overlap)."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x9A5E]).generate_state(1)[0])


def case_paths(out_dir: str | os.PathLike, anatomy: str, style: str, index: int,
               fmt: str = "nrrd") -> tuple[Path, Path]:
    """``<out>/images/<anatomy>_<style>_<NNN><ext>`` and the label file of the same name."""
    if fmt not in FORMAT_SUFFIX:
        raise InputError(f"Unknown format {fmt!r}; use one of: {', '.join(FORMAT_SUFFIX)}.")
    name = f"{anatomy}_{style}_{index:03d}{FORMAT_SUFFIX[fmt]}"
    out = Path(out_dir)
    return out / "images" / name, out / "labels" / name


def plan_cases(anatomy: str, style: str, subjects: int, out_dir: str | os.PathLike, fmt: str = "nrrd", *,
               overwrite: bool = False) -> list[tuple[Path, Path]]:
    """The (image, label) paths :func:`write_cases` would write, after checking the inputs and that no
    output exists (unless ``overwrite``): :class:`InputError` / :class:`OutputError` otherwise."""
    get_style(anatomy, style)
    if int(subjects) < 1:
        raise InputError(f"subjects must be at least 1 (got {subjects}).")
    pairs = [case_paths(out_dir, anatomy, style, i, fmt) for i in range(int(subjects))]
    for pair in pairs:
        for p in pair:
            if p.exists() and not overwrite:
                raise OutputError(f"{p} already exists. Choose another output folder or pass --overwrite.")
            check_output_path(p, overwrite)
    return pairs


def write_cases(anatomy: str, style: str, subjects: int, seed: int, out_dir: str | os.PathLike,
                fmt: str = "nrrd", *, scale: float = 1.0, overwrite: bool = False,
                progress=None) -> list[tuple[Path, Path]]:
    """Write ``subjects`` cases (subject i uses :func:`subject_seed` ``(seed, i)``) as image/label pairs.

    All output paths are checked before anything is written (:class:`OutputError` names the first
    existing file). ``progress`` is called with no argument after each case (e.g. a tqdm update).
    """
    pairs = plan_cases(anatomy, style, subjects, out_dir, fmt, overwrite=overwrite)
    for i, (img_path, lab_path) in enumerate(pairs):
        image, labels = make_case(anatomy, style, subject_seed(seed, i), scale=scale)
        write_volume(image, img_path, overwrite=overwrite)
        write_volume(labels, lab_path, overwrite=overwrite)
        if progress is not None:
            progress()
    return pairs
