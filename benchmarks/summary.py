"""From one model's :class:`~benchmarks.evaluate.ModelEvaluation` to the numbers the report shows.

Everything returned is JSON-ready (floats, lists, dicts). Segmentation numbers are means over test
volumes (HD95: medians, since a missed structure gets a large penalty distance); confidence numbers
pool the voxel samples of all test volumes (source and unseen styles); validity compares the
source-style test volumes (in distribution) with the OOD volumes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gase.result import quality_score

from .metrics import aurc, ece, failure_auroc, reliability_bins, roc_points, spearman, spearman_interval

CONFIDENCE_SCORES = ("confidence", "msp", "entropy")   # the model's confidence head, and two baselines
# volume reliabilities: the model's quality (the mean of the next two, gase.result.quality_score), stability and
# expected Dice, then the mean of each voxel score over the predicted foreground
VOLUME_SCORES = ("quality", "stability", "expected_dice", *CONFIDENCE_SCORES)


def _nanmean(x) -> float:
    a = np.asarray(list(x), dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def _nanmedian(x) -> float:
    a = np.asarray(list(x), dtype=np.float64)
    return float(np.nanmedian(a)) if np.isfinite(a).any() else float("nan")


def segmentation_summary(records: list[dict], label_names: list[str], styles: list[str]) -> dict:
    """Dice (mean) and HD95 (median, mm) per style and per class; source vs unseen and the drop."""
    test = [r for r in records if r["group"] in ("source", "unseen")]
    per_style = {}
    for style in styles:
        rs = [r for r in test if r["kind"] == style]
        per_style[style] = {"dice": _nanmean(r["dice_mean"] for r in rs),
                            "dice_per_subject": [round(r["dice_mean"], 4) for r in rs],
                            "hd95": _nanmedian(r["hd95_mean"] for r in rs),
                            "per_class": {n: _nanmean(r["dice"][n] for r in rs) for n in label_names},
                            "hd95_per_class": {n: _nanmedian(r["hd95"][n] for r in rs) for n in label_names}}
    out = {"per_style": per_style}
    if any("source_expert" in r for r in test):  # how many volumes of each style the source expert segmented
        out["source_expert_used"] = {st: [sum(bool(r.get("source_expert", {}).get("used")) for r in test
                                               if r["kind"] == st), sum(r["kind"] == st for r in test)]
                                     for st in styles}
    for group in ("source", "unseen"):
        rs = [r for r in test if r["group"] == group]
        out[group] = {"dice": _nanmean(r["dice_mean"] for r in rs), "hd95": _nanmedian(r["hd95_mean"] for r in rs),
                      "per_class": {n: _nanmean(r["dice"][n] for r in rs) for n in label_names}, "n": len(rs)}
    out["drop"] = out["source"]["dice"] - out["unseen"]["dice"]
    return out


def confidence_summary(voxels: dict[str, np.ndarray], records: list[dict]) -> dict:
    """Voxel failure-detection AUROC and ECE (all voxels, and near structures), reliability-diagram bins,
    and volume-level Spearman(reliability, Dice), AURC and risk-coverage curves."""
    wrong = ~voxels["correct"].astype(bool)
    near = voxels["near"].astype(bool)
    conf_like = {"confidence": voxels["confidence"], "msp": voxels["msp"], "entropy": 1.0 - voxels["entropy"]}
    voxel = {}
    for score, c in conf_like.items():
        d = {"auroc_all": failure_auroc(1.0 - c, wrong), "auroc_near": failure_auroc(1.0 - c[near], wrong[near]),
             "auroc_near_unseen": failure_auroc(1.0 - c[near & voxels["unseen"]], wrong[near & voxels["unseen"]])}
        if score != "entropy":  # entropy is not a probability of being right: no calibration error
            d["ece_all"] = ece(c, ~wrong)
            d["ece_near"] = ece(c[near], ~wrong[near])
            d["bins_near"] = reliability_bins(c[near], ~wrong[near])
        voxel[score] = d
    return {"voxel": voxel, "volume": volume_summary(records),
            "failure_rate_near": float(wrong[near].mean()) if near.any() else float("nan"),
            "n_voxels": int(len(wrong)), "n_voxels_near": int(near.sum())}


def volume_score(record: dict, score: str) -> float | None:
    """A test record's volume reliability ``score``; None if the record has none. The quality of a record
    written before it existed (6 Dec 2026) is computed from its expected Dice and stability, as the
    predictor computes it."""
    rel = record["reliability"]
    if score == "quality" and score not in rel and "stability" in rel and "expected_dice" in rel:
        return quality_score(rel["expected_dice"], rel["stability"])
    return rel.get(score)


def volume_summary(records: list[dict]) -> dict:
    """Per volume reliability score: Spearman(score, Dice) with its 95% bootstrap interval
    (:func:`~benchmarks.metrics.spearman_interval`) and split by style (:func:`ranking_by_style`), AURC and the
    risk-coverage curve of the test volumes (source and unseen styles); the oracle's and a random order's AURC."""
    test = [r for r in records if r["group"] in ("source", "unseen")]
    dice = np.array([r["dice_mean"] for r in test])
    risk = 1.0 - dice
    volume = {}
    for score in VOLUME_SCORES:
        values = [volume_score(r, score) for r in test]
        if not test or any(v is None and score not in r["reliability"] for v, r in zip(values, test)):
            continue  # results of an older run (no stability or expected Dice)
        rel = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        area, cov, sel = aurc(rel, risk)
        volume[score] = {"spearman": spearman(rel, dice), "spearman_95": list(spearman_interval(rel, dice)),
                         "by_style": ranking_by_style(rel, dice, [r.get("kind", "") for r in test]),
                         "aurc": area,
                         "curve": {"coverage": np.round(cov, 4).tolist(), "risk": np.round(sel, 4).tolist()}}
    area, cov, sel = aurc(-risk, risk)
    volume["oracle"] = {"aurc": area, "curve": {"coverage": np.round(cov, 4).tolist(), "risk": np.round(sel, 4).tolist()}}
    volume["random"] = {"aurc": _nanmean(risk)}
    return volume


def ranking_by_style(values: Sequence[float], dice: Sequence[float], styles: Sequence[str]) -> dict:
    """Where a volume ranking's agreement with the Dice comes from: between styles (Spearman of the styles' mean
    score against their mean Dice) or within them (Spearman of each volume's score and Dice as deviations from
    its style's means, pooled), and the share of the Dice's variance that lies between the styles. A score that
    ranks the styles but not the subjects of one style still ranks well overall when that share is large.
    NaN parts where there are fewer than 3 styles or no spread."""
    x, d = np.asarray(values, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    st = np.asarray(styles)
    names = sorted(set(st.tolist()))
    xm = np.array([np.nanmean(x[st == n]) for n in names])
    dm = np.array([np.mean(d[st == n]) for n in names])
    x_of = dict(zip(names, xm))
    d_of = dict(zip(names, dm))
    dev_x = x - np.array([x_of[n] for n in st])
    dev_d = d - np.array([d_of[n] for n in st])
    total = float(np.var(d))
    return {"styles": len(names),
            "spearman_style_means": spearman(xm, dm),
            "spearman_within_styles": spearman(dev_x, dev_d),
            "dice_variance_between_styles": float(np.var(np.array([d_of[n] for n in st])) / total) if total > 0
            else float("nan")}


def refresh_volume_summaries(res: dict) -> None:
    """Recompute every model's volume-reliability summary of a results dict from its records, in place (a
    score added after the run, such as the quality, then appears in the report without re-evaluating)."""
    for a in res["anatomies"].values():
        for d in a["methods"].values():
            for part in (d, d.get("other_route") or {}):
                conf = (part.get("summary") or {}).get("confidence")
                if conf is not None and part.get("records"):
                    conf["volume"] = volume_summary(part["records"])


def validity_summary(records: list[dict], unseen_styles: list[str]) -> dict:
    """AUROC(source-style test vs OOD), false-invalid rate on the source style, detection rate per OOD
    kind, flagged fraction per unseen style, Spearman(validity score, Dice) on the unseen styles."""
    src = [r for r in records if r["group"] == "source"]
    ood = [r for r in records if r["group"] == "ood"]
    unseen = [r for r in records if r["group"] == "unseen"]
    score = lambda rs: np.array([r["validity"]["score"] for r in rs], dtype=np.float64)  # noqa: E731
    roc = roc_points(score(src), score(ood))
    kinds = sorted({r["kind"] for r in ood}, key=[r["kind"] for r in ood].index)
    return {
        "auroc": roc["auroc"], "roc": {"fpr": roc["fpr"], "tpr": roc["tpr"]},
        "threshold": float(src[0]["validity"]["threshold"]) if src else float("nan"),
        "false_invalid_source": _nanmean(not r["validity"]["valid"] for r in src),
        "detected": {k: _nanmean(not r["validity"]["valid"] for r in ood if r["kind"] == k) for k in kinds},
        "detected_all": _nanmean(not r["validity"]["valid"] for r in ood),
        "flagged_unseen": {s: _nanmean(not r["validity"]["valid"] for r in unseen if r["kind"] == s)
                           for s in unseen_styles},
        "spearman_score_dice_unseen": spearman(score(unseen), [r["dice_mean"] for r in unseen]),
    }


def summarize_model(records: list[dict], voxels: dict[str, np.ndarray], label_names: list[str],
                    source_style: str, unseen_styles: list[str]) -> dict:
    return {"segmentation": segmentation_summary(records, label_names, [source_style, *unseen_styles]),
            "confidence": confidence_summary(voxels, records),
            "validity": validity_summary(records, unseen_styles),
            "seconds_per_volume": _nanmedian(r["seconds"] for r in records)}
