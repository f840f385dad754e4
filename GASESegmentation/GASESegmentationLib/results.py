"""A :class:`gase.result.SegmentationResult` -> the module's output nodes in the scene.

Outputs per input volume: a segmentation node (named, coloured segments with SNOMED-CT terminology,
on the input's exact voxel grid) and a confidence volume shown as a colour overlay (module colour
table, window 0..1, only voxels below the confidence threshold visible, colour legend).

Ownership: the module marks each node it creates with ``GASE.Role`` and with ``GASE.NodeID`` set to
the node's own ID, and references its input volume. A re-run for the same input updates exactly those
nodes. A node the user made - including a clone of an output (a clone gets a new ID, so its
``GASE.NodeID`` no longer matches) - is never modified.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

import slicer
from gase.labels import LabelInfo
from gase.result import SegmentationResult
from gase.segfile import segment_id
from gase.volume import Volume

from .nodes import ijk_to_ras_of, oriented_image, set_volume

ROLE_ATTRIBUTE = "GASE.Role"
OWNER_ATTRIBUTE = "GASE.NodeID"
INPUT_REFERENCE = "gaseInputVolume"

ROLE_SEGMENTATION = "segmentation"
ROLE_CONFIDENCE = "confidence"
ROLE_COLORS = "confidence-colors"

REVIEW_SEGMENT_ID = "gase_review"
REVIEW_COLOR = (1.0, 0.0, 1.0)  # magenta: not an anatomical colour, stands out on grey and on the overlay
BINARY_LABELMAP = "Binary labelmap"

# Confidence colours: low confidence red, through orange and yellow, to pale yellow at 1. Read with the
# threshold, only the low (red-to-yellow) end is ever drawn over the image.
CONFIDENCE_COLORS = ((0.0, (0.70, 0.0, 0.0)), (0.25, (0.95, 0.15, 0.0)), (0.5, (1.0, 0.55, 0.0)),
                     (0.75, (1.0, 0.90, 0.10)), (1.0, (1.0, 1.0, 0.75)))


@dataclass
class OutputNodes:
    """The module's output nodes for one input volume."""

    input_volume: object
    segmentation: object
    confidence: object


# ---------------------------------------------------------------------------------------------
# Ownership
# ---------------------------------------------------------------------------------------------

def is_module_node(node, role: str | None = None) -> bool:
    """True for a node this module created (and still owns), optionally of a given role."""
    if node is None or node.GetAttribute(OWNER_ATTRIBUTE) != node.GetID():
        return False
    return role is None or node.GetAttribute(ROLE_ATTRIBUTE) == role


def claim(node, role: str, input_node=None) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(OWNER_ATTRIBUTE, node.GetID())
    if input_node is not None:
        node.SetNodeReferenceID(INPUT_REFERENCE, input_node.GetID())


def find_output(scene, role: str, input_node, class_name: str = "vtkMRMLNode"):
    """The module's node of ``role`` made for ``input_node``, or None."""
    nodes = scene.GetNodesByClass(class_name)
    for n in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(n)
        if is_module_node(node, role) and node.GetNodeReferenceID(INPUT_REFERENCE) == input_node.GetID():
            return node
    return None


def input_of(node):
    """The input volume an output node was made for (None for user nodes)."""
    return node.GetNodeReference(INPUT_REFERENCE) if is_module_node(node) else None


def find_outputs(input_node) -> OutputNodes | None:
    """Existing outputs for ``input_node`` (None when it has not been segmented yet)."""
    scene = input_node.GetScene()
    seg = find_output(scene, ROLE_SEGMENTATION, input_node, "vtkMRMLSegmentationNode")
    conf = find_output(scene, ROLE_CONFIDENCE, input_node, "vtkMRMLScalarVolumeNode")
    if seg is None or conf is None:
        return None
    return OutputNodes(input_node, seg, conf)


def owned_node(scene, class_name: str, role: str, input_node, name: str):
    """The module's node of ``role`` for ``input_node``, created (and claimed) if missing."""
    node = find_output(scene, role, input_node, class_name)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        claim(node, role, input_node)
    return node


# ---------------------------------------------------------------------------------------------
# Whole result
# ---------------------------------------------------------------------------------------------

