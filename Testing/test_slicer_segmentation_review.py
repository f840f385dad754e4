"""Review of low-confidence regions: finding them, centring the views, the review segment, tables, plot."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BLOB_RADIUS_MM
from gase.labels import KNEE_LABELS
from gase.volume import Volume


def test_regions_are_found_where_confidence_is_low(knee_result):
    from GASESegmentationLib.review import find_regions

    image, result, blob_ras = knee_result()
    regions = find_regions(result.labels, result.confidence, KNEE_LABELS, threshold=0.5)
    assert len(regions) == 1  # boundaries dip to 0.55 only: the planted blob is the one region
    blob = regions[0]
    assert blob.rank == 1
    assert np.linalg.norm(np.subtract(blob.centroid_ras, blob_ras)) < 1.5   # mm
    sphere_ml = 4 / 3 * np.pi * BLOB_RADIUS_MM ** 3 / 1000
    assert blob.volume_ml == pytest.approx(sphere_ml, rel=0.25)
    assert blob.mean_confidence == pytest.approx(0.15) and blob.min_confidence == pytest.approx(0.15)
    assert blob.structure in {lab.name for lab in KNEE_LABELS}
    i, j, k = blob.centroid_ijk
    assert result.confidence.array[k, j, i] == pytest.approx(0.15)  # the centre voxel is in the region

    # A bigger but less doubtful second region (inside the tibia): the two sort orders disagree.
    conf = result.confidence.array.copy()
    k, j, i = np.argwhere(result.labels.array == 3).mean(axis=0).round().astype(int)
    conf[k - 3:k + 4, j - 4:j + 5, i - 4:i + 5] = 0.4
    second = Volume(conf, result.confidence.ijk_to_ras)
    by_size = find_regions(result.labels, second, KNEE_LABELS, threshold=0.5, sort_by="size")
    by_conf = find_regions(result.labels, second, KNEE_LABELS, threshold=0.5, sort_by="confidence")
    assert [r.mean_confidence for r in by_size] == pytest.approx([0.4, 0.15])
    assert [r.mean_confidence for r in by_conf] == pytest.approx([0.15, 0.4])
    assert by_size[0].structure == "tibia" and by_size[0].voxels == 7 * 9 * 9
    assert [r.rank for r in by_size] == [1, 2]
    # A threshold above the boundary dip (0.55) joins all the uncertain boundaries into one region.
    joined = find_regions(result.labels, result.confidence, KNEE_LABELS, threshold=0.6)
    assert joined[0].voxels > 20 * blob.voxels and joined[0].min_confidence == pytest.approx(0.15)
    with pytest.raises(ValueError):
        find_regions(result.labels, result.confidence, KNEE_LABELS, 0.5, sort_by="colour")


def test_low_confidence_far_from_structures_is_ignored():
    from GASESegmentationLib.review import find_regions, low_confidence_mask

    m = np.diag([1.0, 1.0, 2.0, 1.0])
    labels = np.zeros((10, 30, 30), np.uint8)
    labels[3:7, 10:20, 10:20] = 1
    conf = np.ones(labels.shape, np.float32)
    conf[4:6, 12:15, 12:15] = 0.2        # inside the structure
    conf[4:6, 21:23, 12:14] = 0.3        # 1-2 mm outside its edge: near
    conf[4:6, 27:30, 0:3] = 0.1          # far away in the background
    lab, cf = Volume(labels, m), Volume(conf, m)
    mask = low_confidence_mask(lab, cf, 0.5, margin_mm=3.0).array
    assert mask[4, 13, 13] and mask[4, 21, 12] and not mask[4, 28, 1]
    regions = find_regions(lab, cf, KNEE_LABELS[:1], 0.5, margin_mm=3.0, min_voxels=1)
    assert sorted(r.voxels for r in regions) == [8, 18]
    assert {r.structure for r in regions} == {"femur", "near femur"}
    assert find_regions(lab, cf, KNEE_LABELS[:1], 0.5, min_voxels=10)[0].voxels == 18


@pytest.fixture
def shown(slicer_app_logic, knee_result):
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node
    from GASESegmentationLib.render import SliceViewRenderer

    scene = slicer_app_logic.GetMRMLScene()
    case = knee_result()
    input_node = add_volume_node(scene, case.image, "knee")
    # Three slice views, as in Slicer's layout.
    views = [SliceViewRenderer(slicer_app_logic, name, orientation=o, size=(64, 64))
             for name, o in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))]
    logic = GASESegmentationLogic()
    outputs = logic.show_result(input_node, case.result, plane="sagittal", threshold=0.5)
    yield scene, logic, input_node, case, outputs, views
    for view in views:
        view.close()


def _slice_center(slice_node):
    m = slice_node.GetSliceToRAS()
    return np.array([m.GetElement(r, 3) for r in range(3)])


def _distance_to_plane(slice_node, point):
    m = slice_node.GetSliceToRAS()
    normal = np.array([m.GetElement(r, 2) for r in range(3)])
    return abs(np.dot(np.asarray(point) - _slice_center(slice_node), normal))


def test_selecting_a_region_centres_the_slice_views_on_it(shown):
    scene, logic, _, case, outputs, views = shown
    regions = logic.review_regions(outputs, threshold=0.5)
    assert len(regions) == 1
    logic.center_on(outputs, regions[0])
    for view in views:
        assert np.allclose(_slice_center(view.slice_node), regions[0].centroid_ras, atol=1e-6)


def test_review_segment_holds_the_low_confidence_voxels(shown):
    import slicer

    from GASESegmentationLib.results import REVIEW_SEGMENT_ID, labels_from_segmentation
    from GASESegmentationLib.review import low_confidence_mask
    from GASESegmentationLib.nodes import volume_from_node

    scene, logic, input_node, case, outputs, _ = shown
    seg_id = logic.create_review_segment(outputs, threshold=0.5)
    segmentation = outputs.segmentation.GetSegmentation()
    assert seg_id == REVIEW_SEGMENT_ID and segmentation.GetNumberOfSegments() == len(KNEE_LABELS) + 1
    assert segmentation.GetSegment(seg_id).GetName() == "review (confidence < 0.50)"
    assert segmentation.GetNumberOfLayers() == 2  # overlaps the anatomy: its own layer
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        outputs.segmentation, [seg_id], labelmap, input_node, 0)
    expected = low_confidence_mask(case.result.labels, case.result.confidence, 0.5).array
    assert expected.sum() > 50
    assert np.array_equal(volume_from_node(labelmap).array > 0, expected > 0)
    # The anatomical segments are unchanged, and a second click replaces (not adds) the review segment.
    labels, _ = labels_from_segmentation(outputs.segmentation, input_node)
    assert np.array_equal(labels.array, case.result.labels.array)
    logic.create_review_segment(outputs, threshold=0.6)
    assert segmentation.GetNumberOfSegments() == len(KNEE_LABELS) + 1
    assert segmentation.GetSegment(seg_id).GetName() == "review (confidence < 0.60)"
    # Review regions ignore the review segment itself.
    assert len(logic.review_regions(outputs, 0.5)) == 1


def test_edited_segments_are_what_review_uses(shown):
    scene, logic, _, case, outputs, _ = shown
    segmentation = outputs.segmentation.GetSegmentation()
    segmentation.RemoveSegment(segmentation.GetNthSegmentID(1))  # the user deletes femoral cartilage
    regions = logic.review_regions(outputs, threshold=0.5)
    assert len(regions) == 1 and "femoral cartilage" not in regions[0].structure


def test_reliability_table_and_threshold_changes(shown):
    from GASESegmentationLib.tables import RELIABILITY_COLUMNS

    scene, logic, _, case, outputs, _ = shown
    table = outputs.reliability_table.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(RELIABILITY_COLUMNS)
    assert table.GetNumberOfRows() == len(KNEE_LABELS) + 1
    rows = {table.GetValue(r, 0).ToString(): [table.GetValue(r, c).ToDouble() for c in (2, 3, 4, 5)]
            for r in range(table.GetNumberOfRows())}
    quality = {table.GetValue(r, 0).ToString(): table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())}
    assert quality["femur"] == pytest.approx((case.result.expected_dice_per_label["femur"]
                                              + case.result.stability_per_label["femur"]) / 2, abs=1e-3)
    assert quality["All structures"] == pytest.approx(case.result.quality_overall, abs=1e-3)
    femur = rows["femur"]
    assert femur[0] == pytest.approx(case.result.expected_dice_per_label["femur"], abs=1e-3)
    assert 0.0 < femur[0] <= 1.0
    assert rows["All structures"][0] == pytest.approx(case.result.expected_dice_overall, abs=1e-3)
    assert femur[1] == pytest.approx(case.result.reliability_per_label["femur"], abs=1e-3)
    counts = np.bincount(case.result.labels.array.ravel(), minlength=5)
    voxel_ml = np.prod(case.result.labels.spacing) / 1000
    assert femur[2] == pytest.approx(counts[1] * voxel_ml, abs=1e-3)
    assert rows["All structures"][2] == pytest.approx(counts[1:].sum() * voxel_ml, abs=1e-3)
    low = rows["femoral cartilage"][3]
    logic.set_threshold(outputs, 0.6)  # boundaries (0.55) now count as low
    table = outputs.reliability_table.GetTable()
    rows6 = {table.GetValue(r, 0).ToString(): table.GetValue(r, 5).ToDouble() for r in range(table.GetNumberOfRows())}
    assert rows6["femoral cartilage"] > low
    assert outputs.confidence.GetDisplayNode().GetUpperThreshold() == pytest.approx(0.6)
    # the model's own numbers survive the rebuild
    assert outputs.reliability_table.GetTable().GetValue(0, 1).ToDouble() == pytest.approx(quality["femur"])
    assert outputs.reliability_table.GetTable().GetValue(0, 2).ToDouble() == pytest.approx(femur[0])
    assert outputs.reliability_table.GetTable().GetValue(0, 3).ToDouble() == pytest.approx(femur[1])
    assert outputs.reliability_table.GetTable().GetValue(len(KNEE_LABELS), 2).ToDouble() == pytest.approx(
        rows["All structures"][0])


def test_reliability_table_shows_the_stability(shown):
    """The last column: the model's stability per structure and overall; it survives a threshold change."""
    scene, logic, input_node, case, outputs, _ = shown

    def column():
        t = outputs.reliability_table.GetTable()
        col = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())].index("Stability")
        return {t.GetValue(r, 0).ToString(): t.GetValue(r, col).ToDouble() for r in range(t.GetNumberOfRows())}

    stab = column()
    for lab in KNEE_LABELS:
        assert stab[lab.name] == pytest.approx(case.result.stability_per_label[lab.name], abs=1e-3)
    assert stab["All structures"] == pytest.approx(case.result.stability_overall, abs=1e-3)
    logic.set_threshold(outputs, 0.7)
    assert column() == pytest.approx(stab)


