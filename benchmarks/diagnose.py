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
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gase.errors import InputError


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
             device: str = "cpu") -> dict:
    from gase.orientation import reorientation_for
    from gase.phantoms import SOURCE_STYLE, list_styles, make_case, subject_seed
    from gase.predictor import Predictor

    from .data import DEFAULT_UNSEEN

    predictor = Predictor.from_folder(model, device=device)
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
    t0 = time.perf_counter()
    for style in styles:
        for i in range(subjects):
            image, labels = make_case(anatomy, style, subject_seed(stream, i), scale=scale)
            pred = predictor.predict(image).labels.array
            reo = reorientation_for(image, predictor.card.plane)
            cases.setdefault(style, []).append(case_numbers(reo.forward(pred), reo.forward(labels.array), names))
    per_style = summarize(cases, names)
    unseen = [s for s in styles if s != SOURCE_STYLE[anatomy]]
    mean = lambda key: float(np.mean([per_style[s][key] for s in unseen])) if unseen else float("nan")  # noqa: E731
    return {"model": str(model), "anatomy": anatomy, "stream": stream, "subjects": subjects, "scale": scale,
            "source_style": SOURCE_STYLE[anatomy], "per_style": per_style,
            "unseen_dice": mean("dice_mean"), "unseen_slice_oracle": mean("slice_oracle_mean"),
            "seconds": round(time.perf_counter() - t0, 1)}


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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Where a model loses its Dice, on phantom subjects of a seed stream.")
    ap.add_argument("model", type=Path, help="model folder (model.json and weights)")
    ap.add_argument("--stream", type=int, default=150, help="phantom seed stream of the subjects (default 150: "
                    "not a benchmark test stream)")
    ap.add_argument("--subjects", type=int, default=3, help="subjects per style (default 3)")
    ap.add_argument("--styles", nargs="+", default=None, help="styles (default: the benchmark's source and unseen)")
    ap.add_argument("--scale", type=float, default=1.0, help="phantom scale (< 1: coarser voxels, for tests)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.subjects < 1:
        ap.error("--subjects must be at least 1")
    if not (args.model / "model.json").is_file():
        ap.error(f"{args.model} holds no model.json: give a model folder, e.g. RUN/pelvis/models/pelvis-gase")
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; GASE does not overwrite files: choose another --out")
    try:
        res = diagnose(args.model, args.styles, args.stream, args.subjects, args.scale)
    except InputError as exc:
        ap.error(str(exc))
    print(markdown(res), end="")
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
