"""The background segmentation process: progress parsing, errors, cancel within 2 s, outputs -> result.

A stand-in ``gase segment`` (a small script printing the same JSON lines) exercises every path quickly;
the end-to-end tests with the real CLI and demo model are in test_slicer_segmentation_logic.py.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import numpy as np
import pytest

from gase.errors import CancelledError

FAKE = textwrap.dedent('''
    import json, os, subprocess, sys, time
    mode, out = sys.argv[1], sys.argv[2]
    def emit(**e):
        print(json.dumps(e), flush=True)
    print("some log line that is not JSON", flush=True)
    if mode == "ok":
        for f in (0.0, 0.25, 0.5, 1.0):
            emit(event="progress", fraction=f, message=f"segmented {int(f * 4)}/4 slices")
        paths = {k: os.path.join(out, n) for k, n in
                 (("segmentation", "c.seg.nrrd"), ("confidence", "c_confidence.nrrd"), ("report", "c_report.json"))}
        emit(event="case_done", case="c", outputs=paths)
        emit(event="done", outputs=paths, cases=["c"])
    elif mode == "error":
        emit(event="progress", fraction=0.1, message="reading")
        emit(event="error", message="input.nrrd: the image is 2D; GASE segments 3D volumes.")
        sys.exit(2)
    elif mode == "crash":
        print("Traceback (most recent call last):\\nRuntimeError: boom", file=sys.stderr, flush=True)
        sys.exit(1)
    elif mode == "nothing":
        emit(event="done", outputs=None, cases=["c"])
    elif mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.path.join(out, "child.pid"), "w") as f:
            f.write(str(child.pid))
        emit(event="progress", fraction=0.05, message="segmenting 200 slices on cpu")
        time.sleep(120)
''')


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a killed child whose parent died may linger as a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def fake_cli(tmp_path):
    script = tmp_path / "fake_gase.py"
    script.write_text(FAKE)

    def start(mode):
        from GASESegmentationLib.process import SegmentationProcess

        return SegmentationProcess.start([sys.executable, str(script), mode, str(tmp_path)])

    return start


def test_progress_is_parsed_and_outputs_reported(fake_cli, tmp_path):
    from GASESegmentationLib.process import JobState

    job = fake_cli("ok")
    seen = []
    outputs = job.wait(progress=lambda f, m: seen.append((f, m)), interval_s=0.02)
    assert job.state is JobState.SUCCEEDED and job.returncode == 0
    assert [f for f, _ in seen] == [0.0, 0.25, 0.5, 1.0]
    assert seen[1][1] == "segmented 1/4 slices"
    assert outputs.segmentation == tmp_path / "c.seg.nrrd" and outputs.report == tmp_path / "c_report.json"


def test_error_event_becomes_a_clear_error(fake_cli):
    from GASESegmentationLib.process import JobState, SegmentationProcessError

    job = fake_cli("error")
    with pytest.raises(SegmentationProcessError, match="the image is 2D"):
        job.wait(interval_s=0.02)
    assert job.state is JobState.FAILED and job.returncode == 2


def test_crash_reports_exit_code_and_stderr(fake_cli):
    from GASESegmentationLib.process import SegmentationProcessError

    job = fake_cli("crash")
    with pytest.raises(SegmentationProcessError, match=r"exit code 1\)(.|\n)*RuntimeError: boom"):
        job.wait(interval_s=0.02)
    job = fake_cli("nothing")
    with pytest.raises(SegmentationProcessError, match="without writing its outputs"):
        job.wait(interval_s=0.02)


def test_poll_never_blocks_and_cancel_stops_the_process_tree_within_two_seconds(fake_cli, tmp_path):
    from GASESegmentationLib.process import JobState

    job = fake_cli("hang")
    deadline = time.monotonic() + 20
    events = []
    while not (tmp_path / "child.pid").exists() or not events:
        t0 = time.perf_counter()
        events += job.poll()
        assert time.perf_counter() - t0 < 0.05  # a GUI timer can call it
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert events[0].fraction == pytest.approx(0.05) and job.state is JobState.RUNNING
    child = int((tmp_path / "child.pid").read_text())
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 2.0
    assert job.state is JobState.CANCELLED and job.returncode is not None
    time.sleep(0.2)
    assert not _running(child)  # the process it started is gone too
    with pytest.raises(CancelledError):
        job.wait()


def test_wait_honours_a_cancel_callback(fake_cli):
    job = fake_cli("hang")
    t0 = time.monotonic()
    with pytest.raises(CancelledError):
        job.wait(cancel=lambda: time.monotonic() - t0 > 0.5, interval_s=0.05)
    assert time.monotonic() - t0 < 3.0


def test_command_and_environment():
    from GASESegmentationLib.process import gase_root, parse_event, process_environment, segment_command

    cmd = segment_command("/data/in.nrrd", "/models/knee-demo", "/tmp/out", "cpu", python="/x/PythonSlicer")
    assert cmd == ["/x/PythonSlicer", "-m", "gase.cli", "segment", "/data/in.nrrd", "--model", "/models/knee-demo",
                   "--out", "/tmp/out", "--device", "cpu", "--progress-json", "--overwrite"]
    with pytest.raises(ValueError):
        segment_command("a", "b", "c", "gpu")
    env = process_environment({"PYTHONPATH": "/elsewhere", "PATH": "/bin"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(gase_root()), "/elsewhere"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    assert (gase_root() / "gase" / "__init__.py").is_file()
    assert parse_event('{"event": "progress", "fraction": 0.5}') == {"event": "progress", "fraction": 0.5}
    assert parse_event("WARNING: something") is None and parse_event("{not json") is None
    assert parse_event('{"no_event": 1}') is None


def test_cli_output_files_load_back_as_one_result(tmp_path, knee_result, oblique_grid):
    from gase.errors import InputError
    from gase.segfile import write_seg_nrrd
    from gase.volume import write_volume
    from GASESegmentationLib.outputs import load_result
    from GASESegmentationLib.process import JobOutputs

    m = oblique_grid()
    _, result, _ = knee_result(m, shape=(10, 24, 24))
    result.extra = {"manifold": {"embedding_2d": result.validity.embedding_2d.tolist(),
                                 "reference_2d": result.validity.reference_2d.tolist()}}
    # The three files as `gase segment` writes them (seg.nrrd, confidence NRRD via SimpleITK, report JSON).
    outputs = JobOutputs(write_seg_nrrd(result.labels, result.label_table, tmp_path / "case.seg.nrrd"),
                         write_volume(result.confidence, tmp_path / "case_confidence.nrrd"),
                         tmp_path / "case_report.json")
    outputs.report.write_text(json.dumps(result.report()))
    back = load_result(outputs, grid=m)
    assert np.array_equal(back.labels.array, result.labels.array)
    assert np.array_equal(back.confidence.array, result.confidence.array)
    assert np.array_equal(back.labels.ijk_to_ras, m) and np.array_equal(back.confidence.ijk_to_ras, m)
    assert [t.name for t in back.label_table] == [t.name for t in result.label_table]
    assert back.validity.valid and back.validity.threshold == pytest.approx(2.0)
    assert np.allclose(back.validity.slice_scores, result.validity.slice_scores, atol=1e-4)
    assert back.validity.embedding_2d.shape == (10, 2) and back.validity.reference_2d.shape == (300, 2)
    assert back.reliability_per_label["femur"] == pytest.approx(result.reliability_per_label["femur"], abs=1e-4)
    shifted = m.copy()
    shifted[:3, 3] += 0.5
    with pytest.raises(InputError, match="voxel grid"):
        load_result(outputs, grid=shifted)


def test_wait_timeout_stops_the_process_with_a_clear_error(fake_cli):
    from GASESegmentationLib.process import JobState, SegmentationProcessError

    job = fake_cli("hang")
    with pytest.raises(SegmentationProcessError, match="did not finish within 1 s"):
        job.wait(timeout_s=1.0, interval_s=0.05)
    assert job.state is JobState.CANCELLED
