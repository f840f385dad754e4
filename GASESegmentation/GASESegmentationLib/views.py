"""What the slice views show and where they look: layers, overlay opacity, jumping to a point or slice.

Works on the scene's slice composite and slice nodes, so it behaves the same in the Slicer application
and in an offscreen scene.
"""
from __future__ import annotations

import numpy as np

import slicer
from gase.orientation import Reorientation
from gase.volume import Volume


def _nodes(scene, class_name: str) -> list:
    nodes = scene.GetNodesByClass(class_name)
    return [nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())]


def show_in_slice_views(scene, background, foreground, opacity: float = 0.5) -> None:
    """Put ``background`` under the confidence overlay ``foreground`` in every slice view."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))


def set_overlay_opacity(scene, foreground, opacity: float) -> None:
    """Opacity of ``foreground`` in the slice views that show it as their foreground layer."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetForegroundVolumeID() == foreground.GetID():
            composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))


def center_on(scene, ras) -> None:
    """Centre every slice view on the RAS point (mm) and move each slice through it."""
    r, a, s = (float(x) for x in ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)


def slice_center_ras(volume: Volume, reorientation: Reorientation, index: int) -> tuple[float, float, float]:
    """RAS (mm) of the centre of canonical slice ``index`` (the model plane's slice order) of ``volume``."""
    axis = reorientation.axes[0]  # input array axis (0 = k, 1 = j, 2 = i) that the slices run along
    n = volume.shape[axis]
    if not 0 <= index < n:
        raise IndexError(f"Slice {index} is outside 0..{n - 1}.")
    kji = [(s - 1) / 2.0 for s in volume.shape]
    kji[axis] = (n - 1 - index) if reorientation.flips[0] else index
    k, j, i = kji
    ras = volume.ijk_to_ras @ np.array([i, j, k, 1.0])
    return float(ras[0]), float(ras[1]), float(ras[2])


def jump_to_slice(scene, volume: Volume, reorientation: Reorientation, index: int) -> tuple[float, float, float]:
    """Move every slice view through canonical slice ``index`` without re-centring (keeps the user's pan).
    Returns the RAS point jumped to."""
    ras = slice_center_ras(volume, reorientation, index)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *ras, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
    return ras


def plane_orientation(plane: str) -> str:
    """Slicer slice-node orientation preset name of a model plane ("sagittal" -> "Sagittal")."""
    return plane.capitalize()
