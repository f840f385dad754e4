"""Markdown tables from ``results.json``: ``RESULTS.md`` in the results folder, and the README's "Results"
section between ``<!-- RESULTS:BEGIN -->`` and ``<!-- RESULTS:END -->`` (only there; the rest of the
README is left alone, and without the markers the README is not touched).

Regenerate from an existing run (no training)::

    python -m benchmarks.report benchmarks/results/full --plots --update-readme
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from gase.training.config import LEGACY_DEFAULTS
from .summary import refresh_volume_summaries

BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
METHOD_NAMES = {"erm": "ERM U-Net (standard aug.)", "randcurve": "Random intensity curves (peer)", "gase": "GASE"}
PLOTS = ("dice_per_style.png", "reliability_diagram.png", "risk_coverage.png", "validity.png", "style_manifold.png")
ROOT = Path(__file__).resolve().parents[1]


def _f(x, nd: int = 3, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:.{nd}f}"


def _rho(vol: dict) -> str:
    """A volume score's Spearman with its 95% bootstrap interval when the run has one: "0.65 (0.40-0.82)"."""
    iv = vol.get("spearman_95")
    if not (isinstance(iv, (list, tuple)) and len(iv) == 2
            and all(isinstance(t, (int, float)) and math.isfinite(t) for t in iv)):
        return _f(vol.get("spearman"), 2)
    return f"{_f(vol.get('spearman'), 2)} ({iv[0]:.2f}-{iv[1]:.2f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _targets(res: dict) -> list[str]:
    """GASE against the targets of benchmark.md, one column per anatomy."""
    anats = list(res["anatomies"])
    rows = []

    def get(a, m, *path):
        d = res["anatomies"][a]["methods"].get(m, {}).get("summary")
        for p in path:
            if d is None:
                return float("nan")
            d = d.get(p)
        return float("nan") if d is None else d

    def cell(ok, text):
        return ("not decided (a method missing): " if ok is None else ("met: " if ok else "missed: ")) + text

    specs = [
        ("mean Dice, unseen styles", ">= 0.85, >= ERM + 0.10, > peer", lambda a: (
            get(a, "gase", "segmentation", "unseen", "dice"), get(a, "erm", "segmentation", "unseen", "dice"),
            get(a, "randcurve", "segmentation", "unseen", "dice"))),
        ("source-style Dice", "within 0.02 of ERM or above", lambda a: (
            get(a, "gase", "segmentation", "source", "dice"), get(a, "erm", "segmentation", "source", "dice"))),
        ("voxel failure AUROC (all voxels / near structures)", ">= 0.90", lambda a: (
            get(a, "gase", "confidence", "voxel", "confidence", "auroc_all"),
            get(a, "gase", "confidence", "voxel", "confidence", "auroc_near"))),
        ("ECE, 15 bins (all voxels / near structures)", "<= 0.05", lambda a: (
            get(a, "gase", "confidence", "voxel", "confidence", "ece_all"),
            get(a, "gase", "confidence", "voxel", "confidence", "ece_near"))),
        ("Spearman(volume reliability, Dice): quality (95% interval) / stability / expected Dice / "
         "mean confidence", ">= 0.8",
         lambda a: (get(a, "gase", "confidence", "volume", "quality", "spearman"),
                    get(a, "gase", "confidence", "volume", "stability", "spearman"),
                    get(a, "gase", "confidence", "volume", "expected_dice", "spearman"),
                    get(a, "gase", "confidence", "volume", "confidence", "spearman"),
                    get(a, "gase", "confidence", "volume", "quality", "spearman_95"))),
        ("validity AUROC in vs OOD / false-invalid on source", ">= 0.98 / <= 1%", lambda a: (
            get(a, "gase", "validity", "auroc"), *_false_invalid(res["anatomies"][a]))),
    ]
    checks = [
        lambda v: (None if not all(map(math.isfinite, v)) else v[0] >= 0.85 and v[0] >= v[1] + 0.10 and v[0] > v[2],
                   f"{_f(v[0])} (ERM {_f(v[1])}, peer {_f(v[2])})"),
        # the target keeps the source accuracy of plain training: above ERM is met, not "outside 0.02"
        lambda v: (None if not all(map(math.isfinite, v)) else v[0] >= v[1] - 0.02, f"{_f(v[0])} vs ERM {_f(v[1])}"),
        lambda v: (None if not math.isfinite(v[0]) else v[0] >= 0.90, f"{_f(v[0])} / {_f(v[1])}"),
        lambda v: (None if not math.isfinite(v[0]) else v[0] <= 0.05, f"{_f(v[0])} / {_f(v[1])}"),
        lambda v: (None if not math.isfinite(v[0]) else v[0] >= 0.8,
                   f"{_rho({'spearman': v[0], 'spearman_95': v[4]})} / {_f(v[1], 2)} / {_f(v[2], 2)} / {_f(v[3], 2)}"),
        lambda v: (None if not all(map(math.isfinite, v[:2])) else v[0] >= 0.98 and v[1] <= 0.01,
                   f"{_f(v[0])} / {100 * v[1]:.1f}%" + (f" ({v[2]})" if v[2] else "")),
    ]
    for (name, target, fn), check in zip(specs, checks):
        rows.append([name, target] + [cell(*check(fn(a))) for a in anats])
    return _table(["GASE measure", "target", *anats], rows)