def test_slice_plot_and_jumping_to_a_slice(shown):
    from GASESegmentationLib.tables import slice_of_row
    from gase.orientation import reorientation_for

    scene, logic, input_node, case, outputs, views = shown
    plot = outputs.slice_plot
    table = plot.table.GetTable()
    assert plot.chart.GetNumberOfPlotSeriesNodes() == 2
    assert plot.chart.GetNthPlotSeriesNode(0).GetTableNodeID() == plot.table.GetID()
    reo = reorientation_for(case.result.labels, "sagittal")
    canon_labels = reo.forward(case.result.labels.array)
    with_structures = [s for s in range(canon_labels.shape[0]) if canon_labels[s].any()]
    assert table.GetNumberOfRows() == len(with_structures)
    row = len(with_structures) // 2
    s = slice_of_row(plot.table, row)
    conf = reo.forward(case.result.confidence.array)[s][canon_labels[s] > 0]
    assert table.GetValue(row, 1).ToDouble() == pytest.approx(conf.mean(), abs=1e-6)
    ras = logic.jump_to_slice(outputs, s)
    sagittal = views[1].slice_node
    assert _distance_to_plane(sagittal, ras) < 1e-6
    # The jump lands on the slice's voxel plane: R of the slice centre matches the canonical index.
    k = s if not reo.flips[0] else canon_labels.shape[0] - 1 - s
    assert ras[0] == pytest.approx((case.image.ijk_to_ras @ [0, 0, k, 1])[0])


