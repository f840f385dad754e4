"""Merging per-anatomy benchmark runs (run side by side) into one results folder."""
from __future__ import annotations

import pytest

from benchmarks.merge import merge


def _run(anatomy, total, iterations=1000, command="cmd"):
    meta = {"mode": "full", "iterations": iterations, "batch_size": 8, "crop": 128, "scale": 1.0, "test_subjects": 6,
            "ood_subjects": 3, "seed": 0, "machine": "CPU", "command": f"{command} {anatomy}",
            "training": {f"{anatomy}/erm": {"iterations": iterations, "seconds": 10.0}},
            "wall_s": {"data": 1.0, f"train {anatomy}/erm": 10.0, "total": total}}
    return {"anatomies": {anatomy: {"source_style": "s"}}, "meta": meta}


def test_merge_joins_anatomies_and_keeps_every_command():
    m = merge([_run("knee", 100.0), _run("pelvis", 120.0)])
    assert list(m["anatomies"]) == ["knee", "pelvis"]
    assert set(m["meta"]["training"]) == {"knee/erm", "pelvis/erm"}
    assert m["meta"]["wall_s"]["total"] == 120.0  # side by side: the longest run
    assert m["meta"]["wall_s"]["data"] == 2.0
    assert [p["anatomies"] for p in m["meta"]["parts"]] == [["knee"], ["pelvis"]]
    assert "cmd knee" in m["meta"]["command"] and "cmd pelvis" in m["meta"]["command"]


def test_merge_refuses_different_protocols_and_duplicate_anatomies():
    with pytest.raises(ValueError, match="iterations"):
        merge([_run("knee", 1.0), _run("pelvis", 1.0, iterations=500)])
    with pytest.raises(ValueError, match="knee"):
        merge([_run("knee", 1.0), _run("knee", 1.0)])
