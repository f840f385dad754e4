"""The predictor's fast path equals the plain path: batching, dtypes, device-side statistics, padding.

bf16 autocast and channels_last run only on CUDA (``benchmarks/fast_path_check.py`` compares them with
fp32 there); on the CPU these tests pin down everything else the fast path changed: results must not
depend on the batch size, on the input's dtype or memory layout, and must equal a straightforward
slice-by-slice reference (numpy normalisation, softmax, argmax, float64 sums).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gase.errors import InputError
from gase.orientation import reorientation_for
from gase.predictor import CONTENT_FRACTION, CONTENT_LEVEL, MAX_BATCH_PIXELS, Predictor, run_slices, segment
from gase.preprocess import Normalization, resample_slices, working_size
from gase.validity import volume_score
from gase.volume import Volume


@pytest.fixture(scope="module")
def predictor(tiny_model):
    p = Predictor.from_folder(tiny_model, device="cpu")
    p.card.postprocessing = {}  # the network path against its reference; post-processing: test_postprocess.py
    return p


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (see conftest.one_thread)."""


def _reference(predictor: Predictor, volume: Volume) -> dict:
    """The plain path, one slice at a time: what the predictor computed before it was optimised."""
    card, model = predictor.card, predictor.model
    reo = reorientation_for(volume, card.plane)
    canon = reo.forward(volume.array)
    lo, hi = predictor.normalization.intensity_range(volume.array)
    labels, conf, feats, content = [], [], [], []
    with torch.inference_mode():
        for k in range(canon.shape[0]):
            xs = predictor.normalization.apply(np.ascontiguousarray(canon[k:k + 1]), lo, hi)
            content.append((xs > CONTENT_LEVEL).mean() > CONTENT_FRACTION)
            x = torch.from_numpy(xs)[:, None]
            h, w = x.shape[-2:]
            size = working_size((h, w), reo.spacing[1:], card.input_spacing_mm)
            xp = resample_slices(x, size)
            ph, pw = (-size[0]) % model.segmenter.divisor, (-size[1]) % model.segmenter.divisor
            logits, c, f = model(torch.nn.functional.pad(xp, (0, pw, 0, ph)))
            probs = torch.softmax(logits[..., : size[0], : size[1]] + model.logit_offsets, 1)  # the prior offsets
            c = c[..., : size[0], : size[1]]
            if tuple(size) != (h, w):
                probs = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
                c = torch.nn.functional.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
            labels.append(probs.argmax(1)[0].numpy().astype(np.uint8))
            conf.append(c[0, 0].clamp(0, 1).numpy())
            feats.append(f.numpy())
    lab_c, conf_c = np.stack(labels), np.stack(conf)
    n = card.n_classes
    counts = np.bincount(lab_c.ravel(), minlength=n)
    sums = np.bincount(lab_c.ravel(), weights=conf_c.ravel().astype(np.float64), minlength=n)
    scores, _ = predictor.manifold.score(np.concatenate(feats))
    return {"labels": reo.backward(lab_c), "confidence": reo.backward(conf_c),
            "reliability": sums[1:].sum() / counts[1:].sum(), "score": volume_score(scores, np.asarray(content))}


def _assert_close(result, ref: dict, label_agreement: float = 0.9999) -> None:
    agree = float((result.labels.array == ref["labels"]).mean())
    assert agree >= label_agreement, agree
    np.testing.assert_allclose(result.confidence.array, ref["confidence"], atol=1e-4)
    assert result.reliability_overall == pytest.approx(ref["reliability"], abs=1e-5)
    assert result.validity.score == pytest.approx(ref["score"], rel=1e-4)


def test_split_confidence_head_equals_the_segmenter(predictor):
    """The predictor's inference path through the segmenter gives what ``segmenter(x)`` gives."""
    seg = predictor.model.segmenter
    x = torch.rand((3, 1, 96, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = seg(x)
        logits, conf_logit, features = segment(seg, x)
    torch.testing.assert_close(logits, out.logits)
    torch.testing.assert_close(conf_logit, out.conf_logit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, out.features)


def test_fast_path_equals_slice_by_slice_reference(predictor, knee_cases):
    img, _ = knee_cases[4]
    _assert_close(predictor.predict(img), _reference(predictor, img))


def test_resampled_volume_equals_reference(predictor, knee_cases):
    """In-plane spacing unlike the model's: the softmax + interpolation branch."""
    img, _ = knee_cases[3]
    m = img.ijk_to_ras.copy()
    m[:3, :2] *= 1.3  # i and j columns: coarser in-plane voxels, same array
    vol = Volume(img.array, m)
    _assert_close(predictor.predict(vol), _reference(predictor, vol))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_results(predictor, knee_cases, batch_size):
    img, _ = knee_cases[4]
    base = predictor.predict(img)
    other = Predictor(predictor.card, predictor.model, predictor.manifold, torch.device("cpu"), batch_size)
    res = other.predict(img)
    assert float((res.labels.array == base.labels.array).mean()) >= 0.9999
    np.testing.assert_allclose(res.confidence.array, base.confidence.array, atol=1e-4)
    assert res.validity.score == pytest.approx(base.validity.score, rel=1e-4)
    assert res.reliability_overall == pytest.approx(base.reliability_overall, abs=1e-5)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float64, ">f4"])
def test_input_dtypes_give_the_float32_result(predictor, knee_cases, dtype):
    """MR arrives as int16/uint16 (and float64, big-endian from some readers); same values, same result."""
    img, _ = knee_cases[4]
    values = np.round(img.array * (1000.0 / img.array.max())).astype(np.float32)  # representable in every dtype
    ref = predictor.predict(Volume(values, img.ijk_to_ras))
    arr = values.astype(dtype)
    before = arr.copy()
    res = predictor.predict(Volume(arr, img.ijk_to_ras))
    np.testing.assert_array_equal(arr, before)  # the input is only read
    np.testing.assert_array_equal(res.labels.array, ref.labels.array)
    np.testing.assert_array_equal(res.confidence.array, ref.confidence.array)


