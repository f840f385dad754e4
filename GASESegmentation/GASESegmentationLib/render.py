"""Slice views drawn without a screen: the Red view (or any) of a scene to a PNG, as Slicer draws it.

Slicer's own pieces do the drawing - ``vtkMRMLSliceLogic`` reslices and blends the layers (input,
confidence overlay with its threshold and opacity), the segmentation and colour-legend displayable
managers add the outlines and the legend - into an offscreen render window. The validity verdict is a
text banner at the top; :func:`verdict_actor` is also what the module puts into the application's
slice views, so the PNG and the application show the same text.

>>> renderer = SliceViewRenderer(app_logic, "Red", orientation="Sagittal")              # doctest: +SKIP
>>> renderer.set_layers(input_node, confidence_node, opacity=0.5)                     # doctest: +SKIP
>>> renderer.set_verdict(verdict); renderer.write_png("red.png"); renderer.close()      # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

import vtk

import slicer

from .verdict import Verdict

DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLColorLegendDisplayableManager")


def verdict_actor(verdict: Verdict, font_size: int = 13) -> vtk.vtkTextActor:
    """A white-on-colour text banner (green: valid, red: outside competence) centred at the top of a view."""
    actor = vtk.vtkTextActor()
    actor.SetInput(verdict.slice_view_text())
    prop = actor.GetTextProperty()
    prop.SetFontSize(font_size)
    prop.SetBold(True)
    prop.SetColor(1.0, 1.0, 1.0)
    prop.SetBackgroundColor(*verdict.rgb)
    prop.SetBackgroundOpacity(0.85)
    prop.SetFrame(False)
    prop.SetJustificationToCentered()
    prop.SetVerticalJustificationToTop()
    actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.SetPosition(0.5, 0.985)
    return actor


class SliceViewRenderer:
    """One offscreen slice view of ``app_logic``'s scene (see the module docstring)."""

    def __init__(self, app_logic, view: str = "Red", *, orientation: str | None = None,
                 size: tuple[int, int] = (512, 512)):
        # Without X, go straight to EGL instead of failing over from X first (no-op when set or on a desktop).
        if not os.environ.get("DISPLAY") and os.name != "nt":
            os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        self.app_logic = app_logic
        self.scene = app_logic.GetMRMLScene()
        self.size = tuple(int(s) for s in size)
        self.slice_logic = slicer.vtkMRMLSliceLogic()
        self.slice_logic.SetMRMLApplicationLogic(app_logic)
        self.slice_logic.SetMRMLScene(self.scene)
        self.slice_node = self.slice_logic.AddSliceNode(view)
        if orientation:
            self.slice_node.SetOrientation(orientation)
        elif self.slice_node.GetOrientation() == "Reformat":
            self.slice_node.SetOrientationToDefault()
        self.slice_node.SetDimensions(self.size[0], self.size[1], 1)
        logics = app_logic.GetSliceLogics()
        if logics is None:
            logics = vtk.vtkCollection()
            app_logic.SetSliceLogics(logics)
        logics.AddItem(self.slice_logic)  # the colour legend finds the view's layers through it

        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(True)
        self.window.SetSize(*self.size)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.mapper = vtk.vtkImageMapper()  # input connected at render time: the slice logic swaps it
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        image_actor = vtk.vtkActor2D()
        image_actor.SetMapper(self.mapper)
        self.renderer.AddViewProp(image_actor)
        self.interactor = vtk.vtkRenderWindowInteractor()  # displayable managers expect one, never started
        self.interactor.SetRenderWindow(self.window)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for name in DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(self.slice_node)
        self._text = None

    @property
    def composite(self):
        return self.slice_logic.GetSliceCompositeNode()

    def set_layers(self, background, foreground=None, opacity: float = 0.5) -> None:
        """Background volume and (optional) foreground overlay with its opacity; fits the view to them."""
        self.composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        self.composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        self.composite.SetForegroundOpacity(float(opacity))
        self.slice_logic.FitSliceToAll(*self.size)
        for node in (background, foreground):
            # A legend made before its volume entered this view is only picked up on its next change.
            legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node) if node is not None else None
            if legend is not None:
                legend.Modified()

    def set_verdict(self, verdict: Verdict | None) -> None:
        if self._text is not None:
            self.renderer.RemoveViewProp(self._text)
            self._text = None
        if verdict is not None:
            # Two lines of at most ~55 characters must fit the view's width.
            self._text = verdict_actor(verdict, font_size=max(9, min(self.size[1] // 28, self.size[0] // 34)))
            self.renderer.AddViewProp(self._text)

    def jump_to(self, ras) -> None:
        """Move this view's slice through the RAS point (mm), keeping the field of view."""
        self.slice_node.JumpSliceByOffsetting(*(float(x) for x in ras))

    def write_png(self, path) -> Path:
        """Render and save the view; returns the path."""
        # The blended slice image's output port changes when layers change: connect it now.
        self.mapper.SetInputConnection(self.slice_logic.GetImageDataConnection())
        self.window.Render()
        self.window.Render()  # the second pass draws what displayable managers added during the first
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.Update()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
        return path

    def close(self) -> None:
        """Detach from the application logic and release the render window."""
        logics = self.app_logic.GetSliceLogics()
        if logics is not None:
            logics.RemoveItem(self.slice_logic)
        self.managers.SetMRMLDisplayableNode(None)
        self.window.Finalize()
        self.slice_logic.SetMRMLScene(None)
