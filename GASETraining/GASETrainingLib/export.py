"""Scene (and folders) -> a training set on disk that ``gase train`` reads.

Input: pairs of a volume node and a segmentation node, and/or folders of image and label files.
Output in ``folder``: ``images/<case>.nrrd``, ``labels/<case>.nrrd`` (uint8 label maps on the image's
own grid, values from one shared label table) and ``labels.json`` (that table: names, colours and
SNOMED-CT terminology of the segments).

Label values: segments are matched across segmentations by name (case and repeated spaces ignored).
Names in ``base_table`` (e.g. the anatomy's built-in table) keep their values, colours and codes; other
names get the next free values in order of first appearance, with the colour and terminology of the
first segment seen with that name. Only structures that occur enter the table. ``.seg.nrrd`` label
files from folders are matched by segment name the same way; plain label maps keep their voxel values.

Geometry: a label map is exported on its volume's voxel grid, and a linear parent transform of the
volume is applied to both (the files hold world RAS geometry, like "Harden transform" would).

>>> ts = export_training_set([TrainingPair(getNode("knee1"), getNode("knee1 labels")), ...], folder)  # doctest: +SKIP
>>> ts.table[0].name, ts.cases                                                                       # doctest: +SKIP
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import vtk

from gase.errors import InputError, TrainingDataError
from gase.labels import LabelInfo
from gase.volume import Volume, case_name, read_volume, write_volume

from GASESegmentationLib.nodes import matrix_to_array, volume_from_node
from GASESegmentationLib.results import labels_from_segmentation

LABELS_JSON = "labels.json"
DEFAULT_COLOR = (0.5, 0.5, 0.5)


@dataclass
class TrainingPair:
    """One labelled scan in the scene: a scalar volume node and the segmentation node that labels it."""

    volume: object
    segmentation: object
    name: str | None = None  # case name in the training set; default: the volume node's name


@dataclass
class TrainingSet:
    """A training set on disk, as ``gase train --images --labels --labels-json`` takes it."""

    folder: Path
    images_dir: Path
    labels_dir: Path
    labels_json: Path
    table: tuple[LabelInfo, ...]
    cases: list[str]

    @staticmethod
    def open(folder: Path) -> "TrainingSet":
        """A training set written earlier by :func:`export_training_set`."""
        folder = Path(folder)
        from gase.labels import labels_from_json

        table = labels_from_json(json.loads((folder / LABELS_JSON).read_text())["labels"])
        cases = [case_name(p) for p in sorted((folder / "images").iterdir()) if not p.name.startswith(".")]
        return TrainingSet(folder, folder / "images", folder / "labels", folder / LABELS_JSON, table, cases)


class LabelTable:
    """The shared table being built: segment name -> value, with colour and terminology.

    Entries of the base table reserve their values but enter the final table only when used (a segment
    of that name, or that value in a plain label map), so the model learns no structure nobody labelled.
    """

    def __init__(self, base: Sequence[LabelInfo] = ()):
        self.entries: dict[str, LabelInfo] = {_key(lab.name): lab for lab in base}
        self.used: set[str] = set()

    def value_of(self, lab: LabelInfo) -> int:
        key = _key(lab.name)
        if key not in self.entries:
            taken = {e.value for e in self.entries.values()}
            value = next(v for v in range(1, 256) if v not in taken)
            self.entries[key] = LabelInfo(value, lab.name.strip(), lab.color, lab.category, lab.type)
        self.used.add(key)
        return self.entries[key].value

    def use_values(self, values: Sequence[int], *, name_new: bool) -> None:
        """Values of a plain label map: known ones are used; with ``name_new``, unknown ones become
        "label <v>" (without, they stay unknown and the training-pair check reports them)."""
        by_value = {e.value: k for k, e in self.entries.items()}
        for v in sorted(set(int(x) for x in values) - {0}):
            if v in by_value:
                self.used.add(by_value[v])
            elif name_new:
                self.entries[_key(f"label {v}")] = LabelInfo(v, f"label {v}", DEFAULT_COLOR)
                self.used.add(_key(f"label {v}"))

    def table(self) -> tuple[LabelInfo, ...]:
        return tuple(sorted((e for k, e in self.entries.items() if k in self.used), key=lambda lab: lab.value))


def _key(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def safe_case_name(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique case name from a node name ("Knee #1" -> "Knee_1")."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "case"
    candidate, n = base, 2
    while candidate.casefold() in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate.casefold())
    return candidate


def world_volume(node) -> Volume:
    """The node's voxels with its IJK-to-world-RAS matrix (a linear parent transform applied)."""
    volume = volume_from_node(node)
    parent = node.GetParentTransformNode()
    if parent is None:
        return volume
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"Volume '{node.GetName()}' is under a non-linear transform. Harden the transform "
                         "(Data module, right-click the volume) before using it for training.")
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return Volume(volume.array, matrix_to_array(to_world) @ volume.ijk_to_ras)


