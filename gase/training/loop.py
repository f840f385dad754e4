"""The alternating GASE training loop, its ERM / random-curve baselines, and model export.

Per iteration (``method="gase"``), on a batch of real labelled crops (x, y):

1. encode styles w = E(x); diversify them (interpolation/extrapolation, mapping-network samples);
   synthesise G(y, w') for the same labels; re-render real and synthetic images with random
   intensity curves (style extrapolation); mix real and synthetic (real-synthetic mixup);
2. update D: Dice+CE on real, synthetic, extrapolated and mixed images; hinge real/fake (image and
   pixel level); confidence BCE on all of them (features detached); Gaussian cutout on the inputs;
3. update E, M, G: reconstruction L1 of G(y, E(x)), adversarial, style-latent cycle E(G(y, w)) ~ w,
   label consistency (D must segment G(y, w) as y), diversity.

``erm`` trains only D's segmentation (+confidence) on standard augmentation; ``randcurve`` adds the
random curves to real images. Same backbone, crops, batch, learning rate and iterations for all three.
A ``gase`` run (``source_expert``, the default) also trains the ``erm`` run of the same settings as its
source expert (see :func:`train` and :meth:`gase.predictor.Predictor.predict`): first, and the GASE
segmenter starts from its weights (``warm_start``, the default since 2026-11-28). Benchmark, seed 0, 1000
iterations on the CPU (``benchmarks/run_cpu.sh``; unseen-style Dice with the expert routing both times):
knee 0.783 -> 0.829, pelvis 0.615 -> 0.713, source style unchanged (the expert segments it). Since
2026-12-05 a warm-started model's GASE segmenter segments every scan (card ``source_expert.route``; new
subjects, data seed 1: unseen knee 0.805 either way, pelvis 0.737 -> 0.754, knee source 0.885 -> 0.873).

Options of the GASE method, off by default: ``gen_content`` (G also sees a style-scrambled copy of the
image, so unlabelled anatomy keeps its shape), ``feature_style_prob`` (style interpolation/extrapolation
of shallow feature statistics in D) and ``w_consistency`` (agreement across style views). One seed each,
knee, 300 iterations on one CPU thread, mean unseen-style Dice: none 0.46; gen_content 0.34; gen_content
+ w_consistency 0.5: 0.35; all three (0.5, 1.0): 0.36. The feature mixing and the consistency were not
measured without gen_content. ``curve_flatten`` (2026-12-05) squeezes a class's random curve towards one level
(:func:`gase.training.augment.flatten_luts`): fat suppression makes marrow as dark as cortex, and the knee
models then label the cartilage voxel next to the cortex as bone (benchmark, data seed 1: tibial cartilage
0.75 Dice on PD FSE, 0.41 on the same protocol with fat saturation alone, 0.75 on PD FSE at the fat-suppressed
styles' geometry). Measured by fine-tuning the data-seed-1 benchmark GASE models for 300 iterations (lr 2e-3,
synthetic views from the start; 2 new subjects per style, canonical slices), without -> with 0.5: knee tibial
cartilage PD-FS 0.271 -> 0.354, FLASH-WE 0.339 -> 0.398 (style means +0.03 / +0.02, PD FSE -0.009); pelvis
means -0.014 (T2 FSE), -0.019 (PD-FS), -0.002 (STIR), -0.005 (Dixon). Not adopted: no net gain over both
anatomies. ``gin_prob`` (2026-12-05) re-renders that share of the curve and synthetic views by random shallow
conv networks (:func:`gase.training.augment.random_shallow_conv`, GIN); the same fine-tuning with 0.5: knee
PD FSE +0.008, T2 FSE +0.011, PD-FS and FLASH-WE +0.002 / +0.001 (tibial cartilage 0.269 / 0.338: no help
where the knee fails); pelvis -0.012 (T2 FSE), -0.017 (PD-FS), -0.022 (STIR), -0.019 (Dixon). Not adopted.
``fatsat_prob`` (default 0.5 since 2026-12-05): that share of the curve and synthetic views starts from the
image with its brightest tissue suppressed (:func:`gase.training.augment.suppress_bright`: what fat saturation,
water excitation or STIR does to fat and fatty marrow, without labels), half of them without a curve after it.
The same fine-tuning (3 subjects per style from a seed stream of their own, 150, not the test set), control
-> 0.5: knee PD-FS 0.664 -> 0.712, FLASH-WE 0.648 -> 0.684 (tibial cartilage 0.34 -> 0.51, 0.36 -> 0.48),
unseen mean 0.760 -> 0.779, source 0.855 -> 0.865; on fat-suppressed styles outside the benchmark's (held out
from the choice) DESS 0.548 -> 0.606, STIR 0.636 -> 0.718, T2* GRE 0.820 -> 0.834; pelvis unseen mean 0.750 ->
0.747 (STIR 0.746 -> 0.729, PD-FS 0.686 -> 0.693), source 0.829 -> 0.831, opposed-phase GRE and 3 T T2 0.766
-> 0.767. ``python -m benchmarks.dg_probe --init <run>/models/<a>-gase/training/checkpoint.pt --data-seed 1
--iterations 300 --test-subjects 3 --eval-stream 150 --set lr=0.002 --set gen_warmup=0 --set seed=5``
(``--set fatsat_prob=0`` for the control; --extra-styles dess stir gre_t2star / t1_gre_opposed t2_3t).
Then the benchmark (data seed 1, GASE trained anew, the same ERM and peer; ``benchmarks/results/cpu-1000-data1``
-> ``cpu-1000-data1-fatsat``): knee unseen 0.805 -> 0.839 (PD-FS 0.724 -> 0.817, FLASH-WE 0.716 -> 0.789),
source 0.873 -> 0.880; pelvis unseen 0.754 -> 0.770 (STIR 0.685 -> 0.726), source 0.853 -> 0.871. More of
them, 0.8 against 0.5 (6 Dec; the same fine-tuning, from those new models: ``--init
benchmarks/results/cpu-1000-data1-fatsat/<a>/models/<a>-gase/training/checkpoint.pt --set fatsat_prob=0.8``; JSONs
in ``benchmarks/results/cpu-1000-data1-pp/logs/probes/``): knee unseen 0.796 -> 0.800, pelvis 0.748 -> 0.742.
Not adopted.
``organ_warp_prob`` (6 Dec, off): that share of GASE's crops has one structure grown or shrunk (0.7-1.35)
within its surroundings, image and labels alike (:func:`gase.training.augment.organ_warp`), aimed at the
pelvis-2000 model drawing the prostate at its training size (small glands twice too large, with a
confidence that does not see it). GASE trained anew with 0.5 (2000 iterations, data seed 1, the same ERM
expert and peer: ``REUSE=1 RETRAIN=gase ANATOMIES=pelvis DATA_SEED=1 ITERATIONS=2000 bash
benchmarks/run_cpu.sh DIR``, 5835 s of GASE training), judged on stream 150 (6 subjects per style, not the
test set: ``python -m benchmarks.diagnose DIR/pelvis/models/pelvis-gase --stream 150 --subjects 6
--reliability``), without -> with: prostate predicted/true voxels 1.78 -> 1.64, prostate Dice up in every
style (t2_fse 0.714 -> 0.716, STIR 0.753 -> 0.799), unseen mean 0.866 -> 0.872, source 0.911 = 0.911; but
the ranking it was for did not move: Spearman(quality, Dice) per volume 0.70 -> 0.66 (prostate -0.14 ->
-0.18; expected Dice 0.72 -> 0.75). Not adopted: a Dice gain inside the seed spread, and no gain on the ranking.
``w_syn_seg`` weighs the synthetic and mixed views in D's segmentation
loss against the real and curve views.

Defaults since 2026-11-28: ``syn_fraction`` 0.5 (synthetic and mixed views for half the crops of the
batch), ``w_syn_seg`` 0.3, ``adv_detach`` (D's real/fake heads train on detached features, so the
adversarial game does not reshape the segmentation features; the generator still gets its gradient
through the whole of D). Knee, 1000 iterations, one CPU thread, ``python -m benchmarks.dg_probe``
(2 test subjects per style): old defaults (1.0, 1.0, off) source 0.692, unseen mean 0.622, 3702 s;
new defaults source 0.752, unseen 0.689, 2959 s; the random-curve peer in the same probe 0.832 / 0.751.
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..context import Context
from ..errors import CancelledError, ModelError, TrainingDataError
from ..fsutil import save_tensors
from ..labels import LabelInfo
from ..model_card import ModelCard, attach_source_expert, load_card, load_tensors, prefixed, write_card
from ..nets import MappingNetwork, SegDiscriminator, StyleEncoder, StyleGenerator
from ..postprocess import fit_postprocessing
from ..preprocess import Normalization, pad_to_multiple
from ..predictor import Predictor, resolve_device
from ..validity import largest_foreground_ml
from ..volume import Volume
from .augment import (FeatureStyleMix, diversify_styles, gaussian_cutout, global_curve, random_curves,
                      organ_warp, random_shallow_conv, standard_augment, suppress_bright)
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from . import distributed  # [ddp]
from .data import MIN_TRAIN_VOLUMES, SliceSet, sampling_prior_offsets
from .validity_fit import fit_validity, refit_validity
from .losses import confidence_loss, d_hinge, diversity_loss, g_hinge, make_seg_loss, view_consistency

EventFn = Callable[[dict], None]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class TrainState:
    iteration: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    best_val_dice: float = float("nan")


class Trainer:
    """Owns the four networks, their optimisers and one training run."""

    def __init__(self, cfg: TrainConfig, table: Sequence[LabelInfo], n_classes: int):
        self.cfg = cfg.validate()
        self.table = tuple(table)
        self.n_classes = n_classes
        self.device = resolve_device(cfg.device)
        self.gen = seed_everything(cfg.seed)
        self.seg = SegDiscriminator(n_classes, tuple(cfg.segmenter_channels),
                                    in_channels=cfg.context_slices).to(self.device)
        self.centre = cfg.context_slices // 2  # the channel of the slice being segmented
        if cfg.context_slices > 1:
            start_as_2d(self.seg)
        self.enc = StyleEncoder(cfg.style_dim).to(self.device)
        self.G = StyleGenerator(n_classes, cfg.style_dim, content_channels=int(cfg.gen_content)).to(self.device)
        self.M = MappingNetwork(cfg.z_dim, cfg.style_dim).to(self.device)
        self.opt_d = torch.optim.AdamW(self.seg.parameters(), lr=cfg.lr, weight_decay=1e-4)
        self.opt_g = torch.optim.Adam(list(self.G.parameters()) + list(self.M.parameters()) + list(self.enc.parameters()),
                                      lr=cfg.lr_gen, betas=(0.5, 0.99))
        self.seg_loss = make_seg_loss()
        self.amp = cfg.amp and self.device.type == "cuda"
        self.state = TrainState()
        self.dist = distributed.context().attach(self)  # [ddp] rank 0's weights, per-rank random streams

    # -- one iteration -------------------------------------------------------------------------
    def _layout(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """G's layout input for labels ``y`` (B, C, H, W) and images ``x`` (B, C, H, W): the one-hot labels, plus
        (``gen_content``) a freshly style-scrambled copy of x, per slice of the stacks: (B * C, K (+1), H, W)."""
        b, c, h, w = y.shape
        yoh = F.one_hot(y, self.n_classes).permute(0, 1, 4, 2, 3).reshape(b * c, self.n_classes, h, w).float()
        if not self.cfg.gen_content:
            return yoh
        return torch.cat([yoh, global_curve(x.clamp(0, 1), self.gen).reshape(b * c, 1, h, w)], 1)

    def _render(self, layout: torch.Tensor, w: torch.Tensor, c: int) -> torch.Tensor:
        """G's images (B, C, H, W) of the :meth:`_layout` of stacks of C slices, each stack in its style w (B, D)."""
        out = self.G(layout, w.repeat_interleave(c, 0) if c > 1 else w)
        return out.reshape(w.shape[0], c, *out.shape[-2:])

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): the slice being segmented, out of stacks (B, C, H, W); what the style encoder reads."""
        return x if x.shape[1] == 1 else x[:, self.centre:self.centre + 1]

    def _gin(self, views: torch.Tensor) -> torch.Tensor:
        """``gin_prob`` of ``views`` re-rendered by random shallow conv networks, the others as they were."""
        pick = (torch.rand(views.shape[0], generator=self.gen) < self.cfg.gin_prob).to(views.device)
        return torch.where(pick[:, None, None, None], random_shallow_conv(views, self.gen), views)

    def _curve_view(self, x: torch.Tensor, y: torch.Tensor, flatten: float) -> torch.Tensor:
        """Random-curve views of ``x``; with ``fatsat_prob`` (GASE) that share of the crops starts from the image
        with its brightest tissue suppressed (:func:`suppress_bright`), and half of those keep that rendering
        without a curve (a fat-suppressed scan of the source protocol)."""
        if self.cfg.fatsat_prob <= 0 or self.cfg.method != "gase":
            return random_curves(x, y, self.n_classes, self.gen, flatten_prob=flatten)
        n, g = x.shape[0], self.gen
        pick = (torch.rand(n, generator=g) < self.cfg.fatsat_prob).to(x.device)[:, None, None, None]
        plain = (torch.rand(n, generator=g) < 0.5).to(x.device)[:, None, None, None]
        x_src = torch.where(pick, suppress_bright(x.clamp(0, 1), g), x)
        curved = random_curves(x_src, y, self.n_classes, g, flatten_prob=flatten)
        return torch.where(pick & plain, x_src, curved)

    def _lr_factor(self) -> float:
        """Cosine decay to 5% over the iteration budget."""
        t = min(1.0, self.state.iteration / max(1, self.cfg.iterations))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        cfg, g = self.cfg, self.gen
        for group in self.opt_d.param_groups:
            group["lr"] = cfg.lr * self._lr_factor()
        x, y = x.to(self.device), y.to(self.device)
        x, y = standard_augment(x, y, g)
        if cfg.method == "gase" and cfg.organ_warp_prob > 0:
            x, y = organ_warp(x, y, g, cfg.organ_warp_prob)
        y_ctx = y[:, None] if y.dim() == 3 else y  # every slice's labels (B, C, H, W), for the style renderings
        y = y_ctx[:, self.centre]                  # the target: the labels of the slice being segmented
        c = y_ctx.shape[1]
        b = x.shape[0]
        losses: dict[str, float] = {}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            inputs, targets = [x], [y]
            x_syn = None
            flatten = cfg.curve_flatten if cfg.method == "gase" else 0.0  # the peer keeps the published recipe
            if cfg.method in ("randcurve", "gase"):
                inputs.append(self._curve_view(x, y_ctx, flatten))
                if cfg.method == "gase" and cfg.gin_prob > 0:
                    inputs[-1] = self._gin(inputs[-1])
                targets.append(y)
            # GASE's synthetic views join once G has had a warm-up (before that G only draws label-coloured
            # blobs; they cost compute and teach D nothing); G itself trains from the first iteration.
            use_syn = cfg.method == "gase" and self.state.iteration >= cfg.gen_warmup * cfg.iterations
            if use_syn:
                ns = max(1, int(round(cfg.syn_fraction * b)))  # the first ns crops of the batch get synthetic views
                xs, ys, ys_ctx = x[:ns], y[:ns], y_ctx[:ns]
                yoh = self._layout(ys_ctx, xs)
                with torch.no_grad():
                    w = self.enc(self._centre(xs))
                    w_div = diversify_styles(w, self.M(torch.randn(ns, cfg.z_dim, generator=g).to(self.device)), g,
                                             cfg.extrapolation)
                    x_syn = self._render(yoh, w_div, c).float().clamp(-0.2, 1.2)
                curved = self._curve_view(x_syn.clamp(0, 1), ys_ctx, flatten)
                pick = (torch.rand(ns, generator=g) < cfg.curve_prob).to(self.device)[:, None, None, None]
                x_syn_div = torch.where(pick, curved, x_syn)
                if cfg.gin_prob > 0:
                    x_syn_div = self._gin(x_syn_div)
                lam = torch.rand(ns, 1, 1, 1, generator=g).to(self.device)
                x_mix = lam * inputs[1][:ns] + (1 - lam) * x_syn_div
                inputs += [x_syn_div, x_mix]
                targets += [ys, ys]
            xin = torch.cat(inputs)
            yin = torch.cat(targets)
            xin = gaussian_cutout(xin, g, cfg.cutout_prob)
            fstyle = None
            if cfg.method == "gase" and cfg.feature_style_prob > 0:
                # the real view (first b) keeps its statistics: real/fake and source accuracy stay anchored
                fstyle = FeatureStyleMix(xin.shape[0], g, cfg.feature_style_prob, cfg.extrapolation_feature,
                                         self.device, keep_first=b)
            out = self.seg(xin, heads="train" if use_syn else "infer", feature_style=fstyle,
                           detach_adv=cfg.adv_detach)
            if use_syn and cfg.w_syn_seg != 1.0:  # real + curve views, then the synthetic and mixed views
                n_real = 2 * b
                l_seg = (self.seg_loss(out.logits[:n_real].float(), yin[:n_real, None]) +
                         cfg.w_syn_seg * self.seg_loss(out.logits[n_real:].float(), yin[n_real:, None])) / \
                    (1.0 + cfg.w_syn_seg)
            else:
                l_seg = self.seg_loss(out.logits.float(), yin[:, None])
            l_conf = confidence_loss(out.conf_logit.float(), out.logits.float(), yin)
            loss_d = l_seg + cfg.w_conf * l_conf
            losses.update(seg=float(l_seg.detach()), conf=float(l_conf.detach()))
            if cfg.method == "gase" and cfg.w_consistency > 0 and len(inputs) > 1:
                l_cons = view_consistency(out.logits.float(), len(inputs))
                loss_d = loss_d + cfg.w_consistency * l_cons
                losses["cons"] = float(l_cons.detach())
            if use_syn:
                fake_out = self.seg(x_syn, heads="train", detach_adv=cfg.adv_detach)
                real_img, real_pix = out.fake_image[:b], out.fake_pixel[:b]
                l_adv_d = d_hinge(real_img.float(), fake_out.fake_image.float()) + \
                    d_hinge(real_pix.float(), fake_out.fake_pixel.float())
                loss_d = loss_d + cfg.w_adv * l_adv_d
                losses["adv_d"] = float(l_adv_d.detach())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.dist.average_gradients(self.seg)  # [ddp]
        torch.nn.utils.clip_grad_norm_(self.seg.parameters(), cfg.grad_clip)
        self.opt_d.step()

        if cfg.method == "gase" and self.state.iteration % cfg.gen_every == 0:
            losses.update(self._generator_step(x, y_ctx))
        self.state.iteration += 1
        return losses

    def _generator_step(self, x: torch.Tensor, y_ctx: torch.Tensor) -> dict[str, float]:
        """``x`` (B, C, H, W) and every slice's labels ``y_ctx`` (B, C, H, W). G learns on the centre slices; with
        context, D judges and segments stacks whose neighbouring slices G renders in the same style without
        gradients (a G step of batch 8, 128 px, 3 slices, one CPU thread: 2.4 s, against 6.2 s with gradients
        through every slice and 1.8 s for one slice)."""
        cfg, g, b, c = self.cfg, self.gen, x.shape[0], y_ctx.shape[1]
        y = y_ctx[:, self.centre]
        xc = self._centre(x)
        yoh = self._layout(y_ctx[:, self.centre:self.centre + 1], xc)
        for p in self.seg.parameters():
            p.requires_grad_(False)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            w = self.enc(xc)
            x_rec = self.G(yoh, w)
            l_rec = (x_rec.float() - xc).abs().mean()
            z = torch.randn(b, cfg.z_dim, generator=g).to(self.device)
            w_div = diversify_styles(w.detach(), self.M(z), g, cfg.extrapolation)
            x_fake = self.G(yoh, w_div)
            x_stack = x_fake
            if c > 1:
                around = [i for i in range(c) if i != self.centre]
                with torch.no_grad():
                    x_nb = self._render(self._layout(y_ctx[:, around], x[:, around]), w_div, c - 1)
                x_stack = torch.cat([x_nb[:, :self.centre].to(x_fake.dtype), x_fake,
                                     x_nb[:, self.centre:].to(x_fake.dtype)], 1)
            out = self.seg(x_stack, heads="train")
            l_adv = g_hinge(out.fake_image.float()) + g_hinge(out.fake_pixel.float())
            l_gseg = F.cross_entropy(out.logits.float(), y)
            l_cycle = (self.enc(x_fake).float() - w_div.detach().float()).abs().mean()
            # diversity between the diversified and the reconstructed image: no extra generator pass
            l_div = diversity_loss(x_fake.float(), x_rec.float(), w_div.float(), w.detach().float())
            loss = cfg.w_rec * l_rec + cfg.w_adv * l_adv + cfg.w_gen_seg * l_gseg + cfg.w_cycle * l_cycle + \
                cfg.w_div * l_div
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.G, self.M, self.enc)  # [ddp]
        torch.nn.utils.clip_grad_norm_(list(self.G.parameters()) + list(self.M.parameters()) +
                                       list(self.enc.parameters()), 5.0)
        self.opt_g.step()
        for p in self.seg.parameters():
            p.requires_grad_(True)
        return {k: float(v.detach()) for k, v in
                (("rec", l_rec), ("adv_g", l_adv), ("gen_seg", l_gseg), ("cycle", l_cycle), ("div", l_div))}

    # -- evaluation helpers ----------------------------------------------------------------------
    @torch.no_grad()
    def forward_slices(self, images: torch.Tensor, batch: int = 16,
                       offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canonical slices (S, H, W) at model spacing, or their context stacks (S, C, H, W) for a model with
        context (:meth:`SliceSet.inputs`) -> logits argmax (S, H, W), conf logits (S, H, W), validity features
        (S, F); all on the CPU. ``offsets`` (K,): prior offsets added to the logits before the argmax, as the
        predictor adds the card's (:func:`gase.predictor.run_slices`)."""
        self.seg.eval(), self.enc.eval()
        labs, confs, feats = [], [], []
        for s in range(0, images.shape[0], batch):
            x = images[s:s + batch]
            x = (x[:, None] if x.dim() == 3 else x).float().to(self.device)
            xp, (h, w) = pad_to_multiple(x, self.seg.divisor)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.seg(xp)
                style = self.enc(self._centre(xp))
            logits = out.logits[..., :h, :w].float()
            if offsets is not None:
                logits = logits + offsets.to(logits.device).reshape(1, -1, 1, 1)
            labs.append(logits.max(1).indices.cpu())  # argmax's first-maximum rule, several times faster on the CPU
            confs.append(out.conf_logit[:, 0, :h, :w].float().cpu())
            feats.append(torch.cat([style, out.features], 1).float().cpu())
        self.seg.train(), self.enc.train()
        return torch.cat(labs), torch.cat(confs), torch.cat(feats)

    def dice_on(self, sset: SliceSet) -> dict[str, float]:
        """Mean Dice per label over the volumes of ``sset`` (computed per volume at model spacing)."""
        per_label: dict[str, list[float]] = {t.name: [] for t in self.table}
        for images, labels in zip(sset.inputs(), sset.labels):
            pred, _, _ = self.forward_slices(images)
            for t in self.table:
                p, r = pred == t.value, labels == t.value
                denom = int(p.sum() + r.sum())
                if int(r.sum()) > 0:
                    per_label[t.name].append(2.0 * int((p & r).sum()) / max(1, denom))
        out = {k: float(np.mean(v)) for k, v in per_label.items() if v}
        out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
        return out

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seg": self.seg.state_dict(), "enc": self.enc.state_dict(), "G": self.G.state_dict(),
                "M": self.M.state_dict(), "opt_d": self.opt_d.state_dict(), "opt_g": self.opt_g.state_dict(),
                "iteration": self.state.iteration, "seconds": self.state.seconds,
                "history": json.dumps(self.state.history), "rng": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "config": json.dumps(self.cfg.to_json())}

    def load_state_dict(self, sd: dict) -> None:
        self.seg.load_state_dict(sd["seg"])
        self.enc.load_state_dict(sd["enc"])
        self.G.load_state_dict(sd["G"])
        self.M.load_state_dict(sd["M"])
        self.opt_d.load_state_dict(sd["opt_d"])
        self.opt_g.load_state_dict(sd["opt_g"])
        self.state.iteration = int(sd["iteration"])
        self.state.seconds = float(sd["seconds"])
        self.state.history = json.loads(sd["history"])
        self.gen.set_state(sd["rng"])
        torch.set_rng_state(sd["torch_rng"])