def _false_invalid(a: dict) -> tuple[float, str]:
    """GASE's false-invalid rate on the source style and how it was counted: the test set's source-style
    volumes, plus the extra subjects of :mod:`benchmarks.false_invalid` when they were attached
    (:func:`attach_false_invalid`)."""
    recs = [r for r in a["methods"].get("gase", {}).get("records", []) if r.get("group") == "source"]
    n, bad = len(recs), sum(not r["validity"]["valid"] for r in recs)
    extra = a.get("false_invalid_extra")
    if not extra:
        return (bad / n if n else float("nan")), (f"{bad} of {n}" if n else "")
    from .false_invalid import upper_bound

    n2, bad2 = n + extra["volumes"], bad + extra["invalid"]
    return bad2 / n2, (f"{bad2} of {n2}: the {n} test volumes and {extra['volumes']} more subjects, "
                       f"one-sided 95% bound {100 * upper_bound(bad2, n2):.1f}%")


def attach_false_invalid(res: dict, results_dir: Path) -> list[str]:
    """Attach ``false_invalid_<anatomy>.json`` files of ``results_dir`` (written by :mod:`benchmarks.false_invalid`
    for this run's GASE model and data seed) to ``res``; returns messages about what was attached or skipped."""
    msgs = []
    for name, a in res["anatomies"].items():
        f = Path(results_dir) / f"false_invalid_{name}.json"
        if not f.is_file():
            continue
        fi = json.loads(f.read_text())
        trained = a["methods"].get("gase", {}).get("training", {})
        own_seconds = float(trained.get("seconds", math.nan)) - float(trained.get("source_expert_seconds", 0.0))
        if fi.get("data_seed") != res["meta"].get("seed", 0) or Path(fi.get("model", "")).name != f"{name}-gase" \
                or not abs(float(fi.get("model_training_seconds", math.nan)) - own_seconds) < 0.5 \
                or not any(abs(r["validity"]["threshold"] - fi["summary"]["threshold"]) < 1e-6
                           for r in a["methods"]["gase"].get("records", [])[:1]):
            msgs.append(f"{f}: written for another data seed, GASE model or validity threshold than this run's "
                        "(trained or calibrated again since?); not attached: run benchmarks.false_invalid again")
            continue
        s = fi["summary"]
        a["false_invalid_extra"] = {"volumes": s["volumes"], "invalid": s["invalid"], "file": f.name}
        msgs.append(f"attached {f.name}: {s['invalid']} of {s['volumes']} more source-style subjects called invalid")
    return msgs


def _segmentation(a: dict) -> list[str]:
    styles = [a["source_style"], *a["unseen_styles"]]
    header = ["method", f"{a['source_style']} (source)", *a["unseen_styles"], "unseen mean", "drop",
              "HD95 source (mm)", "HD95 unseen (mm)"]
    rows, summaries = [], []
    for m, d in a["methods"].items():
        summaries.append((METHOD_NAMES.get(m, m), d["summary"]["segmentation"]))
        if "other_route" in d:  # the same model through its other route (test volumes only)
            summaries.append((f"{METHOD_NAMES.get(m, m)}, route {d['other_route']['route']} (same model)",
                              d["other_route"]["summary"]["segmentation"]))
    for name, s in summaries:
        rows.append([name, *(_f(s["per_style"][st]["dice"]) for st in styles),
                     f"**{_f(s['unseen']['dice'])}**", _f(s["drop"]), _f(s["source"]["hd95"], 1),
                     _f(s["unseen"]["hd95"], 1)])
    out = _table(header, rows)
    for m, d in a["methods"].items():
        if "other_route" in d:
            o = d["other_route"]
            out += ["", f"{METHOD_NAMES.get(m, m)}'s default route is `{o['default_route']}` (see `gase segment "
                    "--route`): " + ("the GASE segmenter segments every scan" if o["default_route"] == "gase" else
                                     "its source expert segments what its style manifold accepts") +
                    f". The row \"route {o['route']}\" is the same model through the other route, on the same test "
                    "volumes."]
    for name, s in summaries:
        used = s.get("source_expert_used")
        if used:
            out += ["", f"{name}: volumes its source expert segmented (its own style manifold "
                    "found them in the training style; the GASE segmenter did the rest): " +
                    ", ".join(f"{st} {k}/{n}" for st, (k, n) in used.items()) + "."]
    return out