def show_result(input_node, result: SegmentationResult, *, threshold: float = 0.5,
                show_3d: bool = False) -> OutputNodes:
    """Create or update the segmentation and confidence nodes of ``input_node`` from ``result``.

    ``result.labels`` and ``result.confidence`` must be on the input's voxel grid (the predictor and the
    CLI guarantee it); a mismatch raises ``ValueError`` rather than showing a misaligned result.
    """
    scene = input_node.GetScene()
    grid = ijk_to_ras_of(input_node)
    for vol, what in ((result.labels, "labels"), (result.confidence, "confidence")):
        dims = input_node.GetImageData().GetDimensions()
        if vol.shape != (dims[2], dims[1], dims[0]) or not np.allclose(vol.ijk_to_ras, grid, atol=1e-4):
            raise ValueError(f"The {what} are not on the input volume's voxel grid; refusing to show a "
                             "misaligned result.")
    base = input_node.GetName()
    seg_node = owned_node(scene, "vtkMRMLSegmentationNode", ROLE_SEGMENTATION, input_node,
                            f"{base} GASE segmentation")
    conf_node = owned_node(scene, "vtkMRMLScalarVolumeNode", ROLE_CONFIDENCE, input_node,
                             f"{base} GASE confidence")
    update_segmentation(seg_node, input_node, result.labels, result.label_table, show_3d=show_3d)
    update_confidence(conf_node, input_node, result.confidence, threshold=threshold)
    return OutputNodes(input_node, seg_node, conf_node)


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------

def update_segmentation(seg_node, input_node, labels: Volume, label_table: Sequence[LabelInfo], *,
                        show_3d: bool = False) -> None:
    """Replace all segments of ``seg_node`` with one segment per label (empty ones included).

    The segments share one labelmap on ``labels``' grid, and the segmentation's reference geometry is
    the input volume's, so the Segment Editor edits on the input's own voxels.
    """
    was_modifying = seg_node.StartModify()
    try:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
        seg_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
        segmentation = seg_node.GetSegmentation()
        segmentation.RemoveAllSegments()
        # "Source" was "master" before Slicer 5.4.
        set_source = getattr(segmentation, "SetSourceRepresentationName", None) or \
            segmentation.SetMasterRepresentationName
        set_source(BINARY_LABELMAP)
        shared = oriented_image(labels.array, labels.ijk_to_ras)
        for lab in label_table:
            segment = slicer.vtkSegment()
            segment.SetName(lab.name)
            segment.SetNameAutoGenerated(False)
            segment.SetColor(*lab.color)
            segment.SetColorAutoGenerated(False)
            segment.SetLabelValue(int(lab.value))
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), lab.terminology_string())
            segment.AddRepresentation(BINARY_LABELMAP, shared)
            segmentation.AddSegment(segment, segment_id(lab))
    finally:
        seg_node.EndModify(was_modifying)
    if seg_node.GetDisplayNode() is None:
        seg_node.CreateDefaultDisplayNodes()
        display = seg_node.GetDisplayNode()
        # Outlines plus a faint fill: the anatomy and the confidence overlay stay visible underneath.
        display.SetVisibility2DOutline(True)
        display.SetVisibility2DFill(True)
        display.SetOpacity2DFill(0.15)
        display.SetSliceIntersectionThickness(2)
    if show_3d:
        seg_node.CreateClosedSurfaceRepresentation()


def label_table_of(seg_node) -> tuple[LabelInfo, ...]:
    """The label table of the module's segments (review segment excluded), values 1..N in segment order."""
    from gase.segfile import parse_terminology

    segmentation = seg_node.GetSegmentation()
    table = []
    for n in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(n)
        if seg_id == REVIEW_SEGMENT_ID:
            continue
        segment = segmentation.GetSegment(seg_id)
        category, typ = parse_terminology(segment.GetTerminology() if segment.HasTerminology() else "")
        color = tuple(float(min(1.0, max(0.0, c))) for c in segment.GetColor())
        table.append(LabelInfo(len(table) + 1, segment.GetName() or seg_id, color, category, typ))
    return tuple(table)


