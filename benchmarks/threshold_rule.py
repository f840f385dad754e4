"""Choose the margin of the validity threshold on one stream of new source-style subjects and check it on
another (benchmark.md section 3: false-invalid <= 1%, every OOD volume flagged).

A model's threshold is ``margin x`` the upper quartile of its held-out volume scores
(:func:`gase.validity.calibrate_threshold`; the scores are stored in its card). This script recounts, for each
margin of a grid, what a benchmark run's GASE models would call invalid at that margin, from the scores the run
already recorded (no network is run again):

- the false-invalid counts of each ``false_invalid_<anatomy>*.json`` of the run (``benchmarks/false_invalid.py``;
  one per subject stream, told apart by their first subject);
- the OOD volumes of the run's ``results.json`` flagged, per kind, and the unseen MR styles flagged (a check
  other than the style score, which does not depend on the threshold, keeps flagging what it flagged).

The rule (fixed on 2026-12-06 before the counts of the choosing stream were seen): the smallest margin of the
grid at which, on the choosing stream, each anatomy calls at most ``--allow`` subjects invalid and every OOD
volume is still flagged. That margin is then counted on the checking stream(s), which played no part in it.

    python -m benchmarks.threshold_rule benchmarks/results/cpu-1000-data1-margin --choose-on 800 \\
        --counts benchmarks/results/cpu-1000-data1-margin/margin_choice

Prints one table per anatomy and the chosen margin; ``--json`` writes them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gase.validity import threshold_from_volume_scores

from .false_invalid import upper_bound

GRID = tuple(round(1.25 + 0.05 * i, 2) for i in range(10))  # 1.25 .. 1.70


def upper_quartile(card: dict) -> float:
    """The upper quartile of a model card's held-out volume scores (what the margin multiplies)."""
    scores = (card.get("validity") or {}).get("heldout_volume_scores") or []
    if not scores:
        raise SystemExit("the model card holds no validity.heldout_volume_scores: a model exported before "
                         "2026-12-05 cannot be recounted; refit its validity first (benchmarks.dg_benchmark "
                         "--reuse-models does)")
    return threshold_from_volume_scores(scores, margin=1.0)


def invalid_at(validity: dict, threshold: float) -> bool:
    """Whether a recorded verdict would be 'invalid' at ``threshold``: the style score above it, or any other
    check failed (those do not depend on the threshold)."""
    others = [c for c in validity.get("failed", []) if c != "style"]
    return bool(others) or not float(validity["score"]) <= threshold


def recount(run: Path, anatomy: str, margins=GRID, counts: Path | None = None) -> dict:
    """Counts at each margin for one anatomy of ``run`` (false-invalid JSONs in ``counts``, default ``run``)."""
    card = json.loads((run / anatomy / "models" / f"{anatomy}-gase" / "model.json").read_text())
    uq = upper_quartile(card)
    streams = {}
    for f in sorted((counts or run).glob(f"false_invalid_{anatomy}*.json")):
        d = json.loads(f.read_text())
        streams[int(d.get("first_subject", 0))] = [r["validity"] for r in d["records"]]
    if not streams:
        raise SystemExit(f"{counts or run} holds no false_invalid_{anatomy}*.json: run benchmarks/false_invalid.py "
                         "first")
    records = json.loads((run / "results.json").read_text())["anatomies"][anatomy]["methods"]["gase"]["records"]
    ood = [r for r in records if r["group"] == "ood"]
    unseen = [r for r in records if r["group"] == "unseen"]
    source = [r for r in records if r["group"] == "source"]
    rows = []
    for m in margins:
        t = m * uq
        row = {"margin": m, "threshold": round(t, 4),
               "false_invalid": {first: sum(invalid_at(v, t) for v in vs) for first, vs in streams.items()},
               "source_test_invalid": sum(invalid_at(r["validity"], t) for r in source),
               "ood_missed": sorted(r["case"] for r in ood if not invalid_at(r["validity"], t)),
               "unseen_flagged": {k: sum(invalid_at(r["validity"], t) for r in unseen if r["kind"] == k)
                                  for k in sorted({r["kind"] for r in unseen})}}
        rows.append(row)
    return {"anatomy": anatomy, "upper_quartile": round(uq, 4), "model_threshold": card["validity"]["threshold"],
            "streams": {first: len(vs) for first, vs in streams.items()}, "ood_volumes": len(ood), "rows": rows}


