"""Run one trained model over an anatomy's test and OOD volumes and collect everything the report needs.

Predictions run in this process (on the model's device); the per-volume metrics (Dice, HD95, voxel
samples for failure detection and calibration) run in a process pool meanwhile, when one is given.
"""
from __future__ import annotations

import math
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from gase.orientation import reorientation_for
from gase.predictor import Predictor
from gase.validity_map import volume_point

from .data import AnatomyData, Case
from .metrics import dice_hd95, near_structures

VOXELS_PER_VOLUME = 60_000   # voxel samples per test volume for AUROC / ECE (uniform, fixed seed)
VOXEL_KEYS = ("confidence", "msp", "entropy", "correct", "near", "unseen")


@dataclass
class ModelEvaluation:
    """``records``: one JSON-ready dict per test/OOD volume. ``voxels``: pooled voxel samples of the test
    volumes, arrays named by :data:`VOXEL_KEYS` (entropy normalised to [0, 1] by log K). ``panel``: per
    style of subject 0, one canonical slice of image / truth / prediction / confidence. ``manifold``:
    training reference points and per-volume slice positions on the style map."""

    records: list[dict] = field(default_factory=list)
    voxels: dict[str, np.ndarray] = field(default_factory=dict)
    panel: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    manifold: dict = field(default_factory=dict)


def init_worker() -> None:
    """Initializer of the benchmark's process pool: one torch thread per worker (the pool is the
    parallelism; 12 workers x 16 threads would thrash), and the metric imports done at start-up, while
    the pool renders the phantoms, rather than in the first evaluation."""
    import torch

    torch.set_num_threads(1)
    import monai.metrics  # noqa: F401


def volume_metrics(pred: np.ndarray, truth: np.ndarray, conf: np.ndarray, msp: np.ndarray, ent: np.ndarray,
                   spacing_kji: tuple[float, float, float], values: tuple[int, ...], seed: int,
                   n_samples: int = VOXELS_PER_VOLUME) -> dict:
    """Per-volume metrics (runs in a worker process). Arrays (K, J, I); ``ent`` already normalised."""
    dice, hd = dice_hd95(pred, truth, values, spacing_kji)
    near = near_structures(pred, truth)
    n = pred.size
    idx = np.random.default_rng(seed).choice(n, size=min(n, n_samples), replace=False)
    samples = {"confidence": conf.reshape(-1)[idx].astype(np.float32), "msp": msp.reshape(-1)[idx].astype(np.float32),
               "entropy": ent.reshape(-1)[idx].astype(np.float32),
               "correct": (pred.reshape(-1)[idx] == truth.reshape(-1)[idx]), "near": near.reshape(-1)[idx]}
    return {"dice": dice, "hd95": hd, "samples": samples}


def _panel_slice(case: Case, plane: str, pred: np.ndarray, conf: np.ndarray) -> dict[str, np.ndarray]:
    reo = reorientation_for(case.image, plane)
    truth = reo.forward(case.labels.array)
    s = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(1)))
    return {"image": np.asarray(reo.forward(case.image.array)[s], np.float32), "truth": np.asarray(truth[s], np.uint8),
            "pred": np.asarray(reo.forward(pred)[s], np.uint8), "confidence": np.asarray(reo.forward(conf)[s], np.float32),
            "spacing": np.asarray(reo.spacing[1:], np.float32)}


def validity_record(v) -> dict:
    """A result's :class:`gase.result.Validity` as a benchmark record: score, verdict, threshold, background
    level and the names of the checks that flagged the volume (``failed``)."""
    return {"score": float(v.score), "valid": bool(v.valid), "threshold": float(v.threshold),
            "background_level": v.background_level,
            "failed": [name for name, ok in (("style", v.style_valid), ("size", v.size_valid),
                                             ("ct", v.modality_valid), ("inverted", v.polarity_valid),
                                             ("stability", v.stability_valid)) if not ok]}


def _fg_mean(values: np.ndarray, fg: np.ndarray) -> float:
    return float(values[fg].mean()) if fg.any() else float("nan")


def evaluate_model(predictor: Predictor, data: AnatomyData, method: str, panel_kinds: tuple[str, ...],
                   pool: Executor | None = None) -> ModelEvaluation:
    """Predict every test and OOD case of ``data`` with ``predictor``; see :class:`ModelEvaluation`."""
    card = predictor.card
    values = tuple(t.value for t in card.labels)
    names = {t.value: t.name for t in card.labels}
    log_k = math.log(card.n_classes)
    ref_dist = predictor.manifold.reference_distances
    ev = ModelEvaluation(manifold={"reference_2d": np.asarray(predictor.manifold.reference_2d).round(3).tolist(),
                                   "reference_distances": None if ref_dist is None else np.asarray(ref_dist).round(3).tolist(),
                                   "threshold": float(card.validity["threshold"]), "volumes": []})
    pending: list[tuple[dict, Future | dict, bool]] = []
    for n, case in enumerate(data.test + data.ood):
        res = predictor.predict(case.image, return_probabilities=True)
        probs = res.extra.pop("probabilities")
        pred, conf = res.labels.array, res.confidence.array
        ent = probs["entropy"] / np.float32(log_k)
        fg = pred > 0
        v = res.validity
        rec = {"anatomy": case.anatomy, "method": method, "group": case.group, "kind": case.kind,
               "subject": case.subject, "case": case.name, "seconds": round(res.seconds, 3),
               "reliability": {"quality": res.quality_overall, "expected_dice": res.expected_dice_overall,
                               "stability": res.stability_overall,
                               "confidence": res.reliability_overall, "msp": _fg_mean(probs["msp"], fg),
                               "entropy": 1.0 - _fg_mean(ent, fg)},
               "validity": validity_record(v)}
        if "source_expert" in res.extra:  # which network segmented it (GASE models with a source expert)
            rec["source_expert"] = dict(res.extra["source_expert"])
        star = volume_point(v.distances_2d, v.score) if v.distances_2d is not None else None
        ev.manifold["volumes"].append({"group": case.group, "kind": case.kind, "case": case.name,
                                       "points": np.asarray(v.embedding_2d).round(3).tolist(),
                                       "distances": None if star is None else np.round(star, 3).tolist()})
        if case.labels is None:
            ev.records.append(rec)
            continue
        if case.subject == 0 and case.kind in panel_kinds:
            ev.panel[case.kind] = _panel_slice(case, card.plane, pred, conf)
        args = (pred, case.labels.array, conf, probs["msp"], ent, tuple(case.image.spacing[::-1]), values, n)
        job = pool.submit(volume_metrics, *args) if pool is not None else volume_metrics(*args)
        pending.append((rec, job, case.group == "unseen"))
    samples: dict[str, list[np.ndarray]] = {k: [] for k in VOXEL_KEYS}
    for rec, job, unseen in pending:
        m = job.result() if isinstance(job, Future) else job
        rec["dice"] = {names[k]: v for k, v in m["dice"].items()}
        rec["hd95"] = {names[k]: v for k, v in m["hd95"].items()}
        rec["dice_mean"] = float(np.nanmean(list(m["dice"].values())))
        rec["hd95_mean"] = float(np.nanmean(list(m["hd95"].values())))
        for k, a in m["samples"].items():
            samples[k].append(a)
        samples["unseen"].append(np.full(len(m["samples"]["correct"]), unseen))
        ev.records.append(rec)
    ev.voxels = {k: np.concatenate(v) if v else np.zeros(0) for k, v in samples.items()}
    return ev
