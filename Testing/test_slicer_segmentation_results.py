"""GASESegmentationLib on real MRML nodes (slicer-core): volumes, output nodes, alignment, ownership."""
from __future__ import annotations

import numpy as np
import pytest

from gase.errors import InputError
from gase.labels import KNEE_LABELS
from gase.segfile import segment_id
from gase.volume import Volume


def _nodes(scene, class_name):
    nodes = scene.GetNodesByClass(class_name)
    return [nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())]


def test_volume_node_round_trip_keeps_voxels_and_oblique_geometry(mrml_scene, oblique_grid):
    from GASESegmentationLib.nodes import add_volume_node, ijk_to_ras_of, volume_from_node

    m = oblique_grid()
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    node = add_volume_node(mrml_scene, Volume(array, m), "oblique")
    assert np.allclose(ijk_to_ras_of(node), m, atol=1e-12)
    back = volume_from_node(node)
    assert back.array.dtype == np.int16 and np.array_equal(back.array, array)
    assert node.GetImageData().GetDimensions() == (6, 5, 4)  # VTK order is (i, j, k)
    # Voxel (i=5, j=1, k=3) sits where the matrix says, in Slicer's own IJK->RAS terms too.
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    assert np.allclose(matrix.MultiplyPoint((5, 1, 3, 1))[:3], (m @ [5, 1, 3, 1])[:3])


def test_volume_from_node_rejects_vector_and_empty_nodes(mrml_scene):
    import vtk

    from GASESegmentationLib.nodes import volume_from_node

    with pytest.raises(InputError, match="No input volume"):
        volume_from_node(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxel data"):
        volume_from_node(empty)
    rgb = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 2)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="3 components"):
        volume_from_node(rgb)


@pytest.fixture
def shown(slicer_app_logic, oblique_grid, knee_result):
    """An oblique input volume and the module's outputs for a synthetic knee result on its grid."""
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node

    scene = slicer_app_logic.GetMRMLScene()
    m = oblique_grid(spacing=(0.9, 0.9, 1.5), angles_deg=(12.0, -8.0, 15.0))
    image, result, _ = knee_result(m, shape=(30, 56, 56))
    input_node = add_volume_node(scene, image, "knee")
    logic = GASESegmentationLogic()
    outputs = logic.show_result(input_node, result, plane="sagittal", threshold=0.5)
    return scene, logic, input_node, result, outputs


def test_segmentation_is_aligned_voxel_for_voxel_with_an_oblique_input(shown):
    import slicer

    from GASESegmentationLib.nodes import ijk_to_ras_of, volume_from_node

    scene, _, input_node, result, outputs = shown
    seg = outputs.segmentation
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = [segment_id(lab) for lab in KNEE_LABELS]
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, input_node, 0)
    exported = volume_from_node(labelmap)
    assert np.allclose(exported.ijk_to_ras, ijk_to_ras_of(input_node), atol=1e-9)
    assert np.array_equal(exported.array, result.labels.array)
    # The segmentation's own geometry is the input's: the Segment Editor edits on the input's voxels.
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    values = [float(v) for v in geometry.split(";") if v]
    assert np.allclose(np.reshape(values[:16], (4, 4)), ijk_to_ras_of(input_node), atol=1e-9)


def test_segments_have_names_colors_and_terminology(shown):
    _, _, _, _, outputs = shown
    segmentation = outputs.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(KNEE_LABELS)
    assert segmentation.GetNumberOfLayers() == 1  # one shared labelmap
    for n, lab in enumerate(KNEE_LABELS):
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(n))
        assert segment.GetName() == lab.name
        assert np.allclose(segment.GetColor(), lab.color, atol=1e-6)
        assert segment.GetTerminology() == lab.terminology_string()
        assert "SCT^" in segment.GetTerminology()
    display = outputs.segmentation.GetDisplayNode()
    assert display.GetVisibility2DOutline() and display.GetOpacity2DFill() < 0.5


