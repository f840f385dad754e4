"""GASE Training: train a GASE model from a few labelled scans, in the background, and add it to GASE Segmentation.

This file only binds the GUI. Everything it does is in ``GASETrainingLib`` (Qt-free, tested with MRML
nodes outside Slicer): ``GASETrainingLogic`` is the entry point for scripts as well.
"""
import logging
import tempfile
from pathlib import Path
from typing import Annotated

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from GASETrainingLib.logic import GASETrainingLogic as LibraryLogic
from GASESegmentationLib.messages import show_error

POLL_MS = 500


class GASETraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GASE Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["GASESegmentation"]  # its Lib runs the background process
        self.parent.contributors = ["GASE developers"]
        self.parent.helpText = _(
            "Train a GASE segmentation model from a few labelled scans: pairs of a volume and its segmentation "
            "from the scene and/or folders of image and label files. Training runs in a background process "
            "(Stop keeps a checkpoint; Resume continues), shows its losses, validation Dice and what the style "
            "generator has learned, and saves the model to your models folder, where GASE Segmentation lists "
            "it. From the Python console: <code>GASETrainingLib.GASETrainingLogic().train(...)</code>.")
        self.parent.acknowledgementText = _(
            "GASE follows Dai et al., Interpretable Semantic Medical Image Segmentation with Style and "
            "Confidence, IEEE TPAMI 2026.")


@parameterNodeWrapper
class GASETrainingParameterNode:
    modelName: str = "my-model"
    anatomy: str = "knee"
    plane: Annotated[str, Choice(["auto", "sagittal", "coronal", "axial"])] = "auto"
    valFraction: Annotated[float, WithinRange(0.0, 0.5)] = 0.2
    iterations: Annotated[int, WithinRange(10, 1000000)] = 2000
    maxMinutes: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    processes: Annotated[int, WithinRange(1, 64)] = 1


