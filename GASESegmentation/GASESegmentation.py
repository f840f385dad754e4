"""GASE Segmentation: segment an MR volume, see how far to trust it, review what is uncertain.

This file only binds the GUI. Everything it does is in ``GASESegmentationLib`` (Qt-free, tested with
MRML nodes outside Slicer): ``GASESegmentationLogic`` is the entry point for scripts as well.
"""
import os
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from GASESegmentationLib.logic import DEFAULT_THRESHOLD
from GASESegmentationLib.logic import GASESegmentationLogic as LibraryLogic
from GASESegmentationLib.messages import show_error


class GASESegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GASE Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["GASE developers"]
        self.parent.helpText = _(
            "Segment an MR volume with a GASE model and see how far to trust the result: a per-voxel confidence "
            "overlay, per-structure reliability (the Dice the model expects), and an input-validity verdict (is the scan inside what the model "
            "learned?). Review low-confidence regions and turn them into a segment to edit. Segmentation runs in "
            "a background process; Apply becomes Cancel. From the Python console: "
            "<code>GASESegmentationLib.logic.GASESegmentationLogic().process(volumeNode)</code>.")
        self.parent.acknowledgementText = _(
            "GASE follows Dai et al., Interpretable Semantic Medical Image Segmentation with Style and "
            "Confidence, IEEE TPAMI 2026.")
        # Sample data registers once the application has started (SampleData module loaded).
        slicer.app.connect("startupCompleted()", registerSampleData)


def _sampleCacheDir() -> Path:
    return Path(slicer.app.cachePath) / "GASE"


def registerSampleData():
    """A knee MR phantom in the demo model's own style, drawn on first use (no download)."""
    import SampleData

    from GASESegmentationLib.sampledata import SAMPLE_NAME, ensure_sample, sample_path

    def load(source):
        path = ensure_sample(_sampleCacheDir())
        return slicer.util.loadVolume(str(path), properties={"name": SAMPLE_NAME})

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="GASE", sampleName=SAMPLE_NAME, customDownloader=load,
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "GASESegmentation.png"),
        uris=sample_path(_sampleCacheDir()).as_uri(), fileNames=f"{SAMPLE_NAME}.nrrd", nodeNames=SAMPLE_NAME,
        loadFileTypes="VolumeFile")