def test_confidence_node_geometry_values_and_overlay(shown):
    from GASESegmentationLib.nodes import ijk_to_ras_of, volume_from_node
    from GASESegmentationLib.results import ROLE_COLORS, is_module_node

    scene, _, input_node, result, outputs = shown
    conf = volume_from_node(outputs.confidence)
    assert conf.array.dtype == np.float32
    assert np.array_equal(conf.array, result.confidence.array)
    assert np.allclose(ijk_to_ras_of(outputs.confidence), ijk_to_ras_of(input_node), atol=1e-12)
    display = outputs.confidence.GetDisplayNode()
    assert is_module_node(display.GetColorNode(), ROLE_COLORS)
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    assert display.GetApplyThreshold() and display.GetUpperThreshold() == pytest.approx(0.5)
    assert not display.GetInterpolate()
    color = display.GetColorNode().GetColorTransferFunction()
    assert color.GetColor(0.0)[0] > 0.6 and color.GetColor(0.0)[1] < 0.1    # low confidence: red
    legend = __import__("slicer").vtkSlicerColorLogic.GetColorLegendDisplayNode(outputs.confidence)
    assert legend is not None and legend.GetTitleText() == "Confidence"
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == input_node.GetID()
        assert composite.GetForegroundVolumeID() == outputs.confidence.GetID()


def test_rerun_updates_own_nodes_and_never_touches_user_nodes(shown, knee_result):
    from GASESegmentationLib.nodes import add_volume_node, volume_from_node
    from GASESegmentationLib.results import is_module_node

    scene, logic, input_node, result, outputs = shown
    # Nodes the user made: a volume, a segmentation, a table, and a clone of the module's segmentation.
    user_volume = add_volume_node(scene, Volume(np.ones((3, 4, 5), np.float32), np.eye(4)), "user volume")
    user_seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    user_seg.GetSegmentation().AddEmptySegment("mine", "mine", (0.1, 0.2, 0.3))
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "user table")
    clone = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my copy")
    clone.Copy(outputs.segmentation)  # copies the module's attributes too, but gets its own ID
    assert not is_module_node(clone)
    watched = [user_volume, user_seg, user_table, clone, input_node]
    before = {n.GetID(): n.GetMTime() for n in watched}
    input_before = volume_from_node(input_node).array.copy()
    n_nodes = scene.GetNumberOfNodes()

    changed = Volume(result.confidence.array * 0.5, result.confidence.ijk_to_ras)
    result.confidence = changed
    again = logic.show_result(input_node, result, plane="sagittal", threshold=0.4)

    assert {n.GetID(): n.GetMTime() for n in watched} == before
    assert np.array_equal(volume_from_node(input_node).array, input_before)
    assert user_seg.GetSegmentation().GetNumberOfSegments() == 1
    assert clone.GetSegmentation().GetNumberOfSegments() == len(KNEE_LABELS)
    # Same output nodes, updated in place; no new nodes.
    assert again.segmentation.GetID() == outputs.segmentation.GetID()
    assert again.confidence.GetID() == outputs.confidence.GetID()
    assert again.reliability_table.GetID() == outputs.reliability_table.GetID()
    assert scene.GetNumberOfNodes() == n_nodes
    assert np.array_equal(volume_from_node(again.confidence).array, changed.array)
    assert again.confidence.GetDisplayNode().GetUpperThreshold() == pytest.approx(0.4)


def test_second_input_gets_its_own_outputs_and_parent_transform_is_followed(shown, knee_result):
    from GASESegmentationLib.nodes import add_volume_node

    scene, logic, input_node, _, outputs = shown
    image, result, _ = knee_result(shape=(12, 40, 40))
    other = add_volume_node(scene, image, "other knee")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "user transform")
    other.SetAndObserveTransformNodeID(transform.GetID())
    out2 = logic.show_result(other, result, plane="sagittal")
    assert out2.segmentation.GetID() != outputs.segmentation.GetID()
    assert out2.segmentation.GetTransformNodeID() == transform.GetID()
    assert out2.confidence.GetTransformNodeID() == transform.GetID()
    assert logic.outputs_for(input_node).segmentation.GetID() == outputs.segmentation.GetID()


def test_misaligned_result_is_refused(shown, knee_result):
    scene, logic, input_node, result, _ = shown
    _, wrong, _ = knee_result(shape=(30, 56, 56))  # same shape, different (default) geometry
    with pytest.raises(ValueError, match="voxel grid"):
        logic.show_result(input_node, wrong)


