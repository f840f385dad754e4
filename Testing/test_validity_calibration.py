"""The validity threshold: calibrated on held-out in-distribution volumes, robust to one odd subject."""
from __future__ import annotations

import numpy as np
import pytest

from gase.validity import calibrate_threshold, heldout_volume_scores


def _slices(volume_scores, seed=0):
    """Slice scores whose median is each given volume score (plus NaNs for slices without content)."""
    rng = np.random.default_rng(seed)
    out = []
    for v in volume_scores:
        s = v + np.concatenate([-rng.random(10), [0.0], rng.random(10)])
        out.append(np.concatenate([s, [np.nan, np.inf]]))
    return out


def test_volume_scores_are_medians_of_finite_slices():
    assert heldout_volume_scores(_slices([1.5, 2.0])) == pytest.approx([1.5, 2.0])
    assert heldout_volume_scores([np.array([np.nan, np.nan])]) == []


def test_threshold_is_upper_quartile_with_margin():
    held = [1.375, 1.407, 1.665, 1.693, 2.011]  # the knee benchmark model's held-out volume scores
    thr = calibrate_threshold(_slices(held))
    assert thr == pytest.approx(1.1 * 1.693)
    assert thr > max([1.21, 1.51, 1.59, 1.26, 1.3, 1.29])  # its source-style test volumes stay valid
    assert thr < 1.91  # the lowest OOD volume (CT-like rendering) stays flagged


def test_one_outlying_subject_does_not_open_the_gate():
    held = [2.307, 2.762, 3.551, 3.724, 12.392]  # pelvis: one training subject unlike the others
    thr = calibrate_threshold(_slices(held))
    assert 3.66 < thr < 7.85  # above every source-style test volume, below every OOD volume
    assert calibrate_threshold(_slices(held), quantile=1.0, margin=1.0) == pytest.approx(12.392)


def test_no_heldout_scores_is_an_error():
    with pytest.raises(ValueError, match="no held-out"):
        calibrate_threshold([np.array([np.nan])])
