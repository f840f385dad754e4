"""The benchmark's metric functions on cases whose answers are known by hand."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks/ package lives at the root

from benchmarks.metrics import (aurc, dice_hd95, ece, failure_auroc, near_structures, spearman,  # noqa: E402
                                spearman_interval)


def _two_boxes(shift: int = 0) -> np.ndarray:
    a = np.zeros((8, 20, 20), np.uint8)
    a[2:6, 2:8, 2 + shift:8 + shift] = 1
    a[2:6, 12:18, 12:18] = 2
    return a


def test_dice_and_hd95_of_a_shifted_box():
    truth = _two_boxes()
    pred = _two_boxes(shift=1)  # label 1 moved one column (2 mm): Dice 2*30/... , HD95 2 mm
    dice, hd = dice_hd95(pred, truth, (1, 2, 3), spacing_kji=(3.0, 1.0, 2.0))
    assert dice[1] == pytest.approx(2 * 4 * 6 * 5 / (2 * 4 * 6 * 6))
    assert dice[2] == pytest.approx(1.0) and hd[2] == pytest.approx(0.0)
    assert hd[1] == pytest.approx(2.0)
    assert np.isnan(dice[3]) and np.isnan(hd[3])  # absent from the truth


def test_missed_structure_gets_dice_zero_and_a_finite_penalty_distance():
    truth = _two_boxes()
    pred = truth.copy()
    pred[pred == 2] = 0
    dice, hd = dice_hd95(pred, truth, (1, 2), spacing_kji=(1.0, 1.0, 1.0))
    assert dice[2] == 0.0
    assert hd[2] == pytest.approx(np.linalg.norm([8, 20, 20]))


def test_ece_is_zero_when_calibrated_and_the_gap_otherwise():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 200_000)
    correct = rng.uniform(0, 1, conf.size) < conf
    assert ece(conf, correct) < 0.01
    assert ece(np.full(1000, 0.9), np.r_[np.ones(600), np.zeros(400)]) == pytest.approx(0.3)


def test_aurc_orders_by_confidence():
    risk = np.array([0.0, 0.1, 0.5, 0.9])
    best, _, _ = aurc(-risk, risk)
    worst, cov, sel = aurc(risk, risk)
    assert best == pytest.approx(np.mean([0.0, 0.05, 0.2, 0.375]))
    assert worst > best and cov[-1] == 1.0 and sel[-1] == pytest.approx(risk.mean())


def test_failure_auroc_and_spearman():
    failed = np.array([0, 0, 1, 1], bool)
    assert failure_auroc(np.array([0.1, 0.2, 0.8, 0.9]), failed) == 1.0
    assert failure_auroc(np.array([0.9, 0.8, 0.2, 0.1]), failed) == 0.0
    assert np.isnan(failure_auroc(np.ones(3), np.zeros(3, bool)))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 2], [3, 4]))


def test_spearman_interval_covers_the_population_value_about_as_often_as_it_says():
    """36 volumes drawn again and again from one population whose rank correlation is known: the 95% interval
    holds it in about 95% of the draws, is narrower for 4 times as many volumes, and is the same each time."""
    rng = np.random.default_rng(7)

    def draw(n):
        x = rng.normal(size=n)
        return x, x + 0.8 * rng.normal(size=n)

    population = spearman(*draw(200_000))
    assert 0.7 < population < 0.8  # like the benchmark's volume rankings
    hits, widths = 0, []
    for _ in range(150):
        lo, hi = spearman_interval(*draw(36), resamples=1000)
        hits += lo <= population <= hi
        widths.append(hi - lo)
    assert 0.87 <= hits / 150 <= 0.99
    lo4, hi4 = spearman_interval(*draw(144), resamples=1000)
    assert hi4 - lo4 < 0.75 * np.median(widths)
    x, y = draw(36)
    assert spearman_interval(x, y) == spearman_interval(list(x), list(y))  # deterministic (fixed seed)
    lo, hi = spearman_interval(x, y)
    assert lo < spearman(x, y) < hi


def test_spearman_interval_is_nan_where_there_is_nothing_to_resample():
    assert all(np.isnan(spearman_interval([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])))  # too few pairs
    assert all(np.isnan(spearman_interval(np.ones(20), np.arange(20.0))))  # no spread
    x = np.arange(20.0)
    y = x.copy()
    y[3] = np.nan  # NaN pairs are left out, as in spearman()
    lo, hi = spearman_interval(x, y)
    assert lo <= 1.0 and hi == pytest.approx(1.0)


def test_near_structures_covers_foreground_plus_margin():
    truth = _two_boxes()
    roi = near_structures(np.zeros_like(truth), truth, margin_voxels=1)
    assert roi[truth > 0].all() and roi.sum() > (truth > 0).sum()
    assert not roi[0, 0, 0]