def remap(labels: np.ndarray, local_table: Sequence[LabelInfo], table: LabelTable) -> np.ndarray:
    """Relabel (K, J, I) values of ``local_table`` to the shared table's values (uint8)."""
    lut = np.zeros(256, np.uint8)
    for lab in local_table:
        lut[lab.value] = table.value_of(lab)
    return lut[labels.astype(np.uint8)]


def export_training_set(pairs: Sequence[TrainingPair], folder: Path, *, folders: Sequence[tuple[Path, Path]] = (),
                        base_table: Sequence[LabelInfo] = (), check: bool = True) -> TrainingSet:
    """Write the scene pairs and the folders' image/label files as one training set in ``folder``.

    With ``check`` every pair is validated as ``gase train`` would (geometry, label table, empty labels,
    single slices, mixed anatomies), so the user sees a bad scan before a process starts. Raises
    :class:`gase.errors.TrainingDataError` / :class:`gase.errors.InputError` with the fix in the message.
    """
    # imported here: gase.training needs torch, which Start installs after the module has loaded
    from gase.training.data import check_pair, check_same_anatomy, match_pairs

    folder = Path(folder)
    table = LabelTable(base_table)
    taken: set[str] = set()
    collected: list[tuple[str, Volume, Volume]] = []  # (case, image, labels), world geometry
    for pair in pairs:
        if isinstance(pair, tuple):
            pair = TrainingPair(*pair)
        if pair.volume is None:
            raise InputError("A training pair has no volume. Select a volume for every segmentation.")
        if pair.segmentation is None:
            raise InputError(f"Volume '{pair.volume.GetName()}' has no segmentation selected. Pick the "
                             "segmentation that labels it, or remove the pair.")
        image = world_volume(pair.volume)
        labels, local = labels_from_segmentation(pair.segmentation, pair.volume)  # on the volume's own grid
        name = safe_case_name(pair.name or pair.volume.GetName(), taken)
        collected.append((name, image, Volume(remap(labels.array, local, table), image.ijk_to_ras)))
    # Plain label maps carry values, not names: without a table to check them against, their values
    # become the table ("label <v>"); with one (scene segments, base_table), unknown values are errors.
    name_values = not base_table and not collected
    for images_dir, labels_dir in folders:
        for img_path, lab_path in match_pairs(Path(images_dir), Path(labels_dir)):
            image = read_volume(img_path)
            if lab_path.name.lower().endswith(".seg.nrrd"):
                from gase.segfile import read_seg_nrrd

                labels, local = read_seg_nrrd(lab_path)
                labels = Volume(remap(labels.array, local, table), labels.ijk_to_ras)
            else:
                labels = read_volume(lab_path)
                values = np.unique(labels.array)
                table.use_values([int(v) for v in values if float(v).is_integer() and 0 < v < 256],
                                 name_new=name_values)
            collected.append((safe_case_name(case_name(img_path), taken), image, labels))
    if not collected:
        raise TrainingDataError("No training data: add volume + segmentation pairs, or a folder of images with "
                                "a folder of label maps.")
    final = table.table()
    arrays = []
    for name, image, labels in collected:
        if check:
            arrays.append(check_pair(image, labels, final, name))
        else:
            arrays.append(np.asarray(labels.array).astype(np.uint8))
    if check:
        check_same_anatomy([(image, lab, name) for (name, image, _), lab in zip(collected, arrays)], final)
    images_dir, labels_dir = folder / "images", folder / "labels"
    for (name, image, labels), array in zip(collected, arrays):
        write_volume(image, images_dir / f"{name}.nrrd", overwrite=True)
        write_volume(Volume(array, labels.ijk_to_ras), labels_dir / f"{name}.nrrd", overwrite=True)
    names = {n for n, _, _ in collected}
    for stale in list(images_dir.iterdir()) + list(labels_dir.iterdir()):  # cases of an earlier export
        if case_name(stale) not in names:
            stale.unlink()
    labels_json = folder / LABELS_JSON
    labels_json.write_text(json.dumps({"labels": [lab.to_json() for lab in final]}, indent=2) + "\n")
    return TrainingSet(folder, images_dir, labels_dir, labels_json, final, [n for n, _, _ in collected])
