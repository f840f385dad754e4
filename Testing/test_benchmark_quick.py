"""Smoke test of the domain-generalisation benchmark code: ``--quick`` end to end on the CPU.

Tiny phantoms (scale 0.5), 2 test subjects, 2 unseen styles and 1 volume per OOD kind, 10 training
iterations per model: it checks that every stage runs and writes well-formed outputs, not the numbers
(no targets here). About two minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the benchmarks/ package lives at the root

from benchmarks import report  # noqa: E402
from benchmarks.dg_benchmark import main  # noqa: E402

PLOTS = ["dice_per_style.png", "reliability_diagram.png", "risk_coverage.png", "validity.png", "style_manifold.png",
         "qualitative_knee.png", "qualitative_pelvis.png"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench") / "quick"
    main(["--quick", "--out", str(out), "--device", "cpu", "--threads", "1"])
    return out, json.loads((out / "results.json").read_text())


def _in(x, lo, hi):
    return x is None or (lo <= x <= hi)  # None = not defined (e.g. one class only), allowed in a smoke run


@pytest.mark.slow
def test_quick_run_writes_every_output(quick_run):
    out, res = quick_run
    for name in ["results.json", "RESULTS.md", "panel.npz", *PLOTS]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for a in ("knee", "pelvis"):
        for m in ("erm", "randcurve", "gase"):
            assert (out / "models" / f"{a}-{m}" / "model.json").is_file()
    meta = res["meta"]
    assert meta["mode"] == "quick" and meta["iterations"] == 10 and meta["machine"].startswith("CPU")
    assert meta["stability_slices"] == 4  # the quick run's shorter stability check
    assert meta["torch"] == torch.__version__
    # the processor and torch's CPU kernels: training reproduces bit for bit only on the same ones
    assert meta["cpu"] and torch.backends.cpu.get_cpu_capability() in meta["cpu"]
    assert {"data", "train knee/gase", "evaluate pelvis/erm", "plots", "total"} <= set(meta["wall_s"])
    md = (out / "RESULTS.md").read_text()
    assert "Quick smoke run" in md and "| GASE |" in md and meta["cpu"] in md


@pytest.mark.slow
def test_quick_run_metrics_are_in_range(quick_run):
    _, res = quick_run
    for a, entry in res["anatomies"].items():
        assert len(entry["unseen_styles"]) == 2
        for m, d in entry["methods"].items():
            recs = d["records"]
            test = [r for r in recs if r["group"] in ("source", "unseen")]
            assert len(test) == 2 * 3 and len([r for r in recs if r["group"] == "ood"]) == 6
            for r in test:
                assert all(_in(v, 0, 1) for v in r["dice"].values()), r["dice"]
                assert all(v is None or v >= 0 for v in r["hd95"].values())
            s = d["summary"]
            seg = s["segmentation"]
            assert _in(seg["source"]["dice"], 0, 1) and _in(seg["unseen"]["dice"], 0, 1)
            assert all(_in(r["reliability"]["expected_dice"], 0, 1) for r in test)
            assert _in(s["confidence"]["volume"]["expected_dice"]["spearman"], -1, 1)
            stab = [r["reliability"]["stability"] for r in test]  # None: nothing segmented, nothing to check
            assert all(v is None or _in(v, 0, 1) for v in stab) and any(v is not None for v in stab)
            assert "stability" in s["confidence"]["volume"]
            for r in test:  # the quality: the mean of the two, or the one that is known
                known = [v for v in (r["reliability"]["expected_dice"], r["reliability"]["stability"]) if v is not None]
                assert r["reliability"]["quality"] == pytest.approx(sum(known) / len(known), abs=1e-5)  # rounded
            assert _in(s["confidence"]["volume"]["quality"]["spearman"], -1, 1)
            for sc in ("confidence", "msp", "entropy"):
                v = s["confidence"]["voxel"][sc]
                assert _in(v["auroc_all"], 0, 1) and _in(v["auroc_near"], 0, 1)
                assert _in(v.get("ece_all"), 0, 1)
                assert _in(s["confidence"]["volume"][sc]["spearman"], -1, 1)
                assert _in(s["confidence"]["volume"][sc]["aurc"], 0, 1)
            val = s["validity"]
            assert _in(val["auroc"], 0, 1) and _in(val["false_invalid_source"], 0, 1)
            assert set(val["detected"]) == {"ct", "other_anatomy", "noise", "motion", "inverted", "wrong_orientation"}
            assert math.isclose(val["roc"]["fpr"][-1], 1.0) and math.isclose(val["roc"]["tpr"][-1], 1.0)
            # each record says which checks failed: none for a valid volume, at least one otherwise
            for r in recs:
                assert set(r["validity"]["failed"]) <= {"style", "size", "ct", "inverted", "stability"}
                assert (not r["validity"]["failed"]) == r["validity"]["valid"], r["validity"]
            assert all("ct" in r["validity"]["failed"] for r in recs if r["kind"] == "ct")
            assert all("inverted" in r["validity"]["failed"] for r in recs if r["kind"] == "inverted")


@pytest.mark.slow
def test_gase_gets_the_runs_erm_model_as_its_source_expert(quick_run):
    from safetensors.torch import load_file

    out, res = quick_run
    for a in ("knee", "pelvis"):
        folder = out / "models" / f"{a}-gase"
        card = json.loads((folder / "model.json").read_text())
        assert card["source_expert"]["training"]["config"]["method"] == "erm"
        x = load_file(str(folder / "expert.safetensors"))
        y = load_file(str(out / "models" / f"{a}-erm" / "weights.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in y)
        t = res["meta"]["training"]
        assert t[f"{a}/gase"]["source_expert_seconds"] == t[f"{a}/erm"]["seconds"]
        assert t[f"{a}/gase"]["seconds"] == pytest.approx(card["training"]["seconds"] + t[f"{a}/erm"]["seconds"], abs=0.11)
        # warm-started: the GASE segmenter segments every scan by default; the run also evaluates the same model
        # through the style route (the expert takes what its manifold accepts) on the same test volumes
        g = res["anatomies"][a]["methods"]["gase"]
        assert card["source_expert"]["route"] == "gase"
        assert all("source_expert" not in r for r in g["records"])
        other = g["other_route"]
        assert other["route"] == "style" and other["default_route"] == "gase"
        recs = other["records"]
        assert sorted(r["case"] for r in recs) == sorted(r["case"] for r in g["records"] if r["group"] != "ood")
        assert all(isinstance(r["source_expert"]["used"], bool) for r in recs)
        used = other["summary"]["segmentation"]["source_expert_used"]
        assert sum(n for _, n in used.values()) == len(recs)
        assert sum(k for k, _ in used.values()) == sum(r["source_expert"]["used"] for r in recs)
        assert math.isfinite(other["summary"]["segmentation"]["unseen"]["dice"])
        assert "source_expert" not in res["anatomies"][a]["methods"]["erm"]["records"][0]
    text = (out / "RESULTS.md").read_text()
    assert "| GASE, route style (same model) |" in text and "default route is `gase`" in text
    assert "GASE, route style (same model): volumes its source expert segmented" in text


@pytest.mark.slow
def test_readme_results_section_is_rewritten_only_between_markers(quick_run, tmp_path):
    out, _ = quick_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nIntro.\n\n{report.BEGIN}\nold numbers\n{report.END}\n\n## After\n")
    assert report.main([str(out), "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "## Results" in text and "GASE measure" in text and "quick run" in text
    assert text.startswith("# Title\n\nIntro.\n\n" + report.BEGIN) and text.endswith(report.END + "\n\n## After\n")
    assert f"]({out.name}/dice_per_style.png)" in text or "dice_per_style.png)" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# No markers\n")
    report.main([str(out), "--update-readme", str(plain)])
    assert plain.read_text() == "# No markers\n"


@pytest.mark.slow
def test_reuse_models_reevaluates_without_training(quick_run, tmp_path):
    """``--reuse-models`` evaluates the quick run's models again (same numbers: nothing is random in the
    evaluation) and refuses models trained with other settings before rendering anything."""
    from gase.errors import InputError

    out, res = quick_run
    models = tmp_path / "models"
    shutil.copytree(out / "models", models)
    # a model from before validity.training_foreground_ml gets it from the run's training labels
    card_path = models / "knee-gase" / "model.json"
    card = json.loads(card_path.read_text())
    written = card["validity"].pop("training_foreground_ml")
    # ... and one from before the augmented manifold fit gets it (and its threshold) again
    card["validity"].pop("augmented_copies")
    threshold, card["validity"]["threshold"] = card["validity"]["threshold"], 99.0
    # ... and a GASE model from before source experts gets the run's ERM model attached, as training does now
    card.pop("source_expert")
    for name in ("expert.safetensors", "expert_validity.safetensors"):
        card["files"].pop(name)
        (models / "knee-gase" / name).unlink()
    card_path.write_text(json.dumps(card))
    again = tmp_path / "again"
    args = ["--quick", "--anatomy", "knee", "--out", str(again), "--device", "cpu", "--threads", "1",
            "--models-dir", str(models), "--reuse-models"]
    main(args)
    assert json.loads(card_path.read_text())["validity"]["training_foreground_ml"] == written
    assert json.loads(card_path.read_text())["validity"]["augmented_copies"] == 4
    assert json.loads(card_path.read_text())["validity"]["heldout_augmented_copies"] == 4
    refit = json.loads(card_path.read_text())["validity"]["threshold"]
    assert refit == pytest.approx(threshold, abs=1e-3)  # the training's own fit
    assert json.loads(card_path.read_text())["source_expert"]["training"]["config"]["method"] == "erm"
    assert json.loads(card_path.read_text())["source_expert"]["validity"]["augmented_copies"] == 0  # a router
    res2 = json.loads((again / "results.json").read_text())
    assert not any(k.startswith("train ") for k in res2["meta"]["wall_s"])
    assert res2["meta"]["training"]["knee/gase"]["seconds"] == res["meta"]["training"]["knee/gase"]["seconds"]
    for m in ("erm", "randcurve", "gase"):
        a = [r["dice_mean"] for r in res["anatomies"]["knee"]["methods"][m]["records"] if "dice_mean" in r]
        b = [r["dice_mean"] for r in res2["anatomies"]["knee"]["methods"][m]["records"] if "dice_mean" in r]
        assert a == pytest.approx(b, abs=1e-6)
    assert "--reuse-models" in (again / "RESULTS.md").read_text()
    with pytest.raises(InputError, match="iterations 10 instead of 20"):
        main([*args[:-1], "--overwrite", "--reuse-models", "--iterations", "20"])
    with pytest.raises(InputError, match="no trained model"):
        main(["--quick", "--anatomy", "knee", "--out", str(tmp_path / "none"), "--device", "cpu",
              "--models-dir", str(tmp_path / "empty"), "--reuse-models"])


@pytest.mark.slow
def test_retrain_one_method_and_reuse_the_others(quick_run, tmp_path):
    """``--reuse-models --retrain gase`` trains GASE anew (from the reused ERM model: its source expert and
    warm start) and re-evaluates the others; CPU training is deterministic, so the new GASE weights are the
    quick run's own."""
    from safetensors.torch import load_file

    out, res = quick_run
    models = tmp_path / "models"
    shutil.copytree(out / "models", models)
    # copies: load_file maps the file, which is overwritten below
    before = {k: v.clone() for k, v in load_file(str(models / "knee-gase" / "weights.safetensors")).items()}
    (models / "knee-gase" / "weights.safetensors").write_bytes(b"stale")  # replaced, not read
    again = tmp_path / "again"
    main(["--quick", "--anatomy", "knee", "--out", str(again), "--device", "cpu", "--threads", "1",
          "--models-dir", str(models), "--reuse-models", "--retrain", "gase"])
    res2 = json.loads((again / "results.json").read_text())
    assert "train knee/gase" in res2["meta"]["wall_s"] and "train knee/erm" not in res2["meta"]["wall_s"]
    training = res2["meta"]["training"]
    assert "reused_from" in training["knee/erm"] and "reused_from" not in training["knee/gase"]
    after = load_file(str(models / "knee-gase" / "weights.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    text = (again / "RESULTS.md").read_text()
    assert "knee/gase trained here" in text and "`--reuse-models --retrain`" in text
    with pytest.raises(SystemExit):
        main(["--quick", "--anatomy", "knee", "--out", str(tmp_path / "x"), "--retrain", "gase"])


def test_stability_slices_are_the_predictors_unless_asked(tmp_path):
    from benchmarks.dg_benchmark import parse_args

    assert parse_args(["--out", str(tmp_path / "a")]).stability_slices is None  # the predictor's default
    assert parse_args(["--out", str(tmp_path / "a"), "--quick"]).stability_slices == 4
    assert parse_args(["--out", str(tmp_path / "a"), "--quick", "--stability-slices", "16"]).stability_slices == 16
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path / "a"), "--stability-slices", "0"])


