"""Peak memory of GASE on a large volume: 1024 x 1024 x 400 on the CPU must stay within 4 GB RSS.

    python benchmarks/memory.py --slices 400 --size 1024 --dtype int16 --threads 2 --json mem.json
    python benchmarks/memory.py --slices 24 --size 1024 --dtype int16   # short run + extrapolation
    python benchmarks/memory.py --cli --threads 2                       # the whole `gase segment` command

``--cli`` measures what a user runs: the volume is written to a NRRD file in a temporary folder, and
``gase segment`` reads it, segments it and writes its three outputs in a child process, whose peak
RSS is the number reported; nothing is extrapolated. The command is started by a small launcher
process, because on Linux a child's ``ru_maxrss`` begins at its parent's high-water mark (measured:
a no-op child of a process holding 2 GiB reported 2 GiB), and this process held the whole volume.
(The 5.96 GB measured before that change was the command's own: ``/usr/bin/time`` agreed. Its cause was
``np.bincount`` on the whole label map in the report, fixed by counting slab by slab.)

The volume (``--dtype int16``: how MR is stored; float32 doubles the input) is generated slab by slab
straight into its array, then :meth:`Predictor.predict` runs on it. Peak RSS is the process's
``ru_maxrss``; a sampler thread also records the RSS while the prediction runs. What grows with the
number of slices is the input (2 bytes per voxel for int16) and the outputs (uint8 labels + float32
confidence, 5 bytes per voxel); the working memory of a batch does not (slices are streamed, and a
1024 x 1024 slice runs alone). A short run therefore extrapolates to the full volume as
``peak + (input + output bytes per slice) x missing slices``, printed as such.
Without ``--model`` an UNTRAINED default-architecture model is built (same memory as a trained one).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gase.predictor import Predictor  # noqa: E402
from gase.volume import Volume, make_ijk_to_ras  # noqa: E402
from speed import CANONICAL_DIRECTIONS  # noqa: E402

GB = 2**30


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


class RssSampler(threading.Thread):
    """Records the highest RSS seen every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_bytes())


