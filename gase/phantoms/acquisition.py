"""From a subject and a style to an image volume: sampling geometry, partial volume, coil bias,
motion ghosting and Rician noise.

Geometry: knee volumes are stacks of sagittal slices (array ``[k, j, i]`` with k along +R, rows from
S to I, columns from A to P), pelvis volumes stacks of axial slices (k along +S, rows from A to P,
columns from R to L), which is each anatomy's natural plane and the canonical layout of
:mod:`gase.orientation`. Slices are contiguous (spacing = thickness), the field of view is fixed per
anatomy and centred near RAS 0, so the matrix follows from the style's voxel size.

Partial volume: the subject is sampled on a sub-grid with ``m`` sub-slices per slice and ``f x f``
sub-pixels per pixel (``f`` = 2 only where the budget allows: through-plane partial volume of thick
slices matters most); the complex tissue signal is averaged over each voxel (a box slice profile and
pixel) and blurred in-plane by a small Gaussian point-spread function (k-space apodisation), then
magnitude is taken after noise is added. Labels are the majority label of the same
sub-samples (ties go to the larger label value). Sub-sampling depends on the grid only, so two styles
with the same grid give identical label maps.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ..volume import Volume, make_ijk_to_ras
from .anatomy import label_lookup, make_subject
from .sequences import Style, tissue_signal
from .shapes import SmoothField
from .tissues import tissue_properties

FINE_POINTS_BUDGET = 7_000_000  # sub-samples per volume; keeps one volume well under 1.5 s on one core
SUB_SLICE_MM = 1.25             # target sub-slice thickness of the partial-volume grid
PSF_SIGMA_PX = 0.4              # in-plane Gaussian point-spread function (k-space apodisation), pixels


@dataclass(frozen=True)
class SliceLayout:
    """How an anatomy is scanned: ``axes`` gives (RAS axis, sign) of array axes k, j, i; ``fov_mm`` the
    extent along k, j, i; ``pe_axis`` the array axis of phase encoding (1 = j, 2 = i)."""

    axes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    fov_mm: tuple[float, float, float]
    centre_ras: tuple[float, float, float]
    pe_axis: int


LAYOUTS = {
    "knee": SliceLayout(((0, 1), (2, -1), (1, -1)), (120.0, 140.0, 140.0), (0.0, -8.0, 0.0), 2),
    "pelvis": SliceLayout(((2, 1), (1, -1), (0, -1)), (160.0, 240.0, 300.0), (0.0, -5.0, -5.0), 1),
}


@dataclass(frozen=True)
class Geometry:
    """Acquired grid ``shape`` (K, J, I) with ``spacing`` (k, j, i mm) and its sub-sampling (m, f)."""

    anatomy: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    sub: tuple[int, int]
    ijk_to_ras: np.ndarray

    @property
    def factors(self) -> tuple[int, int, int]:
        return (self.sub[0], self.sub[1], self.sub[1])

    def axis_coords(self, fine: bool) -> list[np.ndarray]:
        """1D RAS coordinate (mm) of voxel (or sub-voxel) centres along k, j, i."""
        lay = LAYOUTS[self.anatomy]
        out = []
        for (ras, sign), n, sp, fct in zip(lay.axes, self.shape, self.spacing, self.factors):
            nn, step = (n * fct, sp / fct) if fine else (n, sp)
            out.append((lay.centre_ras[ras] + sign * step * (np.arange(nn) - (nn - 1) / 2.0)).astype(np.float32))
        return out

    def ras_grid(self, fine: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X, Y, Z (R, A, S mm) broadcastable to the (K, J, I) array (or its fine version)."""
        lay = LAYOUTS[self.anatomy]
        xyz: list = [None, None, None]
        for a, ((ras, _), c) in enumerate(zip(lay.axes, self.axis_coords(fine))):
            shape = [1, 1, 1]
            shape[a] = len(c)
            xyz[ras] = c.reshape(shape)
        return tuple(xyz)  # type: ignore[return-value]


