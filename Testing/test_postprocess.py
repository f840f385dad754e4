"""Largest-connected-component post-processing and the opening that follows it: which labels qualify and
which ball radius (learned from training labels), the in-place edits (exact on small volumes, bounded memory
on big ones), and the predictor's bookkeeping."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from gase.errors import ModelError
from gase.postprocess import (OPENING_RADII_MM, fit_postprocessing, keep_largest_component, keep_opened_component,
                              largest_component_fraction, opened_fraction, opening_radii, single_object_labels)


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


def _bone_with_a_neck(shape=(24, 60, 60)):
    """A 16 x 24 x 24 voxel bone (label 3) with a 12 x 12 x 12 false region hanging on it by a neck 2 voxels
    wide (one connected object, so the largest-component rule keeps it all), and a thin 2-voxel plate of
    label 2. Spacing 1 mm."""
    labels = np.zeros(shape, np.uint8)
    labels[4:20, 6:30, 6:30] = 3
    labels[10:12, 30:34, 16:18] = 3           # the neck
    labels[6:18, 34:46, 10:22] = 3            # what hangs on it
    labels[4:20, 40:42, 36:56] = 2            # a plate: thinner than any ball
    conf = np.full(shape, 0.9, np.float32)
    conf[6:18, 34:46, 10:22] = 0.6
    return labels, conf


def test_keep_opened_component_cuts_at_a_neck_and_keeps_the_rest():
    labels, conf = _bone_with_a_neck()
    before, conf0 = labels.copy(), conf.copy()
    assert keep_largest_component(labels, conf, 3) == (0, 0.0)  # one piece: the component rule keeps it all
    n, c = keep_opened_component(labels, conf, 3, 3.0, (1.0, 1.0, 1.0))
    gone = (before == 3) & (labels != 3)
    assert n == int(gone.sum()) and n >= 12 ** 3
    assert (labels[6:18, 34:46, 10:22] == 0).all()       # the hanging region went, neck with it
    bone = labels[4:20, 6:30, 6:30] == 3
    # the bone stayed but for its edges: an opening rounds a box's edges to the ball's radius (on smooth
    # anatomy the 99% rule bounds that loss); the middle of every face stays
    assert bone[3:-3, 3:-3, 3:-3].all() and bone.mean() > 0.85
    assert bone[:, 12, 12].all() and bone[8, :, 12].all() and bone[8, 12, :].all()
    assert (labels[gone] == 0).all()
    np.testing.assert_allclose(conf[gone], 1 - conf0[gone], rtol=1e-6)
    assert c == pytest.approx(float(conf0[gone].sum(dtype=np.float64)), rel=1e-6)
    np.testing.assert_array_equal(labels[before != 3], before[before != 3])  # other labels untouched
    assert keep_opened_component(labels, conf, 3, 3.0, (1.0, 1.0, 1.0)) == (0, 0.0)  # idempotent
    # a structure thinner than the ball is left as it is; an absent one too
    assert keep_opened_component(labels, conf, 2, 3.0, (1.0, 1.0, 1.0)) == (0, 0.0)
    assert keep_opened_component(labels, conf, 4, 3.0, (1.0, 1.0, 1.0)) == (0, 0.0)


def test_opening_ball_is_measured_in_mm():
    """On 4 mm slices a 3 mm ball is flat (one slice): the same bone keeps its ends along the slice axis,
    and the neck still goes."""
    labels, conf = _bone_with_a_neck()
    keep_opened_component(labels, conf, 3, 3.0, (4.0, 1.0, 1.0))
    assert (labels[6:18, 34:46, 10:22] == 0).all()
    assert (labels[4:20, 12, 12] == 3).all()  # every slice of the bone keeps its middle, the end slices too
    labels, conf = _bone_with_a_neck()
    # a ball of 13 mm fits nowhere on 1 mm voxels (the bone is 16 voxels thick): nothing is removed
    assert keep_opened_component(labels, conf, 3, 13.0, (1.0, 1.0, 1.0)) == (0, 0.0)


def test_keep_opened_component_on_a_coarse_grid_still_cuts():
    labels, conf = _bone_with_a_neck((48, 120, 120))
    big = np.zeros_like(labels)
    big[8:40, 12:60, 12:60] = 3               # the bone, 32 x 48 x 48
    big[20:24, 60:64, 32:36] = 3              # a 4-voxel neck
    big[12:36, 64:100, 20:44] = 3             # the false region
    conf = np.full(big.shape, 0.8, np.float32)
    tracemalloc.start()
    n, _ = keep_opened_component(big, conf, 3, 4.0, (1.0, 1.0, 1.0), max_grid_voxels=big.size // 40)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (big[12:36, 68:100, 20:44] == 0).all()  # the region beyond the neck's reach went
    assert (big[8:40, 12:60, 12:60] == 3).mean() > 0.9 and (big[8:40, 36, 36] == 3).all()
    assert n >= 24 * 32 * 24
    assert peak < 4 * big.size, peak  # distance maps of the coarse grid (~20 bytes a cell), not of the volume


def test_opening_radii_are_learned_from_the_maps():
    """The learned radius is the largest of OPENING_RADII_MM whose opening keeps >= 99% of the structure in
    every map (stopping at the first that fails); a structure no ball fits in gets none."""
    k, j, i = np.mgrid[:30, :60, :60]
    truth = np.zeros((30, 60, 60), np.uint8)
    truth[((k - 15) / 12.0) ** 2 + ((j - 30) / 20.0) ** 2 + ((i - 30) / 20.0) ** 2 <= 1] = 3  # a smooth bone
    truth[2:28, 55:57, 5:50] = 2              # a plate two voxels thick
    sp = (1.0, 1.0, 1.0)
    assert opened_fraction(truth == 3, 3.0, sp) > 0.99
    assert opened_fraction(truth == 2, 1.5, sp) == 0.0   # the ball does not fit in the plate
    assert np.isnan(opened_fraction(truth == 4, 1.5, sp))
    spur = truth.copy()
    spur[14:16, 2:10, 29:31] = 3              # the bone with a thin spur in one map
    spur[14:16, 10:14, 29:31] = 3
    radii = opening_radii([(truth, sp), (spur, sp)], [2, 3])
    assert 2 not in radii
    r = radii[3]
    assert all(opened_fraction(m == 3, x, sp) >= 0.99 for m in (truth, spur) for x in OPENING_RADII_MM if x <= r)
    bigger = [x for x in OPENING_RADII_MM if x > r]
    assert not bigger or min(opened_fraction(m == 3, bigger[0], sp) for m in (truth, spur)) < 0.99
    # the spur is 0.2% of the bone: it does not stop the radius; a plate of ~3% of it, two voxels thick,
    # is lost to any ball: that map allows no opening at all
    plate = truth.copy()
    plate[14:16, 45:60, 20:40] = 3
    assert 0.01 < opened_fraction(truth == 3, 1.5, sp) - opened_fraction(plate == 3, 1.5, sp)
    assert opening_radii([(truth, sp), (plate, sp)], [3]) == {}
    # a big map is measured on a coarsened grid (as the predictor opens big volumes): the bone still gets a radius
    coarse = opening_radii([(truth, sp), (spur, sp)], [2, 3], max_grid_voxels=truth.size // 8)
    assert coarse[3] in OPENING_RADII_MM and coarse[3] >= r - 1
    post = fit_postprocessing([(truth, sp), (spur, sp)], _table())
    assert post["largest_component"] == ["cartilage", "bone"] and post["opening_mm"] == {"bone": r}


def _table():
    from gase.labels import LabelInfo

    return (LabelInfo(2, "cartilage", (0.5, 0.5, 0.9)), LabelInfo(3, "bone", (0.9, 0.8, 0.5)))


def test_card_checks_the_opening_radii(tiny_model):
    from gase.model_card import load_card, parse_card

    data = json.loads((tiny_model / "model.json").read_text())
    card = load_card(tiny_model)
    # the tiny model learned its radii at training, from its own training and validation label maps
    assert set(card.opening_mm) <= {lab.name for lab in card.largest_component_labels}
    assert all(r in OPENING_RADII_MM for r in card.opening_mm.values())
    for bad in ({"femoral cartilage": 2.0}, {"femur": -1.0}, {"femur": "wide"}, ["femur"]):
        data["postprocessing"] = {"largest_component": ["femur", "tibia"], "opening_mm": bad}
        with pytest.raises(ModelError, match="opening_mm"):
            parse_card(data)


def test_predictor_applies_the_opening_and_reports_it(tiny_model, knee_cases, one_thread):
    from gase.predictor import Predictor

    plain = Predictor.from_folder(tiny_model, device="cpu")
    plain.card.postprocessing = {"largest_component": ["femur", "tibia"]}
    opened = Predictor.from_folder(tiny_model, device="cpu")
    opened.card.postprocessing = {"largest_component": ["femur", "tibia"], "opening_mm": {"femur": 1.5, "tibia": 3.0}}
    img, _ = knee_cases[1]
    a, b = plain.predict(img), opened.predict(img)
    changed = a.labels.array != b.labels.array
    removed_a = a.extra["postprocessing"]["removed_voxels"]
    removed_b = b.extra["postprocessing"]["removed_voxels"]
    assert b.extra["postprocessing"]["opening_mm"] == {"femur": 1.5, "tibia": 3.0}
    assert a.extra["postprocessing"]["opening_mm"] == {}
    assert changed.any()  # a barely trained model leaves necks and spurs on its bones
    assert sum(removed_b.values()) - sum(removed_a.values()) == int(changed.sum())
    assert (b.labels.array[changed] == 0).all()
    np.testing.assert_allclose(b.confidence.array[changed], 1 - a.confidence.array[changed], rtol=1e-6)