@dataclass
class TrainResult:
    model_folder: Path
    iterations: int
    seconds: float
    val_dice: dict[str, float]
    card: ModelCard


def train(train_pairs: Sequence[tuple[Volume, np.ndarray, str]], val_pairs: Sequence[tuple[Volume, np.ndarray, str]],
          table: Sequence[LabelInfo], out_dir: Path, cfg: TrainConfig, *, anatomy: str, plane: str,
          name: str = "gase-model", title: str | None = None, on_event: EventFn | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = True,
          extra_card: dict | None = None, source_expert_from: Path | None = None,
          init_segmenter: Path | None = None) -> TrainResult:
    """Train on checked pairs (see :func:`gase.training.data.load_pairs`) and write a model folder.

    ``out_dir/training/`` receives ``checkpoint.pt`` during training (resumed from when present and
    ``resume``) and ``training_log.csv``; ``out_dir`` itself receives at the end the model folder files (``model.json`` + safetensors).
    ``on_event`` receives dicts: ``{"event": "progress" | "validation" | "checkpoint" | "done", ...}``.
    ``should_stop()`` returning True stops after the current iteration, writing a checkpoint (resumable).

    ``method="gase"`` with ``source_expert`` (the default) also trains the source expert: the same run with
    ``method="erm"`` (the segmenter alone, standard augmentation; same data, seed, iterations), in
    ``out_dir/training/source-expert/``, and attaches it to the model (see :meth:`gase.predictor.Predictor.predict`).
    Its events carry ``"phase": "source expert"``. With ``warm_start`` (the default) the expert trains first and
    the GASE segmenter starts from its weights (``init_segmenter``: a model folder whose segmenter has this
    architecture; fresh optimiser, the same schedule). With ``max_minutes`` the expert gets 20% of the time and
    the GASE run the rest (the expert needs about a quarter of GASE's time per iteration). ``source_expert_from``: the
    folder of an ``erm`` model already trained with these settings on these pairs (benchmarks train one
    anyway: the same weights, training is deterministic on the CPU) to attach instead of training it again.
    """
    emit = on_event or (lambda e: None)
    out_dir = Path(out_dir)
    if cfg.method == "gase" and cfg.source_expert:
        t0 = time.perf_counter()
        gase_cfg = replace(cfg, max_minutes=None if cfg.max_minutes is None else 0.8 * cfg.max_minutes)
        # the share of the whole training each phase is (for progress bars): the expert needs about a quarter
        # of GASE's time per iteration; with warm_start it runs first
        expert_share = 0.0 if source_expert_from is not None else 0.2
        spans = {"source expert": (0.0, expert_share) if cfg.warm_start else (1.0 - expert_share, expert_share),
                 "gase": (expert_share, 1.0 - expert_share) if cfg.warm_start else (0.0, 1.0 - expert_share)}

        def phase(label: str, renamed: tuple[str, ...]) -> EventFn:
            """Events of one phase, tagged with its name and ``phase_span`` [start, share] of the whole training;
            ``renamed`` kinds become "phase <kind>" (a phase's "done" is not the end of the training; the
            expert's checkpoints and validations are not GASE's)."""
            return lambda e: emit({**e, "phase": label, "phase_span": list(spans[label]),
                                   **({"event": f"phase {e.get('event')}"} if e.get("event") in renamed else {})})

        expert_seconds = 0.0

        def train_expert() -> None:
            nonlocal source_expert_from, expert_seconds
            if source_expert_from is not None:
                return
            # every rank trains it ([ddp]: the ranks must meet in the same runs)
            left = None if cfg.max_minutes is None else max(0.5, cfg.max_minutes * (0.2 if cfg.warm_start else 1.0)
                                                            - (time.perf_counter() - t0) / 60)
            expert_cfg = replace(cfg, method="erm", source_expert=False, warm_start=False, max_minutes=left)
            expert = train(train_pairs, val_pairs, table, out_dir / "training" / "source-expert", expert_cfg,
                           anatomy=anatomy, plane=plane, name=f"{name}-source-expert",
                           on_event=phase("source expert", ("done", "resumed", "checkpoint", "validation")),
                           should_stop=should_stop, resume=resume)
            source_expert_from, expert_seconds = expert.model_folder, expert.seconds

        if cfg.warm_start:  # the expert first: the GASE segmenter starts from its weights
            train_expert()
            if cfg.max_minutes is not None:
                gase_cfg = replace(gase_cfg, max_minutes=max(0.5, cfg.max_minutes - (time.perf_counter() - t0) / 60))
        result = train(train_pairs, val_pairs, table, out_dir, replace(gase_cfg, source_expert=False), anatomy=anatomy,
                       plane=plane, name=name, title=title, on_event=phase("gase", ("done",)), should_stop=should_stop,
                       resume=resume, extra_card=extra_card,
                       init_segmenter=source_expert_from if cfg.warm_start else None)
        train_expert()
        if result.card is None:  # [ddp] ranks other than 0 export nothing
            return result
        # a warm-started GASE segmenter has learnt what the expert knows of the training style and segments every
        # scan (found on the seed-0 benchmark, expert-routed styles: pelvis 0.780 -> 0.846 source, 0.616 -> 0.794
        # T1 SE, knee within 0.01; checked on new subjects, data seed 1: pelvis unseen 0.737 -> 0.754, knee
        # unseen equal, knee source -0.012); without warm start the expert keeps the training style ("style")
        attach_source_expert(out_dir, source_expert_from, route="gase" if cfg.warm_start else "style")
        # the expert's copy of its manifold becomes a strict router (see gase.training.validity_fit)
        device = result.card.training.get("device", "cpu")
        refit_validity(out_dir, train_pairs, val_pairs, segmenter=False, device=device)
        card = load_card(out_dir)
        card.training["config"] = cfg.to_json()  # the settings asked for (the GASE run had source_expert off)
        write_card(card, out_dir)
        val_dice = _validation_dice(out_dir, val_pairs, table, device)
        if val_dice:
            other = {"validation_dice_without_expert": result.val_dice} if not cfg.warm_start else \
                {"validation_dice_style_route": _validation_dice(out_dir, val_pairs, table, device, route="style")}
            card.metrics = {**card.metrics, "validation_dice": val_dice, **other}
            write_card(card, out_dir)
        emit({"event": "done", "model_folder": str(out_dir), "val_dice": val_dice, "iterations": result.iterations,
              "seconds": result.seconds + expert_seconds})
        return TrainResult(out_dir, result.iterations, result.seconds + expert_seconds, val_dice or result.val_dice,
                           card)
    if len(train_pairs) < MIN_TRAIN_VOLUMES:
        raise TrainingDataError(f"Training needs at least {MIN_TRAIN_VOLUMES} labelled volumes besides validation; "
                                f"got {len(train_pairs)}. Add labelled scans or lower --val-fraction.")
    n_classes = max(t.value for t in table) + 1
    spacing = cfg.input_spacing_mm or _median_inplane_spacing([p[0] for p in train_pairs], plane)
    context = training_context(cfg, [p[0] for p in train_pairs], plane)
    norm = Normalization()
    train_set = SliceSet.build(train_pairs, plane, spacing, norm, context)
    val_set = SliceSet.build(val_pairs, plane, spacing, norm, context) if val_pairs else None
    trainer = Trainer(cfg, table, n_classes)
    emit = trainer.dist.main_only(emit)  # [ddp] only rank 0 reports
    work_dir = out_dir / "training"  # checkpoint + log; the model files stay at the top of out_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        sd = load_checkpoint(work_dir)
        if sd is not None:
            trainer.load_state_dict(sd)
            emit({"event": "resumed", "iteration": trainer.state.iteration})
    # not when resuming a started run; [ddp] rank 0 loads (it wrote the expert), after_resume gives all ranks its copy
    if init_segmenter is not None and trainer.state.iteration == 0 and trainer.dist.is_main:
        _init_segmenter(trainer, Path(init_segmenter))
        emit({"event": "warm start", "from": str(init_segmenter)})
    trainer.dist.after_resume(trainer)  # [ddp] same iteration on all ranks, per-rank random streams
    log_path = work_dir / "training_log.csv"
    t_start = time.perf_counter() - trainer.state.seconds
    stopped = False
    while trainer.state.iteration < cfg.iterations:
        if trainer.dist.any_rank(should_stop is not None and should_stop()):  # [ddp] all ranks stop together
            stopped = True
            break
        if trainer.dist.any_rank(cfg.max_minutes is not None and  # [ddp]
                                 time.perf_counter() - t_start > 60 * cfg.max_minutes):
            break
        x, y = train_set.sample(trainer.gen, trainer.dist.local_batch(cfg.batch_size), cfg.crop,  # [ddp] per rank
                                mode=cfg.crop_sampling, margin_prob=margin_share(cfg))
        losses = trainer.step(x, y)
        losses = trainer.dist.mean_scalars(losses)  # [ddp]
        it = trainer.state.iteration
        elapsed = time.perf_counter() - t_start
        trainer.state.seconds = elapsed
        row = {"iteration": it, "seconds": round(elapsed, 2), **{k: round(v, 5) for k, v in losses.items()}}
        if it % 10 == 0 or it == cfg.iterations:
            eta = elapsed / it * (cfg.iterations - it) if it else float("nan")
            if cfg.max_minutes is not None:
                eta = min(eta, max(0.0, 60 * cfg.max_minutes - elapsed))
            emit({"event": "progress", "iteration": it, "total": cfg.iterations, "seconds": elapsed, "eta_s": eta,
                  "losses": losses})
        if val_set is not None and trainer.dist.is_main and (it % cfg.val_every == 0 or it == cfg.iterations):  # [ddp]
            dice = trainer.dice_on(val_set)
            row["val_dice"] = round(dice["mean"], 4)
            emit({"event": "validation", "iteration": it, "dice": dice})
        trainer.state.history.append(row)
        if it % cfg.checkpoint_every == 0 and trainer.dist.is_main:  # [ddp]
            save_checkpoint(trainer.state_dict(), work_dir)
            emit({"event": "checkpoint", "iteration": it})
    trainer.dist.verify_in_sync(trainer)  # [ddp]
    if trainer.dist.is_main:  # [ddp] only rank 0 writes
        save_checkpoint(trainer.state_dict(), work_dir)
        _write_log(log_path, trainer.state.history)
    if stopped:
        emit({"event": "stopped", "iteration": trainer.state.iteration})
        raise CancelledError(f"Training stopped at iteration {trainer.state.iteration}; resume from {out_dir}.")
    if not trainer.dist.is_main:  # [ddp] rank 0 exports the model folder; the other ranks only trained
        return TrainResult(out_dir, trainer.state.iteration, trainer.state.seconds, {}, None)  # type: ignore[arg-type]
    extra_card = dict(extra_card or {})
    if "postprocessing" not in extra_card:
        extra_card["postprocessing"] = fit_postprocessing(
            [(lab, vol.spacing[::-1]) for vol, lab, _ in [*train_pairs, *val_pairs]], table)
        extra_card["postprocessing"].update(prior_entry(train_set, table, cfg.crop, cfg.crop_sampling,
                                                        margin_share(cfg)))
    return _export(trainer, train_set, val_set, val_pairs, table, out_dir, cfg, anatomy=anatomy, plane=plane,
                   context=context,
                   spacing=spacing, norm=norm, name=name, title=title, emit=emit, extra_card=extra_card,
                   foreground_ml=largest_foreground_ml([*train_pairs, *val_pairs]))


