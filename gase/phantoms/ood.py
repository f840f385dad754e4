"""Out-of-distribution volumes for the input-validity benchmark (benchmark section 3).

Each kind is built from the anatomy's source style (geometry and, where it applies, image) so that
only the property under test changes:

* ``ct``: CT-like rendering of the same subject: Hounsfield units per tissue with partial volume, a
  0.5-pixel Gaussian reconstruction kernel and Gaussian CT noise (12 HU), no coil bias;
* ``other_anatomy``: the other phantom family in its own source style;
* ``noise``: Rayleigh noise (magnitude of complex white noise) in the source geometry, no structure;
* ``motion``: heavy periodic motion (5-8 mm) along the phase-encode direction, strong ghosts;
* ``inverted``: the source image with intensities reversed (``max + min - image``);
* ``wrong_orientation``: the source image with its first two array axes swapped, so the stored
  slices lie in another anatomical plane while the IJK-to-RAS still claims the original one.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import InputError
from ..volume import Volume
from .acquisition import acquire, acquisition_geometry, acquisition_rng, box_mean, sample_tissue
from .anatomy import ANATOMIES, check_anatomy
from .sequences import STYLES
from .tissues import tissue_properties

OOD_KINDS: tuple[str, ...] = ("ct", "other_anatomy", "noise", "motion", "inverted", "wrong_orientation")
CT_NOISE_HU = 12.0


def _source(anatomy: str):
    return next(s for s in STYLES[anatomy] if s.source)


def render_ct(anatomy: str, seed: int, scale: float = 1.0) -> Volume:
    """(K, J, I) float32 HU volume of subject ``(anatomy, seed)`` on the source style's grid."""
    style = _source(anatomy)
    geom = acquisition_geometry(anatomy, style, scale)
    tissue = sample_tissue(anatomy, seed, geom)
    hu_table = tissue_properties(anatomy, seed, style.field_t).hu.astype(np.float32)
    hu = box_mean(hu_table[tissue], geom)
    hu = gaussian_filter(hu, sigma=(0.0, 0.5, 0.5))
    rng = acquisition_rng(anatomy, "ct", seed)
    hu += rng.normal(0.0, CT_NOISE_HU, hu.shape).astype(np.float32)
    return Volume(hu.astype(np.float32), geom.ijk_to_ras.copy())


def make_ood(kind: str, anatomy: str, seed: int, *, scale: float = 1.0) -> Volume:
    """One out-of-distribution volume of ``kind`` (see :data:`OOD_KINDS`) for ``anatomy``."""
    check_anatomy(anatomy)
    if kind not in OOD_KINDS:
        raise InputError(f"Unknown OOD kind {kind!r}. Choose one of: {', '.join(OOD_KINDS)}.")
    source = _source(anatomy)
    rng = acquisition_rng(anatomy, "ood-" + kind, seed)
    if kind == "ct":
        return render_ct(anatomy, seed, scale)
    if kind == "other_anatomy":
        other = next(a for a in ANATOMIES if a != anatomy)
        return acquire(other, _source(other), seed, scale)[0]
    if kind == "motion":
        return acquire(anatomy, source, seed, scale, motion_mm=float(rng.uniform(5.0, 8.0)))[0]
    image = acquire(anatomy, source, seed, scale)[0]
    if kind == "noise":
        sigma = float(image.array.mean()) / np.sqrt(np.pi / 2.0)
        noise = rng.standard_normal((2,) + image.shape).astype(np.float32) * np.float32(sigma)
        return image.with_array(np.hypot(noise[0], noise[1]).astype(np.float32))
    if kind == "inverted":
        a = image.array
        return image.with_array((a.max() + a.min() - a).astype(np.float32))
    # wrong_orientation: slices of another plane, geometry of the original one
    return Volume(np.ascontiguousarray(np.swapaxes(image.array, 0, 1)), image.ijk_to_ras.copy())
