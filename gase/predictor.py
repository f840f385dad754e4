"""Volume in, :class:`~gase.result.SegmentationResult` out.

>>> from gase.predictor import Predictor                      # doctest: +SKIP
>>> from gase.volume import read_volume                       # doctest: +SKIP
>>> result = Predictor.from_folder("Resources/Models/knee-demo").predict(read_volume("knee.nrrd"))  # doctest: +SKIP
>>> result.validity.valid, result.reliability_overall          # doctest: +SKIP

One network pass per batch of slices gives labels, confidence and the validity features. Slices are
streamed: the input is never copied whole as float32, outputs are written straight into their final
(input-ordered) arrays, and on CUDA an out-of-memory error halves the batch and retries, then falls
back to the CPU.

On CUDA the raw voxels (e.g. int16) travel to the GPU through page-locked memory and are normalised
there; the network runs under bf16 autocast in channels_last (``fast=False`` gives the plain fp32
path); results are copied asynchronously into page-locked output arrays and per-label sums stay on the
GPU, so the host waits once per volume. ``compile=True`` adds ``torch.compile`` with a fixed batch
shape (the last batch is padded with empty slices).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .context import stack_array
from .errors import CancelledError, InputError, ModelError
from .labels import LabelInfo
from .model_card import EXPERT_FILES, ModelCard, load_card, load_tensors, prefixed
from .nets import SegDiscriminator, StyleEncoder
from .nets.blocks import channel_stats
from .orientation import reorientation_for
from .postprocess import keep_largest_component, keep_opened_component
from .preprocess import Normalization, pad_to_multiple, resample_slices, working_size
from .result import CT_AIR_HU, SegmentationResult, Validity, background_level, fraction_below
from .validity import StyleManifold, volume_score
from .volume import Volume

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

MAX_WORKING_PIXELS = 2048 * 2048
# Pixels per batch (input or working size, whichever is larger). On the CPU one 384x384 slice: its
# full-resolution activations (16 channels, 9 MB each) then stay in cache, which halves the time per slice
# against batches of 8 (measured single-threaded, fp32), and the memory stays bounded for any slice size.
# On CUDA it only bounds the memory; the batch is 32 slices by default.
MAX_BATCH_PIXELS = {"cpu": 384 * 384, "cuda": 64 * 384 * 384}
CONTENT_LEVEL = 0.05      # normalised intensity above which a pixel counts as content
CONTENT_FRACTION = 0.02   # fraction of content pixels for a slice to count in the validity score
# Stability (see Predictor.stability): the views a few foreground slices are segmented again under.
# ("gamma", g): normalised intensities to the power g (contrast); ("scale", s): the slice read as if its
# pixels were s times larger (anatomy size). Just beyond the training augmentation's range (gamma
# 0.7-1.5, scale 0.85-1.15): changes inside it barely move a model trained on them. Benchmark GASE models
# (seed 0, 36 test volumes per anatomy, 16 slices), Spearman(stability, Dice) knee / pelvis: these four
# views 0.66 / 0.64; gamma 0.7, 1.4 and scale 0.9, 1.1: 0.47 / 0.67; all eight 0.61 / 0.67; noise 0.35 / 0.22.
STABILITY_VIEWS = (("gamma", 0.5), ("gamma", 2.0), ("scale", 0.8), ("scale", 1.25))
STABILITY_SLICES = 16     # foreground slices, evenly spread, segmented again per view
# A view's batch may hold this many pixels (at the working size) even where the main pass's batches held
# fewer; beyond it, and beyond the main pass's batch, an enlarging view runs on fewer slices per batch and,
# for a single slice larger still (on the CPU: a 1.25x view of a slice over about 614 x 614 at the model
# spacing), on a crop about the structures, so the check never needs more memory than the segmentation.
STABILITY_FREE_PIXELS = 768 * 768
# Predictor.route, for a model with a source expert: which network segments. "auto": the model's own choice (its
# card's source_expert["route"]; "style" for models that do not record one); "style": the expert segments a scan its
# style manifold finds in the training style, the GASE segmenter the rest; "expert" / "gase": that network always.
ROUTES = ("auto", "style", "expert", "gase")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises :class:`InputError`."""
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("CUDA was requested but no CUDA GPU is available to PyTorch. Use --device cpu "
                             "(or auto).")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise InputError(f"Unknown device {device!r}; use auto, cpu or cuda.")


def build_segmenter(card: ModelCard) -> SegDiscriminator:
    return SegDiscriminator(card.n_classes, tuple(card.architecture["segmenter_channels"]),
                            in_channels=card.context.slices)


def build_encoder(card: ModelCard) -> StyleEncoder:
    return StyleEncoder(card.architecture["style_dim"], tuple(card.architecture.get("encoder_channels", (16, 32, 64, 96))))


@dataclass
class SliceOutputs:
    """Per batch of canonical slices: probabilities-derived outputs at the slices' own size, on the model's
    device."""

    labels: torch.Tensor      # (B, H, W) uint8
    confidence: torch.Tensor  # (B, H, W) float32 in [0, 1]
    features: torch.Tensor    # (B, F) float32 validity features
    msp: torch.Tensor         # (B, H, W) float32 max softmax probability (the predicted label's)
    prob_sums: torch.Tensor   # (K,) float64 softmax probability of each class summed over the batch's voxels
    entropy: torch.Tensor | None = None  # (B, H, W) float32 predictive entropy, nats (keep_probs only)
    # with prior offsets: the foreground voxels of the network's own argmax, before the offsets (counted at the
    # model spacing, scaled to the slices' size; float64 scalar); None without offsets (= the labels' count)
    raw_foreground: torch.Tensor | None = None