def test_reliability_table_shows_what_the_post_processing_removed(shown):
    """The table's last column: mL moved to background per post-processed structure (0 where nothing was),
    empty (NaN) for structures the model does not post-process; it survives a threshold change."""
    import dataclasses

    scene, logic, input_node, case, _, _ = shown
    post = {"kept_largest_component": ["femur", "tibia"], "removed_voxels": {"femur": 120},
            "removed_ml": {"femur": 0.216}}
    result = dataclasses.replace(case.result, extra={**case.result.extra, "postprocessing": post})
    outputs = logic.show_result(input_node, result, plane="sagittal", threshold=0.5)

    def removed_column():
        t = outputs.reliability_table.GetTable()
        col = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())].index("Removed parts (mL)")
        return {t.GetValue(r, 0).ToString(): t.GetValue(r, col).ToDouble() for r in range(t.GetNumberOfRows())}

    removed = removed_column()
    assert removed["femur"] == pytest.approx(0.216)
    assert removed["tibia"] == 0.0
    assert np.isnan(removed["femoral cartilage"]) and np.isnan(removed["tibial cartilage"])
    assert removed["All structures"] == pytest.approx(0.216)
    logic.set_threshold(outputs, 0.7)
    assert removed_column() == pytest.approx(removed, nan_ok=True)
    # a model without post-processing leaves the column empty
    plain = logic.show_result(input_node, case.result, plane="sagittal", threshold=0.5)
    t = plain.reliability_table.GetTable()
    assert all(np.isnan(t.GetValue(r, 6).ToDouble()) for r in range(t.GetNumberOfRows()))


