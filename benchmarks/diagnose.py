"""Where a model loses its Dice: per style and structure, where the missed and the false voxels went, and
what the Dice would be if every structure were found only on the slices where it truly is.

    python -m benchmarks.diagnose benchmarks/results/cpu-1000-data1-pp/pelvis/models/pelvis-gase \\
        --stream 150 --subjects 3 --out diagnosis.json

The subjects come from a phantom seed stream (``--stream``: subject i is ``subject_seed(stream, i)``; the
benchmark's test stream of data seed d is ``100 d + 2``; use another one, such as 150, to look for causes
without looking at the test set). The model segments them as ``gase segment`` would (its post-processing
included, the stability check off). Printed and written:

- ``dice``: the Dice per structure (a structure absent from both masks counts 1);
- ``missed_to``: of each structure's true voxels, the share predicted as each other label;
- ``false_from``: of each structure's predicted voxels, the share that truly belongs to each other label;
- ``slice_oracle``: the Dice if the voxels of a structure predicted on slices (of the model's plane) that
  hold none of it took their true label: the most that context across slices could add, e.g. a false
  prostate below the apex, which a 2D network sees as a round structure of the right size and contrast.

``--reliability`` also runs the stability check and asks which errors the model sees: over every case, per
structure, Spearman(the model's quality / expected Dice / stability for the structure, its true Dice), the
spread of its true Dice (the structure with the widest spread moves the volume's mean Dice most) and the median
ratio of predicted to true voxels (above 1: it over-segments); and the volume-level Spearman the benchmark
reports. A structure whose Dice varies widely while its own scores do not follow is an error the model makes
with confidence: no ranking built on those scores can put those volumes last.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gase.errors import InputError

from .metrics import spearman, spearman_interval


def _dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = pred == value, truth == value
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * float((p & t).sum()) / total


def slice_oracle(pred: np.ndarray, truth: np.ndarray, values: list[int]) -> np.ndarray:
    """``pred`` (slices first) with every structure's voxels on slices where ``truth`` has none of it set to
    their true label."""
    out = pred.copy()
    for v in values:
        off = ~(truth == v).any(axis=(1, 2))
        wrong = (pred == v) & off[:, None, None]
        out[wrong] = truth[wrong]
    return out


def case_numbers(pred: np.ndarray, truth: np.ndarray, names: dict[int, str]) -> dict:
    """Dice, where each structure's missed and false voxels went, and the slice oracle's Dice, for one case
    (arrays with the model's slices first)."""
    values = [v for v in names if v != 0]
    n = max(names) + 1
    conf = np.bincount(truth.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(), minlength=n * n)
    conf = conf.reshape(n, n)  # [true, predicted]
    oracle = slice_oracle(pred, truth, values)
    return {"dice": {names[v]: _dice(pred, truth, v) for v in values},
            "slice_oracle": {names[v]: _dice(oracle, truth, v) for v in values},
            "confusion": conf.tolist()}


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def reliability_numbers(result, dice: dict[str, float], confusion: list[list[int]], names: dict[int, str]) -> dict:
    """One case's scores (from a :class:`gase.result.SegmentationResult` with its stability computed) beside
    its true Dice: per structure and for the volume (the benchmark's volume reliabilities)."""
    conf = np.asarray(confusion)
    q, ed, st = result.quality_per_label, result.expected_dice_per_label, result.stability_per_label
    per = {}
    for v, name in names.items():
        if v == 0:
            continue
        true_n, pred_n = int(conf[v].sum()), int(conf[:, v].sum())
        per[name] = {"dice": dice[name], "quality": _nan(q.get(name)), "expected_dice": _nan(ed.get(name)),
                     "stability": _nan(st.get(name)), "size_ratio": pred_n / true_n if true_n else float("nan")}
    return {"per_structure": per, "volume": {"dice": float(np.mean(list(dice.values()))),
                                             "quality": result.quality_overall,
                                             "expected_dice": result.expected_dice_overall,
                                             "stability": result.stability_overall}}


SCORES = ("quality", "expected_dice", "stability")


def reliability_summary(rows: list[dict]) -> dict:
    """Over the cases' :func:`reliability_numbers`: per structure the Spearman of each score with the true Dice,
    the standard deviation of the true Dice and the median size ratio; the same Spearman for the volume, the
    quality's with its 95% bootstrap interval."""
    structs = list(rows[0]["per_structure"])
    per = {}
    for k in structs:
        d = [r["per_structure"][k]["dice"] for r in rows]
        per[k] = {**{f"spearman_{s}": spearman([r["per_structure"][k][s] for r in rows], d) for s in SCORES},
                  "dice_sd": float(np.std(d)),
                  "size_ratio_median": float(np.nanmedian([r["per_structure"][k]["size_ratio"] for r in rows]))}
    d = [r["volume"]["dice"] for r in rows]
    volume = {f"spearman_{s}": spearman([r["volume"][s] for r in rows], d) for s in SCORES}
    volume["spearman_quality_95"] = list(spearman_interval([r["volume"]["quality"] for r in rows], d))
    return {"per_structure": per, "volume": {**volume, "dice_sd": float(np.std(d)), "cases": len(rows)}}


def summarize(cases: dict[str, list[dict]], names: dict[int, str]) -> dict:
    """Per style: mean Dice and slice-oracle Dice per structure; missed/false shares from the summed
    confusion matrix."""
    values = [v for v in names if v != 0]
    out = {}
    for style, rows in cases.items():
        conf = np.sum([np.array(r["confusion"]) for r in rows], axis=0).astype(np.float64)
        missed, false = {}, {}
        for v in values:
            fn = conf[v].copy()
            fn[v] = 0
            fp = conf[:, v].copy()
            fp[v] = 0
            true_n, pred_n = conf[v].sum(), conf[:, v].sum()
            missed[names[v]] = {names[u]: round(fn[u] / true_n, 4) for u in names if u != v and true_n and fn[u]}
            false[names[v]] = {names[u]: round(fp[u] / pred_n, 4) for u in names if u != v and pred_n and fp[u]}
        dice = {names[v]: float(np.mean([r["dice"][names[v]] for r in rows])) for v in values}
        orac = {names[v]: float(np.mean([r["slice_oracle"][names[v]] for r in rows])) for v in values}
        out[style] = {"dice": dice, "dice_mean": float(np.mean(list(dice.values()))),
                      "slice_oracle": orac, "slice_oracle_mean": float(np.mean(list(orac.values()))),
                      "missed_to": missed, "false_from": false, "n": len(rows)}
    return out


def diagnose(model: Path, styles: list[str] | None, stream: int, subjects: int, scale: float = 1.0,
             device: str = "cpu", reliability: bool = False) -> dict:
    from gase.orientation import reorientation_for
    from gase.phantoms import SOURCE_STYLE, list_styles, make_case, subject_seed
    from gase.predictor import Predictor

    from .data import DEFAULT_UNSEEN

    predictor = Predictor.from_folder(model, device=device)
    if not reliability:
        predictor.stability_slices = 0
    anatomy = predictor.card.anatomy
    if anatomy not in SOURCE_STYLE:
        raise InputError(f"The model's anatomy {anatomy!r} has no phantom; diagnose needs a knee or pelvis model.")
    known = [s.name for s in list_styles(anatomy)]
    styles = styles or [SOURCE_STYLE[anatomy], *DEFAULT_UNSEEN[anatomy]]
    bad = [s for s in styles if s not in known]
    if bad:
        raise InputError(f"Unknown {anatomy} style(s) {bad}; choose from {', '.join(known)}.")
    names = {0: "background", **{lab.value: lab.name for lab in predictor.card.labels}}
    cases: dict[str, list[dict]] = {}
    rel_rows: list[dict] = []
    t0 = time.perf_counter()
    for style in styles:
        for i in range(subjects):
            image, labels = make_case(anatomy, style, subject_seed(stream, i), scale=scale)
            result = predictor.predict(image)
            reo = reorientation_for(image, predictor.card.plane)
            numbers = case_numbers(reo.forward(result.labels.array), reo.forward(labels.array), names)
            cases.setdefault(style, []).append(numbers)
            if reliability:
                rel_rows.append({"style": style, "subject": i,
                                 **reliability_numbers(result, numbers["dice"], numbers["confusion"], names)})
    per_style = summarize(cases, names)
    unseen = [s for s in styles if s != SOURCE_STYLE[anatomy]]
    mean = lambda key: float(np.mean([per_style[s][key] for s in unseen])) if unseen else float("nan")  # noqa: E731
    out = {"model": str(model), "anatomy": anatomy, "stream": stream, "subjects": subjects, "scale": scale,
           "source_style": SOURCE_STYLE[anatomy], "per_style": per_style,
           "unseen_dice": mean("dice_mean"), "unseen_slice_oracle": mean("slice_oracle_mean")}
    if reliability:
        out["reliability"] = {"cases": rel_rows, "summary": reliability_summary(rel_rows)}
    return {**out, "seconds": round(time.perf_counter() - t0, 1)}


def markdown(res: dict, min_share: float = 0.05) -> str:
    """Tables: Dice and slice-oracle Dice per style and structure; then the missed and false voxels' labels
    (shares of at least ``min_share``)."""
    styles = list(res["per_style"])
    structs = list(res["per_style"][styles[0]]["dice"])
    lines = [f"{res['anatomy']}: {res['model']} (stream {res['stream']}, {res['subjects']} subject(s) per style)", "",
             "| style | " + " | ".join(structs) + " | mean | slice oracle: mean |",
             "|---|" + "---|" * (len(structs) + 2)]
    for s in styles:
        d = res["per_style"][s]
        cells = [f"{d['dice'][k]:.3f} ({d['slice_oracle'][k]:.3f})" for k in structs]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {d['dice_mean']:.3f} | {d['slice_oracle_mean']:.3f} |")
    lines += ["", f"Unseen styles: Dice {res['unseen_dice']:.3f}, slice oracle {res['unseen_slice_oracle']:.3f} "
              "(in brackets above: per structure).", "",
              f"Missed voxels (truth -> predicted) and false voxels (predicted <- truth), shares >= {min_share:.0%}:", ""]
    for s in styles:
        d = res["per_style"][s]
        parts = []
        for k in structs:
            m = ", ".join(f"{u} {v:.0%}" for u, v in d["missed_to"][k].items() if v >= min_share)
            f = ", ".join(f"{u} {v:.0%}" for u, v in d["false_from"][k].items() if v >= min_share)
            if m or f:
                parts.append(f"{k}: " + "; ".join(t for t in (f"missed -> {m}" if m else "", f"false <- {f}" if f else "")
                                                   if t))
        lines.append(f"- {s}: " + (" | ".join(parts) if parts else "nothing above the share"))
    if "reliability" in res:
        lines += ["", reliability_markdown(res["reliability"]["summary"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def reliability_markdown(summary: dict) -> str:
    """The table of :func:`reliability_summary`."""
    v = summary["volume"]
    lines = [f"Which errors the model sees ({v['cases']} cases): Spearman(score, true Dice) per structure and "
             "for the volume's mean Dice; the spread of the true Dice; predicted / true voxels (median):", "",
             "| structure | quality | expected Dice | stability | Dice SD | size ratio |", "|---|---|---|---|---|---|"]
    for k, d in summary["per_structure"].items():
        lines.append(f"| {k} | " + " | ".join(f"{d[f'spearman_{s}']:.2f}" for s in SCORES)
                     + f" | {d['dice_sd']:.3f} | {d['size_ratio_median']:.2f} |")
    lo, hi = v.get("spearman_quality_95", (float("nan"), float("nan")))
    cells = [f"{v[f'spearman_{s}']:.2f}" for s in SCORES]
    if np.isfinite(lo) and np.isfinite(hi):
        cells[0] += f" (95%: {lo:.2f}-{hi:.2f})"
    lines.append("| volume (mean Dice) | " + " | ".join(cells) + f" | {v['dice_sd']:.3f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Where a model loses its Dice, on phantom subjects of a seed stream.")
    ap.add_argument("model", type=Path, help="model folder (model.json and weights)")
    ap.add_argument("--stream", type=int, default=150, help="phantom seed stream of the subjects (default 150: "
                    "not a benchmark test stream)")
    ap.add_argument("--subjects", type=int, default=3, help="subjects per style (default 3)")
    ap.add_argument("--styles", nargs="+", default=None, help="styles (default: the benchmark's source and unseen)")
    ap.add_argument("--scale", type=float, default=1.0, help="phantom scale (< 1: coarser voxels, for tests)")
    ap.add_argument("--reliability", action="store_true", help="also run the stability check and tabulate, per "
                    "structure, how well the model's quality, expected Dice and stability follow its true Dice")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.subjects < 1:
        ap.error("--subjects must be at least 1")
    if not (args.model / "model.json").is_file():
        ap.error(f"{args.model} holds no model.json: give a model folder, e.g. RUN/pelvis/models/pelvis-gase")
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; GASE does not overwrite files: choose another --out")
    try:
        res = diagnose(args.model, args.styles, args.stream, args.subjects, args.scale, reliability=args.reliability)
    except InputError as exc:
        ap.error(str(exc))
    print(markdown(res), end="")
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
