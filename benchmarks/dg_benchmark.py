"""Single-source domain-generalisation benchmark: ERM vs random intensity curves vs GASE (benchmark.md 1-3).

Per anatomy: 4 labelled source-style phantoms (+1 for validation) train each method with the same
backbone, crops, batch and iteration budget; test subjects in the source style and in unseen styles
measure Dice/HD95, the confidence (voxel failure AUROC, ECE, volume Spearman and AURC, against max
softmax probability and entropy), and the input-validity flag (AUROC vs OOD inputs, false-invalid
rate, score vs Dice on unseen styles). Writes ``results.json``, ``RESULTS.md``, ``panel.npz``, PNGs
and the model folders (``models/``) into ``--out``; prints wall time per stage.

    python -m benchmarks.dg_benchmark --quick --out /tmp/gase-quick            # smoke test, minutes on a CPU
    python -m benchmarks.dg_benchmark --out benchmarks/results/full --train-seconds 200   # see run_full.sh

``--train-seconds`` sizes the common iteration budget from a timing probe of every (anatomy, method) on
this machine, so that all training together takes about that long; ``--iterations`` fixes it instead.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gase.training.config import TrainConfig

# stability_slices: each prediction's stability check re-segments this many slices (the predictor's default is
# gase.predictor.STABILITY_SLICES): two thirds of a quick evaluation's time went there
QUICK = {"scale": 0.5, "test_subjects": 2, "ood_subjects": 1, "n_styles": 2, "iterations": 10, "batch_size": 4,
         "crop": 64, "stability_slices": 4}
FULL_DEFAULT_ITERATIONS = 1500


@dataclass
class BenchConfig:
    out: Path
    anatomies: tuple[str, ...] = ("knee", "pelvis")
    methods: tuple[str, ...] = ("erm", "randcurve", "gase")
    quick: bool = False
    iterations: int | None = None
    train_seconds: float | None = None
    device: str = "auto"
    test_subjects: int = 6
    ood_subjects: int = 3
    styles: tuple[str, ...] | None = None
    n_styles: int | None = None
    scale: float = 1.0
    batch_size: int = 8
    crop: int = 128
    workers: int = 0
    seed: int = 0
    train_seed: int = 0  # training seed (parse_args: --train-seed, else --seed)
    threads: int | None = None
    update_readme: Path | None = None
    models_dir: Path | None = None
    overwrite: bool = False
    reuse_models: bool = False
    retrain: tuple[str, ...] = ()  # with reuse_models: these methods are trained anew, the others reused
    context_slices: int = 1  # every method's segmenter reads this many slices (gase.context; 1: 2D)
    context_mm: float | None = None  # their distance (default: the training scans' slice spacing)
    stability_slices: int | None = None  # slices of each prediction's stability check (None: the predictor's)
    wall: dict = field(default_factory=dict)


@contextmanager
def stage(cfg: BenchConfig, name: str):
    """Time a stage, print it, and record it in ``cfg.wall`` (seconds)."""
    print(f"[benchmark] {name} ...", flush=True)
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    cfg.wall[name] = round(cfg.wall.get(name, 0.0) + dt, 2)
    print(f"[benchmark] {name}: {dt:.1f} s", flush=True)


def machine_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} torch thread{'s' if n != 1 else ''})"


def cpu_description() -> str:
    """The processor's model name and the CPU kernels torch chose for it ("..., torch kernels AVX512"): float
    training reproduces bit for bit only on the same kernels, so two runs' models can be compared exactly
    only when this matches."""
    import torch

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return f"{name}, torch kernels {capability}" if capability else name


def probe_seconds_per_iteration(pairs, table, plane: str, train_cfg, steps: int = 16, warmup: int = 6) -> float:
    """Seconds per training iteration (batch sampling + one step) of ``train_cfg`` on this machine, timed
    after ``warmup`` iterations (CUDA start-up, allocator) over ``steps`` (even, so GASE's alternate
    generator steps count in proportion)."""
    import torch

    from gase.orientation import reorientation_for
    from gase.preprocess import Normalization
    from gase.training.data import SliceSet
    from gase.training.loop import Trainer, margin_share, training_context

    spacing = float(np.median([s for img, _, _ in pairs for s in reorientation_for(img, plane).spacing[1:]]))
    sset = SliceSet.build(pairs, plane, spacing, Normalization(),
                          training_context(train_cfg, [img for img, _, _ in pairs], plane))
    trainer = Trainer(train_cfg, table, max(t.value for t in table) + 1)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.step(*sset.sample(trainer.gen, train_cfg.batch_size, train_cfg.crop, mode=train_cfg.crop_sampling,
                                     margin_prob=margin_share(train_cfg)))
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(*sset.sample(trainer.gen, train_cfg.batch_size, train_cfg.crop, mode=train_cfg.crop_sampling,
                                     margin_prob=margin_share(train_cfg)))
    sync()
    return (time.perf_counter() - t0) / steps


def run(cfg: BenchConfig) -> dict:
    """Run the whole benchmark; returns the results dict (also written to ``cfg.out / results.json``)."""
    import torch

    from gase.labels import ANATOMY_LABELS
    from gase.predictor import resolve_device
    from gase.training.config import TrainConfig
    from gase.training.loop import train
    from gase.training.run import DEFAULT_PLANE

    from .data import DataSpec, build_all, check_styles_exist, resolve_unseen_styles, training_pairs
    from .evaluate import evaluate_model, init_worker
    from .plots import make_all
    from .report import build_markdown, write_reports
    from .summary import summarize_model

    t_total = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device).type
    cfg.out.mkdir(parents=True, exist_ok=True)
    if (cfg.out / "results.json").exists() and not cfg.overwrite:
        raise SystemExit(f"{cfg.out} already holds results.json; choose another --out or pass --overwrite.")
    check_styles_exist(cfg.anatomies, cfg.styles)
    specs = {a: DataSpec(a, resolve_unseen_styles(a, cfg.styles, cfg.n_styles), cfg.test_subjects, cfg.ood_subjects,
                         cfg.scale, cfg.seed) for a in cfg.anatomies}
    pool = ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn"), initializer=init_worker) \
        if cfg.workers > 0 else None

    def train_cfg(method: str, iterations: int, max_minutes: float | None = None) -> TrainConfig:
        return TrainConfig(method=method, iterations=iterations, batch_size=cfg.batch_size, crop=cfg.crop,
                           device=device, seed=cfg.train_seed, val_every=max(50, iterations // 4),
                           checkpoint_every=iterations, max_minutes=max_minutes,
                           context_slices=cfg.context_slices, context_mm=cfg.context_mm).validate()

    reused = {}  # --reuse-models: the earlier run's training records, checked before rendering anything
    if cfg.reuse_models:
        for a in cfg.anatomies:
            for m in (m for m in cfg.methods if m not in cfg.retrain):
                reused[f"{a}/{m}"] = reused_training((cfg.models_dir or cfg.out / "models") / f"{a}-{m}",
                                                     train_cfg(m, cfg.iterations or FULL_DEFAULT_ITERATIONS))
    try:
        with stage(cfg, "data"):
            data = build_all(list(specs.values()), pool)
            for a, spec in specs.items():
                print(f"  {a}: {len(data[a].train)} train + {len(data[a].val)} val, {len(data[a].test)} test "
                      f"(unseen: {', '.join(spec.unseen_styles)}), {len(data[a].ood)} OOD", flush=True)
        per_it: dict[str, float] = {}
        iterations = cfg.iterations
        if iterations is None and cfg.train_seconds:
            with stage(cfg, "timing probe"):
                for a in cfg.anatomies:
                    for m in cfg.methods:
                        per_it[f"{a}/{m}"] = probe_seconds_per_iteration(
                            training_pairs(data[a].train), ANATOMY_LABELS[a], DEFAULT_PLANE[a], train_cfg(m, 100))
                        print(f"  {a}/{m}: {1000 * per_it[f'{a}/{m}']:.1f} ms per iteration", flush=True)
            iterations = int(max(20, min(20000, cfg.train_seconds / sum(per_it.values()))) // 10 * 10)
            print(f"  -> {iterations} iterations per model to train in about {cfg.train_seconds:.0f} s", flush=True)
        iterations = iterations or FULL_DEFAULT_ITERATIONS
        results: dict = {"anatomies": {}}
        panel: dict[str, np.ndarray] = {}
        trained: dict[str, dict] = {}
        for a in cfg.anatomies:
            table = ANATOMY_LABELS[a]
            d = data[a]
            panel_styles = [d.source_style, *specs[a].unseen_styles[:2]]
            entry = {"source_style": d.source_style, "unseen_styles": list(specs[a].unseen_styles),
                     "label_names": [t.name for t in table], "panel_styles": panel_styles,
                     "labels": [{"value": t.value, "name": t.name, "color": list(t.color)} for t in table],
                     "methods": {}}
            for m in cfg.methods:
                cap = 2.0 * iterations * per_it[f"{a}/{m}"] / 60 + 0.5 if per_it else None  # safety cap only
                folder = (cfg.models_dir or cfg.out / "models") / f"{a}-{m}"
                # GASE's source expert is the ERM run with the same settings: when this run trains (or reuses)
                # that model, GASE gets it instead of training it again (the same weights: CPU training is
                # deterministic, Testing/test_source_expert.py), and its training time counts for GASE too
                erm_folder = (cfg.models_dir or cfg.out / "models") / f"{a}-erm"
                expert_from = erm_folder if m == "gase" and "erm" in cfg.methods else None
                if cfg.reuse_models and m not in cfg.retrain:
                    trained[f"{a}/{m}"] = reused[f"{a}/{m}"]
                    upgrade_reused_card(folder, training_pairs(d.train), training_pairs(d.val))
                    if m == "gase":
                        if (erm_folder / "model.json").is_file():  # the expert it may be given: same settings?
                            reused_training(erm_folder, train_cfg("erm", cfg.iterations or FULL_DEFAULT_ITERATIONS))
                        trained[f"{a}/{m}"] = with_source_expert(folder, erm_folder, trained[f"{a}/{m}"],
                                                                 training_pairs(d.train), training_pairs(d.val))
                else:
                    with stage(cfg, f"train {a}/{m}"):
                        tr = train(training_pairs(d.train), training_pairs(d.val), table, folder,
                                   train_cfg(m, iterations, cap), anatomy=a, plane=DEFAULT_PLANE[a],
                                   name=f"bench-{a}-{m}", resume=False, source_expert_from=expert_from)
                    trained[f"{a}/{m}"] = {"iterations": tr.iterations, "seconds": round(tr.seconds, 1),
                                           "val_dice": tr.val_dice}
                    if expert_from is not None:
                        trained[f"{a}/{m}"] = with_source_expert(folder, erm_folder, trained[f"{a}/{m}"],
                                                                 training_pairs(d.train), training_pairs(d.val))
                    elif m == "gase":
                        trained[f"{a}/{m}"] = with_own_expert(folder, trained[f"{a}/{m}"])
                with stage(cfg, f"evaluate {a}/{m}"):
                    ev = evaluate_model(load_predictor(cfg, folder, device), d, m, tuple(panel_styles), pool)
                    summary = summarize_model(ev.records, ev.voxels, entry["label_names"], d.source_style,
                                              list(specs[a].unseen_styles))
                entry["methods"][m] = {"summary": summary, "records": ev.records, "manifold": ev.manifold,
                                       "training": trained[f"{a}/{m}"]}
                if m == "gase":  # a model with a source expert: its other route on the test volumes, same run
                    with stage(cfg, f"evaluate {a}/{m}, other route"):
                        other = other_route(load_predictor(cfg, folder, device), d, entry, pool)
                    if other is not None:
                        entry["methods"][m]["other_route"] = other
                        o = other["summary"]["segmentation"]
                        print(f"  {a}/{m} (route {other['route']}): Dice source {o['source']['dice']:.3f}, "
                              f"unseen {o['unseen']['dice']:.3f}", flush=True)
                for kind, slices in ev.panel.items():
                    panel.update({f"{a}/{m}/{kind}/{k}": v for k, v in slices.items()})
                s = summary["segmentation"]
                print(f"  {a}/{m}: Dice source {s['source']['dice']:.3f}, unseen {s['unseen']['dice']:.3f}; "
                      f"validity AUROC {summary['validity']['auroc']:.3f}", flush=True)
            results["anatomies"][a] = entry
            # a crash later (or the end of a device lease) still leaves the finished anatomies on disk
            (cfg.out / "results_partial.json").write_text(json.dumps(_jsonable(
                {**results, "meta": _meta(cfg, device, iterations, per_it, trained)}), indent=1))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results["meta"] = _meta(cfg, device, iterations, per_it, trained)
    with stage(cfg, "plots"):
        np.savez_compressed(cfg.out / "panel.npz", **panel)
        paths = make_all(_jsonable(results), panel, cfg.out)
    cfg.wall["total"] = round(time.perf_counter() - t_total, 1)
    results["meta"]["wall_s"] = dict(cfg.wall)
    (cfg.out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    (cfg.out / "results_partial.json").unlink(missing_ok=True)
    msgs = write_reports(json.loads((cfg.out / "results.json").read_text()), cfg.out, cfg.update_readme)
    print("\n" + build_markdown(_jsonable(results)).split("## Plots")[0])
    for p in paths:
        print(f"[benchmark] plot: {p}")
    for msg in msgs:
        print(f"[benchmark] {msg}")
    print(f"[benchmark] total wall time {time.perf_counter() - t_total:.1f} s", flush=True)
    return results


def load_predictor(cfg: BenchConfig, folder: Path, device: str):
    """The model in ``folder`` as the benchmark evaluates it (``cfg.stability_slices``, where set)."""
    from gase.predictor import Predictor

    predictor = Predictor.from_folder(folder, device=device)
    if cfg.stability_slices is not None:
        predictor.stability_slices = cfg.stability_slices
    return predictor


def other_route(predictor, data, entry: dict, pool) -> dict | None:
    """The GASE model of ``predictor`` (a :class:`gase.predictor.Predictor`) evaluated on the test volumes (source
    and unseen styles; no OOD) through the route it does not take by default (see :data:`gase.predictor.ROUTES`:
    ``"style"`` for a model that routes ``"gase"`` and the reverse), so that both routes of one model are compared
    in the same run. None for a model without a source expert."""
    from dataclasses import replace

    from .evaluate import evaluate_model
    from .summary import confidence_summary, segmentation_summary

    if predictor.expert is None:
        return None
    default = predictor.route_in_use()
    predictor.route = "style" if default == "gase" else "gase"
    ev = evaluate_model(predictor, replace(data, ood=[]), "gase", (), pool)
    conf = confidence_summary(ev.voxels, ev.records)
    return {"route": predictor.route, "default_route": default,
            "summary": {"segmentation": segmentation_summary(ev.records, entry["label_names"],
                                                             [entry["source_style"], *entry["unseen_styles"]]),
                        "confidence": {"volume": conf["volume"]}},
            "records": ev.records}


REUSE_KEYS = ("method", "iterations", "batch_size", "crop", "seed", "crop_sampling", "context_slices", "context_mm")


def reused_training(folder: Path, want: TrainConfig) -> dict:
    """The training record of a model an earlier run left in ``folder`` (``--reuse-models``), after checking
    that it was trained with the settings this run would use; raises :class:`InputError` otherwise."""
    from gase.errors import InputError
    from gase.training.config import LEGACY_DEFAULTS

    try:
        card = json.loads((folder / "model.json").read_text())
        record = card["training"]
        config = record["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--reuse-models: no trained model in {folder} ({exc}); run without --reuse-models "
                         "to train it, or point --models-dir at the earlier run's models.") from None
    had = {k: config.get(k, LEGACY_DEFAULTS.get(k)) for k in REUSE_KEYS}
    differs = {k: (had[k], getattr(want, k)) for k in REUSE_KEYS if had[k] != getattr(want, k)}
    if differs:
        raise InputError(f"--reuse-models: the model in {folder} was trained with other settings "
                         f"({', '.join(f'{k} {a} instead of {b}' for k, (a, b) in differs.items())}); run without "
                         "--reuse-models to train it again with these.")
    return {"iterations": int(record["iterations"]), "seconds": float(record["seconds"]),
            "val_dice": (card.get("metrics") or {}).get("validation_dice", {}), "reused_from": str(folder)}


def upgrade_reused_card(folder: Path, train_pairs, val_pairs) -> None:
    """Give an earlier run's model what training writes now, from this run's own training pairs (the same data,
    checked by :func:`reused_training`): ``validity.training_foreground_ml`` (2026-11-28); the style manifold
    fitted with augmented copies of the training slices and its threshold (2026-12-05; calibrated on augmented
    copies of the held-out volumes too since the evening of 2026-12-05,
    :func:`gase.training.validity_fit.refit_validity`; a source expert in the folder too); the threshold at this
    version's margin (:data:`gase.validity.VERDICT_MARGIN`, 2026-12-06) from the held-out scores its card stores
    (:func:`gase.training.validity_fit.recalibrate_threshold`)."""
    from gase.model_card import load_card, write_card
    from gase.training.validity_fit import recalibrate_threshold, refit_validity
    from gase.validity import VERDICT_MARGIN, largest_foreground_ml

    card = load_card(folder)
    if "training_foreground_ml" not in card.validity:
        card.validity["training_foreground_ml"] = round(largest_foreground_ml([*train_pairs, *val_pairs]), 2)
        write_card(card, folder)
        print(f"  {folder.name}: card given validity.training_foreground_ml = "
              f"{card.validity['training_foreground_ml']} (from the training labels)", flush=True)
    if not {"augmented_copies", "heldout_augmented_copies"} <= set(card.validity):
        before = card.validity["threshold"]
        fit = refit_validity(folder, train_pairs, val_pairs)["validity.safetensors"]
        print(f"  {folder.name}: style manifold fitted again with {fit.copies} augmented copies of the training "
              f"slices, threshold calibrated on the held-out volumes and {fit.heldout_copies} augmented copies of "
              f"each; threshold {before} -> {fit.threshold:.4f}"
              + (" (and its source expert's, as a router)" if card.source_expert else ""), flush=True)
    if load_card(folder).validity.get("margin") != VERDICT_MARGIN:
        before, after = recalibrate_threshold(folder)
        print(f"  {folder.name}: threshold at margin {VERDICT_MARGIN:g} x the upper quartile of its held-out volume "
              f"scores: {before} -> {after}", flush=True)


def with_source_expert(folder: Path, erm_folder: Path, record: dict, train_pairs, val_pairs) -> dict:
    """The training record of the GASE model in ``folder`` with its source expert counted in. A model from
    before source experts (``--reuse-models``) first gets the ERM model of the same run (same data and
    settings: :func:`reused_training` checked both) attached, with its manifold fitted again as a router
    from the run's training pairs, which is what its training now does."""
    from gase.errors import InputError
    from gase.model_card import attach_source_expert, load_card
    from gase.training.validity_fit import refit_validity

    card = load_card(folder)
    if not card.source_expert:
        if not (erm_folder / "model.json").is_file():
            raise InputError(f"{folder} has no source expert and there is no ERM model at {erm_folder} to attach; "
                             "run with --methods erm gase (the ERM run is the expert), or without --reuse-models.")
        attach_source_expert(folder, erm_folder)
        refit_validity(folder, train_pairs, val_pairs, segmenter=False)
        card = load_card(folder)
        print(f"  {folder.name}: {erm_folder.name} attached as the source expert", flush=True)
    expert_seconds = float(card.source_expert.get("training", {}).get("seconds", 0.0))
    return {**record, "seconds": round(float(record["seconds"]) + expert_seconds, 1),
            "source_expert_seconds": expert_seconds,
            "val_dice": (card.metrics or {}).get("validation_dice", record.get("val_dice", {}))}


