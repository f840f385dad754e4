"""Label tables: names, colors and SNOMED-CT terminology of the structures GASE segments.

Terminology follows 3D Slicer's ``Category~Type`` convention with ``SCT^code^meaning`` triplets, so a
segment written by GASE shows its standard name in Slicer's Segment Editor. Codes and meanings were
checked against Slicer's terminology files (SlicerGeneralAnatomy and DICOM-Master, 2026); tibia
(12611008) is a valid SNOMED-CT code that neither Slicer list carries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from .errors import ModelError

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
TISSUE = ("SCT", "85756007", "Tissue")


@dataclass(frozen=True)
class LabelInfo:
    """One segmented structure. ``value`` is its voxel value in label maps (1..255; 0 = background).

    ``color`` is RGB in 0..1. ``category`` and ``type`` are SNOMED-CT (scheme, code, meaning).
    """

    value: int
    name: str
    color: tuple[float, float, float]
    category: tuple[str, str, str] = ANATOMICAL_STRUCTURE
    type: tuple[str, str, str] = ("SCT", "91723000", "Anatomical structure")

    def terminology_string(self) -> str:
        """Slicer's segment tag ``TerminologyEntry`` value."""
        cat = "^".join(self.category)
        typ = "^".join(self.type)
        # The DICOM master list holds every code used here (the General Anatomy list lacks femur, rectum, body).
        return f"Segmentation category and type - DICOM master list~{cat}~{typ}~^^~Anatomic codes - DICOM master list~^^~^^"

    def to_json(self) -> dict:
        d = asdict(self)
        d["color"] = [round(float(c), 4) for c in self.color]
        d["category"] = list(self.category)
        d["type"] = list(self.type)
        return d

    @staticmethod
    def from_json(d: dict) -> "LabelInfo":
        try:
            value = int(d["value"])
            name = str(d["name"])
            color = tuple(float(c) for c in d["color"])
            category = tuple(str(x) for x in d.get("category", ANATOMICAL_STRUCTURE))
            typ = tuple(str(x) for x in d.get("type", ("SCT", "91723000", "Anatomical structure")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"A label entry is malformed ({exc!r}): each label needs value, name and color.") from None
        if not 1 <= value <= 255 or len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color) \
                or len(category) != 3 or len(typ) != 3 or not name:
            raise ModelError(f"Label entry {d!r} is invalid: value must be 1..255, color three numbers in 0..1, "
                             "category/type SNOMED triplets, and the name non-empty.")
        return LabelInfo(value, name, color, category, typ)  # type: ignore[arg-type]


def _sct(code: str, meaning: str) -> tuple[str, str, str]:
    return ("SCT", code, meaning)


KNEE_LABELS: tuple[LabelInfo, ...] = (
    LabelInfo(1, "femur", (0.945, 0.839, 0.569), ANATOMICAL_STRUCTURE, _sct("71341001", "Femur")),
    LabelInfo(2, "femoral cartilage", (0.435, 0.722, 0.824), TISSUE, _sct("309312004", "Cartilage")),
    LabelInfo(3, "tibia", (0.867, 0.510, 0.396), ANATOMICAL_STRUCTURE, _sct("12611008", "Tibia")),
    LabelInfo(4, "tibial cartilage", (0.565, 0.933, 0.565), TISSUE, _sct("309312004", "Cartilage")),
)

PELVIS_LABELS: tuple[LabelInfo, ...] = (
    LabelInfo(1, "body", (0.694, 0.478, 0.396), ANATOMICAL_STRUCTURE, _sct("38266002", "Entire body")),
    LabelInfo(2, "bone", (0.945, 0.839, 0.569), TISSUE, _sct("272673000", "Bone")),
    LabelInfo(3, "bladder", (0.847, 0.710, 0.235), ANATOMICAL_STRUCTURE, _sct("89837001", "Bladder")),
    LabelInfo(4, "rectum", (0.565, 0.933, 0.565), ANATOMICAL_STRUCTURE, _sct("34402009", "Rectum")),
    LabelInfo(5, "prostate", (0.902, 0.314, 0.471), ANATOMICAL_STRUCTURE, _sct("41216001", "Prostate")),
)

ANATOMY_LABELS = {"knee": KNEE_LABELS, "pelvis": PELVIS_LABELS}


def labels_from_json(items: Sequence[dict]) -> tuple[LabelInfo, ...]:
    labels = tuple(LabelInfo.from_json(d) for d in items)
    values = [lab.value for lab in labels]
    if len(set(values)) != len(values):
        raise ModelError(f"Label values {values} repeat; each structure needs its own value.")
    return labels
