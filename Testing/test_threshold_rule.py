"""benchmarks.threshold_rule: recounting a run's verdicts at other margins of the validity threshold, and the
choice of the margin on one subject stream."""
from __future__ import annotations

import json

import pytest

from benchmarks.threshold_rule import choose, invalid_at, main, recount


def _verdict(score, failed=()):
    return {"score": score, "valid": not failed, "threshold": 1.25, "failed": list(failed)}


def _run(tmp_path):
    """A results folder as a benchmark run leaves it: the GASE card's held-out scores (upper quartile 1.0),
    the run's test and OOD records and two streams of new source-style subjects."""
    run = tmp_path / "run"
    for anatomy, stream0, stream1 in (("knee", [0.9, 1.3, 1.32], [1.0, 1.28]),
                                      ("pelvis", [1.0, 1.34, 1.42, 1.52], [1.1, 1.45])):
        folder = run / anatomy / "models" / f"{anatomy}-gase"
        folder.mkdir(parents=True)
        (folder / "model.json").write_text(json.dumps(
            {"validity": {"threshold": 1.25, "heldout_volume_scores": [0.7, 0.8, 0.9, 1.0, 1.0]}}))
        for first, scores in ((0, stream0), (400, stream1)):
            (run / f"false_invalid_{anatomy}{'' if first == 0 else '_400'}.json").write_text(json.dumps(
                {"first_subject": first, "records": [{"validity": _verdict(s, ["style"] if s > 1.25 else [])}
                                                      for s in scores]}))
    records = {a: {"methods": {"gase": {"records": [
        {"group": "source", "kind": "src", "case": f"{a}_src_0", "validity": _verdict(1.1)},
        {"group": "unseen", "kind": "t1", "case": f"{a}_t1_0", "validity": _verdict(1.4, ["style"])},
        {"group": "ood", "kind": "motion", "case": f"{a}_motion_00", "validity": _verdict(1.62, ["style"])},
        {"group": "ood", "kind": "ct", "case": f"{a}_ct_00", "validity": _verdict(1.1, ["ct"])},  # another check
    ]}}} for a in ("knee", "pelvis")}
    (run / "results.json").write_text(json.dumps({"anatomies": records}))
    return run


def test_a_verdict_is_recounted_by_its_score_and_its_other_checks():
    assert invalid_at(_verdict(1.3, ["style"]), 1.35) is False
    assert invalid_at(_verdict(1.3, ["style"]), 1.25) is True
    assert invalid_at(_verdict(1.0, ["ct"]), 5.0) is True  # the CT check does not depend on the threshold


def test_recount_and_choice(tmp_path, capsys):
    run = _run(tmp_path)
    knee, pelvis = recount(run, "knee"), recount(run, "pelvis")
    assert knee["upper_quartile"] == 1.0 and knee["streams"] == {0: 3, 400: 2}
    row = {r["margin"]: r for r in pelvis["rows"]}
    assert row[1.25]["false_invalid"] == {0: 3, 400: 1} and row[1.35]["false_invalid"] == {0: 2, 400: 1}
    assert row[1.45]["false_invalid"] == {0: 1, 400: 0} and row[1.55]["false_invalid"] == {0: 0, 400: 0}
    assert row[1.25]["ood_missed"] == [] and row[1.65]["ood_missed"] == ["pelvis_motion_00"]
    assert row[1.35]["unseen_flagged"] == {"t1": 1} and row[1.40]["unseen_flagged"] == {"t1": 0}
    assert all(r["ood_missed"] != ["pelvis_ct_00"] for r in pelvis["rows"])  # flagged by the CT check
    # at most 1 invalid on stream 0 in both anatomies, no OOD missed: 1.45 (pelvis); at most 0: 1.55
    assert choose([knee, pelvis], 0, 1) == 1.45 and choose([knee, pelvis], 0, 0) == 1.55
    assert choose([knee, pelvis], 400, 0) == 1.45  # the pelvis's 1.45 sets it (a score equal is valid)
    # no margin lets every subject through and still flags the motion-corrupted pelvis (1.62) if one scores more
    f = run / "false_invalid_pelvis_400.json"
    f.write_text(f.read_text().replace("1.45", "1.7"))
    assert choose([knee, recount(run, "pelvis")], 400, 0) is None
    assert main([str(run), "--choose-on", "0", "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "1.45 **chosen**" in out and "invalid, subjects 400-401" in out
    assert json.loads((tmp_path / "t.json").read_text())["chosen"] == 1.45


def test_missing_inputs_are_named(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(SystemExit):
        main([str(run), "--choose-on", "800"])  # no such stream
    (run / "knee" / "models" / "knee-gase" / "model.json").write_text(json.dumps({"validity": {"threshold": 1}}))
    with pytest.raises(SystemExit, match="heldout_volume_scores"):
        recount(run, "knee")
