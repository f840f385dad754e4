"""Does the fast inference path give the plain fp32 result? (bf16 autocast, channels_last, torch.compile,
page-locked asynchronous copies, GPU-side normalisation and sums, out-of-memory retries.)

    python benchmarks/fast_path_check.py --device cuda --compile --json fast_path.json

Checks, each on knee phantoms (the model's source style and an unseen style), one of them stored in a
permuted, flipped orientation and one as uint16 (the GPU's staged-copy and int16-bits paths):
1. ``cuda_fp32_vs_cpu``: the CUDA pipeline in fp32 (TF32 off) against the CPU: the same numbers
   (labels agree on >= 99.99% of voxels, confidence within 1e-3).
2. ``bf16_vs_fp32``: the fast path (bf16 autocast + channels_last) against the fp32 path on the GPU.
   Tolerance: labels agree on >= 99.5% of voxels and Dice(fast, fp32) >= 0.98 for every structure;
   mean |confidence difference| <= 0.01, max <= 0.25; reliability within 0.01; validity score within 5%
   and the same verdict.
3. ``out_of_memory``: with the GPU memory capped, a large batch runs out of memory, halves and
   retries (same result), and with almost no memory it continues on the CPU (same result, message).
4. ``compiled_vs_eager`` (``--compile``): torch.compile against eager on the first case, tolerance as 2.
On a machine without CUDA, ``--device cpu`` runs check 2 as batch size 1 against the default batch.
The model: ``--model``, else Resources/Models/knee-demo when present, else one trained here for
``--train-iterations`` (a minute or two on a GPU): a model with random weights has no margins between
its classes, so bf16 rounding would flip labels that mean nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gase.predictor import Predictor  # noqa: E402
from gase.volume import Volume  # noqa: E402

TOL_AGREE, TOL_DICE, TOL_CONF_MEAN, TOL_CONF_MAX, TOL_REL, TOL_SCORE = 0.995, 0.98, 0.01, 0.25, 0.01, 0.05


def phantom_cases(n: int, seed: int = 100) -> list[tuple[str, Volume]]:
    from gase.phantoms import SOURCE_STYLE, list_styles, make_case

    cases = [(f"source_{i}", make_case("knee", SOURCE_STYLE["knee"], seed + i)[0]) for i in range(n)]
    unseen = [s.name for s in list_styles("knee") if not s.source]
    if unseen:
        cases.append((f"unseen_{unseen[0]}", make_case("knee", unseen[0], seed + n)[0]))
    # the same knee stored in another axis order, flipped, and as uint16: the staged copies and int16 bits
    name, v = cases[0]
    arr = np.ascontiguousarray(np.transpose(v.array, (1, 2, 0))[:, ::-1, :])
    cols = v.ijk_to_ras[:3, :3]
    m = np.eye(4)
    m[:3, :3] = np.stack([cols[:, 2], -cols[:, 0], cols[:, 1]], axis=1)
    m[:3, 3] = v.ijk_to_ras[:3, 3] + cols[:, 0] * (v.shape[2] - 1)
    scaled = np.clip(arr * (4000.0 / max(1e-6, float(arr.max()))), 0, 65535).astype(np.uint16)
    cases.append((f"{name}_permuted_uint16", Volume(scaled, m)))
    return cases


def trained_model(out: Path, iterations: int, device: str) -> Path:
    from gase.labels import KNEE_LABELS
    from gase.phantoms import SOURCE_STYLE, make_case
    from gase.training.config import TrainConfig
    from gase.training.loop import train

    pairs = []
    for i in range(4):
        img, lab = make_case("knee", SOURCE_STYLE["knee"], i)
        pairs.append((img, lab.array.astype(np.uint8), f"train{i}"))
    cfg = TrainConfig(iterations=iterations, device=device, seed=0, val_every=10**6, checkpoint_every=10**6,
                      max_minutes=1.5)
    train(pairs[:3], pairs[3:], KNEE_LABELS, out, cfg, anatomy="knee", plane="sagittal", name="fast-path-check")
    return out


def compare(a, b, label_values) -> dict:
    """How close result ``b`` is to reference ``a``."""
    la, lb = a.labels.array, b.labels.array
    dice = {}
    for v in label_values:
        pa, pb = la == v, lb == v
        if pa.any() or pb.any():
            dice[int(v)] = round(float(2 * np.logical_and(pa, pb).sum() / (pa.sum() + pb.sum())), 5)
    dc = np.abs(a.confidence.array.astype(np.float64) - b.confidence.array)
    sa, sb = a.validity.score, b.validity.score
    return {"label_agreement": round(float((la == lb).mean()), 6), "dice": dice,
            "conf_mean_abs": round(float(dc.mean()), 6), "conf_max_abs": round(float(dc.max()), 6),
            "reliability_abs": round(abs(float(a.reliability_overall) - float(b.reliability_overall)), 6),
            "score_rel": round(abs(sa - sb) / max(abs(sa), 1e-9), 6), "same_verdict": a.validity.valid == b.validity.valid,
            "devices": [a.device, b.device]}


def passes(c: dict, strict: bool = False) -> bool:
    if strict:
        return c["label_agreement"] >= 0.9999 and c["conf_max_abs"] <= 1e-3 and c["score_rel"] <= 1e-3
    return (c["label_agreement"] >= TOL_AGREE and all(d >= TOL_DICE for d in c["dice"].values())
            and c["conf_mean_abs"] <= TOL_CONF_MEAN and c["conf_max_abs"] <= TOL_CONF_MAX
            and c["reliability_abs"] <= TOL_REL and c["score_rel"] <= TOL_SCORE and c["same_verdict"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cases", type=int, default=2, help="source-style phantoms (plus the variants)")
    parser.add_argument("--train-iterations", type=int, default=300)
    parser.add_argument("--no-oom", action="store_true", help="skip the out-of-memory check")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("fast_path_check.py: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False  # the reference is true fp32
    torch.backends.cuda.matmul.allow_tf32 = False

    tmp = tempfile.TemporaryDirectory(prefix="gase-fastpath-")
    demo = ROOT / "Resources" / "Models" / "knee-demo"
    t0 = time.perf_counter()
    if args.model:
        folder = Path(args.model)
    elif (demo / "model.json").is_file():
        folder = demo
    else:
        print(f"training a check model for {args.train_iterations} iterations on {args.device} ...", flush=True)
        folder = trained_model(Path(tmp.name) / "model", args.train_iterations, args.device)
    print(f"model: {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    cases = phantom_cases(args.cases)
    results: dict[str, dict] = {"model": str(folder), "device": torch.cuda.get_device_name() if cuda else "cpu",
                                "torch": torch.__version__, "checks": {}}
    ok = True

    def check(name: str, ref_p: Predictor, new_p: Predictor, strict: bool = False, only=None) -> None:
        nonlocal ok
        out = {}
        for case, vol in cases[:only]:
            before = vol.array.copy()
            c = compare(ref_p.predict(vol), new_p.predict(vol), [lab.value for lab in ref_p.card.labels])
            c["input_unchanged"] = bool(np.array_equal(before, vol.array))
            c["pass"] = passes(c, strict) and c["input_unchanged"]
            out[case] = c
            ok = ok and c["pass"]
            print(f"{name:20s} {case:28s} agree {c['label_agreement']:.5f}  dice {min(c['dice'].values(), default=1):.4f}"
                  f"  |dconf| mean {c['conf_mean_abs']:.2e} max {c['conf_max_abs']:.2e}  "
                  f"drel {c['reliability_abs']:.1e}  dscore {c['score_rel']:.1e}  "
                  f"{'PASS' if c['pass'] else 'FAIL'}", flush=True)
        results["checks"][name] = out

    if cuda:
        cpu = Predictor.from_folder(folder, device="cpu")
        fp32 = Predictor.from_folder(folder, device="cuda", fast=False)
        fast = Predictor.from_folder(folder, device="cuda")
        check("cuda_fp32_vs_cpu", cpu, fp32, strict=True)
        check("bf16_vs_fp32", fp32, fast)
        if not args.no_oom:
            results["checks"]["out_of_memory"] = oom_check(folder, cases[0][1])
            ok = ok and results["checks"]["out_of_memory"]["pass"]
        if args.compile:  # one slice size: each new shape is another compilation
            check("compiled_vs_eager", fast, Predictor.from_folder(folder, device="cuda", compile=True), only=1)
    else:
        check("batch1_vs_default", Predictor.from_folder(folder, device="cpu", batch_size=1),
              Predictor.from_folder(folder, device="cpu"))
    results["tolerance"] = {"label_agreement": TOL_AGREE, "dice": TOL_DICE, "conf_mean_abs": TOL_CONF_MEAN,
                            "conf_max_abs": TOL_CONF_MAX, "reliability_abs": TOL_REL, "score_rel": TOL_SCORE,
                            "strict (cuda fp32 vs cpu)": {"label_agreement": 0.9999, "conf_max_abs": 1e-3}}
    results["pass"] = ok
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.cleanup()
    return 0 if ok else 1


def oom_check(folder: Path, volume: Volume) -> dict:
    """Cap the GPU memory so that big batches fail: the predictor must retry smaller, then use the CPU."""
    total = torch.cuda.get_device_properties(0).total_memory
    # 4x the field of view at the same spacing: the network runs on slices 16x as large
    big = Volume(np.ascontiguousarray(np.repeat(np.repeat(volume.array, 4, axis=1), 4, axis=2)), volume.ijk_to_ras)
    ref = Predictor.from_folder(folder, device="cuda", batch_size=64).predict(big)
    out = {}
    for name, cap_bytes in (("halving", 1.5 * 2**30), ("cpu_fallback", 96 * 2**20)):
        p = Predictor.from_folder(folder, device="cuda", batch_size=64)
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total))
        messages = []
        try:
            res = p.predict(big, progress=lambda f, m: messages.append(m))
            c = compare(ref, res, [lab.value for lab in p.card.labels])
            c["messages"] = [m for m in messages if "memory" in m]
            c["pass"] = passes(c) and bool(c["messages"]) and (name != "cpu_fallback" or res.device == "cpu")
        except Exception as exc:  # report, do not hide: this is what the check is for
            c = {"error": f"{type(exc).__name__}: {exc}", "pass": False}
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
        out[name] = c
        print(f"out_of_memory {name:14s} {c.get('messages', c.get('error'))}  {'PASS' if c['pass'] else 'FAIL'}",
              flush=True)
    out["pass"] = all(v["pass"] for v in out.values() if isinstance(v, dict))
    return out


if __name__ == "__main__":
    sys.exit(main())
