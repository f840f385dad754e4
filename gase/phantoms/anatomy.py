"""Phantom anatomies: tissue tables, the tissue -> label mapping and the subject factory.

A *subject* is one randomly drawn, continuous anatomy (sizes, shapes, positions, flexion, bladder
filling, ... drawn from ``(anatomy, seed)`` only, never from the acquisition style). It is sampled on
any rectilinear grid into an integer *tissue map*, finer than the label map: e.g. cortical bone and
marrow are different tissues of the femur label. The label map is a lookup of the tissue map, with
values exactly those of :data:`gase.labels.KNEE_LABELS` / :data:`gase.labels.PELVIS_LABELS`.

>>> import numpy as np
>>> subject = make_subject("knee", seed=3)
>>> axis = np.linspace(-60, 60, 25, dtype=np.float32)
>>> tissue = subject.sample(axis, axis, axis)
>>> tissue.shape, tissue.dtype.name
((25, 25, 25), 'uint8')
>>> set(np.unique(label_lookup("knee")[tissue])) <= {0, 1, 2, 3, 4}
True
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from ..errors import InputError
from ..labels import ANATOMY_LABELS

ANATOMIES = ("knee", "pelvis")


@dataclass(frozen=True)
class TissueClass:
    """One tissue of a phantom: its name, the MR/CT material it is made of, its label value."""

    name: str
    material: str
    label: int


# Label values: knee 1 femur, 2 femoral cartilage, 3 tibia, 4 tibial cartilage (gase.labels.KNEE_LABELS).
KNEE_TISSUES: tuple[TissueClass, ...] = (
    TissueClass("air", "air", 0),
    TissueClass("skin", "skin", 0),
    TissueClass("fat", "fat", 0),
    TissueClass("muscle", "muscle", 0),
    TissueClass("synovial_fluid", "synovial_fluid", 0),
    TissueClass("tendon_ligament", "tendon", 0),
    TissueClass("vessel", "blood", 0),
    TissueClass("meniscus", "meniscus", 0),
    TissueClass("femur_cortex", "cortical_bone", 1),
    TissueClass("femur_marrow", "yellow_marrow", 1),
    TissueClass("femoral_cartilage", "cartilage", 2),
    TissueClass("tibia_cortex", "cortical_bone", 3),
    TissueClass("tibia_marrow", "yellow_marrow", 3),
    TissueClass("tibial_cartilage", "cartilage", 4),
    TissueClass("patella_cortex", "cortical_bone", 0),
    TissueClass("patella_marrow", "yellow_marrow", 0),
    TissueClass("patellar_cartilage", "cartilage", 0),
    TissueClass("fibula_cortex", "cortical_bone", 0),
    TissueClass("fibula_marrow", "yellow_marrow", 0),
)

# Label values: pelvis 1 body, 2 bone, 3 bladder, 4 rectum, 5 prostate (gase.labels.PELVIS_LABELS).
PELVIS_TISSUES: tuple[TissueClass, ...] = (
    TissueClass("air", "air", 0),
    TissueClass("skin", "skin", 1),
    TissueClass("fat", "fat", 1),
    TissueClass("muscle", "muscle", 1),
    TissueClass("vessel", "blood", 1),
    TissueClass("hip_cartilage", "cartilage", 1),
    TissueClass("seminal_vesicle", "seminal_fluid", 1),
    TissueClass("bone_cortex", "cortical_bone", 2),
    TissueClass("bone_marrow", "red_marrow", 2),
    TissueClass("femur_marrow", "yellow_marrow", 2),
    TissueClass("bladder_wall", "bladder_wall", 3),
    TissueClass("urine", "urine", 3),
    TissueClass("rectal_wall", "rectal_wall", 4),
    TissueClass("rectal_content", "faeces", 4),
    TissueClass("rectal_gas", "gas", 4),
    TissueClass("prostate_peripheral", "prostate_pz", 5),
    TissueClass("prostate_transition", "prostate_tz", 5),
    TissueClass("urethra", "urethra", 5),
    TissueClass("prostate_capsule", "muscle", 5),
)

TISSUES: dict[str, tuple[TissueClass, ...]] = {"knee": KNEE_TISSUES, "pelvis": PELVIS_TISSUES}


def check_anatomy(anatomy: str) -> str:
    if anatomy not in TISSUES:
        raise InputError(f"Unknown anatomy {anatomy!r}. Choose one of: {', '.join(ANATOMIES)}.")
    return anatomy


def tissue_ids(anatomy: str) -> dict[str, int]:
    """Tissue name -> value in the tissue map."""
    return {t.name: i for i, t in enumerate(TISSUES[check_anatomy(anatomy)])}


@lru_cache(maxsize=None)
def label_lookup(anatomy: str) -> np.ndarray:
    """(n_tissues,) uint8: the label value of every tissue value (``labels = lookup[tissue]``)."""
    lut = np.array([t.label for t in TISSUES[check_anatomy(anatomy)]], np.uint8)
    allowed = {lab.value for lab in ANATOMY_LABELS[anatomy]} | {0}
    assert set(lut.tolist()) <= allowed, "tissue table uses a label value missing from gase.labels"
    lut.setflags(write=False)
    return lut


def subject_rng(anatomy: str, seed: int, stream: str) -> np.random.Generator:
    """The generator of one random stream of one subject, from ``(anatomy, seed, stream)`` only."""
    return np.random.default_rng([zlib.crc32(anatomy.encode()), int(seed) & 0xFFFFFFFF,
                                  zlib.crc32(stream.encode())])


class Subject(Protocol):
    """One drawn anatomy. ``sample`` takes 1D grid coordinates (mm) along R, A, S."""

    anatomy: str
    seed: int

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(len(x), len(y), len(z)) uint8 tissue map (values index :data:`TISSUES`)."""
        ...


@lru_cache(maxsize=64)
def make_subject(anatomy: str, seed: int) -> Subject:
    """The subject of ``anatomy`` drawn from ``seed`` (cached: drawing is cheap, but callers reuse it)."""
    check_anatomy(anatomy)
    if anatomy == "knee":
        from .knee import KneeSubject
        return KneeSubject(int(seed))
    from .pelvis import PelvisSubject
    return PelvisSubject(int(seed))