def acquisition_geometry(anatomy: str, style: Style, scale: float = 1.0) -> Geometry:
    """The grid on which ``style`` acquires ``anatomy``; ``scale`` < 1 coarsens it (fewer voxels)."""
    lay = LAYOUTS[anatomy]
    spacing = (style.slice_mm / scale, style.inplane_mm / scale, style.inplane_mm / scale)
    shape = tuple(max(4, int(round(fov / sp))) for fov, sp in zip(lay.fov_mm, spacing))
    m = int(np.clip(np.ceil(spacing[0] / SUB_SLICE_MM - 1e-6), 1, 6))
    f = 2 if spacing[1] >= 0.8 else 1
    while shape[0] * m * shape[1] * shape[2] * f * f > FINE_POINTS_BUDGET and (m > 1 or f > 1):
        if f > 1:
            f = 1  # through-plane partial volume (thick slices) matters more than in-plane
        else:
            m -= 1
    direction = np.zeros((3, 3))
    for col, a in zip((2, 1, 0), range(3)):  # ijk_to_ras columns are i, j, k; array axes are k, j, i
        ras, sign = lay.axes[a]
        direction[ras, col] = sign
    sp_ijk = (spacing[2], spacing[1], spacing[0])
    centre_index = np.array([(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2])
    origin = np.asarray(lay.centre_ras) - direction @ (np.asarray(sp_ijk) * centre_index)
    return Geometry(anatomy, shape, spacing, (m, f), make_ijk_to_ras(sp_ijk, direction, origin))  # type: ignore[arg-type]


def sample_tissue(anatomy: str, seed: int, geom: Geometry) -> np.ndarray:
    """(K*m, J*f, I*f) uint8 tissue map of subject ``(anatomy, seed)`` on the fine grid."""
    lay = LAYOUTS[anatomy]
    coords = geom.axis_coords(fine=True)
    by_ras = [None, None, None]
    for a, (ras, _) in enumerate(lay.axes):
        by_ras[ras] = coords[a]
    tissue = make_subject(anatomy, seed).sample(*by_ras)  # (R, A, S) order
    perm = tuple(ras for ras, _ in lay.axes)
    return np.ascontiguousarray(np.transpose(tissue, perm))


def block_sum(fine: np.ndarray, geom: Geometry, dtype) -> np.ndarray:
    """Sum a fine-grid array over each acquired voxel (successive contiguous reductions: fast)."""
    (K, J, I), (m, f, _) = geom.shape, geom.factors
    a = fine
    if f > 1:
        a = a.reshape(K * m * J * f, I, f).sum(axis=2, dtype=dtype)
        a = a.reshape(K * m, J, f, I).sum(axis=2, dtype=dtype)
    if m > 1:
        a = a.reshape(K, m, J * I).sum(axis=1, dtype=dtype)
    return a.reshape(K, J, I).astype(dtype, copy=False)


def box_mean(fine: np.ndarray, geom: Geometry) -> np.ndarray:
    """Average a fine-grid array over each acquired voxel (box slice profile and pixel)."""
    dtype = np.complex64 if np.iscomplexobj(fine) else np.float32
    n = geom.sub[0] * geom.sub[1] ** 2
    return block_sum(fine, geom, dtype) * dtype(1.0 / n)


def majority_labels(labels_fine: np.ndarray, geom: Geometry, values) -> np.ndarray:
    """(K, J, I) uint8 majority label per voxel; ties go to the larger label value."""
    best = np.zeros(geom.shape, np.uint8)
    best_count = np.full(geom.shape, -1, np.int16)
    for v in sorted(int(v) for v in values):
        count = block_sum(labels_fine == v, geom, np.int16)
        take = count >= best_count
        best[take], best_count[take] = v, count[take]
    return best


def bias_field(geom: Geometry, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(K, J, I) float32 smooth multiplicative receive sensitivity with mean 1 (log-std ~ ``strength``).

    A random smooth field plus the coil's own profile: brighter towards the skin (knee birdcage coil;
    anterior and posterior pelvic phased arrays), darker in the middle of the pelvis.
    """
    X, Y, Z = geom.ras_grid(fine=False)
    c = LAYOUTS[geom.anatomy].centre_ras
    log_b = SmoothField(rng, 1.0, 150.0, 450.0, terms=4)(X, Y, Z)
    if geom.anatomy == "pelvis":
        log_b = log_b + 0.7 * ((Y - c[1]) / 110.0) ** 2 + 0.2 * ((X - c[0]) / 150.0) ** 2
    else:
        log_b = log_b + 0.6 * (((X - c[0]) ** 2 + (Y - c[1]) ** 2) / 65.0 ** 2)
    b = np.exp(np.float32(strength) * (log_b - np.float32(log_b.mean()))).astype(np.float32)
    return b / b.mean()


def motion_ghosts(image: np.ndarray, geom: Geometry, amplitude_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Periodic motion along the phase-encode direction during the k-space sweep: each phase-encode
    line gets the phase ``exp(-2 pi i k_y d(t))`` of the displacement at its acquisition time, which
    replicates the anatomy as ghosts along that direction (k-space lines acquired in linear order)."""
    axis = LAYOUTS[geom.anatomy].pe_axis
    n, sp = image.shape[axis], geom.spacing[axis]
    k = np.fft.fftfreq(n, d=sp)
    t = np.argsort(np.argsort(k)) / n                       # acquisition time of each line, 0..1
    cycles = rng.uniform(6.0, 22.0)
    d = amplitude_mm * (np.sin(2 * np.pi * cycles * t + rng.uniform(0, 2 * np.pi)) + 0.15 * rng.standard_normal(n))
    shape = [1, 1, 1]
    shape[axis] = n
    phase = np.exp(-2j * np.pi * k * d).astype(np.complex64).reshape(shape)
    return np.fft.ifft(np.fft.fft(image, axis=axis) * phase, axis=axis).astype(np.complex64)


def acquisition_rng(anatomy: str, style_name: str, seed: int) -> np.random.Generator:
    """Noise, bias, motion and gain of one acquisition: depends on the style, unlike the anatomy."""
    return np.random.default_rng([zlib.crc32(anatomy.encode()), int(seed) & 0xFFFFFFFF,
                                  zlib.crc32(style_name.encode()), 7])


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the complex signal plus complex Gaussian noise (std ``sigma`` per channel)."""
    noise = rng.standard_normal((2,) + signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.abs(signal + (noise[0] + 1j * noise[1]).astype(np.complex64)).astype(np.float32)


def acquire(anatomy: str, style: Style, seed: int, scale: float = 1.0, *,
            motion_mm: float | None = None) -> tuple[Volume, Volume]:
    """Render subject ``(anatomy, seed)`` in ``style``: (image float32, labels uint8), same geometry.

    ``motion_mm`` overrides the style's motion amplitude (used for the heavy-motion OOD case).
    """
    geom = acquisition_geometry(anatomy, style, scale)
    tissue = sample_tissue(anatomy, seed, geom)
    props = tissue_properties(anatomy, seed, style.field_t)
    signal = box_mean(tissue_signal(props, style)[tissue], geom)
    signal = (gaussian_filter(signal.real, (0, PSF_SIGMA_PX, PSF_SIGMA_PX))
              + 1j * gaussian_filter(signal.imag, (0, PSF_SIGMA_PX, PSF_SIGMA_PX))).astype(np.complex64)
    foreground = box_mean((tissue != 0).astype(np.float32), geom) > 0.5
    lut = label_lookup(anatomy)
    labels = majority_labels(lut[tissue], geom, np.unique(lut))
    del tissue
    rng = acquisition_rng(anatomy, style.name, seed)
    signal *= bias_field(geom, style.bias, rng)
    amp = style.motion_mm if motion_mm is None else motion_mm
    if amp > 0:
        signal = motion_ghosts(signal, geom, amp, rng)
    mean_fg = float(np.abs(signal[foreground]).mean())
    image = add_rician_noise(signal, mean_fg / style.snr, rng)
    image *= np.float32(rng.uniform(0.6, 1.6) * 500.0 / mean_fg)  # scanner receiver gain / scaling
    return Volume(image, geom.ijk_to_ras.copy()), Volume(labels, geom.ijk_to_ras.copy())
