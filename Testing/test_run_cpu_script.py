"""benchmarks/run_cpu.sh drives the CPU benchmark; checked here with a stand-in Python that records its calls
(the real run takes hours): the false-invalid counts it adds on request, and what it leaves alone."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, **env) -> tuple[list[str], str]:
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_cpu.sh"), str(tmp_path / "out")],
                          env={**os.environ, "PYTHON": str(fake), **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines(), proc.stderr


def test_false_invalid_counts_run_on_request_before_the_merge(tmp_path):
    calls, _ = _run(tmp_path, FALSE_INVALID="5", FALSE_INVALID_FIRST="400", DATA_SEED="1")
    counts = [c for c in calls if c.startswith("-m benchmarks.false_invalid")]
    out = tmp_path / "out"
    assert sorted(counts) == sorted(
        f"-m benchmarks.false_invalid --model {out}/{a}/models/{a}-gase --anatomy {a} --data-seed 1 --subjects 5 "
        f"--first 400 --threads 1 --out {out}/false_invalid_{a}.json" for a in ("knee", "pelvis"))
    assert calls[-1].startswith("-m benchmarks.merge")  # the report sees the counts
    assert "cores): knee and pelvis side by side, one process and 1 torch thread each" in calls[-1]


def test_false_invalid_not_counted_unless_asked_and_an_existing_count_is_kept(tmp_path):
    calls, _ = _run(tmp_path)
    assert not any(c.startswith("-m benchmarks.false_invalid") for c in calls)
    (tmp_path / "out").mkdir(exist_ok=True)
    kept = tmp_path / "out" / "false_invalid_pelvis.json"
    kept.write_text('{"earlier": true}')
    calls, err = _run(tmp_path, FALSE_INVALID="5")
    counts = [c for c in calls if c.startswith("-m benchmarks.false_invalid")]
    assert len(counts) == 1 and "--anatomy knee" in counts[0] and "--data-seed 0" in counts[0]
    assert kept.read_text() == '{"earlier": true}' and "false_invalid_pelvis.json exists: kept" in err


def test_context_and_one_anatomy_reach_the_benchmark_and_the_merge(tmp_path):
    calls, _ = _run(tmp_path, CONTEXT="3", CONTEXT_MM="8", ANATOMIES="pelvis", METHODS="erm gase")
    runs = [c for c in calls if c.startswith("-m benchmarks.dg_benchmark")]
    out = tmp_path / "out"
    assert len(runs) == 1 and "--anatomy pelvis --methods erm gase --device cpu" in runs[0]
    assert runs[0].endswith("--context-slices 3 --context-mm 8")
    assert calls[-1].startswith(f"-m benchmarks.merge {out} {out}/pelvis --machine")
    # the report's machine line says what ran (it said "knee and pelvis side by side" for one anatomy)
    assert "cores): pelvis alone, one process and 1 torch thread" in calls[-1] and "knee" not in calls[-1]
