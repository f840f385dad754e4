"""How much the benchmark's numbers move with the training seed: runs on the same data with different
training seeds (``--train-seed``, ``TRAIN_SEED=`` for ``run_cpu.sh``), side by side.

One run trains each model once, so a difference between two methods can be the seed's doing. This puts
each run's headline numbers next to each other with their mean and the per-seed differences that the
targets are about (GASE - peer, GASE - ERM on unseen styles; GASE - ERM on the source style)::

    python -m benchmarks.seeds benchmarks/results/cpu-1000-seeds benchmarks/results/cpu-1000 /tmp/seed1 \\
        --update-readme

writes ``SEEDS.md`` and ``seeds.json`` to the first folder and, with ``--update-readme``, the README's
section between ``<!-- SEEDS:BEGIN -->`` and ``<!-- SEEDS:END -->``. The runs must share their data
(seed, subjects, styles), budget (iterations, batch, crop) and crop sampling, and differ in their training
seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from .summary import refresh_volume_summaries
from .report import METHOD_NAMES, ROOT, _f, _table, setting, update_readme

BEGIN, END = "<!-- SEEDS:BEGIN -->", "<!-- SEEDS:END -->"
SAME = ("seed", "iterations", "batch_size", "crop", "crop_sampling", "scale", "test_subjects", "ood_subjects")

# (name, path in a method's summary, number of decimals)
SEG = (("source Dice", ("segmentation", "source", "dice")), ("unseen Dice", ("segmentation", "unseen", "dice")))
GASE_ONLY = (("failure AUROC", ("confidence", "voxel", "confidence", "auroc_all"), 3),
             ("ECE", ("confidence", "voxel", "confidence", "ece_all"), 3),
             ("Spearman(quality, Dice)", ("confidence", "volume", "quality", "spearman"), 2),
             ("Spearman(stability, Dice)", ("confidence", "volume", "stability", "spearman"), 2),
             ("Spearman(expected Dice, Dice)", ("confidence", "volume", "expected_dice", "spearman"), 2),
             ("validity AUROC", ("validity", "auroc"), 3),
             ("false-invalid on source", ("validity", "false_invalid_source"), 3))


class SeedsError(ValueError):
    pass


def train_seed(meta: dict) -> int:
    """The run's training seed (runs before ``--train-seed`` trained with the data seed)."""
    return int(meta.get("train_seed", meta["seed"]))


def _get(res: dict, anatomy: str, method: str, path: tuple[str, ...]) -> float:
    d = res["anatomies"][anatomy]["methods"].get(method, {}).get("summary")
    for p in path:
        if not isinstance(d, dict):
            return float("nan")
        d = d.get(p)
    return float("nan") if d is None else float(d)


def only_methods(runs: list[dict], methods: list[str]) -> list[dict]:
    """The runs with just ``methods`` (e.g. ``["gase"]``: a GASE model re-evaluated on its own next to full
    runs); :class:`SeedsError` if a run lacks one of them."""
    out = []
    for r in runs:
        anats = {}
        for a, d in r["anatomies"].items():
            missing = [m for m in methods if m not in d["methods"]]
            if missing:
                raise SeedsError(f"a run has no {', '.join(missing)} on {a}")
            anats[a] = {**d, "methods": {m: d["methods"][m] for m in methods}}
        out.append({**r, "anatomies": anats})
    return out


