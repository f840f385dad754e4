"""``gase train`` from the command line: each kind of bad training data gets one clear error (exit code 2,
no traceback), a stop file stops cleanly (checkpoint, exit code 3), and the live logs behave."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gase.cli import EXIT_CANCELLED, EXIT_USER_ERROR, main
from gase.errors import TrainingDataError
from gase.labels import KNEE_LABELS
from gase.training.data import check_same_anatomy
from gase.volume import Volume, write_volume

TINY = {"iterations": 200, "batch_size": 2, "crop": 64, "val_every": 1000, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def cases():
    from gase.phantoms import SOURCE_STYLE, make_case

    return {"knee": [make_case("knee", SOURCE_STYLE["knee"], s, scale=0.5) for s in range(3)],
            "pelvis": [make_case("pelvis", SOURCE_STYLE["pelvis"], s, scale=0.5) for s in range(2)]}


def _folders(tmp_path: Path, pairs) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for n, (image, lab) in enumerate(pairs):
        write_volume(image, images / f"case{n}.nrrd")
        write_volume(lab, labels / f"case{n}.nrrd")
    return images, labels


def _train(tmp_path: Path, images: Path, labels: Path, *extra: str, config=TINY) -> list[str]:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    return ["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "model"),
            "--config", str(cfg), "--device", "cpu", "--method", "erm", "--progress-json", *extra]


def _error(capsys) -> str:
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "error", events
    return events[-1]["message"]


def _bad(cases, what: str):
    """Three knee pairs with one broken the ``what`` way."""
    pairs = [(img, lab) for img, lab in cases["knee"]]
    img, lab = pairs[1]
    arr = lab.array.copy()
    if what == "geometry":
        moved = lab.ijk_to_ras.copy()
        moved[:3, 3] += 7.0
        pairs[1] = (img, Volume(arr, moved))
    elif what == "shape":
        pairs[1] = (img, Volume(arr[:, :-3], lab.ijk_to_ras))
    elif what == "unknown label":
        arr[arr == 4] = 9
        pairs[1] = (img, Volume(arr, lab.ijk_to_ras))
    elif what == "empty":
        pairs[1] = (img, Volume(np.zeros_like(arr), lab.ijk_to_ras))
    elif what == "single slice":
        k = int(np.argmax((arr > 0).sum(axis=(1, 2))))
        pairs[1] = (Volume(img.array[k:k + 1], img.ijk_to_ras), Volume(arr[k:k + 1], lab.ijk_to_ras))
    return pairs


@pytest.mark.parametrize("what, message", [
    ("geometry", "different geometry"),
    ("shape", "label shape"),
    ("unknown label", r"label values \[9\] are not in the label table"),
    ("empty", "label map is empty"),
    ("single slice", "single slice"),
])
def test_bad_training_pairs_fail_with_a_clear_message(cases, tmp_path, capsys, what, message):
    images, labels = _folders(tmp_path, _bad(cases, what))
    assert main(_train(tmp_path, images, labels)) == EXIT_USER_ERROR
    text = _error(capsys)
    assert "case1" in text
    import re

    assert re.search(message, text), text
    assert not (tmp_path / "model" / "training").exists()  # refused before any training


def test_mixed_anatomies_are_refused(cases, tmp_path, capsys):
    pairs = [cases["knee"][0], cases["knee"][1], cases["pelvis"][0], cases["pelvis"][1]]
    images, labels = _folders(tmp_path, pairs)
    table = tmp_path / "labels.json"
    table.write_text(json.dumps([{"value": v, "name": f"structure {v}", "color": [0.5, 0.5, 0.5]} for v in range(1, 6)]))
    assert main(_train(tmp_path, images, labels, "--anatomy", "mixed", "--labels-json", str(table))) == EXIT_USER_ERROR
    text = _error(capsys)
    assert "Mixed anatomies" in text and "times larger" in text


def test_label_sets_that_differ_are_mixed_anatomies(cases):
    (img_a, lab_a), (img_b, lab_b) = cases["knee"][:2]
    bones_only = np.where(np.isin(lab_b.array, (1, 3)), lab_b.array, 0).astype(np.uint8)
    cartilage_only = np.where(np.isin(lab_a.array, (2, 4)), lab_a.array, 0).astype(np.uint8)
    with pytest.raises(TrainingDataError, match="label different structures"):
        check_same_anatomy([(img_a, cartilage_only, "a"), (img_b, bones_only, "b")], KNEE_LABELS)
    same = [(img, lab.array, f"k{n}") for n, (img, lab) in enumerate(cases["knee"])]
    check_same_anatomy(same, KNEE_LABELS)  # three knees: fine
    check_same_anatomy(same[:2] + [(same[2][0], np.where(same[2][1] == 4, 0, same[2][1]), "k2")], KNEE_LABELS)


def test_too_little_data_and_missing_labels(cases, tmp_path, capsys):
    images, labels = _folders(tmp_path, cases["knee"][:1])
    assert main(_train(tmp_path, images, labels)) == EXIT_USER_ERROR
    assert "at least 2" in _error(capsys)
    images, labels = _folders(tmp_path / "b", cases["knee"][:3])
    (labels / "case2.nrrd").unlink()
    assert main(_train(tmp_path, images, labels)) == EXIT_USER_ERROR
    assert "No label file for image(s) case2" in _error(capsys)


def test_checkpoint_every_must_be_positive(cases, tmp_path, capsys):
    images, labels = _folders(tmp_path, cases["knee"][:3])
    assert main(_train(tmp_path, images, labels, "--checkpoint-every", "0")) == EXIT_USER_ERROR
    assert "--checkpoint-every" in _error(capsys)


def test_context_slices_must_be_odd_and_reach_the_config(cases, tmp_path, capsys):
    from gase.cli import build_parser
    from gase.training.run import build_config

    images, labels = _folders(tmp_path, cases["knee"][:3])
    assert main(_train(tmp_path, images, labels, "--context-slices", "2")) == EXIT_USER_ERROR
    assert "context_slices must be an odd number" in _error(capsys)
    args = build_parser().parse_args(_train(tmp_path, images, labels, "--context-slices", "3"))
    assert build_config(args).context_slices == 3


def test_stop_file_stops_with_a_checkpoint_and_exit_code_3(cases, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    images, labels = _folders(tmp_path, cases["knee"][:3])
    stop = tmp_path / "stop"
    stop.write_text("left over from an earlier stop")  # must not stop the new run at once

    def request_stop():
        time.sleep(4.0)
        stop.write_text("stop")

    threading.Thread(target=request_stop, daemon=True).start()
    code = main(_train(tmp_path, images, labels, "--stop-file", str(stop)))
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == EXIT_CANCELLED, events[-3:]
    stopped = [e for e in events if e["event"] == "stopped"]
    assert len(stopped) == 1 and 0 < stopped[0]["iteration"] < TINY["iterations"]
    saved = torch.load(tmp_path / "model" / "training" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == stopped[0]["iteration"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_stop_request_on_sigterm(tmp_path):
    from gase.training.stopping import StopRequest

    with StopRequest(tmp_path / "stop") as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_scalar_log_is_live_and_drops_rows_after_a_resume(tmp_path):
    from gase.training.reporting import ScalarLog

    log = ScalarLog(tmp_path, fresh=True)
    for it in (10, 20, 30):
        log({"event": "progress", "iteration": it, "seconds": it / 10, "eta_s": 1.0, "losses": {"seg": 1.0 / it}})
    log({"event": "validation", "iteration": 20, "dice": {"mean": 0.5}})
    rows = (tmp_path / "scalars.csv").read_text().splitlines()
    assert rows[0] == "iteration,seconds,name,value" and "20,,val_dice/mean,0.5" in rows
    log({"event": "resumed", "iteration": 20})
    iterations = {int(r.split(",")[0]) for r in (tmp_path / "scalars.csv").read_text().splitlines()[1:]}
    assert iterations == {10, 20}
    log.close()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert not (tmp_path / "tensorboard").exists()  # skipped silently without tensorboard


def test_progress_bar_names_each_phase_and_its_rate_starts_fresh(cases, tmp_path, capsys):
    """``gase train`` (GASE, warm start): the bar says "source expert" first, then "training (gase)", each
    announced once; a phase's rate counts from its first report (not its iterations over no time)."""
    import re

    images, labels = _folders(tmp_path, cases["knee"])
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**TINY, "iterations": 20}))
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "model"),
                 "--config", str(cfg), "--device", "cpu", "--val-fraction", "0"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert out.count("training the source expert") == 1
    assert out.count("training the GASE segmenter, starting from the source expert's weights") == 1
    assert out.index("training the source expert") < out.index("training the GASE segmenter")
    assert "training (gase)" not in err.split("source expert:")[0]  # no GASE bar before the expert's
    rates = [float(r) for r in re.findall(r"([\d.]+)it/s", err)]
    assert rates and max(rates) < 1000, rates  # (it/s of 10 iterations over microseconds before the fix)