class SliceModel(torch.nn.Module):
    """Segmenter + style encoder as one module: normalised slices (B, C, H, W) at the model spacing ->
    logits, calibrated confidence and validity features, in a single pass. C is the segmenter's
    ``in_channels`` (the slice with its through-plane context, :mod:`gase.context`); the style encoder reads
    the centre channel, the slice itself."""

    def __init__(self, segmenter: SegDiscriminator, encoder: StyleEncoder, conf_scale: float = 1.0,
                 conf_bias: float = 0.0, logit_offsets: Sequence[float] | None = None):
        """``logit_offsets`` (one per class, background first; default none): the card's
        ``postprocessing.prior_offsets``, which :func:`run_slices` adds to the logits this module returns (the
        confidence head reads the logits before them)."""
        super().__init__()
        self.segmenter = segmenter
        self.encoder = encoder
        self.register_buffer("conf_affine", torch.tensor([conf_scale, conf_bias], dtype=torch.float32))
        offsets = torch.zeros(segmenter.seg_head.out_channels) if logit_offsets is None else \
            torch.tensor(list(logit_offsets), dtype=torch.float32)
        self.register_buffer("logit_offsets", offsets.reshape(1, -1, 1, 1))
        self.has_offsets = bool(offsets.abs().sum() > 0)
        self.centre = segmenter.in_channels // 2

    def centre_slice(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): the slice being segmented, out of its context stack (B, C, H, W)."""
        return x if x.shape[1] == 1 else x[:, self.centre:self.centre + 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, conf_logit, features = segment(self.segmenter, x)
        style = self.encoder(self.centre_slice(x))
        conf = torch.sigmoid(conf_logit * self.conf_affine[0] + self.conf_affine[1])
        return logits, conf, torch.cat([style, features], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The validity features of :meth:`forward` alone (the encoders only)."""
        return torch.cat([self.encoder(self.centre_slice(x)), encoder_features(self.segmenter, x)], dim=1)


def encoder_features(seg: SegDiscriminator, x: torch.Tensor) -> torch.Tensor:
    """The validity features ``seg(x).features`` from the encoder alone (no decoder, no heads)."""
    skips, h = [], x
    for layer in seg.enc:
        h = layer(h)
        skips.append(h)
    return torch.cat([channel_stats(skips[-1]), channel_stats(skips[-2])], dim=1)


def segment(seg: SegDiscriminator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``seg(x)`` at inference -> (logits, conf_logit, features), with the confidence head's first 1x1
    convolution split over its three inputs.

    ``conv(cat(d0, up(d1), softmax))`` = ``conv_a(cat(d0, softmax)) + up(conv_b(d1))``: bilinear upsampling
    is linear and its weights sum to one, so the 24-channel map is mixed down at half resolution and
    the 45-channel full-resolution concatenation never exists (~8% of the CPU forward, measured). Equal to
    ``seg(x)`` up to float rounding (Testing/test_fast_path.py); any other head layout uses ``seg(x)``.
    """
    head = seg.conf_head
    first = head[0] if isinstance(head, torch.nn.Sequential) and len(head) > 0 else None
    if not (isinstance(first, torch.nn.Conv2d) and first.kernel_size == (1, 1) and first.groups == 1):
        out = seg(x)
        return out.logits, out.conf_logit, out.features
    skips, h = [], x
    for layer in seg.enc:
        h = layer(h)
        skips.append(h)
    features = torch.cat([channel_stats(skips[-1]), channel_stats(skips[-2])], dim=1)
    h = skips.pop()
    for up, dec in zip(seg.up, seg.dec):  # skips are dropped as they are used: less memory on big slices
        d1, h = h, dec(torch.cat([up(h), skips.pop()], dim=1))
    d0 = h
    del h
    logits = seg.seg_head(d0)
    c0, c1, w, size = d0.shape[1], d1.shape[1], first.weight, d0.shape[-2:]
    hidden = F.conv2d(torch.cat([d0, torch.softmax(logits, 1).to(d0.dtype)], dim=1),
                      torch.cat([w[:, :c0], w[:, c0 + c1:]], dim=1), first.bias)
    del d0
    hidden += F.interpolate(F.conv2d(d1, w[:, c0:c0 + c1]), size=size, mode="bilinear",
                            align_corners=False).to(hidden.dtype)
    del d1
    return logits, head[1:](hidden), features


def checked_working_size(hw: tuple[int, int], spacing_hw: tuple[float, float],
                         model_spacing: float) -> tuple[int, int]:
    """In-plane size (rows, cols) of a slice at the model spacing; :class:`InputError` if absurdly large."""
    h, w = int(hw[0]), int(hw[1])
    size = working_size((h, w), spacing_hw, model_spacing)
    if size[0] * size[1] > MAX_WORKING_PIXELS:
        raise InputError(f"A slice of {h}x{w} pixels at {spacing_hw[0]:.3g}x{spacing_hw[1]:.3g} mm becomes "
                         f"{size[0]}x{size[1]} pixels at the model's {model_spacing} mm: too large. Check the "
                         "image spacing in its header.")
    return size


def run_slices(model: SliceModel, x: torch.Tensor, spacing_hw: tuple[float, float], model_spacing: float,
               divisor: int, amp: bool, keep_probs: bool = False, *, channels_last: bool | None = None,
               fixed_batch: int | None = None, offsets: torch.Tensor | None = None) -> SliceOutputs:
    """Normalised canonical slices (B, C, H, W) on the model's device (C: the model's context channels, see
    :mod:`gase.context`) -> :class:`SliceOutputs` on that device.

    ``offsets`` (1, K, 1, 1): the prior offsets (:attr:`SliceModel.logit_offsets`), added to the logits before
    the softmax; the labels, probabilities and expected Dice follow them, the confidence head does not.

    ``keep_probs`` also returns the softmax entropy (a baseline for the confidence, for benchmarks).
    ``channels_last`` (default: on CUDA) must match the model's memory format; ``fixed_batch`` pads the
    batch with empty slices to that size, so a compiled model always sees one shape."""
    n, (h, w) = x.shape[0], x.shape[-2:]
    xp, size = _network_input(x, spacing_hw, model_spacing, divisor, channels_last, fixed_batch)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits, conf, feats = model(xp)
    logits, feats = logits[:n, :, : size[0], : size[1]].float(), feats[:n]
    conf = conf[:n, :, : size[0], : size[1]].float()
    raw_fg = None
    if offsets is not None:  # the size check reads the network's own foreground (see Predictor._validity)
        # argmax(1) != 0 (a tie with the background goes to the background), without argmax: ~100x faster on
        # the CPU (argmax over the classes of a 384 x 384 slice: 14 ms, 7% of the demo model's prediction)
        foreground = logits[:, 1:].amax(1) > logits[:, 0]
        raw_fg = foreground.sum(dtype=torch.float64) * (h * w / (size[0] * size[1]))
        logits = logits + offsets.to(logits.device)
    probs = torch.softmax(logits, dim=1)  # also needed for the expected Dice (class probability sums)
    if tuple(size) != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        conf = F.interpolate(conf, size=(h, w), mode="bilinear", align_corners=False)
    top = probs.max(1)  # max(dim).indices: argmax's first-maximum rule, ~6x faster than argmax on the CPU
    labels = top.indices.to(torch.uint8)
    conf = conf[:, 0].clamp_(0, 1)
    prob_sums = probs.sum(dim=(0, 2, 3), dtype=torch.float64)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1) if keep_probs else None
    return SliceOutputs(labels, conf, feats.float(), top.values, prob_sums, entropy, raw_fg)


def slice_features(model: SliceModel, x: torch.Tensor, spacing_hw: tuple[float, float], model_spacing: float,
                   divisor: int, amp: bool, *, channels_last: bool | None = None) -> torch.Tensor:
    """Normalised canonical slices (B, C, H, W) -> validity features (B, F) float32, prepared exactly as
    :func:`run_slices` prepares them (resampled to the model spacing, padded), without the decoder."""
    xp, _ = _network_input(x, spacing_hw, model_spacing, divisor, channels_last)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        return model.features(xp).float()


def _network_input(x: torch.Tensor, spacing_hw: tuple[float, float], model_spacing: float, divisor: int,
                   channels_last: bool | None, fixed_batch: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Slices (B, C, H, W) -> the network's input: resampled to the model spacing, padded to ``divisor``, padded
    with empty slices to ``fixed_batch``, in the memory format (``channels_last``, default: on CUDA); and the
    slices' size at the model spacing."""
    n = x.shape[0]
    size = checked_working_size(tuple(x.shape[-2:]), spacing_hw, model_spacing)
    xp, _ = pad_to_multiple(resample_slices(x, size), divisor)
    if fixed_batch is not None and n < fixed_batch:
        xp = torch.cat([xp, xp.new_zeros((fixed_batch - n,) + tuple(xp.shape[1:]))])
    if channels_last is None:
        channels_last = x.device.type == "cuda"
    if channels_last:
        xp = xp.contiguous(memory_format=torch.channels_last)
    return xp, size


