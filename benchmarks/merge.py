"""Merge benchmark runs of different anatomies or methods (run side by side, e.g. one process per CPU
core) into one results folder, then write RESULTS.md, the plots and optionally the README section from it.

    python -m benchmarks.merge OUT RUN_A RUN_B [--update-readme]

Each RUN holds a finished run's ``results.json`` (and ``panel.npz``). The runs must share the protocol
(iterations, batch, crop, phantom scale, subjects per style). An anatomy may appear in several runs with
different methods (one anatomy's methods trained side by side) when everything but the methods is equal.
The merged ``meta`` keeps the first run's fields, sums the training records, takes the longest run's
wall time as the total (the runs ran at the same time) and lists every run's command under ``parts``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .report import setting

METHOD_ORDER = ("erm", "randcurve", "gase")  # the report's order of the methods
PROTOCOL = ("mode", "iterations", "batch_size", "crop", "crop_sampling", "scale", "test_subjects", "ood_subjects",
            "seed")


def _join_methods(into: dict, other: dict, name: str) -> None:
    """Add ``other``'s methods to ``into`` (one anatomy's results from two runs, e.g. its methods trained
    side by side); the two must be the same test set (every field but the methods equal), methods disjoint."""
    fields = [k for k in sorted(set(into) | set(other)) if k != "methods" and into.get(k) != other.get(k)]
    if fields:
        raise ValueError(f"anatomy {name} is in more than one run with different {', '.join(fields)}")
    both = sorted(set(into["methods"]) & set(other.get("methods", {})))
    if both or not other.get("methods"):
        raise ValueError(f"anatomy {name} is in more than one run"
                         + (f" with the same methods ({', '.join(both)})" if both else ""))
    order = list(METHOD_ORDER) + sorted(set(into["methods"]) | set(other["methods"]))
    joined = {**into["methods"], **other["methods"]}
    into["methods"] = {m: joined[m] for m in dict.fromkeys(order) if m in joined}


def merge(runs: list[dict], machine: str | None = None) -> dict:
    """Merged results dict of several runs' results (see the module docstring). Raises ValueError.

    ``machine`` replaces the first run's machine description (which names one run's process only, e.g.
    "CPU (x86_64, 1 torch thread)", where the runs shared one machine side by side)."""
    if not runs:
        raise ValueError("nothing to merge")
    first = runs[0]["meta"]
    out = {"anatomies": {}, "meta": {k: v for k, v in first.items() if k not in ("wall_s", "training", "command")}}
    training, wall, parts = {}, {}, []
    for r in runs:
        meta = r["meta"]
        diff = [k for k in PROTOCOL if setting(meta, k) != setting(first, k)]
        if diff:
            raise ValueError(f"runs differ in {', '.join(diff)}: only runs of the same protocol can be merged")
        for name, a in r["anatomies"].items():
            if name in out["anatomies"]:
                _join_methods(out["anatomies"][name], a, name)
            else:
                out["anatomies"][name] = {**a, "methods": dict(a.get("methods", {}))}
        training.update(meta.get("training", {}))
        for k, v in meta.get("wall_s", {}).items():
            if k != "total":
                wall[k] = round(wall.get(k, 0.0) + v, 2)
        parts.append({"command": meta.get("command"), "machine": meta.get("machine"),
                      "wall_total_s": meta.get("wall_s", {}).get("total"), "anatomies": list(r["anatomies"])})
    out["anatomies"] = dict(sorted(out["anatomies"].items()))  # the same order whichever run came first
    wall["total"] = max((p["wall_total_s"] or 0.0) for p in parts)
    out["meta"].update(training=training, wall_s=wall, parts=parts,
                       command=" & ".join(p["command"] or "?" for p in parts))
    if machine:
        out["meta"]["machine"] = machine
    return out


def main(argv: list[str] | None = None) -> int:
    from .report import main as report_main

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the merged results")
    ap.add_argument("runs", type=Path, nargs="+", help="finished run folders (each with results.json)")
    ap.add_argument("--update-readme", nargs="?", const=Path(__file__).resolve().parents[1] / "README.md",
                    type=Path, default=None, metavar="README")
    ap.add_argument("--machine", help="how the runs shared the machine, for the report header "
                    "(e.g. 'CPU, knee and pelvis side by side, 1 thread each, 2 cores')")
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "results.json").exists()]
    if missing:
        ap.error(f"no results.json in {', '.join(missing)} (is the run finished?)")
    res = merge([json.loads((r / "results.json").read_text()) for r in args.runs], machine=args.machine)
    panel: dict[str, np.ndarray] = {}
    for r in args.runs:
        if (r / "panel.npz").exists():
            panel.update(dict(np.load(r / "panel.npz")))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    np.savez_compressed(args.out / "panel.npz", **panel)
    # the merged folder is an ordinary results folder: the report writes its plots, RESULTS.md and README
    readme = ["--update-readme", str(args.update_readme)] if args.update_readme else []
    return report_main([str(args.out), "--plots", *readme])


if __name__ == "__main__":
    raise SystemExit(main())
