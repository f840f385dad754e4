"""``gase segment``: read inputs, predict, write outputs all-or-nothing."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .errors import GaseError, InputError, OutputError
from .volume import case_name


def output_paths(out_dir: Path, case: str, nifti: bool = False) -> dict[str, Path]:
    """Where ``gase segment`` writes the outputs of one case."""
    paths = {"segmentation": out_dir / f"{case}.seg.nrrd", "confidence": out_dir / f"{case}_confidence.nrrd",
             "report": out_dir / f"{case}_report.json"}
    if nifti:
        paths["labels_nifti"] = out_dir / f"{case}_labels.nii.gz"
    return paths


def write_outputs(result, out_dir: Path, case: str, *, overwrite: bool, nifti: bool = False,
                  default=str) -> dict[str, Path]:
    """Write segmentation, confidence and report: each to a hidden partial name, then all renamed, so either
    all outputs of the case appear or none does."""
    from .segfile import write_seg_nrrd
    from .volume import check_output_path, write_volume

    paths = output_paths(out_dir, case, nifti)
    for p in paths.values():
        check_output_path(p, overwrite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder ({exc.strerror}).") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"{out_dir}: the output folder is not writable. Choose a folder you can write to.")
    staged = {k: p.with_name(f".partial-{os.getpid()}-{p.name}") for k, p in paths.items()}
    try:
        write_seg_nrrd(result.labels, result.label_table, staged["segmentation"], overwrite=True)
        write_volume(result.confidence, staged["confidence"], overwrite=True)
        if nifti:
            write_volume(result.labels, staged["labels_nifti"], overwrite=True)
        staged["report"].write_text(json.dumps(result.report(), indent=2, default=default))
        for k, p in paths.items():
            os.replace(staged[k], p)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write the outputs ({exc.strerror or exc}).") from None
    finally:
        for p in staged.values():
            if p.exists():
                p.unlink()
    return paths


def _predict_case(predictor, volume, path: Path, case: str, n: int, total: int, emit, tqdm):
    """Segment one case with a progress bar (terminal) or progress events (``--progress-json``)."""
    bar = None if emit else tqdm(total=100, desc=f"{case}", unit="%", leave=False)

    def progress(frac: float, msg: str) -> None:
        if emit:
            emit({"event": "progress", "fraction": (n + frac) / total, "message": f"{case}: {msg}"})
        elif bar is not None:
            bar.n = int(round(100 * frac))
            bar.refresh()

    try:
        return predictor.predict(volume, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def segment_cases(args: argparse.Namespace, default=str) -> int:
    """Run the ``segment`` subcommand; returns the exit code."""
    from tqdm import tqdm

    from .model_card import default_model_folder
    from .predictor import Predictor
    from .volume import check_output_folder, check_output_path, read_volume

    emit = (lambda e: print(json.dumps(e, default=default), flush=True)) if args.progress_json else None
    out_dir = Path(args.out)
    inputs = [Path(p) for p in args.inputs]
    for path in inputs:  # before loading the model: a typo should not cost a model load
        if not path.exists():
            raise InputError(f"{path}: no such file or folder. Check the path.")
    cases = [case_name(p) if p.is_file() else p.name for p in inputs]
    if len(set(cases)) != len(cases):
        raise InputError("Two inputs have the same case name, so their outputs would collide: "
                         f"{', '.join(cases)}. Rename one or segment them into different --out folders.")
    check_output_folder(out_dir)
    resolved_inputs = {p.resolve() for p in inputs}
    for case in cases:  # refuse before any work if something would be overwritten
        for p in output_paths(out_dir, case, args.nifti).values():
            if p.resolve() in resolved_inputs:
                raise InputError(f"The output {p} would replace the input of the same name. Choose another "
                                 "--out folder; GASE never modifies its inputs.")
            check_output_path(p, args.overwrite)
    predictor = Predictor.from_folder(args.model or default_model_folder(), device=args.device,
                                      batch_size=args.batch_size)
    predictor.route = getattr(args, "route", "auto")
    for n, (path, case) in enumerate(zip(inputs, cases)):
        try:
            volume = read_volume(path)
            result = _predict_case(predictor, volume, path, case, n, len(inputs), emit, tqdm)
            volume = None  # the input's voxels are not needed to write the outputs: free them first
        except GaseError as exc:
            if len(inputs) == 1:
                raise
            done = f" The outputs of the {n} case(s) before it are complete in {out_dir}." if n else ""
            text = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            raise type(exc)(f"{text}{done}") from None
        paths = write_outputs(result, out_dir, case, overwrite=args.overwrite, nifti=args.nifti, default=default)
        v = result.validity
        if emit:
            emit({"event": "case_done", "case": case, "outputs": {k: str(p) for k, p in paths.items()},
                  "validity": v.to_json(), "reliability": result.reliability_overall,
                  "quality": result.quality_overall, "expected_dice": result.expected_dice_overall,
                  "stability": result.stability_overall})
        else:
            flag = "VALID" if v.valid else "NOT VALID (outside the model's competence)"
            dice = result.quality_text() if v.valid else "no quality estimate for an input outside the model's competence"
            print(f"{case}: {flag}  score {v.score:.2f} / threshold {v.threshold:.2f}  "
                  f"{dice}  ({result.seconds:.1f} s on {result.device})")
            for reason in v.reasons():
                print(f"    why: {reason}")
            if result.segmenter_text():
                print(f"    {result.segmenter_text()}")
            print(f"    -> {paths['segmentation']}\n    -> {paths['confidence']}\n    -> {paths['report']}")
    if emit:
        emit({"event": "done", "outputs": {k: str(p) for k, p in paths.items()} if len(inputs) == 1 else None,
              "cases": cases, "out": str(out_dir)})
    return 0
