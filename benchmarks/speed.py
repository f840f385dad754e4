"""GASE inference speed: one 160 x 384 x 384 volume, host array -> labels + confidence + validity in host
memory, against the bare segmentation forward pass of the same backbone, in the same run.

    python benchmarks/speed.py --device cpu --threads 2 --repeats 3 --json cpu.json
    python benchmarks/speed.py --device cuda --repeats 10 --dtype float32 int16 --json cuda.json
    python benchmarks/speed.py --device cuda --compile --json cuda_compile.json

Rows of the table:
- ``bare``: the plain segmentation network (U-Net encoder/decoder + segmentation head -> logits), input
  already normalised and resident on the device, same batch size and precision: what any 2D U-Net of
  this backbone costs, with no confidence head, style encoder, post-processing or copies.
- ``network``: GASE's network on the same resident input (segmenter with its confidence head + style
  encoder, one pass).
- ``gase``: :meth:`gase.predictor.Predictor.predict` end to end, from a numpy array in host memory to
  labels, confidence and the validity verdict in host memory (normalisation, transfers, argmax,
  reliability sums and the manifold score included). The ratio is ``gase / bare``. Also without the
  stability check, and for a model with a source expert each path: the expert segments (its pass, then
  GASE's encoder-only validity pass), the expert declines (its pass, then GASE's), GASE alone.

Without ``--model`` an UNTRAINED model folder with the default architecture is built (random weights,
validity fitted on random features): it costs exactly what a trained model costs, and the output says so.
The volume is stored in the model's canonical slice layout with in-plane spacing equal to the model's
``input_spacing_mm``, so the network runs at full 384 x 384 resolution (nothing is downsampled).
Timings on shared machines are noisy: medians are reported, with CPU seconds next to wall seconds.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gase.predictor import Predictor  # noqa: E402
from gase.volume import Volume, make_ijk_to_ras  # noqa: E402

# RAS direction columns (i, j, k) that make each plane's canonical layout the stored one (see gase.orientation)
CANONICAL_DIRECTIONS = {
    "sagittal": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "coronal": np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "axial": np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),
}


def make_volume(plane: str, spacing_mm: float, slices: int, size: int, dtype: str, seed: int = 0) -> Volume:
    """A (slices, size, size) MR-like volume (smooth blobs, noise, dark surroundings) of ``dtype`` in the
    canonical layout of ``plane``, in-plane spacing ``spacing_mm`` (the model's: no resampling)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, slices // 8 + 2, size // 16 + 2, size // 16 + 2), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(slices, size, size), mode="trilinear", align_corners=False)[0, 0]
    x = 300.0 + 1200.0 * x + 40.0 * torch.randn(x.shape, generator=g)
    edge = size // 10
    x[:, :edge], x[:, -edge:], x[:, :, :edge], x[:, :, -edge:] = 5.0, 5.0, 5.0, 5.0
    arr = x.clamp_(0, 32000).numpy()
    arr = arr.astype(np.int16) if dtype == "int16" else arr.astype(np.float32)
    m = make_ijk_to_ras((spacing_mm, spacing_mm, 1.0), CANONICAL_DIRECTIONS[plane])
    return Volume(arr, m)


def bare_forward(seg: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain segmentation network of the backbone: encoder, decoder with skips, segmentation head ->
    logits (B, K, H, W). No confidence head, appearance statistics or style encoder."""
    skips, h = [], x
    for layer in seg.enc:
        h = layer(h)
        skips.append(h)
    for up, dec, skip in zip(seg.up, seg.dec, reversed(skips[:-1])):
        h = dec(torch.cat([up(h), skip], dim=1))
    return seg.seg_head(h)


class BareNet(torch.nn.Module):
    def __init__(self, seg):
        super().__init__()
        self.seg = seg

    def forward(self, x):
        return bare_forward(self.seg, x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**30 if sys.platform == "darwin" else r / 2**20


def timed(fn, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``repeats`` calls of ``fn`` (the device synchronised around each)."""
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


def resident_slices(predictor: Predictor, volume: Volume) -> torch.Tensor:
    """All canonical slices, normalised, on the device (B, 1, H, W): the input of the ``bare``/``network`` rows."""
    from gase.orientation import reorientation_for

    lo, hi = predictor.normalization.intensity_range(volume.array)
    canon = reorientation_for(volume, predictor.card.plane).forward(volume.array)
    x = predictor.normalization.apply_tensor(torch.from_numpy(np.ascontiguousarray(canon)), lo, hi)[:, None]
    x = x.to(predictor.device)
    return x.contiguous(memory_format=torch.channels_last) if predictor.channels_last else x


def run_batches(fn, x: torch.Tensor, batch: int, fixed: bool, amp: bool) -> None:
    """``fn`` over ``x`` in batches (the last one padded to ``batch`` when ``fixed``, as the predictor does)."""
    with torch.inference_mode(), torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        for s in range(0, x.shape[0], batch):
            xb = x[s:s + batch]
            if fixed and xb.shape[0] < batch:
                xb = torch.cat([xb, xb.new_zeros((batch - xb.shape[0],) + tuple(xb.shape[1:]))])
            fn(xb)


def gflop_per_slice(model: torch.nn.Module, hw: tuple[int, int]) -> float:
    """Floating-point operations of one slice through ``model`` (counted on a CPU copy)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros((1, 1) + tuple(hw)))
    return counter.get_total_flops() / 1e9


def summarise(walls: list[float], cpus: list[float], slices: int) -> dict:
    med = statistics.median(walls)
    return {"seconds_median": round(med, 4), "seconds_min": round(min(walls), 4),
            "seconds_all": [round(w, 4) for w in walls], "cpu_seconds_median": round(statistics.median(cpus), 3),
            "slices_per_s": round(slices / med, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: build an UNTRAINED one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default: 10 CUDA, 3 CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (fixed batch shape) both networks")
    parser.add_argument("--fp32", action="store_true", help="CUDA: the plain fp32 path (no bf16 autocast/channels_last)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2 on --device cpu)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default: the predictor's)")
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "int16"),
                        help="input array dtype(s); each gets its own end-to-end row")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare/network rows")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("speed.py: --device cuda but no CUDA GPU is visible to PyTorch", file=sys.stderr)
        return 2
    threads = args.threads or (2 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    repeats = args.repeats or (10 if device.type == "cuda" else 3)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    tmp = None
    if args.model:
        folder, model_note = Path(args.model), f"model folder {args.model}"
    else:
        from untrained_model import UNTRAINED_NOTE, build_untrained_model

        tmp = tempfile.TemporaryDirectory(prefix="gase-speed-model-")
        folder, model_note = build_untrained_model(Path(tmp.name) / "untrained"), f"{UNTRAINED_NOTE}, default architecture"
    predictor = Predictor.from_folder(folder, device=device.type, batch_size=args.batch_size, fast=not args.fp32,
                                      compile=args.compile)
    card = predictor.card
    hw = (args.size, args.size)
    batch = predictor.batch_for(hw, hw)
    params = sum(p.numel() for p in predictor.model.parameters()) / 1e6
    gflop = gflop_per_slice(predictor.model, hw)
    precision = "bf16 autocast + channels_last" if predictor.amp else "fp32"
    mode = "torch.compile (fixed batch shape)" if args.compile else "eager"
    header = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "model": model_note, "untrained": args.model is None,
        "plane": card.plane, "input_spacing_mm": card.input_spacing_mm, "params_millions": round(params, 3),
        "gflop_per_slice": round(gflop, 2), "volume": [args.slices, args.size, args.size], "batch": batch,
        "precision": precision, "mode": mode, "repeats": repeats,
    }
    print(f"GASE speed: {header['device']}, torch {torch.__version__}, {precision}, {mode}, batch {batch}")
    print(f"model: {model_note} ({params:.2f} M parameters, {gflop:.2f} GFLOP per {args.size}x{args.size} slice)")
    print(f"volume: {args.slices} x {args.size} x {args.size}, {card.plane} slices, in-plane spacing "
          f"{card.input_spacing_mm} mm = the model's (full resolution, nothing resampled)")

    rows: dict[str, dict] = {}
    for dtype in args.dtype:
        volume = make_volume(card.plane, card.input_spacing_mm, args.slices, args.size, dtype)
        before = volume.array.copy() if dtype == "int16" else None
        warm = volume if device.type == "cuda" else Volume(volume.array[: max(2, batch)], volume.ijk_to_ras)
        for _ in range(2 if device.type == "cuda" else 1):  # compile, cuDNN autotuning, page-locked buffers
            predictor.predict(warm)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        holder = {}

        def run_gase(volume=volume, holder=holder):
            holder.pop("result", None)  # free the last result first: its buffers are reused
            holder["result"] = predictor.predict(volume)

        walls, cpus = timed(run_gase, repeats, device)
        res = holder.pop("result")
        row = summarise(walls, cpus, args.slices)
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" \
            else round(peak_rss_gb(), 3)
        row["peak_memory_kind"] = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (process)"
        row["validity_score"] = round(float(res.validity.score), 4)
        row["result_device"] = res.device
        if "source_expert" in res.extra:
            row["source_expert"] = res.extra["source_expert"]
        if before is not None:
            row["input_unchanged"] = bool(np.array_equal(before, volume.array))
        rows[f"gase_{dtype}"] = row
        del res
        # the same without the stability check (its extra passes over up to 16 slices), in this process
        predictor.stability_slices, keep = 0, predictor.stability_slices
        walls, cpus = timed(run_gase, repeats, device)
        holder.pop("result")
        predictor.stability_slices = keep
        rows[f"gase_{dtype}_without_stability"] = summarise(walls, cpus, args.slices)
        if predictor.expert is not None:  # a model with a source expert: each path through predict, timed
            card = predictor.expert.card
            keep_threshold = card.validity["threshold"]
            for key, route, threshold in (("expert_segments", "expert", keep_threshold),
                                          ("expert_declines", "style", 0.0), ("gase_only", "gase", keep_threshold)):
                predictor.route, card.validity["threshold"] = route, threshold
                walls, cpus = timed(run_gase, repeats, device)
                rows[f"gase_{dtype}_{key}"] = summarise(walls, cpus, args.slices)
                rows[f"gase_{dtype}_{key}"]["source_expert"] = holder.pop("result").extra.get("source_expert")
            predictor.route, card.validity["threshold"] = "auto", keep_threshold
        del volume

    if not args.no_bare:
        volume = make_volume(card.plane, card.input_spacing_mm, args.slices, args.size, args.dtype[0])
        x = resident_slices(predictor, volume)
        del volume
        bare = BareNet(predictor.model.segmenter).eval()
        with torch.inference_mode():  # the helper must be the segmenter's own path to its logits (fp32 here)
            xb = x[:2]
            torch.testing.assert_close(bare(xb), predictor.model.segmenter(xb).logits, rtol=1e-3, atol=1e-3)
        bare_fn = torch.compile(bare, dynamic=False) if args.compile else bare
        for name, fn in (("bare", bare_fn), ("network", predictor._forward)):
            warm_x = x if device.type == "cuda" else x[:batch]
            for _ in range(2 if device.type == "cuda" else 1):
                run_batches(fn, warm_x, batch, args.compile, predictor.amp)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            walls, cpus = timed(lambda fn=fn: run_batches(fn, x, batch, args.compile, predictor.amp), repeats, device)
            row = summarise(walls, cpus, args.slices)
            if device.type == "cuda":
                row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                row["peak_memory_kind"] = "torch.cuda.max_memory_allocated (incl. the resident input)"
            row["tflop_per_s"] = round(gflop * args.slices / row["seconds_median"] / 1e3, 2) if name == "network" \
                else None
            rows[name] = row

    print()
    print(f"| {'row':<64} | {'median s':>9} | {'min s':>7} | {'cpu s':>7} | {'slices/s':>9} | {'peak memory':>22} |")
    print(f"|{'-' * 66}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 24}|")
    labels = {"bare": "bare backbone forward (resident input, logits only)",
              "network": "GASE network forward (resident input, all heads)"}
    for key, row in rows.items():
        name = labels.get(key, f"GASE end to end, host {key[5:].replace('_', ' ')} -> host outputs")
        mem = f"{row['peak_memory_gb']:.2f} GB" if "peak_memory_gb" in row else "-"
        mem += " RSS" if row.get("peak_memory_kind", "").startswith("peak RSS") else ""
        print(f"| {name:<64} | {row['seconds_median']:>9.3f} | {row['seconds_min']:>7.3f} | "
              f"{row['cpu_seconds_median']:>7.2f} | {row['slices_per_s']:>9.1f} | {mem:>22} |")
    ratios = {}
    if "bare" in rows:
        for key, row in rows.items():
            if key.startswith("gase_"):
                ratios[key] = round(row["seconds_median"] / rows["bare"]["seconds_median"], 3)
                print(f"ratio GASE end to end ({key[5:].replace('_', ' ')}) / bare forward: {ratios[key]:.2f}")
        ratios["network"] = round(rows["network"]["seconds_median"] / rows["bare"]["seconds_median"], 3)
        print(f"ratio GASE network / bare forward: {ratios['network']:.2f}")
    for dtype in args.dtype:
        with_, without = rows[f"gase_{dtype}"], rows[f"gase_{dtype}_without_stability"]
        ratios[f"stability_{dtype}"] = round(with_["seconds_median"] / without["seconds_median"], 3)
        print(f"ratio GASE end to end ({dtype}) with / without the stability check: {ratios[f'stability_{dtype}']:.2f}")
    if device.type == "cuda":
        print("targets (H100): GASE <= 0.25 s per volume and <= 1.3 x the bare backbone forward")
    else:
        print(f"targets (2 cores): GASE <= 30 s per volume and <= 4 GB RSS; this run used {torch.get_num_threads()} "
              "threads. Shared machines are noisy: compare medians and CPU seconds.")
    if args.model is None:
        print(f"NOTE: {model_note}.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**header, "rows": rows, "ratios": ratios}, indent=2) + "\n")
        print(f"results written to {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
