"""The benchmark's data: train / validation / test / OOD phantom sets of one anatomy, seeds disjoint.

Protocol (benchmark.md section 1): 4 labelled training volumes and 1 validation volume in the
anatomy's source style; ``n_test`` new subjects rendered in the source style and in each unseen
style (the SAME subjects in every style, so style effects are paired); ``n_ood`` subjects per OOD
kind of :data:`gase.phantoms.OOD_KINDS`. Each set draws its subjects with its own seed stream
(:func:`gase.phantoms.subject_seed`), and :func:`build_anatomy_data` checks that no subject is shared.

>>> spec = DataSpec("knee", unseen_styles=("t1_se",), n_test=1, n_ood=1, scale=0.5)   # doctest: +SKIP
>>> data = build_anatomy_data(spec)                                                    # doctest: +SKIP
>>> [c.group for c in data.test]                                                       # doctest: +SKIP
['source', 'unseen']
"""
from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gase.errors import InputError
from gase.phantoms import OOD_KINDS, SOURCE_STYLE, list_styles, make_case, make_ood, subject_seed
from gase.volume import Volume

N_TRAIN, N_VAL = 4, 1

# Unseen styles chosen before any result, to cover the protocol's list: T1w SE, T2w FSE, PD fat-sat,
# GRE/FLASH-like, and another field strength with its noise, slice thickness and coil bias.
DEFAULT_UNSEEN: dict[str, tuple[str, ...]] = {
    "knee": ("t1_se", "t2_fse", "pd_fs", "flash_we", "pd_fse_1t_lowsnr"),
    "pelvis": ("t1_se", "pd_fs", "t1_gre_dixon_like", "stir", "t2_1t_lowsnr"),
}

# one seed stream per set; a set's subjects are subject_seed(base + offset, i)
_SET_OFFSET = {"train": 1, "test": 2, "ood": 3, "extra_source": 4}  # extra_source: benchmarks.false_invalid


@dataclass
class Case:
    """One volume of the benchmark. ``group``: train | val | source | unseen | ood; ``kind``: the style
    name (MR cases) or the OOD kind; ``labels`` is None for OOD cases."""

    anatomy: str
    group: str
    kind: str
    subject: int
    seed: int
    image: Volume
    labels: Volume | None = None

    @property
    def name(self) -> str:
        return f"{self.anatomy}_{self.kind}_{self.subject:02d}"


@dataclass(frozen=True)
class DataSpec:
    anatomy: str
    unseen_styles: tuple[str, ...]
    n_test: int = 6
    n_ood: int = 3
    scale: float = 1.0
    seed: int = 0


@dataclass
class AnatomyData:
    spec: DataSpec
    train: list[Case] = field(default_factory=list)
    val: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)   # source + unseen styles
    ood: list[Case] = field(default_factory=list)

    @property
    def source_style(self) -> str:
        return SOURCE_STYLE[self.spec.anatomy]


def resolve_unseen_styles(anatomy: str, requested: Sequence[str] | None, limit: int | None = None) -> tuple[str, ...]:
    """Unseen styles of ``anatomy``: the defaults, ``["all"]`` (every non-source style), or the requested
    names that exist for this anatomy (names of the other anatomy are skipped)."""
    source = SOURCE_STYLE[anatomy]
    names = [s.name for s in list_styles(anatomy) if s.name != source]
    if not requested:
        chosen = list(DEFAULT_UNSEEN[anatomy])
    elif list(requested) == ["all"]:
        chosen = names
    else:
        chosen = [s for s in requested if s in names]
        if not chosen:
            raise InputError(f"None of the styles {list(requested)} is an unseen {anatomy} style; choose from "
                             f"{', '.join(names)} (or 'all').")
    return tuple(chosen[:limit] if limit else chosen)


def check_styles_exist(anatomies: Sequence[str], requested: Sequence[str] | None) -> None:
    """Every requested style must be an unseen style of at least one anatomy (typos fail early)."""
    if not requested or list(requested) == ["all"]:
        return
    known = {s.name for a in anatomies for s in list_styles(a) if s.name != SOURCE_STYLE[a]}
    bad = [s for s in requested if s not in known]
    if bad:
        raise InputError(f"Unknown unseen style(s) {bad}; choose from {', '.join(sorted(known))} (or 'all').")


def _seeds(spec: DataSpec, which: str, n: int) -> list[int]:
    return [subject_seed(spec.seed * 100 + _SET_OFFSET[which], i) for i in range(n)]


def _job_list(spec: DataSpec) -> list[tuple]:
    """(group, kind, subject, seed) for every case of the anatomy, in a fixed order."""
    source = SOURCE_STYLE[spec.anatomy]
    jobs = []
    for i, s in enumerate(_seeds(spec, "train", N_TRAIN + N_VAL)):
        jobs.append(("train" if i < N_TRAIN else "val", source, i, s))
    for style in (source, *spec.unseen_styles):
        for i, s in enumerate(_seeds(spec, "test", spec.n_test)):
            jobs.append(("source" if style == source else "unseen", style, i, s))
    for kind in OOD_KINDS:
        for i, s in enumerate(_seeds(spec, "ood", spec.n_ood)):
            jobs.append(("ood", kind, i, s))
    return jobs


def _check_disjoint(spec: DataSpec) -> None:
    sets = [set(_seeds(spec, w, n)) for w, n in (("train", N_TRAIN + N_VAL), ("test", spec.n_test),
                                                  ("ood", spec.n_ood))]
    if any(a & b for i, a in enumerate(sets) for b in sets[i + 1:]):
        raise RuntimeError(f"subject seeds overlap between train/test/OOD sets for {spec}")


def _make(anatomy: str, group: str, kind: str, subject: int, seed: int, scale: float) -> Case:
    if group == "ood":
        return Case(anatomy, group, kind, subject, seed, make_ood(kind, anatomy, seed, scale=scale))
    image, labels = make_case(anatomy, kind, seed, scale=scale)
    return Case(anatomy, group, kind, subject, seed, image, labels)


def build_anatomy_data(spec: DataSpec, pool: Executor | None = None) -> AnatomyData:
    """Render every case of ``spec``, in ``pool`` when given (use a spawn-context pool, so the parent's
    CUDA state is never forked)."""
    return build_all([spec], pool)[spec.anatomy]


def build_all(specs: Sequence[DataSpec], pool: Executor | None = None) -> dict[str, AnatomyData]:
    """:func:`build_anatomy_data` for several anatomies, all their cases queued in ``pool`` at once."""
    queued = []
    for spec in specs:
        _check_disjoint(spec)
        for g, k, i, s in _job_list(spec):
            args = (spec.anatomy, g, k, i, s, spec.scale)
            queued.append((spec, pool.submit(_make, *args) if pool is not None else _make(*args)))
    out = {spec.anatomy: AnatomyData(spec) for spec in specs}
    for spec, item in queued:
        c = item if isinstance(item, Case) else item.result()
        d = out[spec.anatomy]
        {"train": d.train, "val": d.val, "ood": d.ood}.get(c.group, d.test).append(c)
    return out


def training_pairs(cases: Sequence[Case]) -> list[tuple[Volume, np.ndarray, str]]:
    """The (image, uint8 labels, name) triples :func:`gase.training.loop.train` takes."""
    return [(c.image, c.labels.array.astype(np.uint8), c.name) for c in cases]


def default_workers() -> int:
    """Processes for rendering and metrics: all but one core, at most 12."""
    return max(0, min(12, (os.cpu_count() or 1) - 1))
