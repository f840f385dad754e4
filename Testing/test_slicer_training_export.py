"""GASETrainingLib.export on real MRML nodes (slicer-core): scene pairs -> image/label files + labels.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gase.errors import InputError, TrainingDataError
from gase.labels import KNEE_LABELS, LabelInfo
from gase.volume import Volume, read_volume, write_volume


def _scene_pair(scene, image: Volume, labels: Volume, name: str, table=KNEE_LABELS):
    """A volume node and a segmentation node whose segments are ``table``'s, in ``table``'s order."""
    from GASESegmentationLib.nodes import add_volume_node
    from GASESegmentationLib.results import update_segmentation

    volume = add_volume_node(scene, image, name)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} labels")
    update_segmentation(seg, volume, labels, table)
    return volume, seg


@pytest.fixture
def knees(knee_cases, oblique_grid):
    """Three knee phantoms; the second put on an oblique, flipped grid (same voxels)."""
    out = [(img, lab) for img, lab in knee_cases[:3]]
    img, lab = out[1]
    m = oblique_grid(spacing=img.spacing, angles_deg=(8.0, -5.0, 12.0))
    out[1] = (Volume(img.array, m), Volume(lab.array, m))
    return out


def test_scene_pairs_export_to_files_with_one_label_table(mrml_scene, knees, tmp_path):
    from GASETrainingLib.export import TrainingPair, TrainingSet, export_training_set

    renamed = tuple(LabelInfo(lab.value, lab.name.upper() + "  ", (0.1 * lab.value, 0.2, 0.3), lab.category, lab.type)
                    for lab in KNEE_LABELS)
    pairs = []
    for n, (img, lab) in enumerate(knees):
        # the second segmentation lists its segments in reverse order and spells the names differently
        table = tuple(reversed(renamed)) if n == 1 else KNEE_LABELS
        volume, seg = _scene_pair(mrml_scene, img, lab, f"Knee #{n}", table)
        pairs.append(TrainingPair(volume, seg))
    ts = export_training_set(pairs, tmp_path / "set")
    assert ts.cases == ["Knee_0", "Knee_1", "Knee_2"]
    assert [lab.name for lab in ts.table] == [lab.name for lab in KNEE_LABELS]  # first seen spelling wins
    assert [lab.color for lab in ts.table] == [lab.color for lab in KNEE_LABELS]
    assert ts.table[0].type == ("SCT", "71341001", "Femur")  # terminology from the segments
    saved = json.loads(ts.labels_json.read_text())["labels"]
    assert [d["value"] for d in saved] == [1, 2, 3, 4] and saved[1]["name"] == "femoral cartilage"
    for case, (img, lab) in zip(ts.cases, knees):
        image, labels = read_volume(ts.images_dir / f"{case}.nrrd"), read_volume(ts.labels_dir / f"{case}.nrrd")
        assert np.array_equal(image.array, img.array)
        assert np.allclose(image.ijk_to_ras, img.ijk_to_ras, atol=1e-5)  # oblique, flipped grid kept
        assert labels.same_geometry(image)
        assert np.array_equal(labels.array, lab.array)  # same structure -> same value, whatever the order
    again = TrainingSet.open(ts.folder)
    assert again.cases == ts.cases and again.table == ts.table


def test_base_table_values_and_linear_transform(mrml_scene, knees, tmp_path):
    import vtk

    from GASETrainingLib.export import TrainingPair, export_training_set

    img, lab = knees[0]
    # segments only for femur and tibia, numbered 1 and 2 in the segmentation
    sub = Volume(np.select([lab.array == 1, lab.array == 3], [1, 2], 0).astype(np.uint8), lab.ijk_to_ras)
    table = (LabelInfo(1, "Femur", (1, 0, 0)), LabelInfo(2, "tibia", (0, 1, 0)))
    volume, seg = _scene_pair(mrml_scene, img, sub, "k0", table)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    seg.SetAndObserveTransformNodeID(transform.GetID())
    other = _scene_pair(mrml_scene, *knees[2], "k2")
    ts = export_training_set([TrainingPair(volume, seg), TrainingPair(*other)], tmp_path / "set",
                             base_table=KNEE_LABELS)
    labels = read_volume(ts.labels_dir / "k0.nrrd")
    assert set(np.unique(labels.array)) == {0, 1, 3}  # the built-in knee values, matched by name
    expected = img.ijk_to_ras.copy()
    expected[0, 3] += 12.5
    assert np.allclose(labels.ijk_to_ras, expected, atol=1e-5)  # world geometry: the transform applied
    assert [lab.value for lab in ts.table] == [1, 2, 3, 4]


def test_folders_join_the_scene_pairs(mrml_scene, knees, knee_cases, tmp_path):
    from gase.segfile import write_seg_nrrd
    from GASETrainingLib.export import TrainingPair, export_training_set

    pairs = [TrainingPair(*_scene_pair(mrml_scene, img, lab, f"s{n}")) for n, (img, lab) in enumerate(knees[:2])]
    img, lab = knee_cases[3]
    write_volume(img, tmp_path / "imgs" / "file3.nrrd")
    write_seg_nrrd(lab, tuple(reversed(KNEE_LABELS)), tmp_path / "labs" / "file3.seg.nrrd")
    ts = export_training_set(pairs, tmp_path / "set", folders=[(tmp_path / "imgs", tmp_path / "labs")])
    assert ts.cases == ["s0", "s1", "file3"]
    assert np.array_equal(read_volume(ts.labels_dir / "file3.nrrd").array, lab.array)


def test_bad_scene_data_is_refused_before_training(mrml_scene, knees, knee_cases, tmp_path):
    from GASETrainingLib.export import TrainingPair, export_training_set

    volume, seg = _scene_pair(mrml_scene, *knees[0], "a")
    with pytest.raises(InputError, match="has no segmentation selected"):
        export_training_set([TrainingPair(volume, None)], tmp_path / "x")
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(TrainingDataError, match="empty"):
        export_training_set([TrainingPair(volume, seg), TrainingPair(volume, empty, "b")], tmp_path / "x")
    # different structures in each scan: names that share nothing
    img, lab = knees[1]
    other_table = tuple(LabelInfo(t.value, f"organ {t.value}", t.color) for t in KNEE_LABELS)
    v2, s2 = _scene_pair(mrml_scene, img, lab, "b", other_table)
    with pytest.raises(TrainingDataError, match="Mixed anatomies"):
        export_training_set([TrainingPair(volume, seg), TrainingPair(v2, s2)], tmp_path / "x")
    # a folder label map on another grid
    moved = Volume(knee_cases[3][1].array, knee_cases[3][1].ijk_to_ras + np.diag([0, 0, 0, 0.0]))
    moved.ijk_to_ras[1, 3] += 4.0
    write_volume(knee_cases[3][0], tmp_path / "i" / "c.nrrd")
    write_volume(moved, tmp_path / "l" / "c.nrrd")
    with pytest.raises(TrainingDataError, match="different geometry"):
        export_training_set([TrainingPair(volume, seg)], tmp_path / "x", folders=[(tmp_path / "i", tmp_path / "l")])
    with pytest.raises(TrainingDataError, match="No training data"):
        export_training_set([], tmp_path / "x")


def test_the_training_module_loads_without_torch():
    """Slicer imports GASETraining.py (and with it GASETrainingLib.logic) at start-up, before Start installs
    torch: that import must not need torch (or scikit-learn), or the module would not load at all."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; import GASETrainingLib.logic, GASESegmentationLib.messages; "
            "print('torch' in sys.modules, 'sklearn' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in
                                                       (root / "GASETraining", root / "GASESegmentation", root))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
