"""``gase train``: from folders of image/label files to a model folder, with progress."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import InputError, TrainingDataError
from ..labels import ANATOMY_LABELS, LabelInfo, labels_from_json
from ..errors import ModelError
from .config import TrainConfig
from . import distributed
from .data import MIN_TRAIN_VOLUMES, check_same_anatomy, load_pairs, match_pairs
from .reporting import PreviewSink, ScalarLog, chain
from .stopping import StopRequest

DEFAULT_PLANE = {"knee": "sagittal", "pelvis": "axial"}


def resolve_label_table(anatomy: str, labels_json: str | None) -> tuple[LabelInfo, ...]:
    """The label table from ``--labels-json`` or the built-in table of ``anatomy``."""
    if labels_json:
        try:
            items = json.loads(Path(labels_json).read_text())
            return labels_from_json(items["labels"] if isinstance(items, dict) else items)
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise InputError(f"{labels_json}: cannot read the label table ({exc}). Give a JSON list of "
                             "{value, name, color} entries.") from None
        except ModelError as exc:
            raise InputError(f"{labels_json}: {exc}") from None
    if anatomy not in ANATOMY_LABELS:
        raise InputError(f"No built-in label table for anatomy {anatomy!r}; give --labels-json, or use "
                         f"--anatomy {' or '.join(ANATOMY_LABELS)}.")
    return ANATOMY_LABELS[anatomy]


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of n volumes; at least one validation volume when n >= 3 and val_fraction > 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= MIN_TRAIN_VOLUMES + 1:
        n_val = max(1, n_val)
    n_val = min(n_val, n - MIN_TRAIN_VOLUMES) if n > MIN_TRAIN_VOLUMES else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def build_config(args: argparse.Namespace) -> TrainConfig:
    base = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{args.config}: cannot read the training config ({exc}).") from None
    cfg = TrainConfig.from_json(base)
    cfg.method = args.method if args.method != "gase" or "method" not in base else base["method"]
    if args.iterations is not None:
        cfg.iterations = args.iterations
    if args.max_minutes is not None:
        cfg.max_minutes = args.max_minutes
    if getattr(args, "checkpoint_every", None) is not None:
        if args.checkpoint_every < 1:
            raise InputError("--checkpoint-every must be at least 1 (iterations between checkpoints).")
        cfg.checkpoint_every = args.checkpoint_every
    if getattr(args, "context_slices", None) is not None:
        cfg.context_slices = args.context_slices
    if getattr(args, "no_source_expert", False):
        cfg.source_expert = False
    if getattr(args, "no_warm_start", False):
        cfg.warm_start = False
    cfg.device = args.device
    cfg.seed = args.seed
    if args.plane:
        cfg.plane = args.plane
    return cfg.validate()


def run_training_cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .loop import train

    table = resolve_label_table(args.anatomy, args.labels_json)
    cfg = build_config(args)
    ctx = distributed.init_from_env(cfg.device)  # under torchrun: join the process group; else one process
    plane = cfg.plane or DEFAULT_PLANE.get(args.anatomy)
    pairs = match_pairs(Path(args.images), Path(args.labels))
    loaded = load_pairs(pairs, table)
    check_same_anatomy(loaded, table)
    if plane is None:
        from ..orientation import plane_of_slices

        plane = plane_of_slices(loaded[0][0])
    train_idx, val_idx = split_train_val(len(loaded), args.val_fraction, args.seed)
    if len(train_idx) < MIN_TRAIN_VOLUMES:
        raise TrainingDataError(f"Only {len(loaded)} labelled volume(s) found; training needs at least "
                                f"{MIN_TRAIN_VOLUMES} (plus one for validation is recommended).")
    out = Path(args.out)
    if (out / "model.json").exists() and not (out / "training" / "checkpoint.pt").exists():
        raise InputError(f"{out} already holds a trained model. Choose another --out folder.")
    if args.progress_json:
        def on_event(e: dict) -> None:
            print(json.dumps(e, default=str), flush=True)
    else:
        expert_first = cfg.method == "gase" and cfg.source_expert and cfg.warm_start
        bar = tqdm(total=cfg.iterations, desc="source expert" if expert_first else f"training ({cfg.method})",
                   unit="it", disable=not ctx.is_main)
        phase = {"now": None}

        def on_event(e: dict) -> None:
            if e["event"] == "progress":
                label = {"source expert": "source expert", "gase": "training (gase)"}.get(e.get("phase"))
                if label is not None and e["phase"] != phase["now"]:  # a new phase: its own rate and ETA
                    if e["phase"] == "source expert":
                        bar.write("training the source expert (the segmenter alone, on the source style)")
                    elif phase["now"] is not None:
                        bar.write("training the GASE segmenter" + (", starting from the source expert's weights"
                                                                   if cfg.warm_start else ""))
                    phase["now"] = e["phase"]
                    bar.initial = 0  # (reset redraws the bar: no rate from the last phase's count)
                    bar.reset(total=e.get("total", cfg.iterations))
                    bar.set_description(label, refresh=False)
                    # the first report comes some iterations into the phase: the rate counts from it
                    bar.initial = e["iteration"]
                bar.n = e["iteration"]
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(e["losses"].items())[:3]})
                bar.refresh()
            elif e["event"] == "validation":
                bar.write(f"iteration {e['iteration']}: validation Dice {e['dice']['mean']:.3f}")
            elif e["event"] == "resumed":
                bar.write(f"resumed from checkpoint at iteration {e['iteration']}")
    print(f"Training on {len(train_idx)} volume(s), validating on {len(val_idx)}; {plane} slices; "
          f"labels: {', '.join(t.name for t in table)}", flush=True) if not args.progress_json and ctx.is_main else None
    fresh = args.no_resume or not (out / "training" / "checkpoint.pt").exists()
    scalars = ScalarLog(out / "training", fresh=fresh) if ctx.is_main else None  # live CSV (+ TensorBoard if installed)
    previews = PreviewSink(out / "training", [loaded[i] for i in train_idx], plane, cfg.input_spacing_mm, table,
                           on_event) if ctx.is_main and cfg.method == "gase" else None
    try:
        with StopRequest(getattr(args, "stop_file", None)) as stop:  # SIGTERM / stop file: checkpoint, exit 3
            result = train([loaded[i] for i in train_idx], [loaded[i] for i in val_idx], table, out, cfg,
                           anatomy=args.anatomy, plane=plane, name=args.name or out.name,
                           on_event=chain(on_event, scalars, previews), should_stop=stop, resume=not args.no_resume)
        # Rank 0 exports the model while the others are done: they wait here, so that no rank leaves the
        # process group while another still runs (gloo aborts the process that left early).
        ctx.barrier()
    finally:
        if scalars is not None:
            scalars.close()
        distributed.shutdown()
    if not args.progress_json and ctx.is_main:
        bar.close()
        dice = result.val_dice.get("mean")
        print(f"Model written to {result.model_folder} after {result.iterations} iterations "
              f"({result.seconds / 60:.1f} min). Validation Dice: "
              f"{'n/a (no validation volume)' if dice is None else f'{dice:.3f}'}")
    return 0