def with_own_expert(folder: Path, record: dict) -> dict:
    """The training record of a GASE model that trained its source expert itself (no ERM model in the run): its
    seconds already count the expert's; ``source_expert_seconds`` says how many were the expert's (from the
    model card), so that the GASE segmenter's own seconds, which its card stores, can be told from the total
    (:func:`benchmarks.report.attach_false_invalid` matches a false-invalid count to its model by them)."""
    from gase.model_card import load_card

    expert = load_card(folder).source_expert or {}
    return {**record, "source_expert_seconds": round(float(expert.get("training", {}).get("seconds", 0.0)), 1),
            "source_expert_trained_inside": True}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _meta(cfg: BenchConfig, device: str, iterations: int, per_it: dict, trained: dict) -> dict:
    import monai
    import torch
    from gase.training.config import TrainConfig

    return {"mode": "quick" if cfg.quick else "full", "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": machine_name(device), "cpu": cpu_description(), "device": device, "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(), "git_commit": _git_commit(), "iterations": iterations,
            "batch_size": cfg.batch_size, "crop": cfg.crop, "scale": cfg.scale, "test_subjects": cfg.test_subjects,
            "ood_subjects": cfg.ood_subjects, "seed": cfg.seed,
            "train_seed": cfg.train_seed, "crop_sampling": TrainConfig().crop_sampling,
            "context_slices": cfg.context_slices, "context_mm": cfg.context_mm,
            **({"stability_slices": cfg.stability_slices} if cfg.stability_slices is not None else {}),
            "train_seconds_budget": cfg.train_seconds,
            "probe_seconds_per_iteration": {k: round(v, 5) for k, v in per_it.items()}, "training": trained,
            "command": " ".join(sys.argv)}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else round(float(x), 6)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    from .data import default_workers

    ap = argparse.ArgumentParser(prog="python -m benchmarks.dg_benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="results folder (e.g. benchmarks/results/full)")
    ap.add_argument("--anatomy", nargs="+", default=["knee", "pelvis"], choices=["knee", "pelvis"])
    ap.add_argument("--methods", nargs="+", default=["erm", "randcurve", "gase"], choices=["erm", "randcurve", "gase"])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny phantoms, 2 subjects, 2 unseen styles, "
                    f"{QUICK['iterations']} iterations (measures nothing)")
    ap.add_argument("--iterations", type=int, help=f"training iterations per model (default {FULL_DEFAULT_ITERATIONS}, "
                    f"quick {QUICK['iterations']})")
    ap.add_argument("--train-seconds", type=float, help="size the iteration budget so that all training takes about "
                    "this long on this machine (timing probe); ignored with --iterations")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--test-subjects", type=int, help="test subjects per style (default 6)")
    ap.add_argument("--ood-subjects", type=int, help="volumes per OOD kind (default 3)")
    ap.add_argument("--styles", nargs="+", help="unseen styles (names of either anatomy, or 'all'); default: five "
                    "per anatomy covering T1 SE, T2 FSE, PD fat-sat, GRE and another field strength")
    ap.add_argument("--scale", type=float, help="phantom resolution scale (default 1; quick 0.5)")
    ap.add_argument("--batch-size", type=int, help="training batch (default 8; quick 4)")
    ap.add_argument("--crop", type=int, help="training crop (default 128; quick 64)")
    ap.add_argument("--workers", type=int, help=f"processes for rendering and metrics (default {default_workers()}; "
                    "quick 0 = in process)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data (phantom subjects) and, unless "
                    "--train-seed is given, of the training")
    ap.add_argument("--train-seed", type=int, help="training seed only (same data): repeat a run with another "
                    "seed to see how much its numbers move (benchmarks/seeds.py summarises such runs)")
    ap.add_argument("--update-readme", nargs="?", const=Path(__file__).resolve().parents[1] / "README.md", type=Path,
                    metavar="README", help="rewrite the README's Results section (between its markers)")
    ap.add_argument("--models-dir", type=Path, help="where the trained model folders go (default: OUT/models)")
    ap.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    ap.add_argument("--reuse-models", action="store_true",
                    help="evaluate the models an earlier run trained (in --models-dir, default OUT/models) instead "
                         "of training: for changes to the evaluation only; the settings must match")
    ap.add_argument("--retrain", nargs="+", default=[], choices=["erm", "randcurve", "gase"], metavar="METHOD",
                    help="with --reuse-models: train these methods anew (their earlier models are replaced) and "
                         "reuse the others; e.g. after a change to GASE's training")
    ap.add_argument("--context-slices", type=int, default=1, metavar="N",
                    help="every method's segmenter reads the slice and its neighbours, N slices in all (odd; "
                         "default 1: the slice alone); see gase.context")
    ap.add_argument("--context-mm", type=float, default=None, metavar="MM",
                    help="with --context-slices: the distance between the slices read (default: the training scans' "
                         "slice spacing)")
    ap.add_argument("--stability-slices", type=int, default=None, metavar="N",
                    help="slices each prediction's stability check re-segments (default: the predictor's, "
                         "gase.predictor.STABILITY_SLICES; quick 4)")
    a = ap.parse_args(argv)
    if a.context_slices < 1 or a.context_slices % 2 == 0:
        ap.error("--context-slices must be an odd number (1: the slice alone)")
    if a.retrain and not a.reuse_models:
        ap.error("--retrain goes with --reuse-models (without it every method is trained)")
    q = QUICK if a.quick else {}
    pick = lambda v, key, default: v if v is not None else q.get(key, default)  # noqa: E731
    cfg = BenchConfig(out=a.out, anatomies=tuple(a.anatomy), methods=tuple(dict.fromkeys(a.methods)), quick=a.quick,
                      iterations=a.iterations if a.iterations or a.train_seconds else q.get("iterations"),
                      train_seconds=a.train_seconds, device=a.device,
                      test_subjects=pick(a.test_subjects, "test_subjects", 6),
                      ood_subjects=pick(a.ood_subjects, "ood_subjects", 3), styles=tuple(a.styles) if a.styles else None,
                      n_styles=q.get("n_styles") if not a.styles else None, scale=pick(a.scale, "scale", 1.0),
                      batch_size=pick(a.batch_size, "batch_size", 8), crop=pick(a.crop, "crop", 128),
                      workers=pick(a.workers, "workers", 0 if a.quick else default_workers()), seed=a.seed,
                      train_seed=a.seed if a.train_seed is None else a.train_seed,
                      threads=a.threads, update_readme=a.update_readme, models_dir=a.models_dir,
                      overwrite=a.overwrite, reuse_models=a.reuse_models, retrain=tuple(a.retrain),
                      context_slices=a.context_slices, context_mm=a.context_mm,
                      stability_slices=pick(a.stability_slices, "stability_slices", None))
    if cfg.reuse_models and cfg.train_seconds:
        ap.error("--reuse-models evaluates models trained earlier: give their --iterations, not --train-seconds")
    if cfg.stability_slices is not None and cfg.stability_slices < 1:
        ap.error("--stability-slices must be at least 1")
    if cfg.test_subjects < 2 or cfg.ood_subjects < 1:
        ap.error("--test-subjects must be >= 2 and --ood-subjects >= 1")
    return cfg


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
