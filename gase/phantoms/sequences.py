"""Named acquisition styles and the MR signal equations that render them.

A :class:`Style` is one protocol: sequence type, timing, flip angle, field strength, fat suppression
and the acquisition geometry and quality (voxel size, SNR, coil bias, motion). Its tissue signal is
computed per compartment (water and fat) from the tissue properties:

* spin echo / fast spin echo: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``; in FSE the fat T2 is
  lengthened 1.6x (J-coupling is broken by the echo train: fat stays bright on T2 FSE);
* inversion recovery (STIR): ``S = PD (1 - 2 exp(-TI/T1) + exp(-TR/T1)) exp(-TE/T2)``, signed, so
  magnitude reconstruction after partial volume gives the dark boundary lines of real IR images;
* spoiled gradient echo (FLASH / SPGR): ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*)``
  with the fat compartment rotated by the chemical-shift phase ``2 pi 3.4 ppm gamma B0 TE``
  (opposed-phase "India ink" edges arise from complex partial volume);
* DESS: sum of the FISP (S+) and PSIF (S-) steady-state echoes (Haenicke and Vogel 2003), the
  PSIF echo decaying with ``exp(-(2 TR - TE)/T2)``: fluid and cartilage bright;
* fat suppression (CHESS, water excitation, Dixon water image) scales the fat compartment by
  ``1 - fat_sat``; flowing blood is a flow void in spin echoes and inflow-bright in gradient echoes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tissues import TissueProperties

FAT_SHIFT_HZ_PER_T = 3.4e-6 * 42.577e6  # 3.4 ppm of the proton frequency, Hz per tesla
SEQUENCE_TYPES = ("SE", "FSE", "IR", "GRE", "DESS")


@dataclass(frozen=True)
class Style:
    """One acquisition protocol ("style"). Times in ms, angles in degrees, lengths in mm.

    ``fat_sat`` is the fraction of fat signal removed (0 none, ~0.95 CHESS). ``snr`` is the mean
    foreground signal over the noise standard deviation. ``bias`` is the standard deviation of the
    log coil sensitivity. ``motion_mm`` is the amplitude of periodic motion along the phase-encode
    direction (0: none). ``source`` marks the default training (source) style of its anatomy.
    """

    name: str
    anatomy: str
    family: str
    sequence: str
    description: str
    field_t: float
    tr: float
    te: float
    inplane_mm: float
    slice_mm: float
    snr: float
    bias: float = 0.15
    ti: float = 0.0
    flip_deg: float = 90.0
    fat_sat: float = 0.0
    motion_mm: float = 0.0
    source: bool = False

    def __post_init__(self) -> None:
        assert self.sequence in SEQUENCE_TYPES, self.sequence
        assert self.inplane_mm > 0 and self.slice_mm > 0 and self.snr > 0 and self.field_t > 0

    @property
    def fat_suppressed(self) -> bool:
        """Fat saturation, water excitation or Dixon water image (STIR nulls fat by TI instead)."""
        return self.fat_sat >= 0.5


def _s(name, anatomy, family, sequence, description, field_t, tr, te, inplane, thick, snr, **kw) -> Style:
    return Style(name, anatomy, family, sequence, description, field_t, tr, te, inplane, thick, snr, **kw)


KNEE_STYLES: tuple[Style, ...] = (
    _s("pd_fse", "knee", "PD", "FSE", "Sagittal 2D PD FSE, 1.5 T: fat and marrow bright, fluid bright-grey, cartilage grey",
       1.5, 3000, 30, 0.875, 3.0, 30.0, source=True),
    _s("t1_se", "knee", "T1", "SE", "Sagittal T1 SE, 1.5 T: fat and marrow bright, fluid dark, cartilage grey",
       1.5, 550, 14, 0.875, 3.0, 25.0),
    _s("t2_fse", "knee", "T2", "FSE", "Sagittal T2 FSE, 1.5 T: fluid very bright, cartilage and muscle dark, fat grey",
       1.5, 4200, 85, 0.875, 3.0, 20.0),
    _s("pd_fs", "knee", "PD-FS", "FSE", "Sagittal PD FSE fat-sat, 3 T: fat and marrow dark, fluid bright, cartilage intermediate",
       3.0, 3200, 35, 0.75, 3.0, 25.0, fat_sat=0.95, bias=0.2),
    _s("dess", "knee", "DESS", "DESS", "Sagittal 3D DESS water-excitation, 3 T: fluid very bright, cartilage bright, fat dark",
       3.0, 16.3, 4.7, 0.7, 1.5, 25.0, flip_deg=25.0, fat_sat=0.97, bias=0.2),
    _s("flash_we", "knee", "GRE", "GRE", "Sagittal 3D FLASH water-excitation, 3 T: cartilage brightest, fluid grey, fat dark",
       3.0, 20.0, 7.6, 0.7, 1.5, 22.0, flip_deg=12.0, fat_sat=0.97, bias=0.2),
    _s("gre_t2star", "knee", "T2*", "GRE", "Sagittal 2D T2* GRE (MEDIC-like), 1.5 T: fluid bright, marrow dark, cartilage grey",
       1.5, 600, 15, 0.875, 3.5, 20.0, flip_deg=30.0),
    _s("stir", "knee", "STIR", "IR", "Sagittal STIR, 1.5 T: fat nulled, fluid very bright, marrow dark",
       1.5, 4500, 40, 0.9, 3.5, 15.0, ti=170.0),
    _s("pd_fse_3t_hr", "knee", "PD", "FSE", "High-resolution sagittal PD FSE, 3 T: thin slices, high SNR",
       3.0, 3000, 28, 0.6, 2.0, 35.0, bias=0.25),
    _s("pd_fse_1t_lowsnr", "knee", "PD", "FSE", "Sagittal PD FSE on a 1 T scanner: thick slices, low SNR, strong coil bias",
       1.0, 2500, 25, 1.0, 4.0, 10.0, bias=0.35),
)

PELVIS_STYLES: tuple[Style, ...] = (
    _s("t2_fse", "pelvis", "T2", "FSE", "Axial T2 FSE, 1.5 T: urine and prostate peripheral zone bright, muscle dark, fat bright",
       1.5, 5000, 100, 1.75, 4.0, 25.0, bias=0.25, source=True),
    _s("t1_se", "pelvis", "T1", "SE", "Axial T1 SE, 1.5 T: fat bright, urine dark, prostate homogeneous grey",
       1.5, 500, 12, 1.75, 4.0, 22.0, bias=0.25),
    _s("t1_gre_dixon_like", "pelvis", "T1-FS", "GRE", "Axial 3D T1 spoiled GRE, Dixon water image, 3 T: fat dark, urine dark",
       3.0, 5.5, 2.46, 1.5, 3.0, 30.0, flip_deg=15.0, fat_sat=0.97, bias=0.35),
    _s("t1_gre_opposed", "pelvis", "T1", "GRE", "Axial 2D T1 GRE opposed phase, 1.5 T: dark India-ink lines at fat-water edges",
       1.5, 150, 2.3, 1.75, 5.0, 20.0, flip_deg=70.0, bias=0.25),
    _s("stir", "pelvis", "STIR", "IR", "Axial STIR, 1.5 T: fat nulled, urine and fluid very bright, muscle dark",
       1.5, 5000, 60, 1.8, 5.0, 14.0, ti=170.0, bias=0.25),
    _s("pd_fs", "pelvis", "PD-FS", "FSE", "Axial PD FSE fat-sat, 3 T: fat dark, urine bright, muscle and prostate grey",
       3.0, 3000, 30, 1.5, 4.0, 22.0, fat_sat=0.93, bias=0.35),
    _s("t2_3t", "pelvis", "T2", "FSE", "Axial T2 FSE, 3 T: higher resolution and SNR, stronger B1 shading, mild breathing ghosts",
       3.0, 4500, 105, 1.4, 3.0, 35.0, bias=0.3, motion_mm=0.8),
    _s("t2_1t_lowsnr", "pelvis", "T2", "FSE", "Axial T2 FSE on a 1 T scanner: coarse, thick slices, low SNR",
       1.0, 4500, 95, 2.2, 6.0, 10.0, bias=0.3),
)

STYLES: dict[str, tuple[Style, ...]] = {"knee": KNEE_STYLES, "pelvis": PELVIS_STYLES}


# ---------------------------------------------------------------------------------------------
# Signal equations (vectorised over tissues)
# ---------------------------------------------------------------------------------------------

def spin_echo(pd, t1, t2, tr, te):
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd, t1, t2, tr, te, ti):
    """Signed longitudinal recovery after inversion (magnitude is taken after partial volume)."""
    return pd * (1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def spoiled_gre(pd, t1, t2s, tr, te, flip_deg):
    """Ernst equation with T2* decay."""
    a = np.radians(flip_deg)
    e1 = np.exp(-tr / t1)
    return pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-te / t2s)


def dess(pd, t1, t2, t2s, tr, te, flip_deg):
    """FISP + PSIF echoes of a double-echo steady state sequence (Haenicke and Vogel 2003)."""
    a = np.radians(flip_deg)
    e1, e2 = np.exp(-tr / t1), np.exp(-tr / t2)
    p = 1.0 - e1 * np.cos(a) - e2 ** 2 * (e1 - np.cos(a))
    q = e2 * (1.0 - e1) * (1.0 + np.cos(a))
    r = np.sqrt(np.maximum(p * p - q * q, 1e-12))
    fisp = pd * np.tan(a / 2) * (1.0 - (e1 - np.cos(a)) * (1.0 - e2 ** 2) / r) * np.exp(-te / t2s)
    psif = pd * np.tan(a / 2) * (1.0 - (1.0 - e1 * np.cos(a)) * (1.0 - e2 ** 2) / r) * np.exp(-(2 * tr - te) / t2)
    return fisp + psif


def _compartment(style: Style, pd, t1, t2, t2s):
    if style.sequence in ("SE", "FSE"):
        return spin_echo(pd, t1, t2, style.tr, style.te)
    if style.sequence == "IR":
        return inversion_recovery(pd, t1, t2, style.tr, style.te, style.ti)
    if style.sequence == "GRE":
        return spoiled_gre(pd, t1, t2s, style.tr, style.te, style.flip_deg)
    return dess(pd, t1, t2, t2s, style.tr, style.te, style.flip_deg)


def tissue_signal(props: TissueProperties, style: Style) -> np.ndarray:
    """(n_tissues,) complex64 transverse magnetisation of each tissue (arbitrary units)."""
    fse = style.sequence in ("FSE", "IR")
    water = _compartment(style, props.pd_w, props.t1_w, props.t2_w, props.t2s_w)
    fat = _compartment(style, props.pd_f, props.t1_f, props.t2_f * (1.6 if fse else 1.0), props.t2s_f)
    fat = fat * (1.0 - style.fat_sat)
    if style.sequence == "GRE" and style.fat_sat < 0.5:
        phase = 2.0 * np.pi * FAT_SHIFT_HZ_PER_T * style.field_t * style.te * 1e-3
        sig = water + fat * np.exp(1j * phase)
    else:
        sig = water + fat + 0j
    flow = np.where(props.flow > 0, 1.4 if style.sequence in ("GRE", "DESS") else 0.12, 1.0)
    return (sig * flow).astype(np.complex64)
