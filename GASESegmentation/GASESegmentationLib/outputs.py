"""The files ``gase segment`` writes -> one :class:`gase.result.SegmentationResult`.

The background process hands its result over as files (``<case>.seg.nrrd``, ``<case>_confidence.nrrd``,
``<case>_report.json``); this reads them back into the same result type the predictor returns, so the
rest of the module has one input type whether the result came from a process or from a script.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gase.errors import InputError
from gase.result import SegmentationResult, Validity
from gase.segfile import read_seg_nrrd
from gase.volume import Volume, read_volume

from .process import JobOutputs


def _floats(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in (values or [])], dtype=np.float32)


def _points(values) -> np.ndarray | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float32)
    return arr if arr.ndim == 2 and arr.shape[1] == 2 else None


def validity_from_report(report: dict) -> Validity:
    """The :class:`Validity` of a ``<case>_report.json`` dict (manifold points when the report has them)."""
    v = report["validity"]
    manifold = report.get("manifold", {}) or {}
    return Validity(valid=bool(v["valid"]), score=float(v["score"]), threshold=float(v["threshold"]),
                    slice_scores=_floats(v.get("slice_scores")),
                    embedding_2d=_points(manifold.get("embedding_2d")),
                    reference_2d=_points(manifold.get("reference_2d")),
                    distances_2d=_points(manifold.get("distances_2d")),
                    reference_distances=_points(manifold.get("reference_distances")),
                    **check_fields(v))


def check_fields(v: dict) -> dict:
    """The structure-size, CT, inverted-image and stability parts of a validity JSON dict as :class:`Validity`
    keyword arguments."""
    out = {}
    for key in ("foreground_ml", "training_foreground_ml", "foreground_limit", "ct_fraction", "background_level",
                "stability", "stability_floor"):
        if v.get(key) is not None:
            out[key] = float(v[key])
    return out


def load_result(outputs: JobOutputs, grid: np.ndarray | None = None) -> SegmentationResult:
    """Read the three output files. With ``grid`` (the input's 4x4 IJK-to-RAS), both volumes are checked to
    lie on it (within 1e-3 mm, the NRRD text round trip) and then carry exactly that matrix."""
    labels, table = read_seg_nrrd(outputs.segmentation)
    confidence = read_volume(outputs.confidence)
    try:
        report = json.loads(Path(outputs.report).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{outputs.report}: the report cannot be read ({exc}).") from None
    if grid is not None:
        for vol, what in ((labels, "segmentation"), (confidence, "confidence")):
            if not np.allclose(vol.ijk_to_ras, grid, atol=1e-3):
                raise InputError(f"The {what} written by the segmentation is not on the input's voxel grid.")
        labels = Volume(labels.array, np.asarray(grid, dtype=np.float64).copy())
        confidence = Volume(confidence.array, np.asarray(grid, dtype=np.float64).copy())
    rel = report.get("reliability", {}) or {}
    per_label = {k: (np.nan if v is None else float(v)) for k, v in (rel.get("per_label") or {}).items()}
    overall = rel.get("overall")
    dice = rel.get("expected_dice")
    dice_per_label = {k: (np.nan if v is None else float(v)) for k, v in (rel.get("expected_dice_per_label") or {}).items()}
    stab = rel.get("stability")
    stab_per_label = {k: (np.nan if v is None else float(v)) for k, v in (rel.get("stability_per_label") or {}).items()}
    extra = {k: v for k, v in report.items() if k not in ("validity", "reliability", "model", "device", "seconds")}
    return SegmentationResult(
        labels=labels, confidence=Volume(confidence.array.astype(np.float32, copy=False), confidence.ijk_to_ras),
        label_table=table, reliability_overall=np.nan if overall is None else float(overall),
        reliability_per_label=per_label, validity=validity_from_report(report),
        model_name=str(report.get("model", "")), device=str(report.get("device", "")),
        seconds=float(report.get("seconds", 0.0)), extra=extra,
        expected_dice_overall=np.nan if dice is None else float(dice), expected_dice_per_label=dice_per_label,
        stability_overall=np.nan if stab is None else float(stab), stability_per_label=stab_per_label)