def make_large_volume(plane: str, spacing_mm: float, slices: int, size: int, dtype: str, seed: int = 0) -> Volume:
    """(slices, size, size) MR-like volume written slab by slab (bounded temporary memory)."""
    out = np.empty((slices, size, size), dtype=np.int16 if dtype == "int16" else np.float32)
    g = torch.Generator().manual_seed(seed)
    slab = 8
    for s in range(0, slices, slab):
        n = min(slab, slices - s)
        coarse = torch.rand((1, 1, size // 32 + 2, size // 32 + 2), generator=g)
        base = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        x = 300.0 + 1200.0 * base[None] + 40.0 * torch.randn((n, size, size), generator=g)
        edge = size // 10
        x[:, :edge], x[:, -edge:], x[:, :, :edge], x[:, :, -edge:] = 5.0, 5.0, 5.0, 5.0
        out[s:s + n] = x.clamp_(0, 32000).numpy()
    return Volume(out, make_ijk_to_ras((spacing_mm, spacing_mm, 1.0), CANONICAL_DIRECTIONS[plane]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: build an UNTRAINED one)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=400, help="slices to run (fewer: extrapolate to --full-slices)")
    parser.add_argument("--full-slices", type=int, default=400, help="the volume size the extrapolation is for")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--inplane-mm", type=float, default=None,
                        help="in-plane spacing (default: the model's, so slices run at full 1024 x 1024)")
    parser.add_argument("--dtype", default="int16", choices=("int16", "float32"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--cli", action="store_true", help="measure `gase segment` on a file (child process)")
    parser.add_argument("--tmp", default=None, help="--cli: folder for the temporary input and outputs")
    parser.add_argument("--route", default="auto", choices=("auto", "style", "expert", "gase"),
                        help="which network segments (`gase segment --route`; default: the model decides)")
    args = parser.parse_args(argv)
    if args.cli:
        return cli_run(args)

    torch.set_num_threads(args.threads)
    tmp = None
    if args.model:
        folder, note = Path(args.model), f"model folder {args.model}"
    else:
        from untrained_model import UNTRAINED_NOTE, build_untrained_model

        tmp = tempfile.TemporaryDirectory(prefix="gase-memory-model-")
        folder, note = build_untrained_model(Path(tmp.name) / "untrained"), UNTRAINED_NOTE
    predictor = Predictor.from_folder(folder, device=args.device, batch_size=args.batch_size)
    predictor.route = args.route
    spacing = args.inplane_mm or predictor.card.input_spacing_mm
    rss_model = rss_bytes()
    volume = make_large_volume(predictor.card.plane, spacing, args.slices, args.size, args.dtype)
    rss_input = rss_bytes()
    print(f"GASE memory: {args.slices} x {args.size} x {args.size} {args.dtype} on {args.device} "
          f"({torch.get_num_threads()} threads), in-plane {spacing} mm (model {predictor.card.input_spacing_mm} mm)")
    print(f"model: {note}")
    print(f"RSS after loading the model {rss_model / GB:.2f} GB, with the input {rss_input / GB:.2f} GB "
          f"(input array {volume.array.nbytes / GB:.2f} GB)")
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    done = []
    result = predictor.predict(volume, progress=lambda f, m: done.append((time.perf_counter() - t0, f)))
    seconds = time.perf_counter() - t0
    sampled = sampler.stop()
    peak = max(peak_rss_bytes(), sampled)
    out_bytes = result.labels.array.nbytes + result.confidence.array.nbytes
    per_slice = (volume.array.nbytes + out_bytes) / args.slices
    missing = max(0, args.full_slices - args.slices)
    extrapolated = peak + per_slice * missing
    row = {"device": args.device, "threads": torch.get_num_threads(), "model": note, "untrained": args.model is None,
           "route": args.route,
           "volume": [args.slices, args.size, args.size], "dtype": args.dtype, "inplane_mm": spacing,
           "batch": predictor.batch_for((args.size, args.size), (args.size, args.size)),
           "seconds": round(seconds, 2), "slices_per_s": round(args.slices / seconds, 3),
           "rss_model_gb": round(rss_model / GB, 3), "rss_with_input_gb": round(rss_input / GB, 3),
           "input_gb": round(volume.array.nbytes / GB, 3), "outputs_gb": round(out_bytes / GB, 3),
           "peak_rss_gb": round(peak / GB, 3), "peak_rss_sampled_gb": round(sampled / GB, 3),
           "full_slices": args.full_slices,
           "peak_rss_extrapolated_gb": round(extrapolated / GB, 3) if missing else round(peak / GB, 3),
           "extrapolated": bool(missing), "target_gb": 4.0}
    print(f"predict: {seconds:.1f} s ({row['slices_per_s']:.2f} slices/s, batch {row['batch']}); outputs "
          f"{out_bytes / GB:.2f} GB; peak RSS {peak / GB:.2f} GB (sampled during predict {sampled / GB:.2f} GB)")
    if missing:
        print(f"extrapolated to {args.full_slices} slices: peak RSS ~ {extrapolated / GB:.2f} GB "
              f"(+ {per_slice / 2**20:.1f} MB input and outputs per slice; batch memory does not grow)")
    print(f"target: <= 4 GB RSS -> {'met' if row['peak_rss_extrapolated_gb'] <= 4.0 else 'NOT met'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


_LAUNCHER = """
import json, resource, subprocess, sys
unit = 1 if sys.platform == "darwin" else 1024
try:  # this process's own high-water mark since its exec (ru_maxrss would include its parent's)
    before = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
except OSError:
    before = 0
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
if proc.returncode:
    sys.exit(proc.returncode)
print(json.dumps({"child_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit,
                  "launcher_maxrss_bytes": before}))
"""


def cli_run(args) -> int:
    """Peak RSS of ``gase segment`` (read the file, segment, write the outputs) in a child process."""
    import os
    import subprocess

    from gase.model_card import load_card
    from gase.volume import write_volume

    folder = Path(args.model) if args.model else ROOT / "Resources" / "Models" / "knee-demo"
    card = load_card(folder)
    spacing = args.inplane_mm or card.input_spacing_mm
    with tempfile.TemporaryDirectory(prefix="gase-memory-cli-", dir=args.tmp) as tmp:
        path = Path(tmp) / "large.nrrd"
        volume = make_large_volume(card.plane, spacing, args.slices, args.size, args.dtype)
        write_volume(volume, path, compress=False)
        input_gb = volume.array.nbytes / GB
        del volume
        cmd = [sys.executable, "-m", "gase.cli", "segment", str(path), "--model", str(folder), "--out",
               str(Path(tmp) / "out"), "--device", args.device, "--route", args.route]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        print(f"gase segment on {args.slices} x {args.size} x {args.size} {args.dtype} ({input_gb:.2f} GB), "
              f"{args.threads} threads: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        # A child's ru_maxrss starts at its parent's peak (fork/vfork + exec keeps the old high-water mark),
        # and this process held the whole volume: a small launcher process runs the command instead and
        # reports the peak of ITS child, which is then the command's own.
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
            return proc.returncode
        outputs = {p.name: round(p.stat().st_size / GB, 3) for p in (Path(tmp) / "out").iterdir()}
    launcher = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = launcher["child_maxrss_bytes"]
    if launcher["launcher_maxrss_bytes"] >= peak:
        print("warning: the launcher's own peak RSS is not below the command's; the number is an upper bound")
    row = {"mode": "cli", "device": args.device, "threads": args.threads, "model": str(folder), "route": args.route,
           "volume": [args.slices, args.size, args.size], "dtype": args.dtype, "inplane_mm": spacing,
           "seconds": round(seconds, 1), "input_gb": round(input_gb, 3), "output_files_gb": outputs,
           "peak_rss_gb": round(peak / GB, 3), "target_gb": 4.0}
    print(f"gase segment: {seconds:.1f} s; peak RSS of the command {peak / GB:.2f} GB; outputs {outputs}")
    print(f"target: <= 4 GB RSS -> {'met' if peak / GB <= 4.0 else 'NOT met'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