def check_runs(runs: list[dict]) -> None:
    """Same data and budget, distinct training seeds, the same anatomies and methods; else :class:`SeedsError`."""
    if len(runs) < 2:
        raise SeedsError("give at least two runs (results folders) to compare seeds")
    first = runs[0]["meta"]
    for r in runs[1:]:
        diff = [k for k in SAME if setting(r["meta"], k) != setting(first, k)]
        if diff:
            raise SeedsError(f"the runs differ in {', '.join(diff)}: seeds can only be compared on the same data, "
                             "budget and settings")
        if set(r["anatomies"]) != set(runs[0]["anatomies"]):
            raise SeedsError("the runs cover different anatomies")
        for a in r["anatomies"]:
            if set(r["anatomies"][a]["methods"]) != set(runs[0]["anatomies"][a]["methods"]):
                raise SeedsError(f"the runs trained different methods on {a}")
    seeds = [train_seed(r["meta"]) for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SeedsError(f"training seeds repeat ({seeds}): the same seed trains the same model")


def summarize(runs: list[dict]) -> dict:
    """Per anatomy: each method's numbers per seed and their mean, and the per-seed differences."""
    check_runs(runs)
    seeds = [train_seed(r["meta"]) for r in runs]
    out = {"train_seeds": seeds, "iterations": runs[0]["meta"]["iterations"],
           "crop_sampling": setting(runs[0]["meta"], "crop_sampling"), "anatomies": {}}
    for a in runs[0]["anatomies"]:
        methods = list(runs[0]["anatomies"][a]["methods"])
        entry = {"methods": {}, "differences": {}, "gase": {}}
        for m in methods:
            entry["methods"][m] = {name: [_get(r, a, m, path) for r in runs] for name, path in SEG}
        if "gase" in methods:
            for name, path, _ in GASE_ONLY:
                entry["gase"][name] = [_get(r, a, "gase", path) for r in runs]
            g = entry["methods"]["gase"]
            for other, label in (("randcurve", "peer"), ("erm", "ERM")):
                if other in methods:
                    o = entry["methods"][other]
                    entry["differences"][f"unseen Dice, GASE - {label}"] = [x - y for x, y in zip(g["unseen Dice"],
                                                                                                   o["unseen Dice"])]
            if "erm" in methods:
                entry["differences"]["source Dice, GASE - ERM"] = [
                    x - y for x, y in zip(g["source Dice"], entry["methods"]["erm"]["source Dice"])]
        out["anatomies"][a] = entry
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _cells(values: list[float], nd: int = 3, signed: bool = False) -> list[str]:
    fmt = (lambda v: "n/a" if not math.isfinite(v) else f"{v:+.{nd}f}") if signed else (lambda v: _f(v, nd))
    return [fmt(v) for v in values] + [f"**{fmt(_mean(values))}**"]


def build_markdown(summary: dict, heading: str = "##") -> str:
    seeds = summary["train_seeds"]
    cols = [f"seed {s}" for s in seeds] + ["mean"]
    out = [f"{heading} How much the numbers move with the training seed", "",
           f"{len(seeds)} runs on the same data and budget ({summary['iterations']} iterations per model, "
           f"{summary.get('crop_sampling', 'foreground')} crop sampling), training "
           f"seeds {', '.join(map(str, seeds))}. A difference between methods smaller than its spread across the "
           "seeds is not evidence.", ""]
    for a, entry in summary["anatomies"].items():
        rows = []
        for m, numbers in entry["methods"].items():
            for name, values in numbers.items():
                rows.append([METHOD_NAMES.get(m, m), name, *_cells(values)])
        for name, values in entry["differences"].items():
            rows.append(["difference", name, *_cells(values, signed=True)])
        for name, path_nd in zip(entry["gase"], GASE_ONLY):
            rows.append(["GASE", name, *_cells(entry["gase"][name], path_nd[2])])
        out += [f"**{a.capitalize()}**", "", *_table(["method", "measure", *cols], rows), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for SEEDS.md and seeds.json")
    ap.add_argument("runs", type=Path, nargs="+", help="results folders (each with a results.json of both anatomies)")
    ap.add_argument("--methods", nargs="+", choices=["erm", "randcurve", "gase"],
                    help="compare only these methods (runs may hold more)")
    ap.add_argument("--update-readme", nargs="?", const=ROOT / "README.md", type=Path, default=None, metavar="README",
                    help="rewrite the README's seeds section (between its markers)")
    args = ap.parse_args(argv)
    runs = []
    for folder in args.runs:
        path = folder / "results.json"
        if not path.is_file():
            ap.error(f"{path} does not exist: give results folders of finished benchmark runs")
        runs.append(json.loads(path.read_text()))
        refresh_volume_summaries(runs[-1])  # the quality of runs written before it existed
    try:
        if args.methods:
            runs = only_methods(runs, args.methods)
        summary = summarize(runs)
    except SeedsError as exc:
        ap.error(str(exc))
    summary["runs"] = [os.path.relpath(p, ROOT) if p.resolve().is_relative_to(ROOT) else str(p) for p in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    md = build_markdown(summary)
    (args.out / "SEEDS.md").write_text(f"# GASE benchmark: training seeds\n\nRuns: {', '.join(summary['runs'])}\n\n"
                                       + md + "\n")
    (args.out / "seeds.json").write_text(json.dumps(summary, indent=1))
    print(md)
    if args.update_readme is not None:
        ok = update_readme(args.update_readme, md, (BEGIN, END))
        print(f"[seeds] {'updated' if ok else 'no markers in (left untouched)'} {args.update_readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