def prior_entry(train_set: SliceSet, table: Sequence[LabelInfo], crop: int, mode: str, margin: float = 0.0) -> dict:
    """The card's ``postprocessing.prior_offsets`` (label name -> logit offset) undoing the crop sampling's
    class prior (:func:`gase.training.data.sampling_prior_offsets`; ``margin``: the margin crops' share), with the
    rule in words."""
    offsets = sampling_prior_offsets(train_set, crop, mode, margin_prob=margin)
    margins = f" ({margin:g} of the structure crops past a structure's end)" if margin else ""
    return {"prior_offsets": {t.name: offsets.get(t.value, 0.0) for t in table},
            "prior_rule": f"logits + log(p_slices / p_crops) per label, relative to the background: the class shares of "
                          f"the training slices against those of {mode} {crop}-pixel training crops{margins}"}


def margin_share(cfg: TrainConfig) -> float:
    """The share of margin crops a run draws (:meth:`SliceSet.sample`'s ``margin_prob``): GASE runs only."""
    return float(cfg.margin_crops) if cfg.method == "gase" else 0.0


def card_prior_entry(card: ModelCard, train_pairs: Sequence[tuple[Volume, np.ndarray, str]]) -> dict:
    """:func:`prior_entry` for a trained model from its card (plane, spacing, normalisation, and the crop size
    and sampling its training used) and its training pairs: for models trained before the offsets existed."""
    from .config import LEGACY_DEFAULTS

    config = (card.training or {}).get("config", {})
    crop = int(config.get("crop", TrainConfig().crop))
    mode = str(config.get("crop_sampling", LEGACY_DEFAULTS.get("crop_sampling", TrainConfig().crop_sampling)))
    margin = float(config.get("margin_crops", LEGACY_DEFAULTS["margin_crops"])) \
        if config.get("method", card.architecture.get("method")) == "gase" else 0.0
    slices = SliceSet.build(train_pairs, card.plane, card.input_spacing_mm, Normalization.from_json(card.normalization),
                            card.context)
    return prior_entry(slices, card.labels, crop, mode, margin)


