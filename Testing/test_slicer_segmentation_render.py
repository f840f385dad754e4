"""The Red slice view rendered offscreen to PNG: input, outlines, confidence overlay, legend, validity text.

Pixels are checked where the geometry says things are: the planted low-confidence blob must be red,
confident anatomy must stay grey, the femur outline must carry the femur colour, the banner must be
green for a valid input and red for an invalid one.
"""
from __future__ import annotations

import numpy as np
import pytest

from gase.labels import KNEE_LABELS

SIZE = 384


def read_png(path) -> np.ndarray:
    """(H, W, 3) uint8, row 0 at the top."""
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1]
    return pixels[..., :3].astype(np.int32)


def ras_to_pixel(slice_node, ras, height) -> tuple[int, int]:
    """(row, column) of a RAS point in a rendered view (rows from the top)."""
    import vtk

    xy_to_ras = vtk.vtkMatrix4x4()
    xy_to_ras.DeepCopy(slice_node.GetXYToRAS())
    xy_to_ras.Invert()
    x, y, _, _ = xy_to_ras.MultiplyPoint((*ras, 1.0))
    return int(round(height - 1 - y)), int(round(x))


def render(app_logic, case, valid_case=True, path=None):
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import add_volume_node
    from GASESegmentationLib.render import SliceViewRenderer

    scene = app_logic.GetMRMLScene()
    input_node = add_volume_node(scene, case.image, "knee")
    view = SliceViewRenderer(app_logic, "Red", orientation="Sagittal", size=(SIZE, SIZE))
    outputs = GASESegmentationLogic().show_result(input_node, case.result, plane="sagittal", threshold=0.5)
    view.set_layers(input_node, outputs.confidence, opacity=0.6)
    view.set_verdict(outputs.verdict)
    view.jump_to(case.blob_ras)
    png = view.write_png(path)
    pixels = read_png(png)
    return view, outputs, pixels


def test_red_view_shows_input_outlines_overlay_legend_and_verdict(slicer_app_logic, knee_result, tmp_path):
    case = knee_result()
    view, outputs, px = render(slicer_app_logic, case, path=tmp_path / "red.png")
    try:
        assert px.shape == (SIZE, SIZE, 3)
        # The planted low-confidence blob (confidence 0.15) is drawn red over the image.
        r, c = ras_to_pixel(view.slice_node, case.blob_ras, SIZE)
        blob = px[r - 6:r + 7, c - 6:c + 7].reshape(-1, 3)  # crossed by thin cartilage outlines
        reddish = (blob[:, 0] > blob[:, 1] + 60) & (blob[:, 0] > blob[:, 2] + 60)
        assert reddish.mean() > 0.5, blob.mean(axis=0)

        # Confident femur marrow (confidence ~1) stays grey: overlay transparent there, faint segment fill.
        centre = case.image.ijk_to_ras[:3, :3] @ ((np.array(case.image.shape[::-1]) - 1) / 2) + case.image.ijk_to_ras[:3, 3]
        femur_inside = (case.blob_ras[0], centre[1], centre[2] + 18.0)
        r, c = ras_to_pixel(view.slice_node, femur_inside, SIZE)
        grey = px[r - 3:r + 4, c - 3:c + 4].reshape(-1, 3).mean(axis=0)
        assert np.ptp(grey) < 25 and 20 < grey.mean() < 200, grey

        # The femur outline carries the femur colour at the femur's anterior edge (20 mm in front of its axis).
        femur_rgb = np.array(KNEE_LABELS[0].color) * 255
        r, c = ras_to_pixel(view.slice_node, (case.blob_ras[0], centre[1] + 19.5, centre[2] + 20.0), SIZE)
        window = px[r - 3:r + 4, c - 10:c + 11].reshape(-1, 3)
        assert np.min(np.abs(window - femur_rgb).sum(axis=1)) < 40

        # Banner at the top centre: white text on green.
        banner = px[2:14, SIZE // 2 - 60:SIZE // 2 + 60].reshape(-1, 3)
        green = (banner[:, 1] > banner[:, 0] + 40) & (banner[:, 1] > banner[:, 2] + 40)
        white = banner.min(axis=1) > 200
        assert green.mean() > 0.4 and white.mean() > 0.03

        # Colour legend at the right edge: bright yellow (confidence 1) above dark red (0).
        strip = px[:, SIZE - 40:].reshape(-1, 3)
        assert ((strip[:, 0] > 200) & (strip[:, 1] > 200) & (strip[:, 2] < 190)).sum() > 20
        assert ((strip[:, 0] > 120) & (strip[:, 1] < 40) & (strip[:, 2] < 40)).sum() > 20
    finally:
        view.close()


def test_invalid_input_gets_a_red_banner(slicer_app_logic, knee_result, tmp_path):
    view, outputs, px = render(slicer_app_logic, knee_result(valid=False), path=tmp_path / "invalid.png")
    try:
        assert not outputs.verdict.valid
        banner = px[2:14, SIZE // 2 - 100:SIZE // 2 + 100].reshape(-1, 3)
        red = (banner[:, 0] > banner[:, 1] + 60) & (banner[:, 0] > banner[:, 2] + 60)
        assert red.mean() > 0.4
    finally:
        view.close()


def test_verdict_actor_text_matches_the_panel(knee_result):
    from GASESegmentationLib.render import verdict_actor
    from GASESegmentationLib.verdict import Verdict

    v = Verdict(False, 3.2, 2.0)
    actor = verdict_actor(v)
    assert actor.GetInput() == v.slice_view_text()
    assert "OUTSIDE" in actor.GetInput() and "3.20 > threshold 2.00" in actor.GetInput()
    assert max(len(line) for line in actor.GetInput().splitlines()) <= 55  # fits a small view
    assert tuple(actor.GetTextProperty().GetBackgroundColor()) == pytest.approx(v.rgb)
