"""A ``gase train`` killed with SIGKILL resumes from its last checkpoint and ends with the same model as an
uninterrupted run of the same seed (checkpoints are atomic and carry the random streams)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 3
ITERATIONS = 15

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL of a process group is POSIX")


def _command(data: Path, config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gase.cli", "train", "--images", str(data / "images"), "--labels",
            str(data / "labels"), "--out", str(out), "--config", str(config), "--method", "erm", "--device", "cpu",
            "--val-fraction", "0.25", "--seed", "4", "--checkpoint-every", str(CHECKPOINT_EVERY), "--progress-json"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def setup(tmp_path):
    from gase.phantoms import SOURCE_STYLE, write_cases

    data = tmp_path / "data"
    write_cases("knee", SOURCE_STYLE["knee"], 4, 0, data, scale=0.5)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"iterations": ITERATIONS, "batch_size": 2, "crop": 64, "val_every": 1000}))
    return data, config


def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(setup, tmp_path):
    data, config = setup
    out = tmp_path / "model"
    proc = subprocess.Popen(_command(data, config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    last_checkpoint = None
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] == "checkpoint":
                    last_checkpoint = event["iteration"]
                    if last_checkpoint >= 2 * CHECKPOINT_EVERY:
                        break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no handler, no cleanup: the hardest way to die
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert last_checkpoint is not None and last_checkpoint >= 2 * CHECKPOINT_EVERY, proc.stderr.read()[-2000:]
    assert not (out / "model.json").exists()
    saved = torch.load(out / "training" / "checkpoint.pt", weights_only=True)  # whole, loadable (atomic)
    assert saved["iteration"] >= last_checkpoint

    rerun = subprocess.run(_command(data, config, out), capture_output=True, text=True, env=_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    events = _events(rerun.stdout)
    resumed = [e for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1
    # at most one checkpoint interval is lost: it resumes from the last checkpoint written
    assert resumed[0]["iteration"] == saved["iteration"] and resumed[0]["iteration"] % CHECKPOINT_EVERY == 0
    assert events[-1]["event"] == "done" and events[-1]["iterations"] == ITERATIONS
    assert json.loads((out / "model.json").read_text())["training"]["iterations"] == ITERATIONS

    # Seeds make runs repeatable: the killed-and-resumed run ends where an uninterrupted one does.
    straight = subprocess.run(_command(data, config, tmp_path / "straight"), capture_output=True, text=True,
                              env=_env(), timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(str(out / "weights.safetensors"))
    b = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