def labels_from_segmentation(seg_node, reference_node) -> tuple[Volume, tuple[LabelInfo, ...]]:
    """The segments (as they are now, user edits included; review segment excluded) as a label map on
    ``reference_node``'s voxel grid, with the matching label table."""
    scene = seg_node.GetScene()
    segmentation = seg_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    ids = [i for i in ids if i != REVIEW_SEGMENT_ID]
    table = label_table_of(seg_node)
    dims = reference_node.GetImageData().GetDimensions()
    if not ids:
        return Volume(np.zeros((dims[2], dims[1], dims[0]), np.uint8), ijk_to_ras_of(reference_node)), table
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__gase_export__")
    try:
        labelmap.SetHideFromEditors(True)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg_node, ids, labelmap, reference_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError("Exporting the segments to a label map failed.")
        from .nodes import volume_from_node

        labels = volume_from_node(labelmap)
        # The export numbers segments 1..N in the order given, which is the label table's order.
        return Volume(labels.array.astype(np.uint8), labels.ijk_to_ras), table
    finally:
        scene.RemoveNode(labelmap)


def set_review_segment(seg_node, mask: Volume, threshold: float) -> str:
    """Add (or replace) the "review" segment: the low-confidence voxels ``mask`` to check and edit.

    It lives in its own layer (it overlaps the anatomical segments) and carries no anatomical
    terminology. Returns its segment ID.
    """
    segmentation = seg_node.GetSegmentation()
    if segmentation.GetSegment(REVIEW_SEGMENT_ID) is not None:
        segmentation.RemoveSegment(REVIEW_SEGMENT_ID)
    segment = slicer.vtkSegment()
    segment.SetName(f"review (confidence < {threshold:.2f})")
    segment.SetNameAutoGenerated(False)
    segment.SetColor(*REVIEW_COLOR)
    segment.SetColorAutoGenerated(False)
    segment.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    segment.AddRepresentation(BINARY_LABELMAP, oriented_image(mask.array.astype(np.uint8), mask.ijk_to_ras))
    segmentation.AddSegment(segment, REVIEW_SEGMENT_ID)
    return REVIEW_SEGMENT_ID


# ---------------------------------------------------------------------------------------------
# Confidence overlay
# ---------------------------------------------------------------------------------------------

def confidence_color_node(scene):
    """The module's confidence colour table (one per scene, created on first use)."""
    nodes = scene.GetNodesByClass("vtkMRMLProceduralColorNode")
    for n in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(n)
        if is_module_node(node, ROLE_COLORS):
            return node
    node = scene.AddNewNodeByClass("vtkMRMLProceduralColorNode", "GASE confidence")
    claim(node, ROLE_COLORS)
    function = node.GetColorTransferFunction()
    function.RemoveAllPoints()
    for x, rgb in CONFIDENCE_COLORS:
        function.AddRGBPoint(x, *rgb)
    node.SetDescription("GASE per-voxel confidence: 0 (red, unreliable) to 1 (pale yellow, reliable)")
    return node


def update_confidence(conf_node, input_node, confidence: Volume, *, threshold: float = 0.5) -> None:
    """Set the confidence voxels (float32, 0..1) and show them as the module's colour overlay."""
    set_volume(conf_node, Volume(confidence.array.astype(np.float32, copy=False), confidence.ijk_to_ras))
    conf_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    if conf_node.GetDisplayNode() is None:
        conf_node.CreateDefaultDisplayNodes()
    display = conf_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_color_node(conf_node.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetInterpolate(False)  # show the voxels the confidence belongs to, not a blur of them
    set_threshold(conf_node, threshold)
    add_color_legend(conf_node)


def set_threshold(conf_node, threshold: float) -> None:
    """Show only voxels whose confidence is below ``threshold`` (0..1); the rest is transparent."""
    display = conf_node.GetDisplayNode()
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(-1.0)
    display.SetUpperThreshold(float(np.clip(threshold, 0.0, 1.0)))


def add_color_legend(conf_node):
    """A colour legend titled "Confidence" in the views that show the overlay (None if unsupported)."""
    if not conf_node.GetScene().IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        return None
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(conf_node)
    if legend is not None:
        legend.SetTitleText("Confidence")
        legend.SetLabelFormat("%.1f")
        legend.SetNumberOfLabels(6)
        legend.SetMaxNumberOfColors(256)
        legend.SetSize(0.09, 0.35)   # slim, at the right edge: the anatomy stays in view
        legend.SetPosition(0.98, 0.5)
    return legend