def _crop_about_structures(raw: np.ndarray, labels: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """One slice (1, H, W) or context stack (1, C, H, W) and its labels (1, H, W) cut to ``shrink`` of its height
    and width, centred on the labelled structures' bounding box (kept inside the slice): a stability view of a
    huge slice, in bounded memory."""
    h, w = raw.shape[-2:]
    ch, cw = max(8, int(h * shrink)), max(8, int(w * shrink))
    rows, cols = np.nonzero(labels[0])
    cr, cc = ((rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2) if rows.size else (h // 2, w // 2)
    r0 = int(np.clip(cr - ch // 2, 0, h - ch))
    c0 = int(np.clip(cc - cw // 2, 0, w - cw))
    return raw[..., r0:r0 + ch, c0:c0 + cw], labels[:, r0:r0 + ch, c0:c0 + cw]


def expected_dice(counts: np.ndarray, conf_sums: np.ndarray, msp_sums: np.ndarray, prob_sums: np.ndarray,
                  labels: Sequence[LabelInfo]) -> dict[str, float]:
    """Each structure's Dice as the model itself expects it, from sums over the volume's voxels.

    For label c, with N voxels predicted c: true positives T = the calibrated confidence summed over them
    (the expected number of them that are right), false positives N - T, false negatives the softmax
    probability of c summed over the voxels predicted as something else (``prob_sums - msp_sums``: all
    of c's probability minus the part on voxels predicted c). Expected Dice = 2T / (2T + FP + FN) =
    2T / (N + T + FN).

    Why this and not the mean confidence in the structure (the paper's mask reliability, still in the
    report): the mean confidence does not see voxels the mask misses, nor scale errors by the
    structure's size. On the benchmark's 36 knee and 36 pelvis test volumes (source + five unseen
    styles; GASE models, run of 2026-11-28) Spearman(reliability, true Dice) was 0.77 / -0.15 for the
    mean confidence and 0.67 / 0.76 for the expected Dice, whose mean absolute error was 0.06 / 0.04
    (the mean confidence is not a Dice estimate: 0.86-0.89 throughout). Noise lowers it (low-SNR knee
    scans: expected 0.68, true 0.80). Models trained with balanced crops (the default since that run) rank
    worse: 0.24-0.67 (knee) and 0.15-0.71 (pelvis) over three training seeds: their Dice varies little
    between styles and their expected Dice less; :meth:`Predictor.stability` ranks them better (seed 0:
    0.70 / 0.49 against 0.24 / 0.15). NaN where the structure is neither predicted nor probable anywhere
    (less than one voxel's worth of probability).
    """
    out = {}
    for lab in labels:
        c = lab.value
        n, t = float(counts[c]), float(conf_sums[c])
        fn = max(0.0, float(prob_sums[c]) - float(msp_sums[c]))
        denom = n + t + fn
        out[lab.name] = 2.0 * t / denom if denom >= 1.0 else float("nan")
    return out


def _finite_mean(values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8, np.dtype(np.int16): torch.int16,
                 np.dtype(np.int32): torch.int32, np.dtype(np.float16): torch.float16,
                 np.dtype(np.float32): torch.float32, np.dtype(np.bool_): torch.bool}


def _transfer_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype raw voxels travel in: their own where torch handles it fully, uint16 as its int16 bits
    (undone on the device), anything else (float64, 64-bit ints, other byte orders) as float32."""
    if dtype == np.dtype(np.uint16):
        return np.dtype(np.int16)
    return dtype if dtype in _TORCH_DTYPES else np.dtype(np.float32)


TRIM_EVERY_PIXELS = 16 * 1024 * 1024  # 16 slices of 1024x1024, ~110 of 384x384 (trimming costs refaults)
_malloc_trim = None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS. glibc keeps part of each freed activation on its heap, so
    on 1024x1024 slices the resident size crept up ~4 MB per slice (to ~5.5 GB at 400 slices instead of
    ~3.6 GB); ``malloc_trim`` stops that. Not after every batch: the memory it returns is faulted back in
    by the next ones (~5% slower on 384x384 slices). A no-op where it does not exist (macOS, Windows)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _host_array(shape: tuple[int, ...], dtype, pinned: bool) -> np.ndarray:
    """An uninitialised output array; page-locked when ``pinned`` (CUDA copies into it asynchronously)."""
    if not pinned:
        return np.empty(shape, dtype)
    return torch.empty(shape, dtype=_TORCH_DTYPES[np.dtype(dtype)], pin_memory=True).numpy()


class _BatchStats:
    """Per-batch reductions, kept where they were computed (no host-device synchronisation per batch):
    per label the voxel count, the confidence sum and the predicted label's probability sum; each
    class's probability sum over all voxels; validity features, content flags, non-finite voxel counts."""

    def __init__(self, n_classes: int):
        self.n = n_classes
        self.items: list[tuple] = []
        self.raw_foreground: list[torch.Tensor] = []

    def add(self, out: SliceOutputs, x: torch.Tensor, nonfinite: torch.Tensor | None) -> None:
        """``x``: the batch's normalised slices (B, 1, H, W), or context stacks (B, C, H, W) whose centre channel
        is the slice. Appends only once everything is computed, so an out-of-memory error half-way leaves no
        trace."""
        x = x[:, x.shape[1] // 2]
        lab, conf, msp = out.labels.reshape(-1), out.confidence.reshape(-1), out.msp.reshape(-1)
        if lab.is_cuda and self.n <= 16:  # one-hot sums: CUDA's bincount waits for the GPU (it reads the max)
            hit = lab[None, :] == torch.arange(self.n, device=lab.device, dtype=lab.dtype)[:, None]
            counts = hit.sum(1)
            sums = torch.stack([torch.where(hit, v[None, :], 0.0).sum(1, dtype=torch.float64) for v in (conf, msp)])
        else:
            counts = torch.bincount(lab, minlength=self.n)[: self.n]
            sums = torch.stack([torch.bincount(lab, weights=v.double(), minlength=self.n)[: self.n]
                                for v in (conf, msp)])
        content = (x > CONTENT_LEVEL).flatten(1).sum(1) > CONTENT_FRACTION * x.shape[-2] * x.shape[-1]
        self.items.append((counts, torch.cat([sums, out.prob_sums[None, : self.n]]), out.features, content,
                           nonfinite))
        if out.raw_foreground is not None:
            self.raw_foreground.append(out.raw_foreground)

    def network_foreground(self, counts: np.ndarray) -> float:
        """Foreground voxels as the network segmented them: before the prior offsets when the model has them
        (then estimated at the model spacing), else the labels' own count (``counts`` of :meth:`result`)."""
        if self.raw_foreground:
            return float(sum(float(v) for v in self.raw_foreground))
        return float(counts[1:].sum())

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(counts (K,) int64; sums (3, K) float64: confidence and predicted-label probability summed per
        predicted label, each class's probability summed over all voxels; features (S, F) float32;
        content (S,) bool; number of non-finite voxels)."""
        counts = np.sum([c.cpu().numpy() for c, *_ in self.items], axis=0)
        sums = np.sum([s.cpu().numpy() for _, s, *_ in self.items], axis=0)
        features = torch.cat([f.cpu() for *_, f, _, _ in self.items]).numpy()
        content = torch.cat([c.cpu() for *_, c, _ in self.items]).numpy()
        nonfinite = sum(int(n) for *_, n in self.items if n is not None)
        return counts, sums, features, content, nonfinite


class _HostWriter:
    """Copies each batch's device outputs into the (canonical views of the) output arrays.

    CPU results are plain assignments. CUDA results go straight into the page-locked outputs when the
    batch's view is contiguous (asynchronous: the GPU moves on to the next batch); otherwise through a
    page-locked staging copy that is written out once the next batch has been queued. :meth:`flush`
    waits for everything."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending: list[tuple] = []
        self.cuda = False

    def write(self, s: int, e: int, targets: list[tuple[torch.Tensor, np.ndarray]]) -> None:
        staged = []
        for src, dst in targets:
            view = dst[s:e]
            if src.device.type == "cpu":
                view[...] = src.numpy()
                continue
            self.cuda = True
            if view.flags.c_contiguous:
                torch.from_numpy(view).copy_(src, non_blocking=True)
            else:
                host = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
                host.copy_(src, non_blocking=True)
                staged.append((host, view))
        previous = self.pending
        self.pending = []
        if staged:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(src.device))
            self.pending.append((event, staged))
        self._drain(previous)

    def _drain(self, items: list[tuple]) -> None:
        for event, staged in items:
            event.synchronize()
            for host, view in staged:
                view[...] = host.numpy()

    def flush(self) -> None:
        self._drain(self.pending)
        self.pending = []
        if self.cuda and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.cuda:  # the run moved to the CPU after an out-of-memory error: wait for every GPU
            torch.cuda.synchronize()


def _checked_manifold(tensors: dict, n_features: int, folder) -> StyleManifold:
    """The validity manifold of a model folder, checked to fit the network's features (n_features,)."""
    try:
        m = StyleManifold.from_tensors(tensors)
        k = m.components.shape[0]
        ok = (m.mean.shape == m.std.shape == (n_features,) and m.components.shape == (k, n_features)
              and m.precision.shape == (k, k) and m.reference_2d.ndim == 2 and m.reference_2d.shape[1] == 2
              and (m.reference_distances is None or m.reference_distances.shape == m.reference_2d.shape))
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{folder}: validity.safetensors is incomplete ({exc!r}). The model folder is damaged; "
                         "re-install the model.") from None
    if not ok:
        raise ModelError(f"{folder}: validity.safetensors does not fit the network (it expects {n_features} "
                         "features per slice). The model folder is inconsistent; re-install the model.")
    return m


def _load_network(card: ModelCard, weights_file: str, validity_file: str, folder) -> tuple[SliceModel, StyleManifold]:
    """One segmenter + style encoder (from ``weights_file``) and its style manifold (``validity_file``)."""
    weights = load_tensors(card, weights_file)
    seg, enc = build_segmenter(card), build_encoder(card)
    try:
        seg.load_state_dict(prefixed(weights, "segmenter"))
        enc.load_state_dict(prefixed(weights, "style_encoder"))
    except RuntimeError as exc:
        raise ModelError(f"{folder}: the weights in {weights_file} do not match the architecture in model.json "
                         f"({str(exc).splitlines()[0]}). The model folder is inconsistent.") from None
    manifold = _checked_manifold(load_tensors(card, validity_file), enc.style_dim + seg.feature_dim, folder)
    cal = card.confidence_calibration
    prior = card.prior_offsets
    offsets = [0.0] * card.n_classes
    for lab in card.labels:
        offsets[lab.value] = prior.get(lab.name, 0.0)
    return SliceModel(seg, enc, float(cal.get("scale", 1.0)), float(cal.get("bias", 0.0)), offsets), manifold


class Predictor:
    """A loaded GASE model ready to segment volumes. Construct with :meth:`from_folder`."""

    def __init__(self, card: ModelCard, model: SliceModel, manifold: StyleManifold, device: torch.device,
                 batch_size: int | None = None, *, fast: bool = True, compile: bool = False):
        """``fast``: on CUDA, bf16 autocast and channels_last (False: the plain fp32 path; no effect on the
        CPU, which always runs fp32). ``compile``: ``torch.compile`` the network (fixed batch shape)."""
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                       or batch_size < 1):
            raise InputError(f"The batch size must be a whole number of slices, at least 1 (got {batch_size}).")
        self.card = card
        self.model = model.eval().to(device)
        self.manifold = manifold
        self.device = device
        self.normalization = Normalization.from_json(card.normalization)
        self.batch_size = int(batch_size) if batch_size else (32 if device.type == "cuda" else 8)
        self.amp = self.channels_last = bool(fast) and device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.compiled = bool(compile)
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self.context = card.context
        self.stability_slices = STABILITY_SLICES  # 0: no stability check (see :meth:`stability`)
        # the source-style expert (see predict), loaded by from_folder when the card names one
        self.expert: Predictor | None = None
        self.route = "auto"  # with an expert: one of ROUTES (see predict)

    @property
    def offsets(self) -> torch.Tensor | None:
        """The model's prior offsets (1, K, 1, 1) on its device for :func:`run_slices`; None without any."""
        return self.model.logit_offsets if self.model.has_offsets else None

    def batch_for(self, hw: tuple[int, int], size: tuple[int, int]) -> int:
        """Slices per batch for slices of ``hw`` pixels (``size`` at the model spacing): ``batch_size``,
        lowered for large slices so that a batch's memory stays bounded (see :data:`MAX_BATCH_PIXELS`)."""
        pixels = max(int(hw[0]) * int(hw[1]), int(size[0]) * int(size[1]))
        return max(1, min(self.batch_size, MAX_BATCH_PIXELS.get(self.device.type, MAX_BATCH_PIXELS["cuda"]) // pixels))

    def _use_cpu(self) -> None:
        """Continue on the CPU in fp32 (after the GPU ran out of memory even for one slice)."""
        self.device = torch.device("cpu")
        self.model = self.model.float().to(self.device, memory_format=torch.contiguous_format)
        self.amp = self.channels_last = self.compiled = False
        self._forward = self.model

    def _raw(self, canon: np.ndarray, rows: np.ndarray | slice, slice_mm: float) -> np.ndarray:
        """The raw input of the canonical slices ``rows`` (a slice or index array): ``canon[rows]`` (B, H, W)
        for a model without context, else their context stacks (B, C, H, W) float32 (:mod:`gase.context`)."""
        if not self.context.used:
            return canon[rows]
        centres = np.arange(canon.shape[0])[rows]
        return stack_array(canon, centres, self.context.offsets(slice_mm))

    def _to_device(self, raw: np.ndarray, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw canonical slices (B, H, W), any numeric dtype and strides -> normalised (B, 1, H, W) float32 on
        the device, and the number of NaN/Inf voxels among them (a device tensor; None for integer voxels).
        Context stacks (B, C, H, W) (:meth:`_raw`) -> (B, C, H, W), the NaN/Inf counted in the centre channel
        only (each slice is the centre of one stack). The input array is only read."""
        if raw.ndim == 4:
            t = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)).to(self.device)
            nonfinite = (~torch.isfinite(t[:, t.shape[1] // 2])).sum()
            return self.normalization.apply_tensor(t, lo, hi), nonfinite
        dtype = _transfer_dtype(raw.dtype)
        src = raw.view(np.int16) if raw.dtype == np.uint16 else raw
        if self.device.type == "cuda":  # one gather/convert copy into page-locked memory, then an async copy
            host = torch.empty(raw.shape, dtype=_TORCH_DTYPES[dtype], pin_memory=True)
            np.copyto(host.numpy(), src, casting="unsafe")
            t = host.to(self.device, non_blocking=True)
        else:
            batch = np.ascontiguousarray(src, dtype=dtype)
            t = torch.from_numpy(batch if batch.flags.writeable else batch.copy())
        if raw.dtype == np.uint16:
            t = t.int() & 0xFFFF
        nonfinite = (~torch.isfinite(t)).sum() if t.is_floating_point() else None
        return self.normalization.apply_tensor(t, lo, hi)[:, None], nonfinite

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto", batch_size: int | None = None, *,
                    fast: bool = True, compile: bool = False) -> "Predictor":
        """Load a model folder (card validated, checksums verified, safetensors only)."""
        card = load_card(Path(folder), verify=True)
        dev = resolve_device(device)
        model, manifold = _load_network(card, "weights.safetensors", "validity.safetensors", folder)
        predictor = cls(card, model, manifold, dev, batch_size, fast=fast, compile=compile)
        if card.source_expert:
            se = card.source_expert
            ecard = dataclasses.replace(card, validity={**card.validity, **se["validity"]},
                                        confidence_calibration=se.get("confidence_calibration", {}), source_expert={})
            emodel, emanifold = _load_network(ecard, EXPERT_FILES["weights"], EXPERT_FILES["validity"], folder)
            predictor.expert = cls(ecard, emodel, emanifold, dev, batch_size, fast=fast, compile=compile)
        return predictor

    # ------------------------------------------------------------------------------------------
    def stability(self, canon: np.ndarray, labels_c: np.ndarray, lo: float, hi: float,
                  spacing_hw: tuple[float, float], batch: int | None = None, *,
                  slice_mm: float | None = None) -> dict[str, float]:
        """How much of each structure's mask survives small changes of contrast and size: per label, the
        Dice between the mask and the masks predicted under each of :data:`STABILITY_VIEWS`, averaged over
        the views, on up to :attr:`stability_slices` foreground slices spread evenly through the volume.

        A test-time-augmentation agreement: where the model segments reliably, changes just beyond its
        training augmentation move its masks little; on scans unlike its training data they shift (the
        pairwise Dice of an ensemble is the strongest volume-level failure detector in Zenk et al., MedIA
        2025). ``canon``: the
        raw canonical slices (S, H, W); ``labels_c``: the predicted labels in the same layout; ``batch``:
        slices per pass (default :meth:`batch_for`; :meth:`predict` passes the one its own passes ended
        with, after any out-of-memory halving); a view that enlarges the slices runs on fewer of them per pass,
        or on a crop about the structures, so that no pass holds more pixels than the segmentation's own (see
        :data:`STABILITY_FREE_PIXELS`). Empty dict when disabled or nothing was segmented; NaN for a structure
        absent from the mask and every view. ``slice_mm``: the slice spacing, which a model with through-plane
        context needs (:mod:`gase.context`)."""
        if self.context.used and slice_mm is None:
            raise ValueError("This model reads neighbouring slices: give the slice spacing (slice_mm).")
        pick = self._stability_pick(labels_c)
        if pick.size == 0:
            return {}
        return self._stability_on(self._raw(canon, pick, slice_mm), labels_c[pick], lo, hi, spacing_hw, batch)

    def _stability_pick(self, labels_c: np.ndarray) -> np.ndarray:
        """Indices of the (up to :attr:`stability_slices`) foreground slices the stability check uses."""
        if self.stability_slices <= 0 or not self.card.labels:
            return np.zeros(0, np.int64)
        fg = np.flatnonzero([bool(labels_c[i].any()) for i in range(labels_c.shape[0])])
        if fg.size == 0:
            return fg
        return fg[np.unique(np.linspace(0, fg.size - 1, min(self.stability_slices, fg.size)).round().astype(int))]

    def _stability_on(self, canon: np.ndarray, labels_c: np.ndarray, lo: float, hi: float,
                      spacing_hw: tuple[float, float], batch: int | None = None) -> dict[str, float]:
        """:meth:`stability` on exactly the given slices (raw ``canon`` (P, H, W), or their context stacks
        (P, C, H, W) (:meth:`_raw`), and their labels ``labels_c`` (P, H, W))."""
        labels = self.card.labels
        n_classes = self.card.n_classes
        n, hw = canon.shape[0], canon.shape[-2:]
        size = checked_working_size(hw, spacing_hw, self.card.input_spacing_mm)
        batch = batch or self.batch_for(hw, size)
        divisor = self.model.segmenter.divisor
        model_spacing = self.card.input_spacing_mm
        # a view that would enlarge the slice past the working-size limit is left out (huge slices only)
        views = [(k, a) for k, a in STABILITY_VIEWS if k != "scale" or np.prod(working_size(
            hw, (spacing_hw[0] * a, spacing_hw[1] * a), model_spacing)) <= MAX_WORKING_PIXELS]
        budget = max(batch * size[0] * size[1], STABILITY_FREE_PIXELS)  # pixels per batch (see the constant)
        confusion = torch.zeros((len(views), n_classes * n_classes), dtype=torch.int64)
        since_trim = 0
        with torch.inference_mode():
            for v, (kind, amount) in enumerate(views):
                sp = spacing_hw if kind == "gamma" else (spacing_hw[0] * amount, spacing_hw[1] * amount)
                vh, vw = working_size(hw, sp, model_spacing)
                chunk = batch if batch * vh * vw <= budget else max(1, budget // (vh * vw))
                shrink = min(1.0, math.sqrt(budget / (vh * vw)))  # < 1: one slice is over the budget: crop it
                for s in range(0, n, chunk):
                    idx = np.arange(s, min(n, s + chunk))
                    raw, lab = canon[idx], labels_c[idx]
                    if shrink < 1.0:
                        raw, lab = _crop_about_structures(raw, lab, shrink)
                    x, _ = self._to_device(raw, lo, hi)
                    if kind == "gamma":
                        x = x.clamp(min=0) ** amount
                    out = run_slices(self._forward, x, sp, model_spacing, divisor, self.amp,
                                     channels_last=self.channels_last, fixed_batch=chunk if self.compiled else None,
                                     offsets=self.offsets)
                    base = torch.from_numpy(np.ascontiguousarray(lab)).to(self.device).long().reshape(-1)
                    codes = base * n_classes + out.labels.reshape(-1).long()
                    confusion[v] += torch.bincount(codes, minlength=n_classes * n_classes).cpu()
                    if self.device.type == "cpu":  # as in the main pass: the heap would creep up otherwise
                        since_trim += out.labels.numel()
                        if since_trim >= TRIM_EVERY_PIXELS:
                            _trim_heap()
                            since_trim = 0
        m = confusion.reshape(len(views), n_classes, n_classes).double()
        inter = torch.diagonal(m, dim1=1, dim2=2)
        denom = m.sum(2) + m.sum(1)  # mask voxels + view voxels, per view and class
        out = {}
        for lab in labels:
            d = denom[:, lab.value]
            out[lab.name] = float((2 * inter[:, lab.value] / d).mean()) if bool((d > 0).all()) else float("nan")
        return out

    def predict(self, volume: Volume, *, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, return_probabilities: bool = False) -> SegmentationResult:
        """Segment ``volume``; returns labels, confidence, reliability and validity in its geometry.

        ``return_probabilities`` adds ``extra["probabilities"] = {"msp": ..., "entropy": ...}``, float32
        arrays in the volume's shape (max softmax probability; entropy in nats), for benchmarks. They are
        not JSON: drop them before :meth:`SegmentationResult.report`.

        A model with a source expert (:attr:`expert`) routes as :attr:`route` says (see :data:`ROUTES`; the
        default ``"auto"`` follows :meth:`route_in_use`). ``"style"``: the expert's encoders score the scan's style
        first; if its style manifold finds the scan in the training style and it is no CT, the expert
        segments it, and if its size check passes too its labels, confidence and reliability are the result;
        otherwise the robust GASE segmenter segments the scan. The
        validity verdict is always the GASE segmenter's. ``extra["source_expert"]`` says which was used.
        ``"expert"`` / ``"gase"`` makes that network segment every scan."""
        route = self.route_in_use()
        if self.expert is None or route == "gase":
            return self._predict(volume, progress, cancel, return_probabilities)[0]
        self.expert.stability_slices = self.stability_slices
        t0 = time.perf_counter()
        progress = progress or (lambda f, m: None)
        self._checked_slices(volume)
        # The expert's style verdict needs only its encoders (the same features as its full pass): a scan it
        # would decline on style or as a CT is segmented once, by the GASE segmenter (time and peak memory).
        progress(0.0, "source-style expert: checking the image style")
        ev, _ = self.expert._validity_pass(volume, float("nan"), cancel)
        res = stab_in = None
        start = 0.15
        if route == "expert" or (ev.style_valid and ev.modality_valid and ev.polarity_valid):
            res, stab_in = self.expert._predict(
                volume, lambda f, m: progress(0.15 + 0.45 * f, f"source-style expert: {m}"), cancel,
                return_probabilities, stability=False)
            ev, start = res.validity, 0.6  # now with the size check on what it segmented
        use = bool(ev.valid) or route == "expert"
        info = {"used": use, "style_score": round(float(ev.score), 4), "threshold": round(float(ev.threshold), 4),
                **({"route": route} if route == "expert" else {})}
        if not use:
            res = stab_in = None  # the expert's outputs (if any) go before this pass allocates its own,
            _trim_heap()          # and the heap pages its batches left go back to the OS (peak RSS)
            res = self._predict(volume, lambda f, m: progress(start + (1 - start) * f, m), cancel,
                                return_probabilities)[0]
        else:
            if stab_in is not None:
                progress(0.65, "checking stability")
                stab = self._guarded_stability(self.expert, stab_in)
                res.stability_per_label, res.stability_overall = stab, _finite_mean(stab.values())
            progress(0.8, "checking the input against the GASE style manifold")
            res.validity, res.extra["manifold"] = self._validity_pass(volume, ev.foreground_ml, cancel)
            res.validity = res.validity.with_stability(res.stability_overall)
            res.model_name = f"{self.card.name} {self.card.version}"
            res.device = self.device.type
            progress(1.0, "done")
        res.extra["source_expert"] = info
        res.seconds = time.perf_counter() - t0
        return res

    def route_in_use(self) -> str:
        """The route :meth:`predict` takes: :attr:`route`, or for ``"auto"`` the card's choice (``"gase"`` for
        models whose GASE segmenter was warm-started from the expert, see :func:`gase.training.loop.train`;
        ``"style"`` for the rest). Raises :class:`InputError` for an unknown route."""
        if self.route not in ROUTES:
            raise InputError(f"Unknown route {self.route!r}; use one of {', '.join(ROUTES)}.")
        if self.route != "auto":
            return self.route
        route = (self.card.source_expert or {}).get("route", "style")
        return route if route in ROUTES[1:] else "style"

    def _checked_slices(self, volume: Volume):
        """(reorientation, canonical view of the voxels) after the checks every input gets first."""
        if min(volume.shape) < 1 or volume.array.size == 0:
            raise InputError(f"The volume is empty (shape {volume.shape}).")
        if not (np.issubdtype(volume.array.dtype, np.number) or volume.array.dtype == bool) \
                or np.iscomplexobj(volume.array):
            raise InputError(f"Voxel type {volume.array.dtype} is not a real number; GASE needs a grey-scale "
                             "image (for complex MR data, segment the magnitude image).")
        reo = reorientation_for(volume, self.card.plane)
        canon = reo.forward(volume.array)
        if min(canon.shape[1:]) < 8:
            raise InputError(f"The slices in the model's {self.card.plane} plane are only "
                             f"{canon.shape[1]}x{canon.shape[2]} pixels; the image is too small or stored in "
                             "another plane than the model expects.")
        return reo, canon

    @staticmethod
    def _guarded_stability(predictor: "Predictor", stab_in: tuple) -> dict[str, float]:
        try:
            return predictor._stability_on(*stab_in)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory in the stability check: no stability for this volume")
            return {}

    def _predict(self, volume: Volume, progress: ProgressFn | None, cancel: CancelFn | None,
                 return_probabilities: bool, stability: bool = True) -> tuple[SegmentationResult, tuple | None]:
        """One network's :meth:`predict`. With ``stability=False`` the check is skipped and its inputs (the
        chosen raw slices and their labels before post-processing, ...) are returned for later; else None."""
        t0 = time.perf_counter()
        progress = progress or (lambda f, m: None)
        reo, canon = self._checked_slices(volume)
        n_slices = canon.shape[0]
        spacing_hw = reo.spacing[1:]
        size = checked_working_size(canon.shape[1:], spacing_hw, self.card.input_spacing_mm)
        lo, hi = self.normalization.intensity_range(volume.array, device=self.device)
        pinned = self.device.type == "cuda"
        labels_out = _host_array(volume.shape, np.uint8, pinned)  # every voxel is written below
        conf_out = _host_array(volume.shape, np.float32, pinned)
        labels_c, conf_c = reo.forward(labels_out), reo.forward(conf_out)  # views: write in place
        if return_probabilities:
            msp_out, ent_out = np.zeros(volume.shape, np.float32), np.zeros(volume.shape, np.float32)
            msp_c, ent_c = reo.forward(msp_out), reo.forward(ent_out)
        stats, writer = _BatchStats(self.card.n_classes), _HostWriter(self.device)
        divisor = self.model.segmenter.divisor
        s = since_trim = 0
        batch = self.batch_for(canon.shape[1:], size)
        progress(0.0, f"segmenting {n_slices} slices on {self.device.type}")
        while s < n_slices:
            if cancel is not None and cancel():
                writer.flush()  # no copy may still be running into arrays that are about to be dropped
                raise CancelledError("Segmentation cancelled by the user; no output was written.")
            e = min(n_slices, s + batch)
            try:
                with torch.inference_mode():
                    x, nonfinite = self._to_device(self._raw(canon, slice(s, e), reo.spacing[0]), lo, hi)
                    out = run_slices(self._forward, x, spacing_hw, self.card.input_spacing_mm, divisor, self.amp,
                                     keep_probs=return_probabilities, channels_last=self.channels_last,
                                     fixed_batch=batch if self.compiled else None, offsets=self.offsets)
                    stats.add(out, x, nonfinite)
            except torch.cuda.OutOfMemoryError:
                x = out = nonfinite = None
                torch.cuda.empty_cache()
                if batch > 1:
                    batch = max(1, batch // 2)
                    log.warning("CUDA out of memory: retrying with %d slices per batch", batch)
                    progress(s / n_slices, f"GPU out of memory: retrying with {batch} slices per batch")
                    continue
                message = "GPU out of memory even for one slice: continuing on the CPU (slower)"
                log.warning(message)
                progress(s / n_slices, message)
                writer.flush()
                self._use_cpu()
                batch = self.batch_for(canon.shape[1:], size)
                continue
            targets = [(out.labels, labels_c), (out.confidence, conf_c)]
            if return_probabilities:
                targets += [(out.msp, msp_c), (out.entropy, ent_c)]
            writer.write(s, e, targets)
            if self.device.type == "cpu":
                since_trim += (e - s) * size[0] * size[1]
                if since_trim >= TRIM_EVERY_PIXELS:
                    _trim_heap()
                    since_trim = 0
            s = e
            progress(s / n_slices, f"segmented {s}/{n_slices} slices")
        writer.flush()
        counts, sums, features, content, nonfinite = stats.result()
        if nonfinite:
            raise InputError(f"The image contains {nonfinite} NaN or infinite voxel values. Fix or mask them "
                             "(e.g. replace with 0) before segmenting.")
        pick = self._stability_pick(labels_c)
        stab_in = (self._raw(canon, pick, reo.spacing[0]), labels_c[pick], lo, hi, spacing_hw, batch) \
            if pick.size else None
        stab = {}
        if stability and stab_in is not None:
            progress(s / n_slices, "checking stability")
            stab = self._guarded_stability(self, stab_in)
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        # as the network segmented it: before the prior offsets and the post-processing (the size check's limit
        # was set on such masks; the offsets shrink what a model paints on another anatomy)
        foreground_ml = stats.network_foreground(counts) * voxel_ml
        removed, opening = {}, self.card.opening_mm
        for lab in self.card.largest_component_labels:  # learned from the training labels (gase.postprocess)
            n, c = keep_largest_component(labels_out, conf_out, lab.value)
            if lab.name in opening:  # then what hangs on it by a neck narrower than the learned ball
                n2, c2 = keep_opened_component(labels_out, conf_out, lab.value, opening[lab.name], volume.spacing[::-1])
                n, c = n + n2, c + c2
            if n:  # n voxels moved to background, their confidence c became 1 - c. The expected Dice's FN
                # (the label's probability on voxels not predicted as it) is left as it was: the rule's verdict
                # is final, so the removed voxels count as neither found nor missed.
                removed[lab.name] = n
                counts[lab.value] -= n
                counts[0] += n
                sums[0, lab.value] -= c
                sums[0, 0] += n - c
        conf_sum = sums[0]
        validity, manifold_extra = self._validity(features, content, volume, foreground_ml)
        per_label = {}
        for lab in self.card.labels:
            per_label[lab.name] = float(conf_sum[lab.value] / counts[lab.value]) if counts[lab.value] else float("nan")
        fg = counts[1:].sum()
        overall = float(conf_sum[1:].sum() / fg) if fg else float("nan")
        dice_per_label = expected_dice(counts, conf_sum, sums[1], sums[2], self.card.labels)
        dice_overall = _finite_mean(dice_per_label.values())
        progress(1.0, "done")
        extra = {"manifold": manifold_extra}
        if self.card.largest_component_labels:
            extra["postprocessing"] = {"kept_largest_component": [lab.name for lab in self.card.largest_component_labels],
                                       "opening_mm": opening,
                                       "removed_voxels": removed,
                                       "removed_ml": {k: round(n * voxel_ml, 3) for k, n in removed.items()}}
        if return_probabilities:
            extra["probabilities"] = {"msp": msp_out, "entropy": ent_out}
        return SegmentationResult(
            labels=Volume(labels_out, volume.ijk_to_ras.copy()), confidence=Volume(conf_out, volume.ijk_to_ras.copy()),
            label_table=self.card.labels, reliability_overall=overall, reliability_per_label=per_label,
            expected_dice_overall=dice_overall, expected_dice_per_label=dice_per_label,
            stability_overall=_finite_mean(stab.values()), stability_per_label=stab,
            validity=validity.with_stability(_finite_mean(stab.values())),  # (no stability: NaN, not checked)
            model_name=f"{self.card.name} {self.card.version}", device=self.device.type,
            seconds=time.perf_counter() - t0, extra=extra), (None if stability else stab_in)

    def _validity(self, features: np.ndarray, content: np.ndarray, volume: Volume,
                  foreground_ml: float) -> tuple[Validity, dict]:
        """The input-validity verdict from the slices' validity features (S, F) and content flags (S,), and
        the manifold coordinates for the report."""
        distances, emb2d = self.manifold.distances(features)
        slice_scores = distances.mean(axis=1)
        vscore = volume_score(slice_scores, np.asarray(content))
        threshold = float(self.card.validity["threshold"])
        trained_fg = self.card.validity.get("training_foreground_ml")
        validity = Validity(valid=False, score=vscore, threshold=threshold,
                            slice_scores=slice_scores, embedding_2d=emb2d, reference_2d=self.manifold.reference_2d,
                            distances_2d=distances, reference_distances=self.manifold.reference_distances,
                            foreground_ml=foreground_ml, ct_fraction=fraction_below(volume.array, CT_AIR_HU),
                            background_level=background_level(volume.array),
                            training_foreground_ml=None if trained_fg is None else float(trained_fg))
        validity.valid = (validity.style_valid and validity.size_valid and validity.modality_valid
                          and validity.polarity_valid)
        extra = {"embedding_2d": np.round(emb2d, 3).tolist(),
                 "reference_2d": np.round(self.manifold.reference_2d, 3).tolist(),
                 "distances_2d": np.round(distances, 3).tolist()}
        if self.manifold.reference_distances is not None:
            extra["reference_distances"] = np.round(self.manifold.reference_distances, 3).tolist()
        return validity, extra

    def _validity_pass(self, volume: Volume, foreground_ml: float,
                       cancel: CancelFn | None = None) -> tuple[Validity, dict]:
        """:meth:`_validity` from an encoder-only pass over ``volume`` (no decoder: the validity features come
        from the encoders). For a volume another network (the source expert) segmented."""
        reo = reorientation_for(volume, self.card.plane)
        canon = reo.forward(volume.array)
        spacing_hw = reo.spacing[1:]
        size = checked_working_size(canon.shape[1:], spacing_hw, self.card.input_spacing_mm)
        lo, hi = self.normalization.intensity_range(volume.array, device=self.device)
        batch = self.batch_for(canon.shape[1:], size)
        feats, content, s = [], [], 0
        while s < canon.shape[0]:
            if cancel is not None and cancel():
                raise CancelledError("Segmentation cancelled by the user; no output was written.")
            e = min(canon.shape[0], s + batch)
            try:
                with torch.inference_mode():
                    x, _ = self._to_device(self._raw(canon, slice(s, e), reo.spacing[0]), lo, hi)
                    f = slice_features(self.model, x, spacing_hw, self.card.input_spacing_mm,
                                       self.model.segmenter.divisor, self.amp, channels_last=self.channels_last)
                    xc = x[:, x.shape[1] // 2]
                    c = (xc > CONTENT_LEVEL).flatten(1).sum(1) > CONTENT_FRACTION * x.shape[-2] * x.shape[-1]
                    feats.append(f.cpu())
                    content.append(c.cpu())
            except torch.cuda.OutOfMemoryError:
                x = None
                torch.cuda.empty_cache()
                if batch == 1:
                    self._use_cpu()
                batch = max(1, batch // 2)
                continue
            s = e
        return self._validity(torch.cat(feats).numpy(), torch.cat(content).numpy(), volume, foreground_ml)
