"""Largest-connected-component post-processing: which labels qualify (learned from training labels), the
in-place edit (exact on small volumes, bounded memory on big ones), and the predictor's bookkeeping."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from gase.errors import ModelError
from gase.postprocess import keep_largest_component, largest_component_fraction, single_object_labels


def _two_blobs(shape=(20, 30, 30)):
    labels = np.zeros(shape, np.uint8)
    labels[2:12, 3:15, 3:15] = 3     # the bone: 1440 voxels
    labels[15:18, 20:26, 20:26] = 3  # a stray blob elsewhere: 108 voxels
    labels[5:8, 20:28, 2:6] = 2      # another structure, untouched
    conf = np.full(shape, 0.9, np.float32)
    conf[15:18, 20:26, 20:26] = 0.7
    return labels, conf


def test_single_object_labels_are_learned_from_the_maps():
    a = np.zeros((10, 20, 20), np.uint8)
    a[2:8, 2:8, 2:8] = 1                      # one piece
    a[2:4, 12:14, 2:4] = 2                    # two pieces of equal size
    a[6:8, 12:14, 12:14] = 2
    a[1:9, 10:19, 10:19] = np.where(a[1:9, 10:19, 10:19] == 0, 3, a[1:9, 10:19, 10:19])  # one piece...
    a[0, 0, 0] = 3                            # ...plus a one-voxel speck (< 1%): still one object
    b = np.zeros_like(a)
    b[3:9, 3:9, 3:9] = 1
    assert largest_component_fraction(a == 2) == pytest.approx(0.5)
    assert single_object_labels([a, b], [1, 2, 3, 4]) == [1, 3]  # 4 never occurs: not claimed
    b[0:2, 15:17, 15:17] = 1  # in one map label 1 is in two large pieces: no longer a single object
    assert single_object_labels([a, b], [1, 2, 3]) == [3]


def test_keep_largest_component_exact():
    labels, conf = _two_blobs()
    before = labels.copy()
    n, c = keep_largest_component(labels, conf, 3)
    assert n == 108 and c == pytest.approx(108 * 0.7, rel=1e-5)
    assert (labels[15:18, 20:26, 20:26] == 0).all()
    np.testing.assert_allclose(conf[15:18, 20:26, 20:26], 0.3, rtol=1e-5)  # now "background, unsure"
    np.testing.assert_array_equal(labels[before != 3], before[before != 3])  # nothing else changed
    assert (labels[2:12, 3:15, 3:15] == 3).all()
    assert keep_largest_component(labels, conf, 3) == (0, 0.0)  # idempotent
    assert keep_largest_component(labels, conf, 4) == (0, 0.0)  # absent label


def test_keep_largest_component_on_a_coarse_grid_matches_and_stays_small():
    """With the grid capped (as on a 1024 x 1024 x 400 volume) the stray blob still goes, and the working
    memory is a fraction of the label map's."""
    labels, conf = _two_blobs((60, 240, 240))
    labels[:] = 0
    labels[5:40, 20:120, 20:120] = 3
    labels[50:58, 180:220, 180:220] = 3
    labels[45, 10, 200] = 3
    want = labels.copy()
    want[50:58, 180:220, 180:220] = 0
    want[45, 10, 200] = 0
    tracemalloc.start()
    n, _ = keep_largest_component(labels, conf, 3, max_grid_voxels=labels.size // 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 8 * 40 * 40 + 1
    np.testing.assert_array_equal(labels, want)
    assert peak < labels.nbytes / 2, peak


def test_card_rejects_unknown_postprocessing_labels(tiny_model):
    from gase.model_card import load_card, parse_card

    data = json.loads((tiny_model / "model.json").read_text())
    data["postprocessing"] = {"largest_component": ["femur", "spleen"]}
    with pytest.raises(ModelError, match="postprocessing.largest_component"):
        parse_card(data)
    card = load_card(tiny_model)
    # trained on knee phantoms: femur and tibia are one piece in every training map, cartilage is not
    assert [lab.name for lab in card.largest_component_labels] == ["femur", "tibia"]


def test_predictor_removes_stray_parts_and_keeps_its_numbers_consistent(tiny_model, knee_cases, one_thread):
    from gase.predictor import Predictor

    raw = Predictor.from_folder(tiny_model, device="cpu")
    raw.card.postprocessing = {}
    post = Predictor.from_folder(tiny_model, device="cpu")
    img, _ = knee_cases[1]
    a, b = raw.predict(img), post.predict(img)
    removed = b.extra["postprocessing"]["removed_voxels"]
    changed = a.labels.array != b.labels.array
    assert sum(removed.values()) > 0  # a barely trained model leaves stray bone voxels
    assert changed.sum() == sum(removed.values())
    assert (b.labels.array[changed] == 0).all()
    np.testing.assert_allclose(b.confidence.array[changed], 1 - a.confidence.array[changed], rtol=1e-6)
    for name in ("femur", "tibia"):  # each is one 6-connected piece now
        value = {"femur": 1, "tibia": 3}[name]
        f = largest_component_fraction(b.labels.array == value)
        assert f == 1.0 or np.isnan(f)
    # the mean confidence per structure is that of the kept voxels
    for lab in b.label_table:
        m = b.labels.array == lab.value
        if m.any():
            assert b.reliability_per_label[lab.name] == pytest.approx(float(b.confidence.array[m].mean()), rel=1e-4)
    rep = b.report()
    assert rep["postprocessing"]["kept_largest_component"] == ["femur", "tibia"]
    voxel_ml = float(np.prod(img.spacing)) / 1000
    for name, n in removed.items():
        assert rep["postprocessing"]["removed_ml"][name] == pytest.approx(n * voxel_ml, abs=1e-3)