def test_a_size_verdict_survives_the_report_and_the_scene(shown):
    """Outside the competence by what it segments (not by style): the report the background process writes,
    and the scene a re-opened panel reads, both keep why."""
    import dataclasses

    from GASESegmentationLib.outputs import validity_from_report

    scene, logic, input_node, case, _, _ = shown
    validity = dataclasses.replace(case.result.validity, valid=False, score=1.5, threshold=2.0,
                                   foreground_ml=1400.0, training_foreground_ml=400.0)
    result = dataclasses.replace(case.result, validity=validity)
    assert validity_from_report(result.report()).foreground_ratio == pytest.approx(3.5)
    outputs = logic.show_result(input_node, result, plane="sagittal", threshold=0.5)
    expected = "structures 3.5x training size (> 2.5x): do not trust this result"
    assert outputs.verdict.slice_view_text().endswith(expected)
    assert logic.outputs_for(input_node).verdict.slice_view_text().endswith(expected)
    assert "another anatomy" in logic.outputs_for(input_node).verdict.banner_html()
    # and a CT: the reason survives the report and the scene too
    ct = dataclasses.replace(case.result, validity=dataclasses.replace(case.result.validity, valid=False,
                                                                       ct_fraction=0.4))
    assert validity_from_report(ct.report()).ct_fraction == pytest.approx(0.4)
    inv = dataclasses.replace(case.result, validity=dataclasses.replace(case.result.validity, valid=False,
                                                                        background_level=0.97))
    assert validity_from_report(inv.report()).background_level == pytest.approx(0.97)
    logic.show_result(input_node, ct, plane="sagittal", threshold=0.5)
    assert "CT intensities: 40% of voxels" in logic.outputs_for(input_node).verdict.slice_view_text()
