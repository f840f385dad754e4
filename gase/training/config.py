"""Typed training configuration, validated once at the edge (CLI, Slicer module)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InputError

METHODS = ("gase", "erm", "randcurve")
SAMPLING_MODES = ("balanced", "foreground")  # how training crops are drawn: gase.training.data.SliceSet.sample
# What a record (model card, benchmark results) written before a setting existed was trained with. Only for
# reading such records: a settings file without the key gets the current default.
LEGACY_DEFAULTS = {"crop_sampling": "foreground", "source_expert": False, "warm_start": False, "fatsat_prob": 0.0,
                   "context_slices": 1, "context_mm": None, "margin_crops": 0.0,
                   "organ_warp_prob": 0.0}


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are what a user with 4-10 labelled volumes wants.

    ``method``: ``gase`` (the full method), ``erm`` (segmenter alone with standard augmentation) or
    ``randcurve`` (segmenter with random per-class intensity curves, the domain-randomisation peer).
    All methods share backbone, crop, batch and iteration budget, so benchmarks compare like with like.
    """

    method: str = "gase"
    iterations: int = 2000
    max_minutes: float | None = None
    batch_size: int = 8
    crop: int = 128
    lr: float = 6e-3                        # 2e-3 learned cartilage far slower (knee, 300 its: unseen Dice 0.30 vs 0.48)
    lr_gen: float = 1e-3
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    val_every: int = 250
    checkpoint_every: int = 200
    segmenter_channels: tuple[int, ...] = (16, 24, 48, 96, 192)
    style_dim: int = 64
    z_dim: int = 64
    input_spacing_mm: float | None = None   # None: median in-plane spacing of the training images
    context_slices: int = 1                 # slices the segmenter reads: the slice and its neighbours (odd; 1 = 2D)
    context_mm: float | None = None         # their distance; None: the median slice spacing of the training images
    plane: str | None = None                # None: the anatomy's default (knee sagittal, pelvis axial)
    # GASE weights
    gen_every: int = 2
    gen_warmup: float = 0.25                # fraction of iterations before synthetic images reach D
    w_adv: float = 0.1
    w_rec: float = 1.0
    w_cycle: float = 0.5
    w_div: float = 0.2
    w_gen_seg: float = 1.0
    w_conf: float = 0.5
    extrapolation: tuple[float, float] = (-1.0, 2.0)
    curve_prob: float = 0.7
    cutout_prob: float = 0.3
    w_syn_seg: float = 0.3                  # weight of the synthetic + mixed views in D's segmentation loss
    gen_content: bool = False               # G also sees a style-scrambled copy of the image (unlabelled anatomy)
    feature_style_prob: float = 0.0         # feature-space style mixing of the augmented views (GASE)
    w_consistency: float = 0.0              # agreement of predictions across style views of one crop
    extrapolation_feature: tuple[float, float] = (-0.5, 1.5)
    curve_flatten: float = 0.0              # gase: chance per class that a random curve renders it nearly uniform
                                            # (augment.flatten_luts; fat-suppressed bone is one dark region)
    gin_prob: float = 0.0                   # gase: chance that a curve view is re-rendered by a random shallow conv
                                            # network (augment.random_shallow_conv, GIN)
    fatsat_prob: float = 0.5                # gase: chance that a curve or synthetic view starts from the image with
                                            # its brightest tissue suppressed (augment.suppress_bright: fat-sat, STIR)
    margin_crops: float = 0.25              # gase: share of the structure-centred crops moved just past the structure's
                                            # end along the slice axis (SliceSet.sample's margin_prob)
    organ_warp_prob: float = 0.0            # gase: share of the crops in which one structure is grown or shrunk
                                            # within its surroundings (augment.organ_warp; measured, not adopted)
    syn_fraction: float = 0.5               # synthetic (and mixed) crops per iteration, as a fraction of the batch
    adv_detach: bool = True                 # D's real/fake heads read detached features: the adversarial game
                                            # does not reshape the segmentation features
    amp: bool = True
    crop_sampling: str = "balanced"         # training crops: "balanced" (per structure + 1/3 anywhere) or the
                                            # earlier "foreground" (90% on any structure); see SliceSet.sample
    source_expert: bool = True              # gase: also train the segmenter alone on the source style (an "erm"
                                            # run, same settings), used on scans in that style; see train()
    warm_start: bool = True                 # gase with source_expert: train the expert first and start the GASE
                                            # segmenter from its weights (it then learns style robustness on top of
                                            # an anatomy the expert already segments); see train()

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise InputError(f"Unknown training method {self.method!r}; use one of {', '.join(METHODS)}.")
        if self.iterations < 1:
            raise InputError("iterations must be at least 1.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError("--max-minutes must be positive.")
        if not 0.0 <= self.gin_prob <= 1.0:
            raise InputError("gin_prob is a probability: use a value in [0, 1].")
        if not 0.0 <= self.fatsat_prob <= 1.0:
            raise InputError("fatsat_prob is a probability: use a value in [0, 1].")
        if not 0.0 <= self.organ_warp_prob <= 1.0:
            raise InputError("organ_warp_prob is a share of the crops: use a value in [0, 1].")
        if not 0.0 <= self.margin_crops <= 1.0:
            raise InputError("margin_crops is a share of the crops: use a value in [0, 1].")
        if not 0.0 <= self.curve_flatten <= 1.0:
            raise InputError("curve_flatten is a probability: use a value in [0, 1].")
        if not 0.0 < self.syn_fraction <= 1.0:
            raise InputError("syn_fraction must be in (0, 1].")
        if self.w_consistency > 0 and self.syn_fraction < 1.0:
            raise InputError("w_consistency compares views of the same crops: it needs syn_fraction 1.0.")
        if self.warm_start and not (self.method == "gase" and self.source_expert):
            self.warm_start = False  # only a GASE run with a source expert has weights to start from
        if self.crop_sampling not in SAMPLING_MODES:
            raise InputError(f"Unknown crop_sampling {self.crop_sampling!r}; use one of {', '.join(SAMPLING_MODES)}.")
        if not (isinstance(self.context_slices, int) and 1 <= self.context_slices <= 9 and self.context_slices % 2):
            raise InputError("context_slices must be an odd number of slices, 1 to 9 (1: the slice alone).")
        if self.context_mm is not None and not 0.05 <= self.context_mm <= 50:
            raise InputError("context_mm must be a distance in mm (0.05 to 50), or unset for the slice spacing.")
        if self.batch_size < 1 or self.crop < 32 or self.crop % 16:
            raise InputError("batch_size must be >= 1 and crop a multiple of 16, at least 32.")
        return self

    def to_json(self) -> dict:
        d = asdict(self)
        d["segmenter_channels"] = list(self.segmenter_channels)
        d["extrapolation"] = list(self.extrapolation)
        d["extrapolation_feature"] = list(self.extrapolation_feature)
        return d

    @staticmethod
    def from_json(d: dict) -> "TrainConfig":
        d = dict(d)
        known = set(TrainConfig.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"Unknown training settings {unknown}; known settings: {sorted(known)}.")
        if "segmenter_channels" in d:
            d["segmenter_channels"] = tuple(d["segmenter_channels"])
        for k in ("extrapolation", "extrapolation_feature"):
            if k in d:
                d[k] = tuple(d[k])
        return TrainConfig(**d).validate()
