"""The ``gase`` command line: ``demo``, ``segment``, ``train``, ``phantom``, ``models``.

Every error meant for the user (:class:`gase.errors.GaseError`) is printed as one clear message with
exit code 2; no traceback. ``--progress-json`` makes long commands print one JSON object per line,
which is how the Slicer modules follow a background run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import GaseError

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 3


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _set_threads() -> None:
    """Use the cores we are given (cgroup/affinity aware), not the host's count; an explicit
    ``OMP_NUM_THREADS`` wins, and ``torchrun``'s processes on one node share the cores."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        return
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        n = os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    torch.set_num_threads(max(1, n // max(1, local_processes)))


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse turns the ValueError into a usage error, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ------------------------------------------------------------------------------------------------
# segment
# ------------------------------------------------------------------------------------------------

def cmd_segment(args: argparse.Namespace) -> int:
    from .segment_job import segment_cases

    return segment_cases(args, _jsonable)


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from .training.run import run_training_cli

    return run_training_cli(args)


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> int:
    from .model_card import install_model, list_models, threshold_is_outdated
    from .validity import VERDICT_MARGIN

    if args.recalibrate and args.install:
        print("gase models: give --install or --recalibrate, not both.", file=sys.stderr)
        return 2
    if args.recalibrate:
        from .model_card import load_card
        from .training.validity_fit import recalibrate_threshold

        folder = Path(args.recalibrate)
        card = load_card(folder)  # a clear error for a folder that is not a model
        try:
            before, after = recalibrate_threshold(folder)
        except ValueError:  # no held-out scores in the card: nothing to set the threshold from
            print(f"{folder}: its card stores no held-out validity scores (a model exported before 2026-12-05); "
                  "train it again with this version to get this version's validity threshold.", file=sys.stderr)
            return 2
        if before == after:
            print(f"{card.name}: the validity threshold is already set by this version's rule ({after}, "
                  f"{VERDICT_MARGIN:g} x the upper quartile of its held-out scores); nothing changed.")
        else:
            print(f"{card.name}: validity threshold {before} -> {after} ({VERDICT_MARGIN:g} x the upper quartile "
                  f"of its held-out scores; the earlier one is kept in the card under validity.earlier_thresholds)")
        return 0

    if args.install:
        card = install_model(Path(args.install), Path(args.models_dir) if args.models_dir else None,
                             overwrite=args.overwrite)
        print(f"Installed {card.title} ({card.name} {card.version}) to {card.folder}")
        return 0
    cards = list_models()
    if not cards:
        print("No models found. The shipped demo model lives in Resources/Models/knee-demo.")
        return 0
    for c in cards:
        dice = c.metrics.get("validation_dice", {}).get("mean")
        print(f"{c.name:20s} {c.version:8s} {c.anatomy:8s} {c.plane:9s} "
              f"labels: {', '.join(lab.name for lab in c.labels)}"
              f"{'' if dice is None else f'  val Dice {dice:.3f}'}\n    {c.folder}")
        if threshold_is_outdated(c):
            print(f"    validity threshold by an earlier rule: `gase models --recalibrate {c.folder}` sets this "
                  "version's")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantoms.cli_phantom import run_phantom

    return run_phantom(args) or 0


# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gase",
        description="GASE: MR segmentation that says how far to trust it (per-voxel confidence, input validity).",
        epilog="Start with `gase demo`. Each command has its own --help.")
    parser.add_argument("--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the shipped demo model on generated sample knees and write an overview PNG",
                       description="Generates sample knee MR phantoms (the model's source style, an unseen style, a "
                                   "CT-like image it must reject), segments them with the shipped demo model and "
                                   "writes the outputs and overview.png.")
    p.add_argument("--out", default="gase-demo-output", help="output folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped knee demo model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier demo run")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="segment image files or DICOM folders with a model",
                       description="For each INPUT (NRRD, NIfTI, MHA file or DICOM series folder) writes "
                                   "<case>.seg.nrrd (Slicer segmentation), <case>_confidence.nrrd (per-voxel "
                                   "confidence 0..1) and <case>_report.json (validity verdict, expected Dice, stability and mean confidence per structure, volumes).")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--model", default=None, help="model folder (default: the shipped knee demo model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto uses CUDA when available (default), else the CPU")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="slices per network batch (default: 8 CPU, 32 GPU; fewer for large slices: on the CPU "
                        "as many as fit in 384x384 pixels)")
    p.add_argument("--route", default="auto", choices=("auto", "style", "expert", "gase"),
                   help="models with a source expert: auto (default) follows the model (models trained with "
                        "warm start: the GASE segmenter; older ones: style); style lets the expert segment scans "
                        "in the training style and the GASE segmenter the rest; expert or gase uses that one always")
    p.add_argument("--nifti", action="store_true", help="also write the label map as <case>_labels.nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    p.add_argument("--progress-json", action="store_true", help="print progress as JSON lines (for Slicer)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("train", help="train a model from a few labelled volumes",
                       description="Trains GASE on image/label pairs matched by file name and writes a model folder "
                                   "(weights, model card, validity calibration) to --out.")
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument("--labels", required=True, help="folder of label maps with the same file names")
    p.add_argument("--out", required=True, help="model folder to write (resumes from its checkpoint if present)")
    p.add_argument("--anatomy", default="knee", help="knee, pelvis or any name with --labels-json (default: knee)")
    p.add_argument("--labels-json", default=None,
                   help="JSON list of labels [{value, name, color: [r,g,b] 0..1, category, type}] "
                        "(default: the built-in table of --anatomy)")
    p.add_argument("--plane", default=None, choices=("sagittal", "coronal", "axial"),
                   help="slice plane of the model (default: knee sagittal, pelvis axial)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of volumes held out (default 0.2)")
    p.add_argument("--iterations", type=int, default=None, help="iteration budget (default 2000)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--method", default="gase", choices=("gase", "erm", "randcurve"),
                   help="gase (default), or the baselines erm / randcurve for comparisons")
    p.add_argument("--no-source-expert", action="store_true",
                   help="gase: skip the source expert (the segmenter trained alone on the training style, which "
                        "segments scans in that style; it adds about a quarter to the training time)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="gase: start the GASE segmenter from random weights instead of the source expert's "
                        "(the expert then trains after it)")
    p.add_argument("--context-slices", type=int, default=None, metavar="N",
                   help="the segmenter reads each slice with its neighbours, N slices in all (odd; default 1: the "
                        "slice alone), at the training scans' slice distance; see gase.context")
    p.add_argument("--config", default=None, help="JSON file of training settings (see gase.training.config)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder name)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write a checkpoint every N iterations (default 200); a killed run resumes from the last one")
    p.add_argument("--stop-file", default=None, metavar="PATH",
                   help="stop cleanly (checkpoint, exit code 3) when this file appears; SIGTERM does the same")
    p.add_argument("--progress-json", action="store_true", help="print progress as JSON lines (for Slicer)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("phantom", help="generate labelled MR phantoms (knee, pelvis) in named styles")
    try:
        from .phantoms.cli_phantom import add_phantom_arguments

        add_phantom_arguments(p)
    except ImportError:  # pragma: no cover - phantoms are part of the package
        pass
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("models", help="list installed models, or install one from a folder or .zip")
    p.add_argument("--install", default=None, metavar="PATH", help="model folder or .zip to install")
    p.add_argument("--models-dir", default=None, help="where to install (default: ~/.gase/models)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--recalibrate", default=None, metavar="FOLDER",
                   help="set the validity threshold of the model in FOLDER by this version's rule, from the "
                        "held-out scores its card stores (models trained before 2026-12-06 used a tighter one)")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _set_threads()
    json_mode = getattr(args, "progress_json", False)
    try:
        return int(args.func(args) or 0)
    except GaseError as exc:
        from .errors import CancelledError

        if json_mode:
            print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        else:
            print(f"gase: error: {exc}", file=sys.stderr)
        return EXIT_CANCELLED if isinstance(exc, CancelledError) else EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gase: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        msg = ("Out of memory. Use a smaller --batch-size, close other programs, or crop the image.")
        if json_mode:
            print(json.dumps({"event": "error", "message": msg}), flush=True)
        else:
            print(f"gase: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