def _per_class(a: dict) -> list[str]:
    names = a["label_names"]
    rows = []
    for m, d in a["methods"].items():
        s = d["summary"]["segmentation"]
        for g in ("source", "unseen"):
            rows.append([METHOD_NAMES.get(m, m), g, *(_f(s[g]["per_class"][n]) for n in names)])
    return _table(["method", "styles", *names], rows)


def _confidence(a: dict) -> list[str]:
    rows, oracle = [], []
    label = {"confidence": "confidence head", "msp": "max softmax prob.", "entropy": "entropy"}
    for m, d in a["methods"].items():
        c = d["summary"]["confidence"]
        for sc, name in (("quality", "quality (volume only)"), ("stability", "stability (volume only)"),
                         ("expected_dice", "expected Dice (volume only)")):
            if sc in c["volume"]:
                vol = c["volume"][sc]
                rows.append([METHOD_NAMES.get(m, m), name, "", "", "", "", _rho(vol), _f(vol["aurc"], 4)])
        for sc in ("confidence", "msp", "entropy"):
            v, vol = c["voxel"][sc], c["volume"][sc]
            rows.append([METHOD_NAMES.get(m, m), label[sc], _f(v["auroc_all"]), _f(v["auroc_near"]),
                         _f(v.get("ece_all")), _f(v.get("ece_near")), _rho(vol), _f(vol["aurc"], 4)])
        oracle.append(f"{METHOD_NAMES.get(m, m)}: oracle {_f(c['volume']['oracle']['aurc'], 4)}, "
                      f"random {_f(c['volume']['random']['aurc'], 4)}")
    table = _table(["method", "score", "failure AUROC (all voxels)", "AUROC near structures", "ECE all",
                    "ECE near", "Spearman(reliability, Dice) (95% interval)", "AURC"], rows)
    return table + ["", "AURC for reference: " + "; ".join(oracle) + "."] + _by_style(a)


def _by_style(a: dict) -> list[str]:
    """One sentence: where GASE's quality ranking comes from, between styles or within them
    (:func:`benchmarks.summary.ranking_by_style`); nothing for runs without it."""
    vol = a["methods"].get("gase", {}).get("summary", {}).get("confidence", {}).get("volume", {})
    b = vol.get("quality", {}).get("by_style")
    if not b or not math.isfinite(b.get("spearman_style_means", float("nan"))):
        return []
    share = _f(b["dice_variance_between_styles"], pct=True)
    return ["", f"GASE's quality, split by style: it orders the {b['styles']} styles' mean Dice at "
                f"{_f(b['spearman_style_means'], 2)} and the volumes within a style at "
                f"{_f(b['spearman_within_styles'], 2)} (the deviations of each volume's score and Dice from its "
                f"style's means, pooled); {share} of the Dice's variance lies between the styles."]


def _validity(a: dict) -> list[str]:
    rows, kinds = [], None
    for m, d in a["methods"].items():
        v = d["summary"]["validity"]
        kinds = kinds or list(v["detected"])
        rows.append([METHOD_NAMES.get(m, m), _f(v["auroc"]), _f(v["false_invalid_source"], pct=True),
                     *(_f(v["detected"][k], pct=True) for k in kinds),
                     _f(float(np.nanmean(list(v["flagged_unseen"].values()) or [np.nan])), pct=True),
                     _f(v["spearman_score_dice_unseen"], 2)])
    return _table(["method", "AUROC in vs OOD", "false-invalid (source)", *(f"flagged: {k}" for k in kinds or []),
                   "flagged: unseen MR styles", "Spearman(score, Dice), unseen"], rows)