class GASETrainingLogic(ScriptedLoadableModuleLogic, LibraryLogic):
    """The library's Qt-free logic (``GASETrainingLib.logic``) plus the module's parameter node."""

    def __init__(self, work_root=None, models_dir=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        LibraryLogic.__init__(self, work_root, models_dir)

    def getParameterNode(self):
        return GASETrainingParameterNode(super().getParameterNode())


class GASETrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pairs = []    # (volume node ID, segmentation node ID)
        self._folders = []  # (images folder, labels folder)
        self._run = None
        self._lastRun = None
        self._previewIteration = None

    # -- set-up -------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GASETraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GASETrainingLogic()

        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.plotFrame.layout().addWidget(self.plotWidget)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.addFoldersButton.connect("clicked(bool)", self.onAddFolders)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemove)
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.refreshPairs()

    def cleanup(self) -> None:
        self.timer.stop()
        if self._run is not None and not self._run.done:
            self._run.process.stop()  # Slicer is closing: leave a checkpoint behind, resumable later
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._pairs = []  # the nodes are going; a running training keeps going (its data is on disk)
        self._parameterNode = None

    def onSceneEndClose(self, caller, event) -> None:
        self.refreshPairs()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        if self._parameterNode is not None and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = self.logic.getParameterNode()
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # -- training data --------------------------------------------------------------------------------
    def onVolumeChanged(self, volume) -> None:
        """Pre-select a segmentation made on this volume (its reference geometry), if there is one."""
        if volume is None:
            return
        for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            ref = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
            if ref is not None and ref.GetID() == volume.GetID():
                self.ui.segmentationSelector.setCurrentNode(seg)
                return

    def onAddPair(self) -> None:
        volume, seg = self.ui.volumeSelector.currentNode(), self.ui.segmentationSelector.currentNode()
        if volume is None or seg is None:
            slicer.util.errorDisplay(_("Select a volume and the segmentation that labels it."))
            return
        if any(v == volume.GetID() for v, _s in self._pairs):
            slicer.util.errorDisplay(_("'{name}' is already a training pair.").format(name=volume.GetName()))
            return
        self._pairs.append((volume.GetID(), seg.GetID()))
        self.refreshPairs()

    def onAddFolders(self) -> None:
        window = slicer.util.mainWindow()
        images = qt.QFileDialog.getExistingDirectory(window, _("Folder of training images"))
        if not images:
            return
        labels = qt.QFileDialog.getExistingDirectory(window, _("Folder of their label maps (same file names)"))
        if labels:
            self._folders.append((images, labels))
            self.refreshPairs()

    def onRemove(self) -> None:
        row = self.ui.pairsList.currentRow
        if 0 <= row < len(self._pairs):
            del self._pairs[row]
        elif len(self._pairs) <= row < len(self._pairs) + len(self._folders):
            del self._folders[row - len(self._pairs)]
        self.refreshPairs()

    def refreshPairs(self) -> None:
        self.ui.pairsList.clear()
        scene = slicer.mrmlScene
        self._pairs = [(v, s) for v, s in self._pairs if scene.GetNodeByID(v) and scene.GetNodeByID(s)]
        for v, s in self._pairs:
            self.ui.pairsList.addItem(f"{scene.GetNodeByID(v).GetName()}  +  {scene.GetNodeByID(s).GetName()}")
        for images, labels in self._folders:
            self.ui.pairsList.addItem(_("files: {images}  +  {labels}").format(images=images, labels=labels))

    def _trainingPairs(self):
        from GASETrainingLib.export import TrainingPair

        scene = slicer.mrmlScene
        return [TrainingPair(scene.GetNodeByID(v), scene.GetNodeByID(s)) for v, s in self._pairs]

    def _settings(self):
        from GASETrainingLib.job import TrainingSettings

        p = self._parameterNode
        return TrainingSettings(anatomy=p.anatomy.strip() or "knee", plane=None if p.plane == "auto" else p.plane,
                                val_fraction=p.valFraction, iterations=p.iterations,
                                max_minutes=p.maxMinutes if p.maxMinutes > 0 else None, device=p.device,
                                nproc=p.processes)

    # -- run ------------------------------------------------------------------------------------------
    def onStart(self) -> None:
        from GASESegmentationLib.install import DependencyError, ensure_dependencies_in_slicer
        from GASESegmentationLib.process import gase_root

        try:
            ensure_dependencies_in_slicer(gase_root() / "Resources" / "requirements.txt")
        except DependencyError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("GASE - Python packages"))
            return
        name = self._parameterNode.modelName.strip()
        try:
            settings = self._settings().validate()
            self.logic.run_folder(name)  # checks the name
            with slicer.util.WaitCursor():
                trainingSet = self.logic.export(self._trainingPairs(), name, folders=self._folders,
                                                anatomy=settings.anatomy)
            overwrite = False
            if (self.logic.run_folder(name) / "model").exists():
                if not slicer.util.confirmYesNoDisplay(_("A training named '{name}' exists. Replace it? (No keeps "
                                                         "it: Resume it instead.)").format(name=name)):
                    return
                overwrite = True
            self._run = self.logic.start(trainingSet, name, settings, scene=slicer.mrmlScene, overwrite=overwrite)
        except Exception as exc:
            show_error(_("The training could not start."), exc)
            return
        self._begin(_("Starting ({count} training scans)...").format(count=len(trainingSet.cases)))

    def onResume(self) -> None:
        try:
            self._run = self.logic.resume(self._lastRun or self._parameterNode.modelName.strip(),
                                          scene=slicer.mrmlScene)
        except Exception as exc:
            show_error(_("The training could not be resumed."), exc)
            return
        self._begin(_("Resuming from the last checkpoint..."))

    def onStop(self) -> None:
        if self._run is not None:
            self.logic.stop(self._run)
            self.ui.stopButton.enabled = False
            self.ui.statusLabel.text = _("Stopping after the current iteration (a checkpoint is written)...")

    def _begin(self, message: str) -> None:
        self._previewIteration = None
        self.ui.startButton.enabled = self.ui.resumeButton.enabled = False
        self.ui.stopButton.enabled = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self.ui.resultLabel.text = ""
        if self._run.charts is not None:
            self.plotWidget.setMRMLPlotViewNode(self._plotViewNode(self._run.charts.chart))
        self.timer.start()

    def onPoll(self) -> None:
        run = self._run
        if run is None:
            self.timer.stop()
            return
        run.poll()
        self.ui.progressBar.value = int(round(100 * run.process.fraction))
        self.ui.statusLabel.text = run.process.message
        if run.status.preview_iteration != self._previewIteration:
            self._previewIteration = run.status.preview_iteration
            self._showPreview(run)
        if run.done:
            self._end(run)

    def _end(self, run) -> None:
        self.timer.stop()
        self._run, self._lastRun = None, run
        self.ui.startButton.enabled = True
        self.ui.stopButton.enabled = False
        self.ui.resumeButton.enabled = run.stopped
        if run.stopped:
            self.ui.statusLabel.text = run.process.message
            return
        if not run.succeeded:
            self.ui.statusLabel.text = _("Failed.")
            show_error(_("The training failed."), RuntimeError(run.process.error or run.process.message))
            return
        try:
            card = self._register(run)
        except Exception as exc:
            show_error(_("The model could not be saved to your models folder."), exc)
            return
        dice = card.metrics.get("validation_dice", {}).get("mean")
        minutes = run.status.seconds / 60
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = _("Done: {iterations} iterations in {minutes:.1f} min.").format(
            iterations=run.status.iteration, minutes=minutes)
        self.ui.resultLabel.text = _("Model <b>{name}</b> saved to {folder}{dice}. It is now in GASE Segmentation's "
                                     "model list.").format(
            name=card.name, folder=card.folder,
            dice="" if dice is None else _("; validation Dice {dice:.3f}").format(dice=dice))
        self._showPreview(run)

    def _register(self, run):
        from gase.model_card import user_models_dir

        if (user_models_dir() / run.name).exists():
            if not slicer.util.confirmYesNoDisplay(_("A model named '{name}' is installed. Replace it with the new "
                                                     "one?").format(name=run.name)):
                from GASETrainingLib.registry import unique_model_name

                return self.logic.register(run, name=unique_model_name(run.name))
            return self.logic.register(run, overwrite=True)
        return self.logic.register(run)

    def _showPreview(self, run) -> None:
        try:
            png = self.logic.preview_png(run, Path(tempfile.mkdtemp(prefix="gase-preview-")) / "preview.png")
        except Exception as exc:  # a picture: never interrupt the training's panel for it
            logging.warning("GASE Training: preview not shown: %s", exc)
            return
        if png is not None:
            pixmap = qt.QPixmap(str(png))
            width = max(200, self.ui.previewLabel.width)
            self.ui.previewLabel.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))

    def _plotViewNode(self, chart):
        viewNode = slicer.mrmlScene.GetSingletonNode("GASETraining", "vtkMRMLPlotViewNode")
        if viewNode is None:
            viewNode = slicer.vtkMRMLPlotViewNode()
            viewNode.SetSingletonTag("GASETraining")
            viewNode.SetName("GASE training plot view")
            slicer.mrmlScene.AddNode(viewNode)
        viewNode.SetPlotChartNodeID(chart.GetID() if chart else None)
        return viewNode


