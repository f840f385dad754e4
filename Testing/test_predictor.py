"""Predictor: outputs in range and in the input geometry, orientation invariance, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from gase.errors import CancelledError, InputError
from gase.predictor import Predictor
from gase.volume import Volume


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor.from_folder(tiny_model, device="cpu")


def test_outputs_in_range_and_geometry(predictor, knee_cases):
    img, _ = knee_cases[4]
    res = predictor.predict(img)
    assert res.labels.array.dtype == np.uint8 and res.labels.shape == img.shape
    assert res.confidence.array.dtype == np.float32 and res.confidence.shape == img.shape
    np.testing.assert_array_equal(res.labels.ijk_to_ras, img.ijk_to_ras)
    c = res.confidence.array
    assert c.min() >= 0.0 and c.max() <= 1.0
    assert set(np.unique(res.labels.array)) <= {0, 1, 2, 3, 4}
    assert len(res.validity.slice_scores) == img.shape[0]  # knee: k is the sagittal slice axis
    rep = res.report()
    assert set(rep["validity"]) >= {"valid", "score", "threshold"}
    assert set(rep["reliability"]["per_label"]) == {"femur", "femoral cartilage", "tibia", "tibial cartilage"}


def test_same_input_same_output(predictor, knee_cases):
    img, _ = knee_cases[4]
    a, b = predictor.predict(img), predictor.predict(img)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    np.testing.assert_array_equal(a.confidence.array, b.confidence.array)
    assert a.validity.score == b.validity.score


def test_orientation_invariance_in_world_space(predictor, knee_cases):
    """The same knee stored axially-permuted and flipped gives the same labels at the same world points."""
    img, _ = knee_cases[4]
    ref = predictor.predict(img)
    # permute array axes (k,j,i) -> (j,i,k) and flip one: update IJK-to-RAS to keep world positions
    arr = np.transpose(img.array, (1, 2, 0))[:, ::-1, :]
    m = img.ijk_to_ras
    cols = m[:3, :3]
    # new voxel axes: i' = old k, j' = old i (flipped), k' = old j
    new_cols = np.stack([cols[:, 2], -cols[:, 0], cols[:, 1]], axis=1)
    origin = m[:3, 3] + cols[:, 0] * (img.shape[2] - 1)
    m2 = np.eye(4)
    m2[:3, :3] = new_cols
    m2[:3, 3] = origin
    moved = Volume(np.ascontiguousarray(arr), m2)
    # sanity: voxel (i',j',k') = (k, I-1-i, j) of the original sits at the same RAS point
    k, j, i = 2, 3, 4
    p_old = m @ np.array([i, j, k, 1.0])
    p_new = m2 @ np.array([k, img.shape[2] - 1 - i, j, 1.0])
    np.testing.assert_allclose(p_old, p_new)
    res = predictor.predict(moved)
    back = np.transpose(res.labels.array[:, ::-1, :], (2, 0, 1))
    np.testing.assert_array_equal(back, ref.labels.array)
    np.testing.assert_allclose(np.transpose(res.confidence.array[:, ::-1, :], (2, 0, 1)), ref.confidence.array,
                               atol=1e-5)
    assert res.validity.score == pytest.approx(ref.validity.score, rel=1e-4)


def test_cancel_stops_without_output(predictor, knee_cases):
    img, _ = knee_cases[4]
    with pytest.raises(CancelledError):
        predictor.predict(img, cancel=lambda: True)


@pytest.mark.parametrize("array, message", [
    (np.full((8, 40, 40), 3.0, np.float32), "constant"),
    (np.where(np.arange(8 * 40 * 40).reshape(8, 40, 40) % 7 == 0, np.nan, 1.0).astype(np.float32), "NaN"),
])
def test_bad_voxels_get_clear_errors(predictor, array, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(Volume(array, np.eye(4)))


def test_label_counts_are_exact_and_bounded_in_memory():
    """The report's structure volumes are counted slab by slab: no int64 copy of the whole label map."""
    import tracemalloc

    from gase.result import label_voxel_counts

    labels = np.random.default_rng(0).integers(0, 5, size=(64, 256, 256), dtype=np.uint8)
    tracemalloc.start()
    try:
        counts = label_voxel_counts(labels, slab_voxels=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(counts[:5], np.bincount(labels.ravel(), minlength=5))
    assert counts[5:].sum() == 0 and counts.sum() == labels.size
    assert peak < labels.nbytes // 4, f"{peak / 2**20:.1f} MiB for a {labels.nbytes / 2**20:.0f} MiB label map"
    assert label_voxel_counts(labels[:0]).sum() == 0


def test_validity_distances_explain_the_score(predictor, knee_cases):
    """Each slice's two distances (within / off the style manifold) average to its score; the model keeps
    its training slices' distances (about 1 each) for the picture that explains the verdict."""
    result = predictor.predict(knee_cases[4][0])
    v = result.validity
    assert v.distances_2d.shape == (len(v.slice_scores), 2)
    finite = np.isfinite(v.slice_scores)
    assert finite.sum() > 5
    np.testing.assert_allclose(v.distances_2d[finite].mean(axis=1), v.slice_scores[finite], rtol=1e-5)
    assert (v.distances_2d[finite] >= 0).all()
    ref = predictor.manifold.reference_distances
    assert ref.shape == predictor.manifold.reference_2d.shape
    assert 0.7 < float(np.median(ref[:, 0])) < 1.4 and 0.7 < float(np.median(ref[:, 1])) < 1.4
    report = result.report()
    assert np.asarray(report["manifold"]["distances_2d"]).shape == v.distances_2d.shape
    assert np.asarray(report["manifold"]["reference_distances"]).shape == ref.shape


def test_structures_far_larger_than_in_training_make_the_input_invalid(predictor, knee_cases):
    """The card's largest training total (mL of labelled structures) bounds what a valid input may show."""
    img, lab = knee_cases[4]
    card_fg = predictor.card.validity["training_foreground_ml"]
    largest = max(float(np.count_nonzero(l.array)) * float(np.prod(i.spacing)) / 1000 for i, l in knee_cases[:4])
    assert card_fg == pytest.approx(largest, rel=1e-3)  # train + val maps of the tiny model (cases 0-3)
    normal = predictor.predict(img).validity
    assert normal.foreground_ml > 0 and normal.training_foreground_ml == card_fg
    try:
        predictor.card.validity["training_foreground_ml"] = normal.foreground_ml / 2.4  # (the tiny model over-
        assert predictor.predict(img).validity.size_valid                              # segments: sizes set here)
        predictor.card.validity["training_foreground_ml"] = normal.foreground_ml / 3.5
        shrunk = predictor.predict(img).validity
        assert not shrunk.valid and not shrunk.size_valid
        assert shrunk.score == pytest.approx(normal.score)
        assert any("3.5x the largest total" in r for r in shrunk.reasons())
        del predictor.card.validity["training_foreground_ml"]  # a model saved before the check
        assert predictor.predict(img).validity.foreground_ratio is None
    finally:
        predictor.card.validity["training_foreground_ml"] = card_fg


def test_an_inverted_image_is_outside_the_competence_of_an_mr_model(predictor):
    """A negative image (bright air in the corners) is flagged whatever its style score, with its reason."""
    from gase.phantoms import make_case, make_ood
    from gase.result import background_level

    inv = make_ood("inverted", "knee", 3, scale=0.5)
    v = predictor.predict(inv).validity
    assert v.background_level > 0.95 and not v.polarity_valid and not v.valid
    assert any(r.startswith("it looks inverted (a negative image)") for r in v.reasons())
    assert v.to_json()["background_level"] == pytest.approx(v.background_level, abs=1e-4)
    # MR of every phantom style has dark corners; a CT is left to its own check; a single slice works
    for style in ("pd_fse", "t1_se", "pd_fs", "flash_we", "stir", "pd_fse_1t_lowsnr"):
        img = make_case("knee", style, 7, scale=0.5)[0]
        assert background_level(img.array) < 0.2, style
    assert predictor.predict(make_case("knee", "pd_fse", 7, scale=0.5)[0]).validity.polarity_valid
    assert background_level(make_ood("ct", "knee", 3, scale=0.5).array) < 0
    assert background_level(inv.array[:1]) > 0.95
    assert background_level(np.zeros((4, 4, 4), np.float32)) is None  # nothing to compare with
    assert background_level(np.full((4, 4, 4), 7.0, np.float32)) is None  # no contrast: not "inverted"
    nan_corner = make_case("knee", "pd_fse", 7, scale=0.5)[0].array.astype(np.float32)
    nan_corner[:3, :3, :3] = np.nan  # one corner of NaN voxels: the other seven decide
    assert 0 < background_level(nan_corner) < 0.2
    # subsampled on a big volume, the same verdict
    big = np.full((60, 60, 60), 100.0, np.float32)
    big[:, :, :20] = 40.0  # some contrast (an image without any is not measured)
    for k in (slice(0, 6), slice(54, 60)):
        for j in (slice(0, 6), slice(54, 60)):
            for i in (slice(0, 6), slice(54, 60)):
                big[k, j, i] = 5.0  # dark air in every corner
    big[54:, 54:, 54:] = 100.0  # ... but one: the darkest corner decides
    assert background_level(big) == pytest.approx(0.05)
    assert background_level(big, max_voxels=1000) == pytest.approx(0.05)


def test_a_ct_is_outside_the_competence_of_an_mr_model(predictor):
    """Hounsfield units (air -1000, fat -100) are not an MR image, however familiar the style looks."""
    from gase.phantoms import make_ood
    from gase.result import fraction_below

    ct = make_ood("ct", "knee", 3, scale=0.5)
    v = predictor.predict(ct).validity
    assert v.ct_fraction > 0.3 and not v.modality_valid and not v.valid
    assert v.reasons()[0].startswith("it looks like a CT, not an MR image: ")
    assert v.to_json()["ct_fraction"] == pytest.approx(v.ct_fraction, abs=1e-4)
    # an MR image (non-negative), and the same image z-scored (negative, but nowhere near air in HU)
    mr = make_ood("motion", "knee", 3, scale=0.5)
    assert predictor.predict(mr).validity.ct_fraction == 0.0
    z = (mr.array - mr.array.mean()) / mr.array.std()
    assert predictor.predict(Volume(z.astype(np.float32), mr.ijk_to_ras)).validity.modality_valid
    # counted slab by slab, the same as at once; unsigned images are never counted
    a = np.linspace(-1000, 1000, 7 * 5 * 4, dtype=np.float32).reshape(7, 5, 4)
    assert fraction_below(a, -500.0, slab_voxels=20) == pytest.approx(float((a < -500).mean()))
    assert fraction_below(np.zeros((3, 4, 4), np.uint16), -500.0) == 0.0