def test_false_invalid_upper_bound_and_seed_stream():
    from benchmarks.data import DataSpec, _seeds
    from benchmarks.false_invalid import extra_source_seeds, upper_bound

    assert upper_bound(0, 3) == pytest.approx(1 - 0.05 ** (1 / 3), abs=1e-9)   # 63.2%: six volumes show little
    assert upper_bound(0, 300) == pytest.approx(0.00994, abs=1e-4)             # 300 clean volumes show <= 1%
    assert upper_bound(2, 400) == pytest.approx(0.01566, abs=2e-4)
    assert upper_bound(5, 5) == 1.0
    seeds = extra_source_seeds("knee", 1, 50)
    assert len(set(seeds)) == 50 and seeds == extra_source_seeds("knee", 1, 50)
    assert extra_source_seeds("knee", 1, 20, first=30) == seeds[30:]
    spec = DataSpec("knee", (), seed=1)
    assert not set(seeds) & set(_seeds(spec, "test", 6)) and not set(seeds) & set(_seeds(spec, "train", 5))


def test_false_invalid_runs_the_full_prediction_and_refuses_to_overwrite(tiny_model, tmp_path, capsys):
    from benchmarks.false_invalid import main as false_invalid

    out = tmp_path / "fi.json"
    assert false_invalid(["--model", str(tiny_model), "--anatomy", "knee", "--subjects", "2", "--scale", "0.4",
                          "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert s["volumes"] == 2 and len(res["records"]) == 2 and res["style"] == "pd_fse"
    assert s["invalid"] == sum(not r["validity"]["valid"] for r in res["records"])
    for r in res["records"]:
        v = r["validity"]
        assert set(v["failed"]) <= {"style", "size", "ct", "inverted", "stability"}
        assert v["valid"] == (not v["failed"]) and 0.0 <= r["dice_mean"] <= 1.0
        assert ("style" in v["failed"]) == (v["score"] > v["threshold"])
    assert "source-style volumes called invalid" in capsys.readouterr().out
    before = out.read_text()
    with pytest.raises(SystemExit):
        false_invalid(["--model", str(tiny_model), "--anatomy", "knee", "--subjects", "1", "--out", str(out)])
    assert out.read_text() == before  # nothing the user had is overwritten
    with pytest.raises(SystemExit, match="knee model"):
        false_invalid(["--model", str(tiny_model), "--anatomy", "pelvis", "--subjects", "1"])


@pytest.mark.slow
def test_report_counts_the_extra_source_subjects_of_this_runs_model(quick_run, tmp_path):
    from benchmarks.false_invalid import main as false_invalid

    out, res = quick_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("models"))
    model = out / "models" / "knee-gase"
    fi = folder / "false_invalid_knee.json"
    assert false_invalid(["--model", str(model), "--anatomy", "knee", "--subjects", "2", "--scale", "0.4",
                          "--data-seed", str(res["meta"].get("seed", 0)), "--out", str(fi)]) == 0
    assert report.main([str(folder)]) == 0
    md = (folder / "RESULTS.md").read_text()
    n_src = sum(r["group"] == "source" for r in res["anatomies"]["knee"]["methods"]["gase"]["records"])
    assert f"of {n_src + 2}: the {n_src} test volumes and 2 more subjects" in md
    # written for another model (here: another training time) -> not counted
    d = json.loads(fi.read_text())
    d["model_training_seconds"] += 100.0
    fi.write_text(json.dumps(d))
    assert report.main([str(folder)]) == 0
    assert "more subjects" not in (folder / "RESULTS.md").read_text()


def test_a_count_for_a_gase_model_that_trained_its_own_expert_is_attached(tiny_model, tmp_path):
    """Without ERM in the run, GASE trains its source expert inside; its record's seconds count both, its card's
    only the GASE segmenter's: the record must say which were the expert's, or the report refuses the count."""
    from benchmarks.dg_benchmark import with_own_expert

    card = json.loads((tiny_model / "model.json").read_text())
    own, expert = card["training"]["seconds"], card["source_expert"]["training"]["seconds"]
    assert expert > 0
    record = with_own_expert(tiny_model, {"iterations": 12, "seconds": round(own + expert, 1)})
    assert record["source_expert_seconds"] == pytest.approx(expert, abs=0.051)
    # beside an ERM run (merged), its expert is not that ERM model: the run's training time counts both
    erm = {"iterations": 12, "seconds": 50.0}
    assert report.training_seconds({"knee/gase": record, "knee/erm": erm}) == pytest.approx(record["seconds"] + 50.0)
    threshold = card["validity"]["threshold"]
    fi = {"model": "models/knee-gase", "model_training_seconds": own, "data_seed": 0,
          "summary": {"volumes": 3, "invalid": 0, "threshold": threshold}}
    (tmp_path / "false_invalid_knee.json").write_text(json.dumps(fi))

    def res(training):
        return {"meta": {"seed": 0}, "anatomies": {"knee": {"methods": {"gase": {
            "training": training, "records": [{"validity": {"threshold": threshold}}]}}}}}

    attached = res(record)
    assert report.attach_false_invalid(attached, tmp_path) == [
        "attached false_invalid_knee.json: 0 of 3 more source-style subjects called invalid"]
    assert attached["anatomies"]["knee"]["false_invalid_extra"]["volumes"] == 3
    without = res({k: v for k, v in record.items() if not k.startswith("source_expert")})  # as it was before
    assert "not attached" in report.attach_false_invalid(without, tmp_path)[0]
    assert "false_invalid_extra" not in without["anatomies"]["knee"]


def test_source_dice_target_counts_gase_above_erm_as_met():
    """'Within 0.02 of ERM' keeps plain training's source accuracy: 0.026 above ERM is met, 0.026 below not."""
    def res(gase_source):
        seg = lambda src: {"segmentation": {"source": {"dice": src}, "unseen": {"dice": 0.8}}}  # noqa: E731
        return {"anatomies": {"knee": {"methods": {"gase": {"summary": seg(gase_source), "records": []},
                                                   "erm": {"summary": seg(0.845)},
                                                   "randcurve": {"summary": seg(0.7)}}}}}
    row = lambda lines: next(line for line in lines if line.startswith("| source-style Dice"))  # noqa: E731
    assert "met: 0.871 vs ERM 0.845" in row(report._targets(res(0.871)))
    assert "met: 0.830 vs ERM 0.845" in row(report._targets(res(0.830)))
    assert "missed: 0.819 vs ERM 0.845" in row(report._targets(res(0.819)))


def test_the_quality_of_records_written_before_it_existed_is_computed_for_the_report():
    """Runs before 6 Dec 2026 recorded the expected Dice and the stability, not their mean: the report
    recomputes every volume summary from the records, so the quality row appears without re-evaluating."""
    from benchmarks.summary import refresh_volume_summaries

    dice = [0.5, 0.6, 0.7, 0.8]
    # the stability ranks the volumes wrongly at the top, the expected Dice at the bottom; their mean is right
    exp, stab = [0.55, 0.56, 0.75, 0.74], [0.40, 0.62, 0.58, 0.90]
    recs = [{"group": "unseen", "dice_mean": d, "reliability": {"expected_dice": e, "stability": s}}
            for d, e, s in zip(dice, exp, stab)]
    res = {"anatomies": {"knee": {"methods": {"gase": {"summary": {"confidence": {"volume": {}}}, "records": recs}}}}}
    refresh_volume_summaries(res)
    vol = res["anatomies"]["knee"]["methods"]["gase"]["summary"]["confidence"]["volume"]
    assert vol["quality"]["spearman"] == pytest.approx(1.0)
    assert vol["stability"]["spearman"] == pytest.approx(0.8) and vol["expected_dice"]["spearman"] == pytest.approx(0.8)
    assert vol["quality"]["aurc"] <= vol["stability"]["aurc"]
    assert "| Spearman(volume reliability, Dice): quality (95% interval) / stability / expected Dice / mean confidence" \
        " | >= 0.8 | met: 1.00 / 0.80 / 0.80" \
        in "\n".join(report._targets({"anatomies": {"knee": {"methods": {"gase": {"summary": {
            "confidence": {"volume": vol}}, "records": recs}}}}}))


def test_the_ranking_split_by_style_tells_styles_from_subjects():
    """A score that knows each style's Dice but nothing of the subjects ranks the styles (1.0) and not the
    volumes within them (about 0); one that knows the subjects but has the styles backwards the other way."""
    from benchmarks.summary import ranking_by_style

    styles = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    base = {"a": 0.90, "b": 0.85, "c": 0.80}
    within = [0.011, -0.012, 0.021, -0.02, 0.017, -0.004, -0.013, 0.0, -0.022, 0.014, 0.003, 0.005]
    dice = [base[s] + w for s, w in zip(styles, within)]
    knows_styles = [base[s] + (0.001 if i % 2 else -0.001) for i, s in enumerate(styles)]
    b = ranking_by_style(knows_styles, dice, styles)
    assert b["styles"] == 3 and b["spearman_style_means"] == pytest.approx(1.0)
    assert abs(b["spearman_within_styles"]) < 0.5
    between = np.var([base[s] for s in styles]) / np.var(dice)  # the style means are exact here
    assert b["dice_variance_between_styles"] == pytest.approx(between, rel=0.05) and 0.5 < between < 1.0
    knows_subjects = [-base[s] + 3 * w for s, w in zip(styles, within)]
    b = ranking_by_style(knows_subjects, dice, styles)
    assert b["spearman_style_means"] == pytest.approx(-1.0) and b["spearman_within_styles"] == pytest.approx(1.0)
    assert np.isnan(ranking_by_style([1.0, 2.0], [0.5, 0.6], ["a", "b"])["spearman_style_means"])


def test_the_report_says_where_the_quality_ranking_comes_from():
    """The confidence section of RESULTS.md carries the split of GASE's quality ranking by style."""
    from benchmarks.summary import refresh_volume_summaries

    rng = np.random.default_rng(0)
    recs = [{"group": "unseen", "kind": s, "dice_mean": d, "reliability": {"expected_dice": d + e, "stability": d}}
            for s, m in (("x", 0.9), ("y", 0.8), ("z", 0.7))
            for d, e in zip(m + rng.normal(0, 0.01, 5), rng.normal(0, 0.05, 5))]
    res = {"anatomies": {"knee": {"methods": {"gase": {"summary": {"confidence": {"volume": {}}}, "records": recs}}}}}
    refresh_volume_summaries(res)
    lines = report._by_style(res["anatomies"]["knee"])
    assert len(lines) == 2 and "orders the 3 styles' mean Dice at 1.00" in lines[1]
    assert "of the Dice's variance lies between the styles" in lines[1]
    assert report._by_style({"methods": {"gase": {"summary": {"confidence": {"volume": {"quality": {}}}}}}}) == []