def training_context(cfg: TrainConfig, images: Sequence[Volume], plane: str) -> Context:
    """The through-plane context a run trains with: ``cfg.context_slices`` slices, ``cfg.context_mm`` apart (by
    default the median slice spacing of the training images in the model's plane)."""
    from ..orientation import reorientation_for

    if cfg.context_slices <= 1:
        return Context()
    mm = cfg.context_mm or float(round(np.median([reorientation_for(v, plane).spacing[0] for v in images]), 3))
    return Context(cfg.context_slices, mm)


def start_as_2d(seg: SegDiscriminator) -> None:
    """A fresh context segmenter starts out as a 2D one: the first convolution reads the centre channel with a
    2D network's initial scale (its random kernel times sqrt(C), as if fan-in were one channel) and the
    neighbours with zeros; training brings the neighbours in where they help. From random weights on every
    channel the benchmark's ERM, 3 slices 8 mm apart, trained worse in its 1000 iterations than in 2D (data
    seed 1, mean segmentation loss of the last 100 iterations pelvis 0.599 against 0.514, knee 0.405 against
    0.364; validation Dice 0.754 / 0.836 against 0.856 / 0.876)."""
    w = seg.enc[0].conv.weight
    c = w.shape[1]
    with torch.no_grad():
        centre = w[:, c // 2].clone() * math.sqrt(c)
        w.zero_()
        w[:, c // 2] = centre


def inflate_input(weights: dict, in_channels: int, key: str = "enc.0.conv.weight") -> dict:
    """A segmenter's weights for ``in_channels`` input channels from those of a one-channel (2D) segmenter: the
    first convolution reads the centre channel with the old kernel and the neighbours with zeros, so the network
    starts out computing exactly what the 2D one did, and fine-tuning teaches it the context."""
    w = weights.get(key)
    if w is None or w.shape[1] != 1 or in_channels == 1:
        return weights
    new = torch.zeros((w.shape[0], in_channels, *w.shape[2:]), dtype=w.dtype)
    new[:, in_channels // 2] = w[:, 0]
    return {**weights, key: new}


def _init_segmenter(trainer: Trainer, folder: Path) -> None:
    """Load the segmenter of the model in ``folder`` (the source expert; card and checksums verified) into
    ``trainer.seg``; a 2D segmenter's weights are inflated to this run's context (:func:`inflate_input`)."""
    weights = prefixed(load_tensors(load_card(folder), "weights.safetensors"), "segmenter")
    weights = inflate_input(weights, trainer.seg.in_channels)
    try:
        trainer.seg.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{folder}: its segmenter does not match this training's architecture "
                         f"({str(exc).splitlines()[0]}). Start from a model trained with the same settings.") from None


def _validation_dice(folder: Path, val_pairs, table, device: str, route: str = "auto") -> dict[str, float]:
    """Dice per structure (and their mean) of the model in ``folder`` on the validation pairs, through the real
    predictor (geometry, resampling, calibration, post-processing and any source expert included; ``route`` as
    :attr:`gase.predictor.Predictor.route`)."""
    if not val_pairs:
        return {}
    predictor = Predictor.from_folder(folder, device=device)
    predictor.route = route
    scores = {t.name: [] for t in table}
    for image, lab, _ in val_pairs:
        res = predictor.predict(image)
        for t in table:
            p, r = res.labels.array == t.value, lab == t.value
            if r.any():
                scores[t.name].append(2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum()))
    val_dice = {k: round(float(np.mean(v)), 4) for k, v in scores.items() if v}
    val_dice["mean"] = round(float(np.mean(list(val_dice.values()))), 4)
    return val_dice


def _median_inplane_spacing(volumes: Sequence[Volume], plane: str) -> float:
    from ..orientation import reorientation_for

    sp = [s for v in volumes for s in reorientation_for(v, plane).spacing[1:]]
    return float(round(np.median(sp), 3))


def _write_log(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _fit_conf_calibration(trainer: Trainer, sset: SliceSet, max_voxels: int = 400_000,
                          prior_offsets: dict[str, float] | None = None) -> dict:
    """Platt scaling (scale, bias) of the confidence logit on held-out slices: the probability that the label the
    model outputs is right, the label after the ``prior_offsets`` (label name -> logit offset) when the card
    has them (since 2026-12-06; before, the network's own argmax, which the offsets change on a few voxels)."""
    offsets = None
    if prior_offsets:
        offsets = torch.zeros(trainer.n_classes)
        for t in trainer.table:
            offsets[t.value] = float(prior_offsets.get(t.name, 0.0))
    logits, correct = [], []
    for images, labels in zip(sset.inputs(), sset.labels):
        pred, conf, _ = trainer.forward_slices(images, offsets=offsets)
        logits.append(conf.flatten())
        correct.append((pred == labels.long()).float().flatten())
    lg, cr = torch.cat(logits), torch.cat(correct)
    if lg.numel() > max_voxels:
        idx = torch.randperm(lg.numel(), generator=torch.Generator().manual_seed(0))[:max_voxels]
        lg, cr = lg[idx], cr[idx]
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lg * params[0] + params[1], cr)
        loss.backward()
        return loss

    opt.step(closure)
    scale, bias = float(params[0].detach()), float(params[1].detach())
    if not (math.isfinite(scale) and math.isfinite(bias)) or scale <= 0:
        scale, bias = 1.0, 0.0
    return {"scale": round(scale, 5), "bias": round(bias, 5), "method": "platt", "fitted_on_voxels": int(lg.numel())}


def _export(trainer: Trainer, train_set: SliceSet, val_set: SliceSet | None, val_pairs, table, out_dir: Path,
            cfg: TrainConfig, *, anatomy, plane, context: Context, spacing, norm, name, title, emit, extra_card,
            foreground_ml: float) -> TrainResult:
    emit({"event": "export", "message": "fitting the style manifold and calibrating"})
    # style manifold on the training slices and augmented copies of them, threshold on held-out volumes
    fit = fit_validity(lambda images: trainer.forward_slices(images)[2].numpy(), train_set.inputs(),
                       val_set.inputs() if val_set is not None else [])
    cal = _fit_conf_calibration(trainer, val_set if val_set is not None else train_set,
                                prior_offsets=(extra_card.get("postprocessing") or {}).get("prior_offsets"))
    if (extra_card.get("postprocessing") or {}).get("prior_offsets"):
        cal["labels"] = "after the prior offsets"
    tensors = {**{f"segmenter.{k}": v.detach().float().cpu().contiguous() for k, v in trainer.seg.state_dict().items()},
               **{f"style_encoder.{k}": v.detach().float().cpu().contiguous() for k, v in trainer.enc.state_dict().items()}}
    save_tensors(tensors, out_dir / "weights.safetensors")
    save_tensors({k: v.contiguous() for k, v in fit.manifold.to_tensors().items()}, out_dir / "validity.safetensors")
    if cfg.method == "gase":
        gen_t = {**{f"generator.{k}": v.detach().float().cpu().contiguous() for k, v in trainer.G.state_dict().items()},
                 **{f"mapping.{k}": v.detach().float().cpu().contiguous() for k, v in trainer.M.state_dict().items()}}
        save_tensors(gen_t, out_dir / "generator.safetensors")
    card = ModelCard(
        name=name, title=title or name, version="1.0.0", anatomy=anatomy, plane=plane, input_spacing_mm=spacing,
        labels=tuple(table),
        architecture={"segmenter_channels": list(cfg.segmenter_channels), "style_dim": cfg.style_dim,
                      "encoder_channels": [16, 32, 64, 96], "z_dim": cfg.z_dim, "generator_channels": [16, 32, 64],
                      "generator_content_channels": int(cfg.gen_content),
                      "method": cfg.method, **({"context": context.to_json()} if context.used else {})},
        normalization=norm.to_json(),
        validity={**fit.card_fields(), "training_foreground_ml": round(foreground_ml, 2)},
        confidence_calibration=cal, files={},
        description=extra_card.pop("description", f"GASE {cfg.method} model for {anatomy} MR, {plane} slices."),
        training={"config": cfg.to_json(), "iterations": trainer.state.iteration,
                  "seconds": round(trainer.state.seconds, 1), "device": trainer.device.type,
                  "train_cases": train_set.names, "val_cases": val_set.names if val_set else [],
                  **extra_card.pop("training", {})},
        **extra_card,
    )
    write_card(card, out_dir)
    # end-to-end validation through the real predictor (geometry, resampling, calibration included)
    val_dice = _validation_dice(out_dir, val_pairs, table, trainer.device.type)
    if val_dice:
        card.metrics = {**card.metrics, "validation_dice": val_dice}
        write_card(card, out_dir)
    emit({"event": "done", "model_folder": str(out_dir), "val_dice": val_dice, "iterations": trainer.state.iteration,
          "seconds": trainer.state.seconds})
    return TrainResult(out_dir, trainer.state.iteration, trainer.state.seconds, val_dice, card)