def test_outputs_restore_from_the_scene_with_the_verdict(shown):
    _, logic, input_node, result, outputs = shown
    restored = logic.outputs_for(input_node)
    assert restored.verdict.valid == outputs.verdict.valid
    assert restored.verdict.score == pytest.approx(outputs.verdict.score, abs=1e-4)
    assert restored.verdict.reliability == pytest.approx(outputs.verdict.reliability)
    assert restored.verdict.stability == pytest.approx(result.stability_overall) == outputs.verdict.stability
    assert restored.verdict.slice_view_text() == outputs.verdict.slice_view_text()
    assert f"stability {result.stability_overall:.2f}" in restored.verdict.slice_view_text()
    assert restored.plane == "sagittal"
    assert np.allclose(restored.validity.slice_scores, result.validity.slice_scores, atol=1e-4)
    assert restored.validity.embedding_2d.shape == result.validity.embedding_2d.shape
    assert restored.slice_plot.chart.GetID() == outputs.slice_plot.chart.GetID()


def test_sample_data_is_drawn_once_and_loads_in_slicer(tmp_path, slicer_app_logic):
    from gase.phantoms import SOURCE_STYLE, make_case
    from GASESegmentationLib.nodes import volume_from_node
    from GASESegmentationLib.sampledata import SAMPLE_SEED, ensure_sample

    path = ensure_sample(tmp_path)
    stamp = path.stat().st_mtime_ns
    assert ensure_sample(tmp_path) == path and path.stat().st_mtime_ns == stamp  # cached
    volumes = slicer_app_logic.GetModuleLogic("Volumes")
    node = volumes.AddArchetypeVolume(str(path), "GASEKneePhantom", 0)
    assert node is not None
    expected, _ = make_case("knee", SOURCE_STYLE["knee"], SAMPLE_SEED)
    loaded = volume_from_node(node)
    assert np.allclose(loaded.array, expected.array) and np.allclose(loaded.ijk_to_ras, expected.ijk_to_ras)


def test_a_result_too_oblique_for_the_model_plane_still_shows(slicer_app_logic, oblique_grid, knee_result):
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node

    m = oblique_grid(angles_deg=(50.0, 0.0, 0.0))  # 50 degrees: no anatomical plane fits
    case = knee_result(m, shape=(10, 30, 30))
    node = add_volume_node(slicer_app_logic.GetMRMLScene(), case.image, "tilted")
    outputs = GASESegmentationLogic().show_result(node, case.result, plane="sagittal")
    assert outputs.slice_plot.table.GetTable().GetNumberOfRows() > 0  # per stored slice instead


def test_which_network_segmented_is_kept_in_the_scene_and_shown_in_the_banner(slicer_app_logic, oblique_grid,
                                                                             knee_result):
    """A model with a source expert says which network segmented; the banner shows it, also after the
    outputs are found again in the scene (e.g. after the module was reopened)."""
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node
    from GASESegmentationLib.verdict import Verdict

    scene = slicer_app_logic.GetMRMLScene()
    image, result, _ = knee_result(oblique_grid(), shape=(20, 40, 40))
    node = add_volume_node(scene, image, "knee")
    logic = GASESegmentationLogic()
    assert logic.show_result(node, result, plane="sagittal").segmented_by == ""  # no expert: nothing said
    assert "egmented by" not in logic.outputs_for(node).verdict.banner_html()
    result.extra["source_expert"] = {"used": True, "style_score": 1.2, "threshold": 1.9}
    shown = logic.show_result(node, result, plane="sagittal")
    found = logic.outputs_for(node)
    for outputs in (shown, found):
        assert outputs.segmented_by == "segmented by the source-style expert (the scan is in the training style)"
        assert "Segmented by the source-style expert (the scan is in the training style)." in \
            outputs.verdict.banner_html()
    assert Verdict.from_json(result.report()).segmented_by == shown.segmented_by
    result.extra["source_expert"] = {"used": False, "style_score": 3.0, "threshold": 1.9}
    assert "Segmented by the GASE segmenter" in logic.show_result(node, result, plane="sagittal").verdict.banner_html()
