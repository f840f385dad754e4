"""Shared pytest fixtures: a real MRML scene from the ``slicer-core`` wheel (no fake ``slicer`` module).

``slicer_app_logic`` is a ``vtkSlicerApplicationLogic`` on a fresh scene with the module logics the
Slicer application would register (Colors, Volumes, Segmentations), empty slice/view logic collections
(offscreen renderers add theirs), the default slice orientation presets and the colour legend node
class. ``mrml_scene`` is its scene. For the fixture's duration ``slicer.mrmlScene`` is that scene, so
``slicer.util`` helpers that use it work; ``slicer.app`` and ``slicer.modules`` stay absent, as the
module libraries must not need them.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:  # the fixtures import gase lazily, after the environment is set up
    from gase.result import SegmentationResult
    from gase.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
for module_dir in ("GASESegmentation", "GASETraining"):
    if (ROOT / module_dir).is_dir() and str(ROOT / module_dir) not in sys.path:
        sys.path.insert(0, str(ROOT / module_dir))

# Tests start background processes (CLI runs, DDP ranks) beside the pytest process: idle OpenMP threads
# must sleep, not spin, or two processes on two cores slow each other down many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Offscreen rendering without X: go straight to EGL (Mesa) instead of failing over from X first.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


@pytest.fixture
def one_thread(monkeypatch):
    """The test volumes are small: one thread beats two, which wait for each other on a busy machine
    (every operation would pay for the second thread's wake-up). The CLI reads OMP_NUM_THREADS."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def slicer_app_logic(monkeypatch):
    slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is needed for MRML tests")
    import vtk

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    home = tempfile.mkdtemp(prefix="gase-slicer-home-")
    app.SetHomeDirectory(home)
    app.SetTemporaryPath(home)
    os.makedirs(os.path.join(home, "share", "ColorFiles"))  # the colour logic scans it (empty here)
    app.SetShareDirectory("share")  # relative to the home directory, as in an installed Slicer
    app.SetMRMLScene(scene)
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    logics = []
    # Colours first: the volumes logic looks up default colour tables it creates.
    for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics.append(logic)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    app._gase_keep_alive = logics  # the Python wrappers must outlive the test
    yield app
    scene.Clear(True)
    shutil.rmtree(home, ignore_errors=True)  # ~800 of these piled up in /tmp before


@pytest.fixture
def mrml_scene(slicer_app_logic):
    return slicer_app_logic.GetMRMLScene()


def make_oblique_ijk_to_ras(spacing=(0.7, 0.8, 2.0), angles_deg=(20.0, -10.0, 30.0), flips=(1, -1, 1),
                            origin=(10.0, -20.0, 30.0)):
    """An oblique, axis-flipped (left-handed) 4x4 IJK-to-RAS matrix: the geometry that breaks sloppy code."""
    import numpy as np

    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx @ np.diag(np.asarray(flips, float)) @ np.diag(np.asarray(spacing, float))
    m[:3, 3] = origin
    return m


@pytest.fixture
def oblique_grid():
    """Factory of oblique, flipped IJK-to-RAS matrices (see :func:`make_oblique_ijk_to_ras`)."""
    return make_oblique_ijk_to_ras


# ---------------------------------------------------------------------------------------------
# Core fixtures: small phantom data and a tiny trained model, built once per test session.
# ---------------------------------------------------------------------------------------------

TINY_SCALE = 0.5


@pytest.fixture(scope="session")
def knee_cases():
    """Five small knee phantoms in the source style: list of (image Volume, label Volume)."""
    from gase.phantoms import SOURCE_STYLE, make_case

    return [make_case("knee", SOURCE_STYLE["knee"], seed, scale=TINY_SCALE) for seed in range(5)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, knee_cases):
    """A GASE model folder trained for a few iterations on small knee phantoms (CPU, ~20 s).

    Good enough for shapes, geometry, safety and plumbing; not for accuracy claims.
    """
    import torch

    from gase.labels import KNEE_LABELS
    from gase.training.config import TrainConfig
    from gase.training.loop import train

    torch.set_num_threads(1)  # one thread: with other test processes on the cores, a second thread only waits
    out = tmp_path_factory.mktemp("tiny_model")
    pairs = [(img, lab.array.astype("uint8"), f"case{n}") for n, (img, lab) in enumerate(knee_cases)]
    cfg = TrainConfig(method="gase", iterations=12, batch_size=4, crop=64, val_every=12, checkpoint_every=6,
                      device="cpu", seed=0)
    train(pairs[:3], pairs[3:4], KNEE_LABELS, out, cfg, anatomy="knee", plane="sagittal", name="tiny-knee")
    return out


def make_knee_result(ijk_to_ras=None, shape=(40, 72, 72), *, valid: bool = True, seed: int = 0):
    """A deterministic knee-like ``SegmentationResult`` on any grid, with its MR-like image.

    Femur and tibia (ellipsoids, in RAS mm about the grid's centre) with cartilage shells in the joint,
    an image with MR-like contrast and noise, and a confidence map that is low near label boundaries plus
    one planted low-confidence blob (radius ``BLOB_RADIUS_MM``, confidence 0.15) at ``BLOB_OFFSET`` from
    the centre, in the joint on the femoral cartilage. Returns a :class:`KneeCase` (image, result,
    blob_ras); arrays are (K, J, I).
    """
    import numpy as np
    from scipy import ndimage

    from gase.labels import KNEE_LABELS
    from gase.result import SegmentationResult, Validity
    from gase.volume import Volume

    if ijk_to_ras is None:  # sagittal slices (R grows with k), rows superior to inferior
        ijk_to_ras = np.array([[0.0, 0.0, 1.2, -24.0], [-1.0, 0.0, 0.0, 36.0], [0.0, -1.0, 0.0, 36.0],
                               [0.0, 0.0, 0.0, 1.0]])
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    ras = np.einsum("rc,c...->r...", m[:3, :3], np.stack([i, j, k])) + m[:3, 3, None, None, None]
    centre = m[:3, :3] @ ((np.asarray(shape[::-1], dtype=np.float64) - 1) / 2) + m[:3, 3]
    x, y, z = ras - centre[:, None, None, None]
    blob_ras = tuple(float(c) for c in centre + BLOB_OFFSET)

    def ellipsoid(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2

    femur = ellipsoid((0, 0, 20), (22, 20, 18)) <= 1
    tibia = ellipsoid((0, 0, -19), (22, 20, 16)) <= 1
    fem_cart = (ellipsoid((0, 0, 20), (25, 23, 21)) <= 1) & ~femur & (z < 8)
    tib_cart = (ellipsoid((0, 0, -19), (25, 23, 19)) <= 1) & ~tibia & (z > -6) & ~fem_cart
    labels = np.zeros(shape, np.uint8)
    labels[femur], labels[fem_cart], labels[tibia], labels[tib_cart] = 1, 2, 3, 4

    rng = np.random.default_rng(seed)
    image = np.full(shape, 70.0)
    image[femur | tibia] = 45.0
    image[fem_cart | tib_cart] = 170.0
    image[(np.abs(x) > 28) | (np.abs(y) > 28)] = 20.0  # darker surroundings
    image = ndimage.gaussian_filter(image, 0.7) + rng.normal(0.0, 6.0, shape)

    spacing_kji = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    edges = np.zeros(shape, bool)
    for axis in range(3):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edges[tuple(lo)] |= diff
        edges[tuple(hi)] |= diff
    distance = ndimage.distance_transform_edt(~edges, sampling=spacing_kji)
    confidence = 1.0 - 0.45 * np.exp(-(distance ** 2) / (2 * 1.0 ** 2))
    blob = (x - BLOB_OFFSET[0]) ** 2 + (y - BLOB_OFFSET[1]) ** 2 + (z - BLOB_OFFSET[2]) ** 2 <= BLOB_RADIUS_MM ** 2
    confidence[blob] = 0.15
    confidence = confidence.astype(np.float32)

    n_slices = shape[0]
    scores = (1.1 if valid else 3.4) + 0.2 * rng.standard_normal(n_slices)
    split = rng.uniform(-0.3, 0.3, n_slices)  # within / off the manifold, their mean is the slice score
    validity = Validity(valid, float(np.median(scores)), 2.0, scores.astype(np.float32),
                        embedding_2d=(rng.normal(0.3 if valid else 4.0, 0.4, (n_slices, 2))).astype(np.float32),
                        reference_2d=rng.normal(0.0, 1.0, (300, 2)).astype(np.float32),
                        distances_2d=np.stack([scores * (1 + split), scores * (1 - split)], 1).astype(np.float32),
                        reference_distances=rng.lognormal(0.0, 0.25, (300, 2)).astype(np.float32))
    counts = np.bincount(labels.ravel(), minlength=5)
    sums = np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=5)
    per_label = {lab.name: float(sums[lab.value] / counts[lab.value]) for lab in KNEE_LABELS}
    dice = dict(zip([lab.name for lab in KNEE_LABELS], (0.93, 0.71, 0.9, 0.64)))  # a model's own estimates
    stability = dict(zip([lab.name for lab in KNEE_LABELS], (0.97, 0.86, 0.95, 0.82)))
    validity = validity.with_stability(float(np.mean(list(stability.values()))))  # as the predictor does
    result = SegmentationResult(Volume(labels, m.copy()), Volume(confidence, m.copy()), KNEE_LABELS,
                                float(sums[1:].sum() / counts[1:].sum()), per_label, validity,
                                model_name="synthetic 0", expected_dice_overall=float(np.mean(list(dice.values()))),
                                expected_dice_per_label=dice, stability_per_label=stability,
                                stability_overall=float(np.mean(list(stability.values()))))
    return KneeCase(Volume(image.astype(np.float32), m.copy()), result, blob_ras)


class KneeCase(NamedTuple):
    image: "Volume"
    result: "SegmentationResult"
    blob_ras: tuple


BLOB_OFFSET = (6.0, 0.0, 0.5)  # from the grid centre: in the joint, on the femoral cartilage
BLOB_RADIUS_MM = 3.5


@pytest.fixture
def knee_result():
    """Factory: ``knee_result(ijk_to_ras=None, shape=..., valid=True)`` -> (image, result, blob_ras); see
    :func:`make_knee_result`."""
    return make_knee_result