@parameterNodeWrapper
class GASESegmentationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modelFolder: str = ""
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_THRESHOLD
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class GASESegmentationLogic(ScriptedLoadableModuleLogic, LibraryLogic):
    """The library's Qt-free logic (``GASESegmentationLib.logic``) plus the module's parameter node."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        LibraryLogic.__init__(self)

    def getParameterNode(self):
        return GASESegmentationParameterNode(super().getParameterNode())


class GASESegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._run = None
        self._outputs = None
        self._regions = []
        self._verdictActors = []
        self._cards = {}

    # -- set-up -------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GASESegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GASESegmentationLogic()

        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.slicePlotFrame.layout().addWidget(self.plotWidget)
        self.plotWidget.plotView().connect("dataSelected(vtkStringArray*, vtkCollection*)", self.onPlotPointSelected)

        menu = qt.QMenu(self.ui.addModelButton)
        menu.addAction(_("From a model folder..."), lambda: self.onAddModel(folder=True))
        menu.addAction(_("From a .zip file..."), lambda: self.onAddModel(folder=False))
        self.ui.addModelButton.setMenu(menu)

        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onPoll)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.ui.updateThresholdButton.connect("clicked(bool)", lambda _: self.onUpdateThreshold())
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.legendCheckBox.connect("toggled(bool)", self.onLegendToggled)
        self.ui.sortComboBox.connect("currentIndexChanged(int)", lambda _: self.refreshRegions())
        self.ui.regionsTable.connect("itemSelectionChanged()", self.onRegionSelected)
        self.ui.reviewSegmentButton.connect("clicked(bool)", self.onReviewSegment)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self.initializeParameterNode()
        self.showOutputs(None)

    def cleanup(self) -> None:
        self.timer.stop()
        if self._run is not None:
            self._run.cancel()
        self._removeVerdictActors()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshModels()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._run.cancel()
            self._endRun(_("Cancelled: the scene was closed."))
        self.showOutputs(None)
        self._parameterNode = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if not node.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.GetAttribute("GASE.Role"):
                node.inputVolume = first
        if self._parameterNode is not None and getattr(self, "_parameterNodeGuiTag", None):
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = node
        self._parameterNodeGuiTag = node.connectGui(self.ui)

    # -- models ---------------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        current = self._selectedModelFolder()
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        self._cards = {str(card.folder): card for card in self.logic.models()}
        for folder, card in self._cards.items():
            self.ui.modelComboBox.addItem(f"{card.title} ({card.version})", folder)
        self.ui.modelComboBox.blockSignals(False)
        index = self.ui.modelComboBox.findData(current) if current else 0
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.onModelChanged()

    def _selectedModelFolder(self):
        combo = self.ui.modelComboBox
        return combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None

    def onModelChanged(self, index=None) -> None:
        folder = self._selectedModelFolder()
        card = self._cards.get(folder)
        if card is None:
            self.ui.modelInfoLabel.text = _("No model found. Add one with <b>Add...</b>.")
            return
        self.ui.modelInfoLabel.text = self.logic.model_info(card)
        self.ui.updateThresholdButton.visible = self.logic.validity_threshold_outdated(card)
        if self._parameterNode:
            self._parameterNode.modelFolder = folder

    def onUpdateThreshold(self) -> None:
        folder = self._selectedModelFolder()
        with slicer.util.tryWithErrorDisplay(_("The validity threshold could not be updated."), waitCursor=True):
            before, after = self.logic.update_validity_threshold(folder)
            slicer.util.showStatusMessage(_("Validity threshold {before} -> {after}").format(before=before,
                                                                                           after=after), 5000)
            self.refreshModels()

    def onAddModel(self, folder: bool) -> None:
        if folder:
            source = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a GASE model folder"))
        else:
            source = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Select a GASE model .zip"), "",
                                                    "GASE model (*.zip)")
        if not source:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be installed."), waitCursor=True):
            card = self.logic.install_model(source)
            self.refreshModels()
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(str(card.folder)))

    # -- run ------------------------------------------------------------------------------------------
    def onApplyOrCancel(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self._endRun(_("Cancelled."))
            return
        from GASESegmentationLib.install import DependencyError, ensure_dependencies_in_slicer
        from GASESegmentationLib.process import gase_root

        try:
            ensure_dependencies_in_slicer(gase_root() / "Resources" / "requirements.txt")
        except DependencyError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("GASE - Python packages"))
            return
        try:
            self._run = self.logic.start(self.ui.inputVolumeSelector.currentNode(),
                                         self._selectedModelFolder(), self.ui.deviceComboBox.currentText)
        except Exception as exc:
            show_error(_("The segmentation could not start."), exc)
            return
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = _("Starting...")
        self.timer.start()

    def onPoll(self) -> None:
        run = self._run
        if run is None:
            self.timer.stop()
            return
        for event in run.poll():
            self.ui.progressBar.value = int(round(100 * event.fraction))
            self.ui.statusLabel.text = event.message
        if not run.done:
            return
        self.timer.stop()
        seconds = run.process.elapsed_s
        try:
            outputs = self.logic.finish(run, threshold=self.ui.thresholdSlider.value,
                                        opacity=self.ui.opacitySlider.value)
        except Exception as exc:
            self._endRun(_("Failed."))
            show_error(_("The segmentation failed."), exc)
            return
        self._endRun(_("Done in {seconds:.0f} s.").format(seconds=seconds))
        self.showOutputs(outputs)

    def _endRun(self, message: str) -> None:
        self.timer.stop()
        self._run = None
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = message

    # -- results --------------------------------------------------------------------------------------
    def onInputChanged(self, node) -> None:
        if self._run is None:
            self.ui.applyButton.enabled = node is not None
            self.showOutputs(self.logic.outputs_for(node) if node else None)

    def showOutputs(self, outputs) -> None:
        self._outputs = outputs
        has = outputs is not None
        for widget in (self.ui.thresholdSlider, self.ui.opacitySlider, self.ui.legendCheckBox,
                       self.ui.regionsTable, self.ui.reviewSegmentButton, self.ui.sortComboBox):
            widget.enabled = has
        self._removeVerdictActors()
        if not has:
            self.ui.verdictLabel.text = _("Apply the model to see whether the input is within its competence.")
            self.ui.reliabilityTableView.setMRMLTableNode(None)
            self.plotWidget.setMRMLPlotViewNode(None)
            self.ui.manifoldLabel.setPixmap(qt.QPixmap())
            self.ui.regionsTable.setRowCount(0)
            return
        verdict = outputs.verdict
        self.ui.verdictLabel.text = verdict.banner_html()
        self.ui.reliabilityTableView.setMRMLTableNode(outputs.reliability_table)
        self.plotWidget.setMRMLPlotViewNode(self._plotViewNode(outputs.slice_plot.chart))
        self._showVerdictInViews(verdict)
        png = os.path.join(slicer.app.temporaryPath, "GASE-manifold.png")  # overwritten by each run
        self.logic.write_manifold_png(outputs, png)
        self.ui.manifoldLabel.setPixmap(qt.QPixmap(png))
        self.refreshRegions()

    def _plotViewNode(self, chart):
        viewNode = slicer.mrmlScene.GetSingletonNode("GASESegmentation", "vtkMRMLPlotViewNode")
        if viewNode is None:
            viewNode = slicer.vtkMRMLPlotViewNode()
            viewNode.SetSingletonTag("GASESegmentation")
            viewNode.SetName("GASE slice plot view")
            slicer.mrmlScene.AddNode(viewNode)
        viewNode.SetPlotChartNodeID(chart.GetID() if chart else None)
        return viewNode

    def _showVerdictInViews(self, verdict) -> None:
        from GASESegmentationLib.render import verdict_actor

        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            view = layoutManager.sliceWidget(name).sliceView()
            renderer = view.renderWindow().GetRenderers().GetItemAsObject(0)
            actor = verdict_actor(verdict)
            renderer.AddViewProp(actor)
            self._verdictActors.append((renderer, actor, view))
            view.scheduleRender()

    def _removeVerdictActors(self) -> None:
        for renderer, actor, view in self._verdictActors:
            renderer.RemoveViewProp(actor)
            view.scheduleRender()
        self._verdictActors = []

    def onThresholdChanged(self, value: float) -> None:
        if self._outputs is not None:
            with slicer.util.tryWithErrorDisplay(_("Updating the threshold failed."), waitCursor=True):
                self.logic.set_threshold(self._outputs, value)
                self.ui.reliabilityTableView.setMRMLTableNode(self._outputs.reliability_table)
                self.refreshRegions()

    def onOpacityChanged(self, value: float) -> None:
        if self._outputs is not None:
            self.logic.set_opacity(self._outputs, value)

    def onLegendToggled(self, checked: bool) -> None:
        if self._outputs is not None:
            legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(self._outputs.confidence)
            if legend:
                legend.SetVisibility(checked)

    # -- review ---------------------------------------------------------------------------------------
    def refreshRegions(self) -> None:
        table = self.ui.regionsTable
        table.setRowCount(0)
        if self._outputs is None:
            return
        sort_by = "size" if self.ui.sortComboBox.currentIndex == 0 else "confidence"
        self._regions = self.logic.review_regions(self._outputs, self.ui.thresholdSlider.value, sort_by=sort_by)
        table.setRowCount(len(self._regions))
        for row, region in enumerate(self._regions):
            for column, text in enumerate((str(region.rank), region.structure, f"{region.volume_ml * 1000:.0f}",
                                           f"{region.mean_confidence:.2f}")):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def onRegionSelected(self) -> None:
        row = self.ui.regionsTable.currentRow()
        if self._outputs is not None and 0 <= row < len(self._regions):
            self.logic.center_on(self._outputs, self._regions[row])

    def onPlotPointSelected(self, seriesIds, selections) -> None:
        if self._outputs is None or self._outputs.slice_plot.table is None:
            return
        from GASESegmentationLib.tables import slice_of_row

        for n in range(selections.GetNumberOfItems()):
            points = selections.GetItemAsObject(n)
            if points is not None and points.GetNumberOfTuples() > 0:
                index = slice_of_row(self._outputs.slice_plot.table, int(points.GetValue(0)))
                self.logic.jump_to_slice(self._outputs, index)
                return

    def onReviewSegment(self) -> None:
        if self._outputs is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The review segment could not be created."), waitCursor=True):
            segmentId = self.logic.create_review_segment(self._outputs, self.ui.thresholdSlider.value)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(self._outputs.segmentation)
            setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
            setSource(self._outputs.input_volume)
            editor.setCurrentSegmentID(segmentId)


class GASESegmentationTest(ScriptedLoadableModuleTest):
    """Runs the module's logic inside Slicer on the registered sample data (the same calls the panel makes)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segmentation_on_sample_data()
        self.setUp()
        self.test_oblique_input_stays_aligned()

    def _sample(self):
        import SampleData

        from GASESegmentationLib.sampledata import SAMPLE_NAME, ensure_sample

        registerSampleData()
        ensure_sample(_sampleCacheDir())  # the Sample Data module then loads it like any registered sample
        return SampleData.downloadSample(SAMPLE_NAME)

    def test_segmentation_on_sample_data(self):
        import numpy as np

        from GASESegmentationLib.nodes import ijk_to_ras_of, volume_from_node

        self.delayDisplay("Segmenting the sample knee")
        volume = self._sample()
        user = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
        userTime = user.GetMTime()
        logic = GASESegmentationLogic()
        seen = []
        outputs = logic.process(volume, device="cpu", progress=lambda f, m: seen.append(f))
        self.assertTrue(seen and seen[-1] == 1.0)
        card = next(c for c in logic.models() if c.folder == logic.default_model_folder().resolve())
        self.assertEqual(outputs.segmentation.GetSegmentation().GetNumberOfSegments(), len(card.labels))
        self.assertTrue(np.allclose(ijk_to_ras_of(outputs.confidence), ijk_to_ras_of(volume)))
        confidence = volume_from_node(outputs.confidence).array
        self.assertTrue(0.0 <= confidence.min() and confidence.max() <= 1.0)
        self.assertTrue(outputs.verdict.valid, "the sample is in the demo model's own style")
        regions = logic.review_regions(outputs, DEFAULT_THRESHOLD)
        if regions:
            logic.center_on(outputs, regions[0])
        logic.create_review_segment(outputs, DEFAULT_THRESHOLD)
        again = logic.process(volume, device="cpu")
        self.assertEqual(again.segmentation.GetID(), outputs.segmentation.GetID())
        self.assertEqual(user.GetMTime(), userTime)
        self.delayDisplay("Test passed")

    def test_oblique_input_stays_aligned(self):
        import numpy as np

        self.delayDisplay("Oblique input")
        volume = self._sample()
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkTransform()
        matrix.RotateX(12)
        matrix.RotateZ(-9)
        transform.SetMatrixTransformToParent(matrix.GetMatrix())
        volume.SetAndObserveTransformNodeID(transform.GetID())
        volume.HardenTransform()
        outputs = GASESegmentationLogic().process(volume, device="cpu", show=False)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
            outputs.segmentation, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(a)
        volume.GetIJKToRASMatrix(b)
        self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=1e-4))
        self.assertEqual(labelmap.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.delayDisplay("Test passed")
