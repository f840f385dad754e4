"""Training: losses go down, checkpoints resume exactly, bad data gets clear errors, configs validate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gase.errors import InputError, TrainingDataError
from gase.labels import KNEE_LABELS
from gase.training.config import TrainConfig
from gase.training.data import SliceSet, check_pair
from gase.training.loop import Trainer, train
from gase.preprocess import Normalization
from gase.volume import Volume


def _slices(knee_cases, n=3):
    pairs = [(img, lab.array.astype(np.uint8), f"c{i}") for i, (img, lab) in enumerate(knee_cases[:n])]
    return SliceSet.build(pairs, "sagittal", 1.2, Normalization())


@pytest.mark.parametrize("method", ["erm", "randcurve", "gase"])
def test_short_cpu_training_lowers_the_segmentation_loss(knee_cases, method):
    torch.set_num_threads(2)
    sset = _slices(knee_cases)
    trainer = Trainer(TrainConfig(method=method, device="cpu", batch_size=4, crop=64, iterations=40, seed=1),
                      KNEE_LABELS, 5)
    gen = torch.Generator().manual_seed(0)
    fixed = [sset.sample(gen, 4, 64) for _ in range(2)]
    first = np.mean([trainer.step(x, y)["seg"] for x, y in fixed])
    for _ in range(30):
        trainer.step(*sset.sample(trainer.gen, 4, 64))
    last = np.mean([trainer.step(x, y)["seg"] for x, y in fixed])
    assert last < 0.85 * first, (first, last)


def test_gase_step_reports_every_loss(knee_cases):
    sset = _slices(knee_cases, 2)
    trainer = Trainer(TrainConfig(method="gase", device="cpu", batch_size=2, crop=64, gen_every=1, gen_warmup=0.0),
                      KNEE_LABELS, 5)
    losses = trainer.step(*sset.sample(trainer.gen, 2, 64))
    assert set(losses) >= {"seg", "conf", "adv_d", "rec", "adv_g", "gen_seg", "cycle", "div"}
    assert all(np.isfinite(v) for v in losses.values())


def test_checkpoint_resume_continues_exactly(knee_cases, tmp_path):
    torch.set_num_threads(2)
    pairs = [(img, lab.array.astype(np.uint8), f"c{i}") for i, (img, lab) in enumerate(knee_cases[:3])]
    cfg = dict(method="randcurve", batch_size=2, crop=64, device="cpu", seed=3, val_every=1000, checkpoint_every=5)
    # uninterrupted run of 10 iterations
    full = train(pairs[:2], pairs[2:], KNEE_LABELS, tmp_path / "full", TrainConfig(iterations=10, **cfg),
                 anatomy="knee", plane="sagittal")
    # interrupted at 5 (as if killed right after the checkpoint), then resumed to 10
    stop_at = {"n": 0}

    def should_stop():
        stop_at["n"] += 1
        return stop_at["n"] > 5

    from gase.errors import CancelledError

    with pytest.raises(CancelledError, match="resume"):
        train(pairs[:2], pairs[2:], KNEE_LABELS, tmp_path / "resumed", TrainConfig(iterations=10, **cfg),
              anatomy="knee", plane="sagittal", should_stop=should_stop)
    resumed = train(pairs[:2], pairs[2:], KNEE_LABELS, tmp_path / "resumed", TrainConfig(iterations=10, **cfg),
                    anatomy="knee", plane="sagittal")
    assert resumed.iterations == full.iterations == 10
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bad_training_pairs_get_clear_errors(knee_cases):
    img, lab = knee_cases[0]
    arr = lab.array.astype(np.uint8)
    with pytest.raises(TrainingDataError, match="shape"):
        check_pair(img, Volume(arr[:-1], lab.ijk_to_ras), KNEE_LABELS, "a")
    moved = lab.ijk_to_ras.copy()
    moved[0, 3] += 5
    with pytest.raises(TrainingDataError, match="geometry"):
        check_pair(img, Volume(arr, moved), KNEE_LABELS, "a")
    bad = arr.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(TrainingDataError, match=r"label values \[9\]"):
        check_pair(img, Volume(bad, lab.ijk_to_ras), KNEE_LABELS, "a")
    with pytest.raises(TrainingDataError, match="empty"):
        check_pair(img, Volume(np.zeros_like(arr), lab.ijk_to_ras), KNEE_LABELS, "a")
    with pytest.raises(TrainingDataError, match="single slice"):
        check_pair(Volume(img.array[:1], img.ijk_to_ras), Volume(arr[:1], lab.ijk_to_ras), KNEE_LABELS, "a")


def test_too_little_data_is_refused(knee_cases, tmp_path):
    img, lab = knee_cases[0]
    with pytest.raises(TrainingDataError, match="at least 2"):
        train([(img, lab.array.astype(np.uint8), "a")], [], KNEE_LABELS, tmp_path, TrainConfig(device="cpu"),
              anatomy="knee", plane="sagittal")


def test_config_validation():
    with pytest.raises(InputError, match="Unknown training method"):
        TrainConfig(method="magic").validate()
    with pytest.raises(InputError, match="Unknown training settings"):
        TrainConfig.from_json({"learning_rate": 1})
    cfg = TrainConfig.from_json(TrainConfig(iterations=7).to_json())
    assert cfg.iterations == 7 and isinstance(cfg.segmenter_channels, tuple)


def test_a_save_removes_temporary_files_a_killed_save_left(tmp_path):
    from gase.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    left = tmp_path / ".checkpoint-abc123.pt"  # what SIGKILL during torch.save leaves
    left.write_bytes(b"half a file")
    other = tmp_path / "notes.pt"  # the user's own files are not touched
    other.write_bytes(b"mine")
    save_checkpoint({"iteration": 3, "w": torch.ones(2)}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME, "notes.pt"]
    assert load_checkpoint(tmp_path)["iteration"] == 3
    assert other.read_bytes() == b"mine"