def training_seconds(records: dict, keys=None) -> float:
    """Seconds of training of the runs ``keys`` of ``records`` (``meta["training"]``, keyed "anatomy/method";
    default all), each model counted once: a GASE model's seconds include its source expert's
    (``source_expert_seconds``), which is the same anatomy's ERM model when that is in ``records`` too, unless the
    GASE run trained its expert itself (``source_expert_trained_inside``: a run without ERM, merged with one)."""
    total = 0.0
    for k in records if keys is None else keys:
        v = records[k]
        total += float(v.get("seconds", 0.0))
        erm = f"{k.split('/')[0]}/erm"
        if erm != k and erm in records and (keys is None or erm in keys) and not v.get("source_expert_trained_inside"):
            total -= float(v.get("source_expert_seconds", 0.0))
    return total


def run_line(meta: dict) -> str:
    """One sentence: which run, on which machine, with which budget."""
    wall = meta.get("wall_s", {})
    budget = meta.get("train_seconds_budget")
    sized = f", sized by a timing probe to about {budget:.0f} s of training in all" if budget else ""
    records = meta.get("training", {})
    train_s = training_seconds(records)
    reused = sorted(k for k, v in records.items() if "reused_from" in v)
    fresh = sorted(k for k in records if k not in reused)
    if reused and fresh:  # --reuse-models --retrain
        # a GASE model trained here was given its source expert, the reused ERM model: not trained here
        here = training_seconds(records, fresh) - sum(
            float(records[k].get("source_expert_seconds", 0.0)) for k in fresh
            if f"{k.split('/')[0]}/erm" in reused and not records[k].get("source_expert_trained_inside"))
        timing = (f"wall time {wall.get('total', float('nan')):.0f} s; {', '.join(fresh)} trained here "
                  f"({here:.0f} s of training), "
                  f"{', '.join(reused)} trained by an earlier run with the same settings and re-evaluated here "
                  "(`--reuse-models --retrain`).")
    elif reused:
        timing = (f"wall time {wall.get('total', float('nan')):.0f} s, evaluation only: the models were trained "
                  f"({train_s:.0f} s of training) by an earlier run with the same settings and re-evaluated here "
                  "(`--reuse-models`).")
    else:
        timing = f"wall time {wall.get('total', float('nan')):.0f} s in all, {train_s:.0f} s of it training."
    cpu = f"; {meta['cpu']}" if meta.get("cpu") else ""
    return (f"{meta['mode']} run of {meta['date']} on **{meta['machine']}** (torch {meta['torch']}, MONAI "
            f"{meta['monai']}{cpu}): {meta['iterations']} training iterations per model (batch {meta['batch_size']}, crop "
            f"{meta['crop']}, {setting(meta, 'crop_sampling')} crop sampling, the same for every method{sized}; data seed {meta.get('seed', 0)}, training seed "
            f"{meta.get('train_seed', meta.get('seed', 0))}); phantom scale {meta['scale']}, "
            f"{meta['test_subjects']} test subjects per style, {meta['ood_subjects']} per OOD kind; {timing}")


def setting(meta: dict, key: str):
    """A run's setting from its results meta; runs from before the setting was recorded used the legacy value."""
    return meta.get(key, LEGACY_DEFAULTS.get(key))


