"""MR and CT properties of the phantom materials, per field strength and per subject.

Every material has a water and a fat compartment (``fat_fraction`` of its protons are fat): fat
suppression scales the fat compartment and gradient echoes give it a chemical-shift phase, so fatty
marrow and fat-water partial volume behave as on a scanner. Values are literature-like (ms):

* muscle, cartilage, marrow, fat: Stanisz et al. MRM 2005 (1.5 T and 3 T), Gold et al. AJR 2004;
* fluid, urine: long T1 (3-4 s) and T2 (0.5-1.5 s); tendon, meniscus, cortical bone: T2 of 1-12 ms;
* prostate: peripheral zone T2 ~150 ms (1.5 T) / ~115 ms (3 T), transition zone ~90 / 75 ms;
* fat compartment (methylene peak): T1 260 / 370 ms, T2 85 / 70 ms.

Other field strengths use a power law through the two anchors (T1 grows with B0, T2 falls slowly);
the reversible dephasing rate R2' (T2* = 1 / (1/T2 + R2')) scales linearly with B0. Each subject
multiplies T1, T2 and PD of each material by its own factors (about +-10%), drawn from
``(anatomy, seed)`` only, so a subject keeps its tissues in every style.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import TISSUES, check_anatomy, subject_rng

FAT_T1 = (260.0, 370.0)
FAT_T2 = (85.0, 70.0)


@dataclass(frozen=True)
class Material:
    """``pd``: proton density relative to water; ``t1``/``t2``: water-compartment values (ms) at
    (1.5 T, 3 T); ``r2p``: reversible dephasing (1/ms) at 1.5 T; ``hu``: CT number; ``flow``: moving
    blood (flow void in spin echoes, inflow-bright in gradient echoes)."""

    pd: float
    fat_fraction: float
    t1: tuple[float, float]
    t2: tuple[float, float]
    r2p: float
    hu: float
    flow: bool = False


MATERIALS: dict[str, Material] = {
    "air": Material(0.0, 0.0, (1000, 1000), (1, 1), 0.0, -1000),
    "gas": Material(0.0, 0.0, (1000, 1000), (1, 1), 0.0, -850),
    "skin": Material(0.70, 0.10, (600, 800), (40, 35), 0.01, 40),
    "fat": Material(0.90, 0.92, (1000, 1300), (40, 35), 0.01, -100),
    "muscle": Material(0.70, 0.03, (1010, 1420), (40, 31), 0.02, 50),
    "cartilage": Material(0.82, 0.0, (1020, 1200), (42, 37), 0.03, 110),
    "synovial_fluid": Material(0.97, 0.0, (3000, 3700), (700, 500), 0.002, 10),
    "tendon": Material(0.30, 0.0, (700, 900), (4, 3), 0.08, 90),
    "meniscus": Material(0.40, 0.0, (900, 1100), (11, 9), 0.05, 95),
    "blood": Material(0.85, 0.0, (1350, 1930), (250, 150), 0.01, 45, True),
    "cortical_bone": Material(0.08, 0.0, (1000, 1200), (1.0, 0.8), 0.3, 1300),
    "yellow_marrow": Material(0.85, 0.85, (900, 1100), (45, 38), 0.08, 250),
    "red_marrow": Material(0.90, 0.50, (800, 1000), (50, 45), 0.08, 300),
    "urine": Material(1.00, 0.0, (3000, 3900), (1500, 1100), 0.002, 5),
    "bladder_wall": Material(0.80, 0.0, (1100, 1400), (55, 45), 0.02, 40),
    "rectal_wall": Material(0.80, 0.02, (1100, 1450), (60, 50), 0.02, 40),
    "faeces": Material(0.70, 0.05, (900, 1200), (110, 90), 0.1, 10),
    "prostate_pz": Material(0.90, 0.0, (1400, 1700), (150, 115), 0.02, 40),
    "prostate_tz": Material(0.85, 0.0, (1300, 1600), (90, 75), 0.02, 40),
    "urethra": Material(0.85, 0.0, (1500, 1900), (200, 150), 0.02, 30),
    "seminal_fluid": Material(0.95, 0.0, (2500, 3100), (400, 300), 0.005, 20),
}


@dataclass(frozen=True)
class TissueProperties:
    """Per-tissue arrays (index = tissue value) at one field strength; times in ms.

    ``pd_w``/``pd_f`` are the water and fat proton densities, ``t2s_*`` the T2* values.
    """

    field_t: float
    pd_w: np.ndarray
    pd_f: np.ndarray
    t1_w: np.ndarray
    t2_w: np.ndarray
    t2s_w: np.ndarray
    t1_f: np.ndarray
    t2_f: np.ndarray
    t2s_f: np.ndarray
    flow: np.ndarray
    hu: np.ndarray


def at_field(pair: tuple[float, float], field_t: float) -> float:
    """Power-law value at ``field_t`` through the (1.5 T, 3 T) anchors."""
    v15, v3 = pair
    gamma = np.log(v3 / v15) / np.log(2.0)
    return float(v15 * (field_t / 1.5) ** gamma)


def tissue_properties(anatomy: str, seed: int, field_t: float) -> TissueProperties:
    """MR/CT properties of every tissue of subject ``(anatomy, seed)`` at ``field_t`` tesla."""
    tissues = TISSUES[check_anatomy(anatomy)]
    rng = subject_rng(anatomy, seed, "tissue")
    factors = {name: rng.uniform(0.9, 1.1, size=5) for name in sorted(MATERIALS)}  # T1, T2, PD, ff, HU
    n = len(tissues)
    out = {k: np.zeros(n, np.float64) for k in ("pd_w", "pd_f", "t1_w", "t2_w", "t2s_w", "t1_f", "t2_f",
                                                 "t2s_f", "flow", "hu")}
    fat_t1, fat_t2 = at_field(FAT_T1, field_t), at_field(FAT_T2, field_t)
    for i, t in enumerate(tissues):
        m, (f1, f2, fpd, fff, fhu) = MATERIALS[t.material], factors[t.material]
        ff = float(np.clip(m.fat_fraction * fff, 0.0, 1.0))
        pd = m.pd * fpd
        r2p = m.r2p * field_t / 1.5
        t2w = at_field(m.t2, field_t) * f2
        out["pd_w"][i], out["pd_f"][i] = pd * (1 - ff), pd * ff
        out["t1_w"][i], out["t2_w"][i] = at_field(m.t1, field_t) * f1, t2w
        out["t2s_w"][i] = 1.0 / (1.0 / t2w + r2p)
        out["t1_f"][i], out["t2_f"][i] = fat_t1 * f1 ** 0.5, fat_t2 * f2 ** 0.5
        out["t2s_f"][i] = 1.0 / (1.0 / out["t2_f"][i] + r2p)
        out["flow"][i] = float(m.flow)
        out["hu"][i] = m.hu * (fhu if abs(m.hu) < 900 else 1.0)
    return TissueProperties(field_t=field_t, **out)
