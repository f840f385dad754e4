"""A small, fast check of one training setting (minutes on one CPU thread), for choosing what the full
benchmark should run: train 4 source-style phantoms for a few hundred iterations with the Trainer
directly (no export, no calibration), then Dice per style on 2 test subjects of the source style and
of the five default unseen styles, computed on canonical slices. Not the benchmark's protocol (6
subjects, the predictor, HD95, confidence, validity): use ``benchmarks/dg_benchmark.py`` for claims.

    python -m benchmarks.dg_probe --method randcurve --iterations 300 --set lr=0.006
    python -m benchmarks.dg_probe --method gase --iterations 300 --set gen_content=true --json out.json

Prints one JSON line: the settings, seconds of training, Dice per class and style, the unseen mean.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def probe(method: str, iterations: int, overrides: dict, anatomy: str = "knee", test_subjects: int = 2,
          data_seed: int = 0, init: Path | None = None, extra_styles: tuple[str, ...] = (),
          eval_stream: int | None = None) -> dict:
    from gase.labels import ANATOMY_LABELS
    from gase.orientation import reorientation_for
    from gase.phantoms import SOURCE_STYLE, make_case, subject_seed
    from gase.preprocess import Normalization
    from gase.training.config import TrainConfig
    from gase.training.data import SliceSet
    from gase.training.loop import Trainer, inflate_input, margin_share, training_context
    from gase.training.run import DEFAULT_PLANE

    from .data import DEFAULT_UNSEEN

    plane, source, unseen = DEFAULT_PLANE[anatomy], SOURCE_STYLE[anatomy], list(DEFAULT_UNSEEN[anatomy])
    norm = Normalization()
    pairs = []
    # the benchmark's training subjects of this data seed (benchmarks.data: stream 100 x seed + 1)
    for i in range(4):
        image, labels = make_case(anatomy, source, subject_seed(100 * data_seed + 1, i))
        pairs.append((image, labels.array.astype(np.uint8), f"train{i}"))
    spacing = float(np.median([s for im, _, _ in pairs for s in reorientation_for(im, plane).spacing[1:]]))
    cfg = TrainConfig.from_json({"method": method, "iterations": iterations, "device": "cpu", **overrides})
    context = training_context(cfg, [p[0] for p in pairs], plane)
    train_set = SliceSet.build(pairs, plane, spacing, norm, context)
    table = ANATOMY_LABELS[anatomy]
    trainer = Trainer(cfg, table, max(t.value for t in table) + 1)
    if init is not None:  # fine-tune: the networks of a training checkpoint, fresh optimisers and schedule
        sd = torch.load(init, map_location="cpu", weights_only=False)
        for name in ("seg", "enc", "G", "M"):  # a 2D segmenter is inflated to the context (zero neighbour weights)
            getattr(trainer, name).load_state_dict(inflate_input(sd[name], cfg.context_slices) if name == "seg"
                                                   else sd[name])
    t0 = time.perf_counter()
    for _ in range(iterations):
        trainer.step(*train_set.sample(trainer.gen, cfg.batch_size, cfg.crop, mode=cfg.crop_sampling,
                                       margin_prob=margin_share(cfg)))
    seconds = time.perf_counter() - t0
    out = {"anatomy": anatomy, "method": method, "iterations": iterations, "settings": overrides,
           "data_seed": data_seed, "init": str(init) if init else None,
           "threads": torch.get_num_threads(), "train_seconds": round(seconds, 1), "dice": {}}
    # evaluation subjects: the benchmark's test stream (100 x seed + 2) unless ``eval_stream`` names another
    stream = 100 * data_seed + 2 if eval_stream is None else eval_stream
    for style in [source, *unseen, *extra_styles]:
        cases = []
        for i in range(test_subjects):
            image, labels = make_case(anatomy, style, subject_seed(stream, i))
            cases.append((image, labels.array.astype(np.uint8), f"{style}{i}"))
        out["dice"][style] = {k: round(v, 3) for k, v in trainer.dice_on(SliceSet.build(cases, plane, spacing,
                                                                                        norm, context)).items()}
    out["source_mean"] = out["dice"][source]["mean"]
    out["unseen_mean"] = round(float(np.mean([out["dice"][s]["mean"] for s in unseen])), 3)
    if extra_styles:
        out["extra_mean"] = round(float(np.mean([out["dice"][s]["mean"] for s in extra_styles])), 3)
    return out


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dg_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="gase", choices=["erm", "randcurve", "gase"])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--anatomy", default="knee", choices=["knee", "pelvis"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig setting (JSON value), e.g. lr=0.006 or gen_content=true; repeatable")
    ap.add_argument("--data-seed", type=int, default=0, help="the benchmark data seed whose training subjects to use")
    ap.add_argument("--init", type=Path, help="fine-tune: start from the networks of this training checkpoint.pt")
    ap.add_argument("--test-subjects", type=int, default=2)
    ap.add_argument("--eval-stream", type=int, help="seed stream of the evaluation subjects (default: the "
                    "benchmark's test stream of --data-seed); another stream keeps the test set out of choices")
    ap.add_argument("--extra-styles", nargs="*", default=[], help="styles evaluated besides the default unseen ones")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = _value(value)
    res = probe(a.method, a.iterations, overrides, a.anatomy, a.test_subjects, a.data_seed, a.init,
                tuple(a.extra_styles), a.eval_stream)
    print(json.dumps(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