def build_markdown(res: dict, image_prefix: str = "") -> str:
    """The full results page (RESULTS.md); ``image_prefix`` is prepended to the plot file names."""
    meta = res["meta"]
    line = run_line(meta)
    out = ["# GASE single-source domain-generalisation benchmark", "", line[0].upper() + line[1:], ""]
    capped = [f"{k} ({v['iterations']})" for k, v in meta.get("training", {}).items()
              if v.get("iterations", meta["iterations"]) < meta["iterations"]]
    if capped:
        out += [f"> **Warning:** the time cap stopped these models before {meta['iterations']} iterations: "
                f"{', '.join(capped)}; their comparison is not at an equal budget.", ""]
    if meta["mode"] == "quick":
        out += ["> **Quick smoke run** of the benchmark code: tiny phantoms and a few iterations. The numbers below",
                "> measure nothing; run the full benchmark (`benchmarks/run_full.sh`) for results.", ""]
    out += ["## GASE against the targets", "", *_targets(res), ""]
    for name, a in res["anatomies"].items():
        out += [f"## {name.capitalize()}", "", "Mean Dice per style (test volumes), HD95 medians:", "",
                *_segmentation(a), "", "Dice per class:", "", *_per_class(a), "",
                "Confidence (voxels of all test volumes; 'near structures' = predicted or true foreground dilated "
                "by 2 voxels). Volume reliability = the model's quality (the mean of the next two: the number "
                "GASE ranks scans by), its stability (mean over structures of the Dice between "
                "the mask and the masks predicted under small contrast and size changes, on up to 16 foreground "
                "slices), its expected Dice (mean over structures of 2T / (N + T + FN): T the confidence summed "
                "over the N voxels predicted as the structure, FN the structure's softmax probability on the other "
                "voxels), or the mean score over the predicted foreground:", "",
                *_confidence(a), "",
                "Input validity (in = source-style test volumes, OOD = the kinds below; unseen MR styles reported "
                "apart):", "", *_validity(a), "",
                f"![qualitative {name}]({image_prefix}qualitative_{name}.png)", ""]
    out += ["## Plots", ""] + [f"![{p[:-4]}]({image_prefix}{p})" for p in PLOTS] + [""]
    out += ["## Wall time per stage (s)", "", *_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in
                                                                            meta.get("wall_s", {}).items()]), ""]
    return "\n".join(out)


def build_readme_section(res: dict, results_dir: Path, readme: Path) -> str:
    """The README's Results section: run line, targets and Dice tables, plots, a link to RESULTS.md."""
    rel = Path(os.path.relpath(results_dir, readme.parent)).as_posix()
    out = ["## Results", "", f"Generated by `python -m benchmarks.report {rel} --update-readme` from the "
           + run_line(res["meta"]), ""]
    if res["meta"]["mode"] == "quick":
        out += ["> **Quick smoke run**: these numbers measure nothing; see `benchmarks/run_full.sh`.", ""]
    out += [*_targets(res), ""]
    for name, a in res["anatomies"].items():
        out += [f"**{name.capitalize()}**, mean Dice per style:", "", *_segmentation(a), ""]
    out += [f"![Dice per style]({rel}/dice_per_style.png)", f"![validity]({rel}/validity.png)", "",
            f"All tables (confidence, validity, per class) and plots: [{rel}/RESULTS.md]({rel}/RESULTS.md).", ""]
    return "\n".join(out)


def update_readme(readme: Path, section: str, markers: tuple[str, str] = (BEGIN, END)) -> bool:
    """Replace the text between the markers with ``section``; False (README untouched) without markers."""
    begin, end = markers
    if not readme.exists():
        return False
    text = readme.read_text()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return False
    readme.write_text(text[: i + len(begin)] + "\n" + section.rstrip() + "\n" + text[j:])
    return True


def write_reports(res: dict, results_dir: Path, readme: Path | None = None) -> list[str]:
    """Write RESULTS.md; with ``readme``, update its Results section. Returns what was written, as messages."""
    results_dir = Path(results_dir)
    (results_dir / "RESULTS.md").write_text(build_markdown(res))
    msgs = [f"wrote {results_dir / 'RESULTS.md'}"]
    if readme is not None:
        if update_readme(readme, build_readme_section(res, results_dir, readme)):
            msgs.append(f"updated the Results section of {readme}")
        else:
            msgs.append(f"{readme} has no {BEGIN} ... {END} markers (or does not exist): left untouched; "
                        f"the results are in {results_dir / 'RESULTS.md'}")
    return msgs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rewrite RESULTS.md (and optionally plots / the README section) "
                                 "from a results folder's results.json.")
    ap.add_argument("results", type=Path, help="results folder of a benchmark run (holds results.json)")
    ap.add_argument("--plots", action="store_true", help="also redraw the plots")
    ap.add_argument("--update-readme", nargs="?", const=ROOT / "README.md", type=Path, default=None,
                    metavar="README", help="rewrite the README's Results section (default: the repository README)")
    args = ap.parse_args(argv)
    res = json.loads((args.results / "results.json").read_text())
    refresh_volume_summaries(res)  # volume scores defined after the run (the quality) from its records
    for m in attach_false_invalid(res, args.results):
        print(m)
    if args.plots:
        from .plots import make_all

        panel = np.load(args.results / "panel.npz") if (args.results / "panel.npz").exists() else {}
        for p in make_all(res, dict(panel), args.results):
            print(f"wrote {p}")
    for m in write_reports(res, args.results, args.update_readme):
        print(m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