def choose(tables: list[dict], stream: int, allow: int) -> float | None:
    """The smallest margin at which every anatomy calls at most ``allow`` subjects of ``stream`` invalid and
    misses no OOD volume; None if no margin of the grid does."""
    for i, row in enumerate(tables[0]["rows"]):
        if all(t["rows"][i]["false_invalid"].get(stream, allow + 1) <= allow and not t["rows"][i]["ood_missed"]
               for t in tables):
            return row["margin"]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a benchmark results folder with results.json and false_invalid JSONs")
    ap.add_argument("--anatomy", nargs="+", default=["knee", "pelvis"])
    ap.add_argument("--choose-on", type=int, required=True,
                    help="first subject of the stream the margin is chosen on (its false_invalid JSON's --first)")
    ap.add_argument("--counts", type=Path, help="folder of the false_invalid JSONs (default: the run folder)")
    ap.add_argument("--allow", type=int, default=1, help="invalid calls allowed on the choosing stream (default 1)")
    ap.add_argument("--json", type=Path, help="write the tables and the choice here")
    a = ap.parse_args(argv)
    if not (a.run / "results.json").is_file():
        ap.error(f"{a.run} holds no results.json: pass a benchmark results folder")
    tables = [recount(a.run, an, counts=a.counts) for an in a.anatomy]
    for t in tables:
        if a.choose_on not in t["streams"]:
            ap.error(f"{t['anatomy']}: no false_invalid JSON of the stream starting at subject {a.choose_on} "
                     f"(have {sorted(t['streams'])})")
    chosen = choose(tables, a.choose_on, a.allow)
    for t in tables:
        print(f"\n{t['anatomy']}: upper quartile of held-out scores {t['upper_quartile']:.3f} (model threshold "
              f"{t['model_threshold']}); streams {t['streams']}; {t['ood_volumes']} OOD volumes")
        firsts = sorted(t["streams"])
        print("| margin | threshold | " + " | ".join(f"invalid, subjects {f}-{f + t['streams'][f] - 1}" for f in firsts)
              + " | source test invalid | OOD missed | unseen MR flagged |")
        print("|---" * (5 + len(firsts)) + "|")
        for r in t["rows"]:
            counts = [f"{r['false_invalid'][f]} ({100 * r['false_invalid'][f] / t['streams'][f]:.2f}%, bound "
                      f"{100 * upper_bound(r['false_invalid'][f], t['streams'][f]):.1f}%)" for f in firsts]
            mark = " **chosen**" if r["margin"] == chosen else ""
            print(f"| {r['margin']:.2f}{mark} | {r['threshold']:.3f} | " + " | ".join(counts)
                  + f" | {r['source_test_invalid']} | {', '.join(r['ood_missed']) or 'none'} | "
                  + ", ".join(f"{k} {v}" for k, v in r["unseen_flagged"].items()) + " |")
    print(f"\nchosen on subjects from {a.choose_on} (at most {a.allow} invalid per anatomy, no OOD missed): "
          + (f"margin {chosen:.2f}" if chosen is not None else "no margin of the grid"))
    if a.json is not None:
        a.json.write_text(json.dumps({"choose_on": a.choose_on, "allow": a.allow, "chosen": chosen,
                                      "tables": tables}, indent=1))
    return 0 if chosen is not None else 1


if __name__ == "__main__":
    sys.exit(main())
