"""``GASESegmentationLogic``: the GASE Segmentation module without its GUI (MRML nodes in, MRML nodes out).

From Slicer's Python console::

    from GASESegmentationLib import GASESegmentationLogic
    logic = GASESegmentationLogic()
    out = logic.process(getNode("knee"))                    # shipped demo model, device "auto"
    out.verdict.valid, out.verdict.score                     # input-validity verdict
    regions = logic.review_regions(out, threshold=0.5)       # low-confidence regions, largest first
    logic.center_on(out, regions[0])                         # slice views centred on the first one
    logic.create_review_segment(out, threshold=0.5)          # "review" segment for the Segment Editor

:meth:`GASESegmentationLogic.process` blocks until the result is in the scene; the module's panel
uses :meth:`~GASESegmentationLogic.start` / :meth:`~GASESegmentationLogic.finish` instead and polls
the background process from a timer, so Slicer stays responsive.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gase.errors import GeometryError, InputError
from gase.model_card import (ModelCard, default_model_folder, install_model, list_models, load_card, threshold_is_outdated,
                              user_models_dir)
from gase.orientation import PLANES, Reorientation, plane_of_slices, reorientation_for
from gase.result import SegmentationResult, Validity
from gase.volume import Volume, write_volume

from . import results, review, tables, views
from .manifold import write_manifold_png
from .nodes import ijk_to_ras_of, volume_from_node
from .outputs import check_fields, load_result
from .process import SegmentationProcess, segment_command
from .verdict import Verdict

VALIDITY_ATTRIBUTE = "GASE.Validity"
PLANE_ATTRIBUTE = "GASE.Plane"
MODEL_ATTRIBUTE = "GASE.Model"
RELIABILITY_ATTRIBUTE = "GASE.Reliability"
SEGMENTED_BY_ATTRIBUTE = "GASE.SegmentedBy"  # which network segmented (models with a source expert), else ""
DEFAULT_THRESHOLD = 0.5
DEFAULT_OPACITY = 0.5


@dataclass
class SegmentationOutputs:
    """Everything one run put in the scene for one input volume, plus what explains it."""

    input_volume: object
    segmentation: object
    confidence: object
    reliability_table: object
    slice_plot: tables.SlicePlot
    validity: Validity
    plane: str
    reliability: float | None = None  # the model's expected Dice, mean over structures
    model_name: str = ""
    segmented_by: str = ""  # SegmentationResult.segmenter_text() (models with a source expert), else ""

    @property
    def verdict(self) -> Verdict:
        return Verdict.from_validity(self.validity, self.reliability, self.segmented_by or None)


@dataclass
class Run:
    """A segmentation running in the background for one input volume (see :meth:`GASESegmentationLogic.start`)."""

    input_volume: object
    card: ModelCard
    process: SegmentationProcess
    workdir: Path
    grid: np.ndarray
    device: str = "auto"
    extra: dict = field(default_factory=dict)

    def poll(self):
        return self.process.poll()

    @property
    def done(self) -> bool:
        return self.process.done

    def cancel(self) -> None:
        self.process.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class GASESegmentationLogic:
    """Qt-free logic of the module; every method works from the Python console (see the module docstring).

    ``models_dirs``: extra folders to look for model folders in, besides the shipped models and the
    user's models folder (``~/.gase/models``, where :meth:`install_model` copies to).
    """

    def __init__(self, models_dirs: Sequence[Path] = ()):
        self.models_dirs = [Path(p) for p in models_dirs]

    # -- models ---------------------------------------------------------------------------------
    def models(self) -> list[ModelCard]:
        """Model cards of the shipped demo model, the user's installed models and ``models_dirs``."""
        return list_models(self.models_dirs)

    @staticmethod
    def default_model_folder() -> Path:
        return default_model_folder()

    @staticmethod
    def install_model(source, models_dir: Path | None = None, *, overwrite: bool = False) -> ModelCard:
        """Validate and copy a model folder or ``.zip`` into the user's models folder."""
        return install_model(Path(source), models_dir or user_models_dir(), overwrite=overwrite)

    @staticmethod
    def model_info(card: ModelCard) -> str:
        """The model selector's description of ``card`` (rich text), with a line when its validity threshold
        was set by an earlier rule (:meth:`update_validity_threshold` sets this version's)."""
        labels = ", ".join(lab.name for lab in card.labels)
        text = f"<small>{card.anatomy} {card.modality}, {card.plane} slices; {labels}.<br/>{card.description}"
        if GASESegmentationLogic.validity_threshold_outdated(card):
            text += ("<br/><b>Its validity threshold follows an earlier rule</b> (more valid scans called "
                     "invalid): <i>Update threshold</i> sets this version's.")
        return text + "</small>"

    @staticmethod
    def validity_threshold_outdated(card: ModelCard) -> bool:
        """Whether ``card``'s validity threshold was set by an earlier rule and can be updated from the held-out
        scores the card stores (:func:`gase.model_card.threshold_is_outdated`; no torch needed)."""
        return threshold_is_outdated(card)

    @staticmethod
    def update_validity_threshold(folder) -> tuple[float, float]:
        """Give the model in ``folder`` this version's validity threshold (``gase models --recalibrate``); the
        earlier threshold stays in its card. Returns (old, new). A card without held-out scores: InputError."""
        from gase.training.validity_fit import recalibrate_threshold

        try:
            return recalibrate_threshold(Path(folder))
        except ValueError as exc:
            raise InputError(f"{folder}: the model card stores no held-out validity scores (a model exported "
                             "before 2026-12-05), so its threshold cannot be updated here; train the model "
                             "again with this version.") from exc

    # -- running ---------------------------------------------------------------------------------
    def start(self, input_volume, model_folder=None, device: str = "auto") -> Run:
        """Start segmenting ``input_volume`` in a background process; poll the returned :class:`Run`."""
        if results.is_module_node(input_volume):
            raise InputError(f"'{input_volume.GetName()}' is an output of GASE Segmentation. Select the MR "
                             "image itself as input.")
        volume = volume_from_node(input_volume)
        folder = Path(model_folder) if model_folder else self.default_model_folder()
        card = load_card(folder, verify=False)  # the process verifies checksums before loading weights
        workdir = Path(tempfile.mkdtemp(prefix="gase-segment-"))
        try:
            image = write_volume(volume, workdir / "input.nrrd", compress=False)
            process = SegmentationProcess.start(segment_command(image, folder, workdir / "out", device))
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return Run(input_volume, card, process, workdir, volume.ijk_to_ras.copy(), device)

    def finish(self, run: Run, *, threshold: float = DEFAULT_THRESHOLD, opacity: float = DEFAULT_OPACITY,
               show: bool = True, show_3d: bool = False) -> SegmentationOutputs:
        """Load a finished run's outputs into the scene (and delete its temporary files)."""
        try:
            outputs = run.process.wait()  # returns at once for a finished run; raises its error otherwise
            result = load_result(outputs, grid=run.grid)
        finally:
            run.cleanup()
        return self.show_result(run.input_volume, result, plane=run.card.plane, threshold=threshold,
                                opacity=opacity, show=show, show_3d=show_3d)

    def process(self, inputVolumeNode, modelFolder=None, device: str = "auto", *,
                threshold: float = DEFAULT_THRESHOLD, opacity: float = DEFAULT_OPACITY,
                progress: Callable[[float, str], None] | None = None, cancel: Callable[[], bool] | None = None,
                show: bool = True, show_3d: bool = False, timeout_s: float | None = None) -> SegmentationOutputs:
        """Segment ``inputVolumeNode`` and put the results in the scene; blocks until done.

        :param inputVolumeNode: the MR volume (``vtkMRMLScalarVolumeNode``), any orientation.
        :param modelFolder: a model folder (with ``model.json``); default: the shipped knee demo model.
        :param device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
        :param threshold: confidence threshold (0..1) of the overlay and the review tools.
        :param progress: called as ``progress(fraction, message)`` while it runs.
        :param cancel: polled; return True to stop (raises :class:`gase.errors.CancelledError`).
        :param show: put the input and the confidence overlay in the slice views.
        :param show_3d: also build the segments' 3D surfaces.
        :returns: :class:`SegmentationOutputs` (segmentation, confidence, tables, verdict).

        Re-running on the same input updates the same output nodes; nodes the user made are never touched.
        """
        run = self.start(inputVolumeNode, modelFolder, device)
        try:
            run.process.wait(progress=progress, cancel=cancel, timeout_s=timeout_s)
        except BaseException:
            run.cancel()
            raise
        return self.finish(run, threshold=threshold, opacity=opacity, show=show, show_3d=show_3d)

    # -- results in the scene --------------------------------------------------------------------
    def show_result(self, input_volume, result: SegmentationResult, *, plane: str | None = None,
                    threshold: float = DEFAULT_THRESHOLD, opacity: float = DEFAULT_OPACITY, show: bool = True,
                    show_3d: bool = False) -> SegmentationOutputs:
        """Put a :class:`SegmentationResult` (on ``input_volume``'s grid) into the scene as the module's
        outputs for that volume: segmentation, confidence overlay, reliability table, slice plot."""
        plane = plane if plane in PLANES else plane_of_slices(result.labels)
        nodes = results.show_result(input_volume, result, threshold=threshold, show_3d=show_3d)
        reliability = None if not np.isfinite(result.expected_dice_overall) else float(result.expected_dice_overall)
        conf = nodes.confidence
        conf.SetAttribute(VALIDITY_ATTRIBUTE, json.dumps(_validity_json(result.validity)))
        conf.SetAttribute(PLANE_ATTRIBUTE, plane)
        conf.SetAttribute(MODEL_ATTRIBUTE, result.model_name)
        conf.SetAttribute(RELIABILITY_ATTRIBUTE, "" if reliability is None else repr(reliability))
        conf.SetAttribute(SEGMENTED_BY_ATTRIBUTE, result.segmenter_text() or "")
        rows = tables.reliability_rows(result.labels, result.confidence, result.label_table, threshold,
                                       result.reliability_per_label,
                                       {**result.expected_dice_per_label, tables.ALL_STRUCTURES: reliability},
                                       removed_by_postprocessing(result),
                                       {**result.stability_per_label, tables.ALL_STRUCTURES: result.stability_overall})
        table = tables.update_reliability_table(input_volume, rows)
        mean, low = review.slice_confidence(result.labels, result.confidence, _slices_of(result.labels, plane),
                                            threshold)
        plot = tables.update_slice_plot(input_volume, mean, low, plane, threshold)
        if show:
            views.show_in_slice_views(input_volume.GetScene(), input_volume, conf, opacity)
        return SegmentationOutputs(input_volume, nodes.segmentation, conf, table, plot, result.validity, plane,
                                   reliability, result.model_name, result.segmenter_text() or "")

    def outputs_for(self, input_volume) -> SegmentationOutputs | None:
        """The outputs an earlier run left in the scene for ``input_volume`` (None if there are none)."""
        nodes = results.find_outputs(input_volume)
        if nodes is None or not nodes.confidence.GetAttribute(VALIDITY_ATTRIBUTE):
            return None
        conf = nodes.confidence
        scene = input_volume.GetScene()
        table = results.find_output(scene, tables.ROLE_RELIABILITY, input_volume, "vtkMRMLTableNode")
        plot = tables.SlicePlot(results.find_output(scene, tables.ROLE_SLICE_TABLE, input_volume, "vtkMRMLTableNode"),
                                results.find_output(scene, tables.ROLE_SLICE_CHART, input_volume,
                                                    "vtkMRMLPlotChartNode"))
        rel = conf.GetAttribute(RELIABILITY_ATTRIBUTE)
        return SegmentationOutputs(input_volume, nodes.segmentation, conf, table, plot,
                                   _validity_from_json(json.loads(conf.GetAttribute(VALIDITY_ATTRIBUTE))),
                                   conf.GetAttribute(PLANE_ATTRIBUTE) or "axial", float(rel) if rel else None,
                                   conf.GetAttribute(MODEL_ATTRIBUTE) or "", conf.GetAttribute(SEGMENTED_BY_ATTRIBUTE) or "")

    # -- review ----------------------------------------------------------------------------------
    def current_volumes(self, outputs: SegmentationOutputs) -> tuple[Volume, Volume, tuple]:
        """(labels as the segments are now, confidence, label table), on the input's voxel grid."""
        labels, table = results.labels_from_segmentation(outputs.segmentation, outputs.input_volume)
        return labels, volume_from_node(outputs.confidence), table

    def set_threshold(self, outputs: SegmentationOutputs, threshold: float) -> None:
        """New confidence threshold: overlay, reliability table ("below threshold") and slice plot follow."""
        results.set_threshold(outputs.confidence, threshold)
        labels, confidence, table = self.current_volumes(outputs)
        dice, reliability, removed, stability = tables.model_numbers(outputs.reliability_table)  # the model's own
        outputs.reliability_table = tables.update_reliability_table(                           # numbers stay
            outputs.input_volume, tables.reliability_rows(labels, confidence, table, threshold, reliability, dice,
                                                          removed, stability))
        mean, low = review.slice_confidence(labels, confidence, _slices_of(labels, outputs.plane), threshold)
        outputs.slice_plot = tables.update_slice_plot(outputs.input_volume, mean, low, outputs.plane, threshold)

    @staticmethod
    def set_opacity(outputs: SegmentationOutputs, opacity: float) -> None:
        views.set_overlay_opacity(outputs.input_volume.GetScene(), outputs.confidence, opacity)

    def review_regions(self, outputs: SegmentationOutputs, threshold: float = DEFAULT_THRESHOLD, *,
                       sort_by: str = "size", margin_mm: float = 3.0,
                       min_voxels: int = 5) -> list[review.ReviewRegion]:
        """Connected regions with confidence below ``threshold`` in or near the (current) segments."""
        labels, confidence, table = self.current_volumes(outputs)
        return review.find_regions(labels, confidence, table, threshold, margin_mm=margin_mm,
                                   min_voxels=min_voxels, sort_by=sort_by)

    @staticmethod
    def center_on(outputs_or_scene, region_or_ras) -> None:
        """Centre the slice views on a :class:`~.review.ReviewRegion` (or a RAS point)."""
        scene = outputs_or_scene.input_volume.GetScene() if isinstance(outputs_or_scene, SegmentationOutputs) \
            else outputs_or_scene
        ras = region_or_ras.centroid_ras if isinstance(region_or_ras, review.ReviewRegion) else region_or_ras
        views.center_on(scene, ras)

    def create_review_segment(self, outputs: SegmentationOutputs, threshold: float = DEFAULT_THRESHOLD, *,
                              margin_mm: float = 3.0) -> str:
        """Add a "review" segment of the low-confidence voxels to the output segmentation (replacing an
        earlier one); returns its segment ID. Edit it, or the structures, in the Segment Editor."""
        labels, confidence, _ = self.current_volumes(outputs)
        mask = review.low_confidence_mask(labels, confidence, threshold, margin_mm=margin_mm)
        return results.set_review_segment(outputs.segmentation, mask, threshold)

    def jump_to_slice(self, outputs: SegmentationOutputs, index: int) -> tuple[float, float, float]:
        """Move the slice views through canonical slice ``index`` of the model plane (a slice-plot point)."""
        grid = _GridOnly.of_node(outputs.input_volume)
        return views.jump_to_slice(outputs.input_volume.GetScene(), grid, _slices_of(grid, outputs.plane), index)

    @staticmethod
    def write_manifold_png(outputs: SegmentationOutputs, path) -> Path:
        """The style-manifold picture explaining the verdict, as a PNG."""
        return write_manifold_png(outputs.validity, path)


