"""False-invalid rate of a trained model on many new source-style subjects (benchmark.md section 3).

The benchmark's own source-style test set has 6 subjects per anatomy: "0 of 6 called invalid" cannot
show the target (<= 1% false-invalid). This script renders ``--subjects`` further subjects of the
anatomy's source style from their own seed stream (disjoint from the benchmark's training, validation,
test and OOD subjects of the same ``--data-seed``), runs the model's full prediction on each (the
verdict needs the segmentation: size and stability checks) and reports how many were called invalid,
by which check, with an exact (Clopper-Pearson) one-sided 95% upper bound on the rate.

    python -m benchmarks.false_invalid --model benchmarks/results/cpu-1000-data1/knee/models/knee-gase \\
        --anatomy knee --data-seed 1 --subjects 300 --out false_invalid_knee.json

About 8 s per knee volume and 5 s per pelvis volume on one CPU thread (scale 1.0). Prints one line per
volume and a summary; ``--out`` receives the records and the summary (written once, at the end).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .data import N_TRAIN, N_VAL, DataSpec, _seeds
from .evaluate import validity_record

CHECKS = ("style", "size", "ct", "inverted", "stability")


def upper_bound(invalid: int, n: int, level: float = 0.95) -> float:
    """Exact one-sided upper confidence bound on a rate from ``invalid`` events in ``n`` trials."""
    from scipy.stats import beta

    if n <= 0:
        return float("nan")
    return 1.0 if invalid >= n else float(beta.ppf(level, invalid + 1, n - invalid))


def extra_source_seeds(anatomy: str, data_seed: int, n: int, n_test: int = 6, n_ood: int = 3,
                       first: int = 0) -> list[int]:
    """Seeds of subjects ``first`` .. ``first + n - 1`` of the extra source-style set, checked disjoint from the
    benchmark's other sets."""
    spec = DataSpec(anatomy, (), n_test=n_test, n_ood=n_ood, seed=data_seed)
    seeds = _seeds(spec, "extra_source", first + n)[first:]
    used = set(_seeds(spec, "train", N_TRAIN + N_VAL)) | set(_seeds(spec, "test", n_test)) | \
        set(_seeds(spec, "ood", n_ood))
    if used & set(seeds):
        raise RuntimeError(f"extra source-style subjects overlap the benchmark's subjects for {spec}")
    return seeds


def summarize(records: list[dict]) -> dict:
    n = len(records)
    invalid = sum(not r["validity"]["valid"] for r in records)
    scores = np.array([r["validity"]["score"] for r in records]) if records else np.zeros(0)
    thr = records[0]["validity"]["threshold"] if records else float("nan")
    return {"volumes": n, "invalid": invalid, "rate": invalid / n if n else float("nan"),
            "upper_95": upper_bound(invalid, n),
            "flagged_by": {c: sum(c in r["validity"]["failed"] for r in records) for c in CHECKS},
            "threshold": thr, "score_max": float(scores.max()) if n else float("nan"),
            "score_median": float(np.median(scores)) if n else float("nan"),
            "dice_mean": float(np.nanmean([r["dice_mean"] for r in records])) if n else float("nan")}


def run(model: Path, anatomy: str, data_seed: int, subjects: int, scale: float = 1.0, device: str = "cpu",
        log=print, first: int = 0) -> dict:
    from gase.phantoms import SOURCE_STYLE, make_case
    from gase.predictor import Predictor

    predictor = Predictor.from_folder(model, device=device)
    if predictor.card.anatomy != anatomy:
        raise SystemExit(f"{model} is a {predictor.card.anatomy} model, not {anatomy}; pass --anatomy "
                         f"{predictor.card.anatomy} or another --model.")
    values = [t.value for t in predictor.card.labels]
    records = []
    for i, seed in enumerate(extra_source_seeds(anatomy, data_seed, subjects, first=first), start=first):
        image, labels = make_case(anatomy, SOURCE_STYLE[anatomy], seed, scale=scale)
        t0 = time.perf_counter()
        res = predictor.predict(image)
        pred, truth = res.labels.array, labels.array
        dice = []
        for v in values:
            p, t = pred == v, truth == v
            if t.any():
                dice.append(2.0 * float((p & t).sum()) / float(p.sum() + t.sum()))
        rec = {"subject": i, "seed": int(seed), "seconds": round(time.perf_counter() - t0, 2),
               "dice_mean": float(np.mean(dice)) if dice else float("nan"), "validity": validity_record(res.validity)}
        records.append(rec)
        v = rec["validity"]
        log(f"{anatomy} subject {i} ({i - first + 1}/{subjects}): score {v['score']:.3f} (threshold {v['threshold']:.3f}) "
            f"{'valid' if v['valid'] else 'INVALID: ' + ', '.join(v['failed'])}, Dice {rec['dice_mean']:.3f}, "
            f"{rec['seconds']:.1f} s")
    return {"model": str(model), "model_training_seconds": float(predictor.card.training.get("seconds", float("nan"))),
            "anatomy": anatomy, "data_seed": data_seed, "scale": scale, "first_subject": first,
            "style": SOURCE_STYLE[anatomy], "summary": summarize(records), "records": records}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a trained model folder (model.json)")
    ap.add_argument("--anatomy", required=True, choices=["knee", "pelvis"])
    ap.add_argument("--data-seed", type=int, default=0, help="the benchmark's data seed (the subjects avoid its sets)")
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--first", type=int, default=0, help="index of the first subject of the stream (another "
                    "--first gives other subjects, e.g. to check a rule chosen on the first ones)")
    ap.add_argument("--scale", type=float, default=1.0, help="phantom scale (1.0: the benchmark's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="JSON file for the records and the summary")
    a = ap.parse_args(argv)
    if a.subjects < 1 or a.first < 0:
        ap.error("--subjects must be at least 1 and --first at least 0")
    if not (a.model / "model.json").is_file():
        ap.error(f"{a.model} holds no model.json: pass a trained model folder")
    if a.out is not None and a.out.exists():
        ap.error(f"{a.out} exists: choose another --out (nothing is overwritten)")
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    out = run(a.model, a.anatomy, a.data_seed, a.subjects, a.scale, first=a.first)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    s = out["summary"]
    print(f"{a.anatomy}: {s['invalid']} of {s['volumes']} source-style volumes called invalid "
          f"(rate {100 * s['rate']:.1f}%, one-sided 95% upper bound {100 * s['upper_95']:.1f}%); flagged by "
          f"{', '.join(f'{k} {v}' for k, v in s['flagged_by'].items())}; style score max {s['score_max']:.3f} / "
          f"median {s['score_median']:.3f} against threshold {s['threshold']:.3f}; mean Dice {s['dice_mean']:.3f}; "
          f"{out['wall_s']:.0f} s", flush=True)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(a.out.name + ".partial")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
