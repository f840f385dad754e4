"""The model folder: a ``model.json`` card plus safetensors files, loaded without executing code.

Layout of a model folder::

    model.json               the card (this module's :class:`ModelCard`)
    weights.safetensors      segmenter ("segmenter.*") and style encoder ("style_encoder.*")
    validity.safetensors     the fitted style manifold (see :mod:`gase.validity`)
    generator.safetensors    optional: generator and mapping network, for style previews
    expert.safetensors       optional: the source expert's segmenter and style encoder (card: source_expert)
    expert_validity.safetensors  optional: the source expert's style manifold

Every file the card names is checked against its SHA-256; only ``.safetensors`` tensors are read,
so a tampered or pickled model is refused with a clear :class:`ModelError` instead of being run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ModelError
from .fsutil import temp_file
from .labels import LabelInfo, labels_from_json
from .orientation import PLANES
from .result import VERDICT_MARGIN

SCHEMA_VERSION = 1
MAX_CARD_BYTES = 1_000_000
MAX_WEIGHT_BYTES = 512 * 1024 * 1024
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz", ".joblib")
REQUIRED_FILES = ("weights.safetensors", "validity.safetensors")

# (key, type, required) of the card's top level: the card's schema.
CARD_SCHEMA: tuple[tuple[str, type | tuple, bool], ...] = (
    ("schema_version", int, True), ("name", str, True), ("title", str, True), ("version", str, True),
    ("description", str, False), ("license", str, False), ("anatomy", str, True), ("modality", str, True),
    ("plane", str, True), ("input_spacing_mm", (int, float), True), ("normalization", dict, True),
    ("labels", list, True), ("architecture", dict, True), ("validity", dict, True),
    ("confidence_calibration", dict, False), ("training", dict, False), ("metrics", dict, False),
    ("files", dict, True), ("expected", dict, False), ("postprocessing", dict, False),
    ("source_expert", dict, False),
)
# A source expert (see gase.predictor.Predictor.predict) lives in the same folder, in these two files
EXPERT_FILES = {"weights": "expert.safetensors", "validity": "expert_validity.safetensors"}


@dataclass
class ModelCard:
    """The parsed, validated ``model.json``. ``folder`` is where the model lives on disk."""

    name: str
    title: str
    version: str
    anatomy: str
    plane: str
    input_spacing_mm: float
    labels: tuple[LabelInfo, ...]
    architecture: dict
    normalization: dict
    validity: dict
    files: dict[str, str]
    modality: str = "MR"
    description: str = ""
    license: str = "Apache-2.0"
    confidence_calibration: dict = field(default_factory=lambda: {"scale": 1.0, "bias": 0.0})
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    # {"largest_component": [label names], "opening_mm": {label name: mm}}: structures kept as their largest
    # connected part, then opened by a ball of that radius (gase.postprocess)
    postprocessing: dict = field(default_factory=dict)
    # {"validity": {"threshold": ...}, "confidence_calibration": {...}, "training": {...}, ...}: the segmenter
    # trained on the source style alone, used where its own style manifold finds a scan in that style
    source_expert: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def largest_component_labels(self) -> tuple[LabelInfo, ...]:
        names = set(self.postprocessing.get("largest_component", []))
        return tuple(lab for lab in self.labels if lab.name in names)

    @property
    def prior_offsets(self) -> dict[str, float]:
        """Label name -> offset added to the label's logit before the argmax (undoes the class prior of the
        training crops, see :func:`gase.training.data.sampling_prior_offsets`); empty for models trained before
        2026-12-06 (no offsets)."""
        return {k: float(v) for k, v in self.postprocessing.get("prior_offsets", {}).items()}

    @property
    def context(self) -> "Context":
        """The through-plane context the segmenter reads (``architecture.context``; one slice when absent)."""
        from .context import Context

        return Context.from_json(self.architecture.get("context"))

    @property
    def opening_mm(self) -> dict[str, float]:
        """Label name -> opening radius (mm) of :func:`gase.postprocess.keep_opened_component`, for the labels
        whose card gives one (models trained before 2026-12-06 give none)."""
        return {k: float(v) for k, v in self.postprocessing.get("opening_mm", {}).items()}

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "name": self.name, "title": self.title, "version": self.version,
            "description": self.description, "license": self.license, "anatomy": self.anatomy,
            "modality": self.modality, "plane": self.plane, "input_spacing_mm": self.input_spacing_mm,
            "normalization": self.normalization, "labels": [lab.to_json() for lab in self.labels],
            "architecture": self.architecture, "validity": self.validity,
            "confidence_calibration": self.confidence_calibration, "training": self.training,
            "metrics": self.metrics, "files": self.files, "expected": self.expected,
            "postprocessing": self.postprocessing,
            **({"source_expert": self.source_expert} if self.source_expert else {}),
        }

    @property
    def n_classes(self) -> int:
        """Number of segmentation classes including background."""
        return max(lab.value for lab in self.labels) + 1

    def path(self, key: str) -> Path:
        """Absolute path of a file the card names (checked to stay inside the model folder)."""
        if self.folder is None:
            raise ModelError("This model card is not attached to a folder.")
        return _inside(self.folder, key)


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _inside(folder: Path, name: str) -> Path:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith("."):
        raise ModelError(f"The model card names the file {name!r}; model files must be plain file names inside "
                         "the model folder. The model may have been tampered with: get a fresh copy.")
    p = (folder / name).resolve()
    if p.parent != folder.resolve():
        raise ModelError(f"The model file {name!r} points outside the model folder. Refusing to load it.")
    return p


MAX_CHANNELS = 1024  # per layer: far above any GASE network, far below what would exhaust memory on load


def _number(x: Any) -> bool:
    """A finite int or float (JSON booleans are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_architecture(arch: dict, where: str) -> None:
    """Layer widths within bounds, so that a malformed card fails here and not while building the network."""
    def widths(key: str, lo: int, hi: int) -> None:
        v = arch.get(key)
        if v is None and key == "encoder_channels":
            return
        if not isinstance(v, list) or not lo <= len(v) <= hi or not all(
                isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_CHANNELS for c in v):
            raise ModelError(f"{where}: architecture.{key} must list {lo} to {hi} layer widths, each 1..{MAX_CHANNELS}.")

    widths("segmenter_channels", 3, 8)  # the confidence head reads the last two decoder levels
    widths("encoder_channels", 1, 8)
    if not 1 <= arch["style_dim"] <= MAX_CHANNELS:
        raise ModelError(f"{where}: architecture.style_dim must be 1..{MAX_CHANNELS}.")
    from .context import Context

    Context.from_json(arch.get("context"), where)


def _check_numbers(norm: dict, where: str) -> None:
    """The normalisation block: percentiles 0 <= low < high <= 100 and a clip range lo < hi."""
    low, high, clip = norm.get("low", 0.5), norm.get("high", 99.5), norm.get("clip", [0.0, 1.0])
    if norm.get("method", "percentile") != "percentile" or not (_number(low) and _number(high) and 0 <= low < high <= 100):
        raise ModelError(f"{where}: normalization must be percentile with 0 <= low < high <= 100.")
    if not isinstance(clip, list) or len(clip) != 2 or not all(_number(c) for c in clip) or not clip[0] < clip[1]:
        raise ModelError(f"{where}: normalization.clip must be two numbers [lo, hi] with lo < hi.")


def parse_card(data: Any, folder: Path | None = None) -> ModelCard:
    """Validate the decoded ``model.json`` against :data:`CARD_SCHEMA` and build a :class:`ModelCard`."""
    where = f"{folder / 'model.json'}" if folder else "model.json"
    if not isinstance(data, dict):
        raise ModelError(f"{where}: the card must be a JSON object.")
    for key, typ, required in CARD_SCHEMA:
        if key not in data:
            if required:
                raise ModelError(f"{where}: the card lacks the required field {key!r}. The model folder is "
                                 "incomplete or from another tool; re-export or re-install the model.")
            continue
        if not isinstance(data[key], typ) or isinstance(data[key], bool) and typ is not bool:
            raise ModelError(f"{where}: field {key!r} has the wrong type ({type(data[key]).__name__}).")
    if data["schema_version"] > SCHEMA_VERSION:
        raise ModelError(f"{where}: card schema {data['schema_version']} is newer than this GASE understands "
                         f"({SCHEMA_VERSION}). Update GASE.")
    if data["plane"] not in PLANES:
        raise ModelError(f"{where}: plane {data['plane']!r} is not one of {PLANES}.")
    if not 0.05 <= float(data["input_spacing_mm"]) <= 20:
        raise ModelError(f"{where}: input_spacing_mm {data['input_spacing_mm']} is not a plausible spacing.")
    labels = labels_from_json(data["labels"])
    if not labels:
        raise ModelError(f"{where}: the card lists no labels.")
    for name, digest in data["files"].items():
        if not isinstance(digest, str) or len(digest) != 64:
            raise ModelError(f"{where}: files[{name!r}] must be a SHA-256 hex digest.")
        if not name.endswith(".safetensors"):
            raise ModelError(f"{where}: the card names {name!r}; GASE loads weights only from .safetensors files "
                             "(pickled weights can execute code). Refusing to load this model.")
    for name in REQUIRED_FILES:
        if name not in data["files"]:
            raise ModelError(f"{where}: the card does not list {name!r}; the model folder is incomplete.")
    threshold = data["validity"].get("threshold")
    if not _number(threshold) or not threshold > 0:
        raise ModelError(f"{where}: validity.threshold must be a positive number (the calibrated threshold).")
    fg = data["validity"].get("training_foreground_ml")
    if fg is not None and (not _number(fg) or not fg > 0):
        raise ModelError(f"{where}: validity.training_foreground_ml must be a positive number (mL of the largest "
                         "training label map's structures).")
    arch = data["architecture"]
    if not isinstance(arch.get("segmenter_channels"), list) or not isinstance(arch.get("style_dim"), int):
        raise ModelError(f"{where}: architecture needs segmenter_channels (list) and style_dim (int).")
    _check_architecture(arch, where)
    _check_numbers(data["normalization"], where)
    cal = data.get("confidence_calibration", {})
    if not all(_number(cal.get(k, 0.0)) for k in ("scale", "bias")):
        raise ModelError(f"{where}: confidence_calibration scale and bias must be finite numbers.")
    post = data.get("postprocessing", {})
    names = post.get("largest_component", [])
    if not isinstance(names, list) or not set(names) <= {lab.name for lab in labels}:
        raise ModelError(f"{where}: postprocessing.largest_component must list label names of this model "
                         f"(got {names!r}).")
    opening = post.get("opening_mm", {})
    if not isinstance(opening, dict) or not set(opening) <= set(names) or \
            not all(_number(r) and 0 < r <= 100 for r in opening.values()):
        raise ModelError(f"{where}: postprocessing.opening_mm must map labels of largest_component to radii in mm "
                         f"(0-100; got {opening!r}). Re-train the model or remove the entry.")
    prior = post.get("prior_offsets", {})
    if not isinstance(prior, dict) or not set(prior) <= {lab.name for lab in labels} or \
            not all(_number(v) and abs(v) <= 20 for v in prior.values()):
        raise ModelError(f"{where}: postprocessing.prior_offsets must map label names of this model to logit "
                         f"offsets (-20 to 20; got {prior!r}). Re-train the model or remove the entry.")
    expert = data.get("source_expert", {})
    if expert:
        missing = [f for f in EXPERT_FILES.values() if f not in data["files"]]
        if missing:
            raise ModelError(f"{where}: the card names a source expert but does not list {', '.join(missing)}; the "
                             "model folder is incomplete. Re-install or re-train the model.")
        t = (expert.get("validity") or {}).get("threshold") if isinstance(expert.get("validity"), dict) else None
        ecal = expert.get("confidence_calibration", {})
        if not _number(t) or not t > 0 or not isinstance(ecal, dict) or \
                not all(_number(ecal.get(k, 0.0)) for k in ("scale", "bias")):
            raise ModelError(f"{where}: source_expert needs validity.threshold (a positive number) and a "
                             "confidence_calibration with finite scale and bias.")
        if expert.get("route", "style") not in ("style", "gase"):
            raise ModelError(f"{where}: source_expert.route must be \"style\" or \"gase\" "
                             f"(got {expert.get('route')!r}).")
    return ModelCard(
        name=data["name"], title=data["title"], version=data["version"], anatomy=data["anatomy"],
        plane=data["plane"], input_spacing_mm=float(data["input_spacing_mm"]), labels=labels,
        architecture=arch, normalization=data["normalization"], validity=data["validity"],
        files=dict(data["files"]), modality=data["modality"], description=data.get("description", ""),
        license=data.get("license", ""),
        confidence_calibration=data.get("confidence_calibration", {"scale": 1.0, "bias": 0.0}),
        training=data.get("training", {}), metrics=data.get("metrics", {}), expected=data.get("expected", {}),
        postprocessing=post, source_expert=expert, folder=folder,
    )


def load_card(folder: str | os.PathLike, *, verify: bool = True) -> ModelCard:
    """Read and validate ``folder/model.json``; with ``verify`` check every named file's SHA-256."""
    folder = Path(folder)
    card_path = folder / "model.json"
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder. Give the folder that holds model.json.")
    if not card_path.is_file():
        raise ModelError(f"{folder}: no model.json in this folder; it is not a GASE model folder.")
    stray = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if stray:
        raise ModelError(f"{folder}: the model folder contains pickled files ({', '.join(sorted(stray))}). "
                         "GASE models hold weights only in .safetensors; remove these files or get a clean copy "
                         "of the model.")
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise ModelError(f"{card_path}: the card is larger than {MAX_CARD_BYTES} bytes; it is not a GASE card.")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{card_path}: not valid JSON ({exc}). The card is damaged; re-install the model.") from None
    card = parse_card(data, folder.resolve())
    if verify:
        for name, digest in card.files.items():
            p = card.path(name)
            if not p.is_file():
                raise ModelError(f"{folder}: the card names {name} but the file is missing. Re-install the model.")
            if p.stat().st_size > MAX_WEIGHT_BYTES:
                raise ModelError(f"{p}: larger than {MAX_WEIGHT_BYTES // 2**20} MB; refusing to load.")
            if sha256(p) != digest:
                raise ModelError(f"{p}: checksum mismatch with model.json: the file was changed or damaged. "
                                 "Re-install the model.")
    return card


def write_card(card: ModelCard, folder: Path) -> Path:
    """Write ``model.json`` (atomically), filling ``files`` with the SHA-256 of the safetensors present."""
    folder = Path(folder)
    card.files = {p.name: sha256(p) for p in sorted(folder.glob("*.safetensors"))}
    payload = json.dumps(card.to_json(), indent=2) + "\n"
    fd, tmp = temp_file(folder, ".model-", ".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(payload)
    os.replace(tmp, folder / "model.json")
    card.folder = folder.resolve()
    return folder / "model.json"


def load_tensors(card: ModelCard, name: str, device: str = "cpu") -> dict:
    """Tensors of one safetensors file of the model (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(card.path(name)), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{card.path(name)}: not a readable safetensors file ({exc}). The model is damaged or "
                         "was saved in another format; GASE loads only safetensors.") from None


def prefixed(tensors: dict, prefix: str) -> dict:
    """The entries of a safetensors dict under ``prefix.`` with the prefix removed (one network's state)."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ---------------------------------------------------------------------------------------------
# Where models live
# ---------------------------------------------------------------------------------------------

def shipped_models_dir() -> Path:
    """``Resources/Models`` of the source tree or of the installed extension (``GASE_MODELS_DIR`` overrides)."""
    env = os.environ.get("GASE_MODELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "Resources" / "Models", here / "Resources" / "Models"):
        if candidate.is_dir():
            return candidate
    return here.parent / "Resources" / "Models"


def user_models_dir() -> Path:
    """Where models the user trains or installs go (``GASE_USER_MODELS_DIR`` overrides)."""
    env = os.environ.get("GASE_USER_MODELS_DIR")
    return Path(env) if env else Path.home() / ".gase" / "models"


def default_model_folder() -> Path:
    return shipped_models_dir() / "knee-demo"


def list_models(extra_dirs: Iterable[Path] = ()) -> list[ModelCard]:
    """Valid model cards in the shipped, user and ``extra_dirs`` folders (broken ones are skipped)."""
    cards, seen = [], set()
    for root in [shipped_models_dir(), user_models_dir(), *map(Path, extra_dirs)]:
        if not root.is_dir():
            continue
        candidates = [root] if (root / "model.json").is_file() else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in candidates:
            if folder.resolve() in seen or not (folder / "model.json").is_file():
                continue
            try:
                cards.append(load_card(folder, verify=False))
                seen.add(folder.resolve())
            except ModelError:
                continue
    return cards


def install_model(source: str | os.PathLike, models_dir: Path | None = None, *, overwrite: bool = False) -> ModelCard:
    """Copy a model folder or ``.zip`` into ``models_dir`` (default: the user models folder) after validating it."""
    source = Path(source)
    models_dir = Path(models_dir) if models_dir else user_models_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if source.is_file() and source.suffix.lower() == ".zip":
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    target = (Path(tmp) / info.filename).resolve()
                    if not str(target).startswith(str(Path(tmp).resolve())):
                        raise ModelError(f"{source}: the archive has a path outside its folder ({info.filename}).")
                zf.extractall(tmp)
            found = [p.parent for p in Path(tmp).rglob("model.json")]
            if len(found) != 1:
                raise ModelError(f"{source}: the archive must contain exactly one model folder with model.json.")
            folder = found[0]
        elif source.is_dir():
            folder = source
        else:
            raise ModelError(f"{source}: give a model folder (with model.json) or a .zip of one.")
        card = load_card(folder, verify=True)
        dest = models_dir / card.name
        if dest.exists():
            if not overwrite:
                raise ModelError(f"A model named {card.name!r} is already installed at {dest}. Remove it first or "
                                 "install with overwrite.")
            shutil.rmtree(dest)
        models_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, dest)
    return load_card(dest)


def attach_source_expert(folder: str | os.PathLike, expert_folder: str | os.PathLike,
                         route: str = "style") -> ModelCard:
    """Make the model in ``expert_folder`` (a segmenter trained on the source style alone: ``method`` erm, on the
    same labels, plane, spacing and intensity normalisation) the source expert of the GASE model in ``folder``:
    its weights and style manifold are copied in as :data:`EXPERT_FILES` and the card's ``source_expert``
    records its threshold, calibration, training and the model's default ``route`` (see
    :data:`gase.predictor.ROUTES`): ``"style"`` (the expert segments scans in the training style) or ``"gase"``
    (the GASE segmenter segments every scan; the expert is kept for ``--route style`` / ``expert``). Returns the
    updated card of ``folder``."""
    if route not in ("style", "gase"):
        raise ValueError(f"route must be 'style' or 'gase', not {route!r}")
    folder, expert_folder = Path(folder), Path(expert_folder)
    card, ecard = load_card(folder), load_card(expert_folder)
    if ecard.source_expert:
        raise ModelError(f"{expert_folder}: this model has a source expert itself; give a plain segmenter.")
    keys = ("plane", "input_spacing_mm", "labels", "normalization")
    differs = [k for k in keys if getattr(card, k) != getattr(ecard, k)]
    for k in ("segmenter_channels", "style_dim", "encoder_channels", "context"):
        if card.architecture.get(k) != ecard.architecture.get(k):
            differs.append(f"architecture.{k}")
    if differs:
        raise ModelError(f"{expert_folder} cannot be the source expert of {folder}: they differ in "
                         f"{', '.join(differs)}. Train the expert on the same labelled scans with the same settings.")
    for role, name in EXPERT_FILES.items():
        src = expert_folder / ("weights.safetensors" if role == "weights" else "validity.safetensors")
        fd, tmp = temp_file(folder, ".expert-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, folder / name)
    ev = ecard.validity
    card.source_expert = {
        "description": "the segmenter trained on the source style alone (standard augmentation); " + (
            "it segments a scan its own style manifold finds in the training style, the GASE segmenter the rest"
            if route == "style" else "the GASE segmenter started from its weights and segments every scan "
            "(the expert segments only when asked: route style or expert)"),
        "route": route,
        "validity": {k: ev[k] for k in ("threshold", "heldout_volume_scores", "fitted_on_slices", "augmented_copies")
                     if k in ev},
        "confidence_calibration": dict(ecard.confidence_calibration),
        "training": {k: ecard.training[k] for k in ("config", "iterations", "seconds", "device") if k in ecard.training},
        "metrics": dict(ecard.metrics),
    }
    write_card(card, folder)
    return card


def threshold_is_outdated(card: ModelCard, margin: float = VERDICT_MARGIN) -> bool:
    """Whether the validity threshold on ``card`` was set by an earlier rule than ``margin`` and
    :func:`gase.training.validity_fit.recalibrate_threshold` can update it (the card stores held-out scores).
    Torch-free: the Slicer panel asks it for every model it lists."""
    return bool(card.validity.get("heldout_volume_scores")) and card.validity.get("margin") != margin