def removed_by_postprocessing(result: SegmentationResult) -> dict[str, float]:
    """mL the model's post-processing removed per structure it applies to (0.0 where it removed nothing);
    empty for a model without post-processing."""
    post = result.extra.get("postprocessing") or {}
    removed = post.get("removed_ml") or {}
    return {name: float(removed.get(name, 0.0)) for name in post.get("kept_largest_component", [])}


def _slices_of(volume, plane: str) -> Reorientation:
    """The model plane's slice order of ``volume``; the stored slice order (k) when the volume is too
    oblique for that plane (a result the predictor made cannot be, but a scripted one can)."""
    try:
        return reorientation_for(volume, plane)
    except GeometryError:
        return Reorientation((0, 1, 2), (False, False, False), tuple(volume.spacing[::-1]))


class _GridOnly:
    """Shape and geometry of a volume without voxels, for the functions that only need those."""

    def __init__(self, shape: tuple[int, int, int], ijk_to_ras: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)

    @staticmethod
    def of_node(node) -> "_GridOnly":
        dims = node.GetImageData().GetDimensions()
        return _GridOnly((dims[2], dims[1], dims[0]), ijk_to_ras_of(node))

    @property
    def spacing(self):
        return tuple(float(x) for x in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    @property
    def direction(self):
        return self.ijk_to_ras[:3, :3] / np.asarray(self.spacing)[None, :]


def _validity_json(validity: Validity) -> dict:
    def points(a):
        return None if a is None else np.round(np.asarray(a, dtype=np.float64), 4).tolist()

    data = validity.to_json()
    for key in ("embedding_2d", "reference_2d", "distances_2d", "reference_distances"):
        data[key] = points(getattr(validity, key))
    return data


def _validity_from_json(data: dict) -> Validity:
    def points(a):
        return None if a is None else np.asarray(a, dtype=np.float32).reshape(-1, 2)

    scores = np.asarray([np.nan if s is None else s for s in data.get("slice_scores", [])], dtype=np.float32)
    return Validity(bool(data["valid"]), float(data["score"]), float(data["threshold"]), scores,
                    points(data.get("embedding_2d")), points(data.get("reference_2d")),
                    points(data.get("distances_2d")), points(data.get("reference_distances")), **check_fields(data))
