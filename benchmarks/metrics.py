"""Metric functions of the benchmark: segmentation overlap and distance, failure detection, calibration,
risk-coverage and rank correlation. Dice and HD95 come from MONAI, AUROC/ROC from scikit-learn,
Spearman from SciPy; only ECE and AURC (a few lines each) are written here.

>>> import numpy as np
>>> round(ece(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0]), n_bins=15), 3)
0.1
>>> round(aurc(np.array([0.9, 0.5, 0.1]), np.array([0.0, 0.5, 1.0]))[0], 3)
0.25
"""
from __future__ import annotations

import inspect
import warnings
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score, roc_curve

ECE_BINS = 15


def _onehot(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """(K, J, I) integer labels -> (1, C, K, J, I) float one-hot (MONAI's metric layout)."""
    t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return torch.nn.functional.one_hot(t, n_classes).permute(3, 0, 1, 2)[None].float()


def dice_hd95(pred: np.ndarray, truth: np.ndarray, values: Sequence[int], spacing_kji: Sequence[float]
              ) -> tuple[dict[int, float], dict[int, float]]:
    """Dice and 95th-percentile Hausdorff distance (mm) per foreground label value.

    ``pred``/``truth``: (K, J, I) integer label maps; ``spacing_kji``: voxel size along the array axes, mm.
    A label absent from the truth gives NaN for both. A label present in the truth but not predicted gets
    HD95 = the volume's diagonal (a finite penalty: MONAI returns inf there), Dice 0.
    """
    n = int(max(max(values), pred.max(initial=0), truth.max(initial=0))) + 1
    yp, yt = _onehot(pred, n), _onehot(truth, n)
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(yp, yt)[0]
    with warnings.catch_warnings():
        # MONAI warns about empty masks and an internally deprecated argument; both are handled here
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            yp, yt, spacing=[float(s) for s in spacing_kji])[0]
    diag = float(np.linalg.norm(np.asarray(truth.shape) * np.asarray(spacing_kji, dtype=np.float64)))
    out_d, out_h = {}, {}
    for v in values:
        present, predicted = bool((truth == v).any()), bool((pred == v).any())
        if not present:
            out_d[v], out_h[v] = float("nan"), float("nan")
            continue
        out_d[v] = float(dice[v - 1])
        h = float(hd[v - 1])
        out_h[v] = diag if (not predicted or not np.isfinite(h)) else h
    return out_d, out_h


def near_structures(pred: np.ndarray, truth: np.ndarray, margin_voxels: int = 2) -> np.ndarray:
    """(K, J, I) bool: the union of predicted and true foreground, dilated by ``margin_voxels``: the region
    where segmentation errors can happen (the easy empty background is left out)."""
    fg = (pred > 0) | (truth > 0)
    return ndimage.binary_dilation(fg, iterations=margin_voxels) if margin_voxels > 0 else fg


def failure_auroc(failure_score: np.ndarray, failed: np.ndarray) -> float:
    """AUROC of ``failure_score`` (higher = more likely wrong) for detecting ``failed`` (bool) items;
    NaN when only one class is present."""
    failed = np.asarray(failed, dtype=bool)
    if failed.all() or not failed.any():
        return float("nan")
    return float(roc_auc_score(failed, np.asarray(failure_score, dtype=np.float64)))


def roc_points(scores_neg: np.ndarray, scores_pos: np.ndarray, max_points: int = 200) -> dict:
    """ROC curve of ``scores`` separating positives (higher) from negatives: {"fpr", "tpr", "auroc"}."""
    y = np.r_[np.zeros(len(scores_neg)), np.ones(len(scores_pos))]
    s = np.r_[scores_neg, scores_pos].astype(np.float64)
    s = np.nan_to_num(s, nan=np.inf, posinf=np.finfo(np.float64).max)
    if y.min() == y.max():
        return {"fpr": [], "tpr": [], "auroc": float("nan")}
    fpr, tpr, _ = roc_curve(y, s)
    if len(fpr) > max_points:
        idx = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": np.round(fpr, 4).tolist(), "tpr": np.round(tpr, 4).tolist(), "auroc": float(roc_auc_score(y, s))}


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins on [0, 1]: mean confidence, accuracy and count per bin (empty bins NaN)."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64)
    idx = np.minimum((c * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=c, minlength=n_bins) / count
        acc = np.bincount(idx, weights=ok, minlength=n_bins) / count
    return {"confidence": conf.tolist(), "accuracy": acc.tolist(), "count": count.astype(int).tolist()}


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: count-weighted mean |accuracy - confidence| over equal-width bins."""
    b = reliability_bins(confidence, correct, n_bins)
    count = np.asarray(b["count"], dtype=np.float64)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.nan_to_num(np.asarray(b["accuracy"]) - np.asarray(b["confidence"])))
    return float((gap * count).sum() / count.sum())


def aurc(confidence: np.ndarray, risk: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Area under the risk-coverage curve (lower is better) and the curve (coverage, selective risk).

    Items are accepted from the most to the least confident; the selective risk at coverage k/n is the
    mean risk of the k accepted items; AURC is the mean over k = 1..n.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    keep = np.isfinite(r)
    conf, r = np.nan_to_num(conf[keep], nan=-np.inf), r[keep]
    if r.size == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    order = np.argsort(-conf, kind="stable")
    sel = np.cumsum(r[order]) / np.arange(1, r.size + 1)
    coverage = np.arange(1, r.size + 1) / r.size
    return float(sel.mean()), coverage, sel


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation over the pairs where both are finite; NaN for fewer than 3 pairs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = np.isfinite(x) & np.isfinite(y)
    if m.sum() < 3 or np.ptp(x[m]) == 0 or np.ptp(y[m]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[m], y[m]).statistic)


def _spearman_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along ``axis`` (ties get their mean rank), vectorised for :func:`scipy.stats.bootstrap`."""
    rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))


def spearman_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 4000,
                      seed: int = 0) -> tuple[float, float]:
    """The ``level`` bootstrap interval (BCa, SciPy) of :func:`spearman` over the pairs where both are finite,
    resampling pairs: how far the rank correlation of this many volumes could move on another test set
    drawn the same way. Deterministic for a given ``seed``; (NaN, NaN) for fewer than 8 pairs or no spread.
    The pairs are taken as independent: the benchmark's volumes are 6 subjects in each of 6 styles, so an
    interval that also redraws the styles would be wider.

    >>> lo, hi = spearman_interval(range(36), [v + 8 * (v % 3) for v in range(36)])
    >>> round(spearman(range(36), [v + 8 * (v % 3) for v in range(36)]), 2), lo < 0.86 < hi < 1.0
    (0.86, True)
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = np.isfinite(x) & np.isfinite(y)
    x, y = x[m], y[m]
    if x.size < 8 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    # SciPy >= 1.15 takes ``rng``; older (down to the 1.10 we allow) ``random_state``
    seed_arg = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    lo = hi = float("nan")
    for method in ("BCa", "percentile"):  # BCa fails (NaN) when a resample has no spread
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((x, y), _spearman_along, paired=True, vectorized=True, confidence_level=level,
                                  n_resamples=resamples, method=method, **{seed_arg: np.random.default_rng(seed)})
        lo, hi = res.confidence_interval
        if np.isfinite(lo) and np.isfinite(hi):
            break
    return float(lo), float(hi)