class GASETrainingTest(ScriptedLoadableModuleTest):
    """Trains a tiny model inside Slicer from phantom knees in the scene (the calls the panel makes)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_training_from_scene_pairs()

    def test_training_from_scene_pairs(self):
        from gase.labels import KNEE_LABELS
        from gase.phantoms import SOURCE_STYLE, make_case
        from GASESegmentationLib.logic import GASESegmentationLogic
        from GASESegmentationLib.nodes import add_volume_node
        from GASESegmentationLib.results import update_segmentation
        from GASETrainingLib.export import TrainingPair
        from GASETrainingLib.job import TrainingSettings

        self.delayDisplay("Training a tiny model from four phantom knees")
        pairs = []
        for seed in range(4):
            image, labels = make_case("knee", SOURCE_STYLE["knee"], seed, scale=0.5)
            volume = add_volume_node(slicer.mrmlScene, image, f"knee {seed}")
            seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"knee {seed} labels")
            update_segmentation(seg, volume, labels, KNEE_LABELS)
            pairs.append(TrainingPair(volume, seg))
        work = Path(tempfile.mkdtemp(prefix="gase-training-test-"))
        logic = GASETrainingLogic(work_root=work / "runs", models_dir=work / "models")  # not the user's folder
        settings = TrainingSettings(anatomy="knee", iterations=12, device="cpu", val_fraction=0.25,
                                    config={"batch_size": 2, "crop": 64, "val_every": 12})
        events = []
        card = logic.train(pairs, "selftest-knee", settings, scene=slicer.mrmlScene, on_event=events.append)
        self.assertTrue(any(e["event"] == "progress" for e in events))
        self.assertIn("validation_dice", card.metrics)
        listed = GASESegmentationLogic(models_dirs=[work / "models"]).models()
        self.assertIn("selftest-knee", [c.name for c in listed])
        self.delayDisplay("Test passed")