def test_read_only_and_non_contiguous_inputs(predictor, knee_cases):
    img, _ = knee_cases[4]
    ref = predictor.predict(img)
    ro = img.array.copy()
    ro.flags.writeable = False
    res = predictor.predict(Volume(ro, img.ijk_to_ras))
    np.testing.assert_array_equal(res.labels.array, ref.labels.array)
    fortran = np.asfortranarray(img.array)  # the same voxels in another memory order
    res = predictor.predict(Volume(fortran, img.ijk_to_ras))
    np.testing.assert_array_equal(res.labels.array, ref.labels.array)
    np.testing.assert_allclose(res.confidence.array, ref.confidence.array, atol=1e-6)


def test_padding_to_a_fixed_batch_changes_nothing(predictor, knee_cases):
    """What ``compile=True`` does to the last batch: empty slices appended, results cut off again."""
    img, _ = knee_cases[4]
    reo = reorientation_for(img, predictor.card.plane)
    lo, hi = predictor.normalization.intensity_range(img.array)
    x = torch.from_numpy(predictor.normalization.apply(np.ascontiguousarray(reo.forward(img.array)[:3]), lo, hi))[:, None]
    args = (reo.spacing[1:], predictor.card.input_spacing_mm, predictor.model.segmenter.divisor, False)
    with torch.inference_mode():
        plain = run_slices(predictor.model, x, *args)
        padded = run_slices(predictor.model, x, *args, fixed_batch=8)
    assert padded.labels.shape == plain.labels.shape
    torch.testing.assert_close(padded.confidence, plain.confidence, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.features, plain.features, atol=1e-4, rtol=1e-4)
    assert float((padded.labels == plain.labels).float().mean()) >= 0.9999


def test_sparse_nan_between_sampled_voxels_is_caught(predictor):
    """The intensity range samples the volume; every batch is still checked for NaN/Inf."""
    rng = np.random.default_rng(0)
    arr = rng.normal(100.0, 20.0, (33, 256, 256)).astype(np.float32)  # > 2M voxels: sampled every 2nd row
    arr[5, 101, 7] = np.nan  # an odd row: not in the sample
    arr[20, 33, 200] = np.inf
    m = np.array([[0.0, 0.0, 3.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    Normalization().intensity_range(arr)  # the sample alone does not see them
    with pytest.raises(InputError, match="2 NaN or infinite"):
        predictor.predict(Volume(arr, m))


def test_intensity_range_never_copies_a_whole_view():
    import tracemalloc

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 1000, (64, 256, 256)).astype(np.int16)
    view = arr.transpose(2, 1, 0)[::-1]  # how a reoriented volume arrives: not contiguous
    tracemalloc.start()
    lo, hi = Normalization().intensity_range(view, max_samples=200_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < arr.nbytes / 2, peak  # a copy of the view alone would be arr.nbytes
    lo2, hi2 = Normalization().intensity_range(arr, max_samples=200_000)
    assert lo == pytest.approx(lo2, abs=5) and hi == pytest.approx(hi2, abs=5)


def test_batches_are_bounded_by_pixels(predictor):
    assert predictor.batch_for((64, 64), (64, 64)) == 8  # small slices: the batch size
    assert predictor.batch_for((384, 384), (384, 384)) == max(1, MAX_BATCH_PIXELS["cpu"] // (384 * 384))
    assert predictor.batch_for((1024, 1024), (1024, 1024)) == 1
    assert predictor.batch_for((64, 64), (2048, 2048)) == 1  # the working size counts too


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_batch_size_must_be_a_positive_whole_number(predictor, bad):
    with pytest.raises(InputError, match="batch size"):
        Predictor(predictor.card, predictor.model, predictor.manifold, torch.device("cpu"), bad)


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu(predictor, knee_cases):
    """A CUDA OOM can't be produced on the CPU: a network that raises it stands in for the GPU."""
    img, _ = knee_cases[4]
    ref = predictor.predict(img)
    p = Predictor(predictor.card, predictor.model, predictor.manifold, torch.device("cpu"), 8)
    calls = []

    def oom_above_two(x):
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return p.model(x)

    p._forward = oom_above_two
    messages = []
    res = p.predict(img, progress=lambda f, m: messages.append(m))
    assert calls[:3] == [8, 4, 2] and set(calls[2:]) == {2}
    assert any("retrying with 2 slices per batch" in m for m in messages)
    assert float((res.labels.array == ref.labels.array).mean()) >= 0.9999
    np.testing.assert_allclose(res.confidence.array, ref.confidence.array, atol=1e-4)
    assert res.stability_overall == pytest.approx(ref.stability_overall, abs=1e-3)  # its passes: 2 slices too

    def always_oom(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    p._forward = always_oom
    messages.clear()
    res = p.predict(img, progress=lambda f, m: messages.append(m))
    assert any("continuing on the CPU" in m for m in messages)
    assert res.device == "cpu"
    np.testing.assert_array_equal(res.labels.array, ref.labels.array)


def test_percentiles_by_sorting_equal_numpy():
    """The GPU path of the intensity range (sort + linear interpolation), run here on the CPU."""
    from gase.preprocess import _percentiles_gpu

    values = np.random.default_rng(3).gamma(2.0, 100.0, 100_001).astype(np.float32)
    got = _percentiles_gpu(values, (0.5, 99.5), "cpu")
    np.testing.assert_allclose(got, np.percentile(values, [0.5, 99.5]), rtol=1e-6)
