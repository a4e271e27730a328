"""Lung DDPM: synthetic chest CTs from a lung + nodule layout (Lung-DDPM, Lung-DDPM+), in 3D Slicer.

Module, Widget, Logic and Test of the scripted module. All MRML work is in the Qt-free LungDDPMSlicerLib
package beside this file; the engine (`lungddpm`) runs as a PythonSlicer subprocess.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import LungDDPMSlicerLib
from LungDDPMSlicerLib import compat

compat.require_supported(sys.version_info, (slicer.app.majorVersion, slicer.app.minorVersion))  # before newer syntax runs
from LungDDPMSlicerLib import (checkpoint_info, compare, engine, estimates, geometry, install, jobs, models,  # noqa: E402
                               mrml, nodule_attributes, panel, preview, remote, remote_jobs, sample,
                               worker)

MODULE_DIR = Path(__file__).resolve().parent
TORCH_REQUIREMENT = ">=2.1"
OTHER_CHECKPOINT = "__other__"  # model combo entry: any local checkpoint file
CACHE_SETTING = "LungDDPM/ModelCacheDirectory"
SELFTEST_INFERENCE_ENV = "LUNGDDPM_SELFTEST_INFERENCE"
SETTINGS_PREFIX = "LungDDPM/"  # QSettings keys of the panel's persisted choices (panel.PERSISTED)
DOCUMENTATION_URL = "https://github.com/LungDDPMSlicer/LungDDPMSlicer#use-in-3d-slicer"
SERVER_SETTINGS = {"runOn": "LungDDPM/RunOn", "url": "LungDDPM/ServerURL", "token": "LungDDPM/ServerToken"}
RUN_ON_SERVER = "server"  # the runOnCombo entry of a `lungddpm serve` server


class UserInputError(ValueError):
    """A missing input or dependency the user can fix; shown as its message, without a traceback."""


# Errors whose message tells the user what to do; anything else is shown with its traceback as details.
USER_ERRORS = (UserInputError, jobs.EngineError, models.ModelUnavailableError, models.ChecksumError,
               models.ModelListError, mrml.ExportError, geometry.GeometryError, engine.EngineNotFoundError,
               nodule_attributes.NoduleAttributeError, checkpoint_info.CheckpointReadError, remote.RemoteError)


def resourcePath(relative: str) -> Path:
    """A module resource: <module>/Resources/... when built/installed, <repository>/Resources/... in a source tree."""
    for base in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        if (base / relative).exists():
            return base / relative
    raise FileNotFoundError(f"resource {relative} is missing from {MODULE_DIR / 'Resources'}; reinstall the extension")


#
# Module
#


class LungDDPMSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer (category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Lung DDPM")
        # Utilities, not Segmentation: the module does not segment the input; it generates a new (synthetic)
        # image from a layout, and it is not a filter of the input image either.
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Utilities")]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["LungDDPMSlicer contributors"]
        self.parent.helpText = _("""
Synthesise chest CTs from a semantic layout (lung + nodules) with Lung-DDPM: a diffusion model denoises the
lungs conditioned on the layout while the real reference CT is kept outside them.
<b>Every output is SYNTHETIC</b>: node names say so and attributes LungDDPM.SYNTHETIC=true record it.
Synthetic images are for research (e.g. data augmentation), never for diagnosis.
<p>Workflow: reference CT, segmentation with a lung segment (or "Create lung segment") and nodule segments
(Segment Editor, or "Add nodule" at a point, which paints the chosen sphericity, spiculation and lobulation for
any model), for an attribute model the nodules' other attributes (or a description),
model, device, sampler (default DPM-Solver++ 2M, 3 steps or the model file's own; ddpm runs all of the model's steps), precision, seed,
variants, then Synthesize. Lung-DDPM+ (patch) models synthesise one
64³ cube per nodule and change only the nodules. The engine runs in the background; Cancel stops it and leaves
the scene as it was.</p>
<p>Please cite: Jiang Y. et al., Lung-DDPM: Semantic Layout-guided Diffusion Models for Thoracic CT Image
Synthesis, IEEE TBME 2025 (arXiv:2502.15204); and for Lung-DDPM+: Jiang Y., Shariftabrizi A., Manem V. S. K.,
arXiv:2508.09327 (2025).</p>
<p>Supported: 3D Slicer 5.10 or later. Documentation: <a href="{url}">{url}</a></p>""").format(url=DOCUMENTATION_URL)
        slicer.app.connect("startupCompleted()", registerSampleData)
        self.parent.acknowledgementText = _("""
Reimplements the methods of Lung-DDPM and Lung-DDPM+ (Manem Lab, MIT licence); contains none of their code.
Torch is provided by the SlicerPyTorch extension.""")


def registerSampleData() -> None:
    """List the demo phantom (a CT with a ready lung + nodule layout) in the Sample Data module under 'Lung DDPM'."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Lung DDPM", sampleName=sample.SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[],
        thumbnailFileName=str(resourcePath("Icons/LungDDPMSlicer.png")), customDownloader=loadDemoSample)


def loadDemoSample(source=None) -> tuple:
    """Sample Data's loader of the demo phantom: the engine draws it (seconds), then CT and layout enter the scene."""
    logic = LungDDPMSlicerLogic()
    folder = Path(slicer.util.tempDirectory("LungDDPMSample"))
    ctPath, layoutPath = sample.write_demo_phantom(logic.engineDir(), folder)
    ct, segmentation = sample.load_demo_sample(logic.context(), ctPath, layoutPath)
    for node in (ct, segmentation):
        mrml.place_beside(logic.context(), node, ct)
    slicer.util.setSliceViewerLayers(background=ct, fit=True)
    shutil.rmtree(folder, ignore_errors=True)
    return ct, segmentation


#
# Parameter node
#


@parameterNodeWrapper
class LungDDPMSlicerParameterNode:
    """The module's state; widgets bind by their SlicerParameterName, segment IDs are wired by hand."""

    referenceVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    lungSegmentIds: list[str]  # one segment for both lungs, or several (e.g. five lobes)
    noduleSegmentIds: list[str]
    noduleMarkups: vtkMRMLMarkupsFiducialNode
    noduleDiameterMm: Annotated[float, WithinRange(2.0, 60.0)] = 10.0
    noduleIrregularity: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    noduleAttributes: str = "{}"  # JSON {characteristic: LIDC code} of the attribute combos (filled from the engine)
    guidance: Annotated[float, WithinRange(0.0, 20.0)] = 3.0  # attribute models only; the model's default on change
    modelName: str = ""
    localModelPath: str = ""  # a str wired by hand: a Path field would show "." in the empty path widget
    device: Annotated[str, Choice(list(panel.CHOICES["device"]))] = "auto"
    sampler: Annotated[str, Choice(list(panel.CHOICES["sampler"]))] = engine.DEFAULT_SAMPLER
    steps: Annotated[int, WithinRange(1, 1000)] = engine.DEFAULT_SOLVER_STEPS  # solvers only; at most the model's T
    aasVariant: Annotated[str, Choice(list(panel.AAS_VARIANTS))] = "paper"  # ddpm only
    precision: Annotated[str, Choice(list(panel.CHOICES["precision"]))] = engine.DEFAULT_PRECISION  # fp16: CUDA GPUs only
    patchSpacingMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0  # Lung-DDPM+ cube voxel size; 0: the model's own
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    variants: Annotated[int, WithinRange(1, 50)] = 1
    keepTemporaryFiles: bool = False
    compareAfterSynthesis: bool = True
    fade: Annotated[float, WithinRange(0.0, 1.0)] = 0.5  # compare view: 0 reference, 1 synthetic


def chosenPath(path: str | None) -> Path | None:
    """A path typed or browsed in a path widget, or None when it is empty."""
    return Path(path) if path else None


#
# Widget
#


class LungDDPMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires widgets to the parameter node and runs synthesis jobs through the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedSegmentation = None
        self._observedMarkups = None
        self.previewNode = None  # the click-to-place sphere (preview.update_preview)
        self.job: jobs.SynthesisJob | None = None
        self.torchInstall: install.CommandSequence | None = None
        self.schema = None  # the engine's attribute schema module (nodule_attributes.schema)
        self.shapeFields: tuple[str, ...] = ()  # what Add nodule paints for any model (nodule_attributes.shape_fields)
        self.savedView: compare.ViewState | None = None  # the user's views before the compare view
        self.uiState = "idle"
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(250)
        self.pollTimer.timeout.connect(self.onPollJob)

    def setup(self) -> None:
        """Load the .ui file, connect widgets, and set up the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resourcePath("UI/LungDDPMSlicer.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LungDDPMSlicerLogic()

        for entry in self.logic.models:
            self.ui.modelCombo.addItem(entry.title, entry.name)
        self.ui.modelCombo.addItem(_("Other checkpoint file…"), OTHER_CHECKPOINT)
        self.ui.modelCacheDirLineEdit.currentPath = str(self.logic.modelCacheDir())
        self.schema = nodule_attributes.schema(self.logic.engineDir())
        self.shapeFields = nodule_attributes.shape_fields(self.logic.engineDir())
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        for field, combo in self.attributeCombos().items():
            for choice in nodule_attributes.choices(self.schema, field):
                combo.addItem(choice.label, 0 if choice.code is None else choice.code)
            combo.currentIndexChanged.connect(self.onAttributeChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.lungSegmentSelector.segmentSelectionChanged.connect(self.onLungSegmentsChanged)
        self.ui.segmentationSelector.nodeAddedByUser.connect(self.onSegmentationAdded)
        self.ui.noduleSegmentSelector.segmentSelectionChanged.connect(self.onNoduleSegmentsChanged)
        self.ui.fillFromPromptButton.clicked.connect(self.onFillFromPrompt)
        self.ui.promptLineEdit.returnPressed.connect(self.onFillFromPrompt)
        self.ui.applyAttributesButton.clicked.connect(self.onApplyAttributes)
        self.ui.restoreViewButton.clicked.connect(self.onRestoreView)
        self.ui.noduleMarkupsSelector.currentNodeChanged.connect(self.ui.noduleMarkupsPlaceWidget.setCurrentNode)
        self.ui.modelCombo.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.onModelPathChanged)
        self.ui.modelCacheDirLineEdit.currentPathChanged.connect(self.onModelCacheDirChanged)
        self.ui.createLungButton.clicked.connect(self.onCreateLung)
        self.ui.addNoduleButton.clicked.connect(self.onAddNodule)
        self.ui.clearCacheButton.clicked.connect(self.onClearCache)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.setupServerPanel()

        self.initializeParameterNode()

    def attributeCombos(self) -> dict:
        """The attribute combo box of each characteristic the panel offers (nodule_attributes.PANEL_ATTRIBUTES)."""
        return {"texture": self.ui.textureAttributeCombo, "margin": self.ui.marginAttributeCombo,
                "spiculation": self.ui.spiculationAttributeCombo, "lobulation": self.ui.lobulationAttributeCombo,
                "calcification": self.ui.calcificationAttributeCombo, "sphericity": self.ui.sphericityAttributeCombo,
                "malignancy": self.ui.malignancyAttributeCombo}

    def cleanup(self) -> None:
        """Stop a running job or install and remove observers when the module is closed."""
        if self.job is not None and self.job.active:
            self.job.cancel()
        if self.torchInstall is not None:
            self.torchInstall.cancel()
        self.logic.stopWorker()
        preview.remove_preview(slicer.mrmlScene, self.previewNode)
        self.pollTimer.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the helper modules too: Slicer's reload re-imports only this file."""
        importlib.reload(LungDDPMSlicerLib)
        for name in LungDDPMSlicerLib.MODULES:
            importlib.reload(sys.modules[f"LungDDPMSlicerLib.{name}"])
        super().onReload()

    def enter(self) -> None:
        """Make sure the parameter node exists and is observed when the module is shown."""
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        """Stop observing the parameter node while the module is hidden (a running job continues)."""
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        """Cancel a running job and forget the parameter node before the scene closes."""
        if self.job is not None and self.job.active:
            self.job.cancel()
            self.setUiState("idle")
        self.logic.stopWorker()
        self.previewNode = None  # removed with the scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Create a fresh parameter node (and Segment Editor node) after the scene closed, if the module is shown."""
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Get the parameter node and give it defaults (first CT volume, a model)."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.referenceVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.referenceVolume = first
        if not self._parameterNode.modelName:  # a new parameter node: the choices of the last session, else defaults
            self._parameterNode.modelName = self.logic.models[0].name
            stored = {key: qt.QSettings().value(SETTINGS_PREFIX + key) for key in panel.PERSISTED}
            offered = {"modelName": [e.name for e in self.logic.models], "device": engine.DEVICES,
                       "sampler": engine.SAMPLERS, "precision": panel.offered_precisions(self.logic.cudaGpuDetected())}
            for key, value in panel.restored_settings(stored, offered).items():
                setattr(self._parameterNode, key, value)

    def setParameterNode(self, inputParameterNode: LungDDPMSlicerParameterNode | None) -> None:
        """Bind the GUI to a parameter node (connectGui) and observe it for the hand-wired widgets."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            if self._parameterNode.precision == "fp16" and not self.logic.cudaGpuDetected():
                self._parameterNode.precision = engine.DEFAULT_PRECISION  # e.g. a scene saved on a GPU machine
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.describeChoices()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def describeChoices(self) -> None:
        """Friendly labels and tooltips for the choice combos; fp16 only with a CUDA GPU (connectGui refills them).

        connectGui's combo connector reads and writes a choice by its index, so the labels can differ from the
        stored values as long as the order is the Choice order (panel.CHOICES).
        """
        offered = panel.offered_precisions(self.logic.cudaGpuDetected())
        for index in reversed(range(self.ui.precisionCombo.count)):
            if panel.CHOICES["precision"][index] not in offered:
                self.ui.precisionCombo.removeItem(index)  # fp16, the last choice: the others keep their indices
        combos = {"device": self.ui.deviceCombo, "sampler": self.ui.samplerCombo, "precision": self.ui.precisionCombo,
                  "aasVariant": self.ui.aasVariantCombo}
        tips = {"sampler": panel.SAMPLER_TIPS, "precision": panel.PRECISION_TIPS}
        labels = panel.choice_labels(self.logic.autoPrecisions())
        for field, combo in combos.items():
            for index in range(combo.count):
                value = panel.CHOICES[field][index]
                combo.setItemText(index, labels[field][value])
                if field in tips:
                    combo.setItemData(index, tips[field][value], qt.Qt.ToolTipRole)

    # -- hand-wired widgets: segment IDs and the model list ------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """Show the parameter node's segment choices, model, estimate and button states."""
        p = self._parameterNode
        if p is None:
            return
        self.observeSegmentation(p.segmentation)
        self.observeMarkups(p.noduleMarkups)
        self.updatePreview()
        if self.ui.segmentEditorWidget.segmentationNode() is not p.segmentation:
            self.ui.segmentEditorWidget.setSegmentationNode(p.segmentation)
        if self.ui.segmentEditorWidget.sourceVolumeNode() is not p.referenceVolume:
            self.ui.segmentEditorWidget.setSourceVolumeNode(p.referenceVolume)
        wasBlocked = self.ui.lungSegmentSelector.blockSignals(True)
        self.ui.lungSegmentSelector.setCurrentNode(p.segmentation)
        self.ui.lungSegmentSelector.setSelectedSegmentIDs(list(p.lungSegmentIds))
        self.ui.lungSegmentSelector.blockSignals(wasBlocked)
        wasBlocked = self.ui.noduleSegmentSelector.blockSignals(True)
        self.ui.noduleSegmentSelector.setCurrentNode(p.segmentation)
        self.ui.noduleSegmentSelector.setSelectedSegmentIDs(list(p.noduleSegmentIds))
        self.ui.noduleSegmentSelector.blockSignals(wasBlocked)
        values = json.loads(p.noduleAttributes or "{}")
        for field, combo in self.attributeCombos().items():
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(max(combo.findData(int(values.get(field, 0))), 0))
            combo.blockSignals(wasBlocked)
        for key, value in panel.stored_settings({key: getattr(p, key) for key in panel.PERSISTED}).items():
            qt.QSettings().setValue(SETTINGS_PREFIX + key, value)
        if self.ui.modelPathLineEdit.currentPath != p.localModelPath:
            wasBlocked = self.ui.modelPathLineEdit.blockSignals(True)
            self.ui.modelPathLineEdit.currentPath = p.localModelPath
            self.ui.modelPathLineEdit.blockSignals(wasBlocked)
        index = self.ui.modelCombo.findData(p.modelName)
        wasBlocked = self.ui.modelCombo.blockSignals(True)
        self.ui.modelCombo.setCurrentIndex(max(index, 0))
        self.ui.modelCombo.blockSignals(wasBlocked)
        if self.savedView is not None:
            compare.set_fade(slicer.mrmlScene, p.fade)
        self.updateSamplingWidgets()
        self.updateAttributeWidgets()
        self.updateModelInfo()
        self.updateButtons()

    def updateSamplingWidgets(self) -> None:
        """Steps only for the few-step solvers (1..T), AAS variant only for ddpm, patch spacing only for patch models."""
        p = self._parameterNode
        states = panel.widget_states(p.sampler, self.logic.modelEntry(p.modelName))
        self.ui.stepsSpinBox.enabled = states.steps_enabled
        self.ui.stepsSpinBox.maximum = states.max_steps
        self.ui.aasVariantCombo.enabled = states.aas_variant_enabled
        self.ui.patchSpacingSpinBox.enabled = states.patch_spacing_enabled

    def observeSegmentation(self, segmentationNode) -> None:
        """Refresh the nodule list when segments of the chosen segmentation are added, removed or renamed."""
        if segmentationNode is self._observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self.onSegmentsChanged)
        self._observedSegmentation = segmentationNode
        if segmentationNode is not None:
            for event in events:
                self.addObserver(segmentationNode, event, self.onSegmentsChanged)

    def observeMarkups(self, markupsNode) -> None:
        """Follow the centre point list: placing, dragging or deleting a point moves the preview sphere."""
        if markupsNode is self._observedMarkups:
            return
        events = (slicer.vtkMRMLMarkupsNode.PointAddedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                  slicer.vtkMRMLMarkupsNode.PointRemovedEvent)
        if self._observedMarkups is not None:
            for event in events:
                self.removeObserver(self._observedMarkups, event, self.updatePreview)
        self._observedMarkups = markupsNode
        if markupsNode is not None:
            for event in events:
                self.addObserver(markupsNode, event, self.updatePreview)

    def updatePreview(self, caller=None, event=None) -> None:
        """Show the nodule preview sphere at the last placed point with the chosen diameter."""
        p = self._parameterNode
        if p is not None:
            self.previewNode = preview.update_preview(slicer.mrmlScene, p.noduleMarkups, p.noduleDiameterMm,
                                                      self.previewNode)

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        """Drop chosen segment IDs that no longer exist, then refresh."""
        if self._parameterNode is None:
            return
        self.pruneSegmentChoices(self._parameterNode.segmentation)
        self.updateGUIFromParameterNode()

    def pruneSegmentChoices(self, segmentationNode) -> None:
        """Keep only the chosen lung and nodule segment IDs that exist in segmentationNode."""
        p = self._parameterNode
        segmentation = segmentationNode.GetSegmentation() if segmentationNode is not None else None

        def exists(segmentId: str) -> bool:
            """Whether the segmentation holds this segment ID."""
            return segmentation is not None and segmentation.GetSegment(segmentId) is not None

        for field in ("lungSegmentIds", "noduleSegmentIds"):
            kept = [sid for sid in getattr(p, field) if exists(sid)]
            if kept != list(getattr(p, field)):
                setattr(p, field, kept)

    def onSegmentationChanged(self, node) -> None:
        """Another segmentation: keep only the segment choices it holds."""
        if self._parameterNode is not None:
            self.pruneSegmentChoices(node)

    def onSegmentationAdded(self, node) -> None:
        """A segmentation made with the selector's "Create new": visible, on the reference CT's grid and transform."""
        mrml.prepare_segmentation(node, self._parameterNode.referenceVolume if self._parameterNode else None)

    def onLungSegmentsChanged(self, segmentIds) -> None:
        """Store the lung segment IDs; a segment chosen as lung stops being a nodule."""
        p = self._parameterNode
        if p is None:
            return
        p.lungSegmentIds = list(segmentIds)
        if set(p.lungSegmentIds) & set(p.noduleSegmentIds):
            p.noduleSegmentIds = [sid for sid in p.noduleSegmentIds if sid not in p.lungSegmentIds]

    def onNoduleSegmentsChanged(self, segmentIds) -> None:
        """Store the nodule segment IDs; a segment chosen as nodule stops being a lung segment."""
        p = self._parameterNode
        if p is None:
            return
        p.noduleSegmentIds = list(segmentIds)
        if set(p.lungSegmentIds) & set(p.noduleSegmentIds):
            p.lungSegmentIds = [sid for sid in p.lungSegmentIds if sid not in p.noduleSegmentIds]

    # -- nodule attributes ----------------------------------------------------------------------------------

    def chosenModelInfo(self) -> tuple[checkpoint_info.ModelAttributes | None, str]:
        """What the chosen model file says (read without torch), or None and why it cannot be read yet."""
        p = self._parameterNode
        path = self.logic.presentModelFile(p.modelName, chosenPath(p.localModelPath))
        if path is None:
            return None, _("choose or download the model file first; the file says which attributes the model takes")
        try:
            return self.logic.modelAttributes(path), ""
        except checkpoint_info.CheckpointReadError as error:
            return None, str(error)

    def modelAttributeStates(self) -> panel.AttributeStates:
        """Which attribute controls the chosen model enables, from its model file (read without torch)."""
        entry = self.logic.modelEntry(self._parameterNode.modelName)
        title = entry.title if entry is not None else _("this checkpoint")
        info, reason = self.chosenModelInfo()
        return panel.attribute_states(info, nodule_attributes.PANEL_ATTRIBUTES, self.shapeFields, title, reason)

    def updateAttributeWidgets(self) -> None:
        """Enable the shape controls for any readable model, the others and guidance for what it takes; say which is which."""
        states = self.modelAttributeStates()
        for field, combo in self.attributeCombos().items():
            combo.enabled = states.enabled[field]
        anyEnabled = any(states.enabled.values())
        self.ui.promptLineEdit.enabled = anyEnabled
        self.ui.fillFromPromptButton.enabled = anyEnabled
        self.ui.applyAttributesButton.enabled = anyEnabled and bool(self._parameterNode.noduleSegmentIds)
        self.ui.guidanceSpinBox.enabled = states.guidance_enabled
        self.ui.attributesInfoLabel.text = states.message

    def currentAttributes(self) -> dict[str, float]:
        """The known values of the enabled attribute controls: what Add nodule paints and the segments' tags store."""
        return panel.add_nodule_attributes(self._parameterNode.noduleAttributes, self.modelAttributeStates())

    def onAttributeChanged(self, index: int = 0) -> None:
        """Store the attribute combos' values (0: unknown)."""
        values = {field: combo.currentData for field, combo in self.attributeCombos().items() if combo.currentData}
        self._parameterNode.noduleAttributes = json.dumps(values)

    def onFillFromPrompt(self) -> None:
        """Set the attribute controls from the description with the engine's parser; an unknown word shows its error."""
        try:
            parsed = nodule_attributes.parse_prompt(self.schema, self.ui.promptLineEdit.text)
        except self.schema.InputError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Describe the nodule"))
            return
        self._parameterNode.noduleAttributes, ignored = panel.prompt_values(parsed, self.modelAttributeStates())
        if ignored:
            self.appendLog(_("Not taken by this model, left out: {fields}").format(fields=", ".join(ignored)))

    def onApplyAttributes(self) -> None:
        """Store the current attributes as tags of the chosen nodule segments."""
        p = self._parameterNode
        values = self.currentAttributes()
        for segmentId in p.noduleSegmentIds:
            nodule_attributes.set_attribute_tags(p.segmentation, segmentId, nodule_attributes.PANEL_ATTRIBUTES, values)
        self.appendLog(_("Attributes {values} set on {n} nodule segment(s)").format(values=values or "unknown",
                                                                                  n=len(p.noduleSegmentIds)))

    def onModelChanged(self, index: int) -> None:
        """Store the chosen model's name; the guidance scale and solver steps become the model's defaults."""
        self._parameterNode.modelName = self.ui.modelCombo.itemData(index)
        self.useModelDefaults()

    def onModelPathChanged(self, path: str) -> None:
        """Store the chosen checkpoint file; the guidance scale and solver steps become its defaults."""
        self._parameterNode.localModelPath = path
        self.useModelDefaults()

    def useModelDefaults(self) -> None:
        """Set the guidance scale (attribute models) and the solver steps to the chosen model file's defaults."""
        default = self.modelAttributeStates().guidance_default
        if default is not None:
            self._parameterNode.guidance = default
        self._parameterNode.steps = panel.default_steps(self.chosenModelInfo()[0])

    def onModelCacheDirChanged(self, path: str) -> None:
        """Remember the model folder in the application settings."""
        if path:
            self.logic.setModelCacheDir(Path(path))
            self.updateModelInfo()

    def updateModelInfo(self) -> None:
        """Describe the chosen model and show the time/memory estimate with its warnings."""
        p = self._parameterNode
        entry = self.logic.modelEntry(p.modelName)
        if entry is None:
            self.ui.modelInfoLabel.text = _("Choose a checkpoint file (released Lung-DDPM or lungddpm format).")
            self.ui.estimateLabel.text = _("No estimate for an arbitrary checkpoint: time and memory depend on its size.")
            return
        info = entry.description
        if entry.download_page:
            linkText = _("Authors' download folder")
            info += f' <a href="{entry.download_page}">{linkText}</a>.'
        if not entry.supported:
            info += "<br><b>" + _("Not available:") + f"</b> {entry.unsupported_reason}"
        self.ui.modelInfoLabel.text = info
        estimate = self.logic.estimate(entry.name, p.device, p.variants, sampler=p.sampler, steps=p.steps,
                                       nodules=len(p.noduleSegmentIds))
        text = estimate.summary()
        if estimate.warnings:
            text += "<br><span style='color:#c05000'>" + "<br>".join(estimate.warnings) + "</span>"
        self.ui.estimateLabel.text = text

    def missingInputs(self) -> str:
        """Why Synthesize cannot run yet (empty when it can)."""
        p = self._parameterNode
        if p is None or p.referenceVolume is None:
            return _("Choose a reference CT.")
        if p.segmentation is None or not p.lungSegmentIds:
            return _("Choose a segmentation and its lung segment(s).")
        if self.runsOnServer():
            return self.serverProblem()
        entry = self.logic.modelEntry(p.modelName)
        if entry is not None and not entry.supported:
            return entry.unsupported_reason
        if entry is None and chosenPath(p.localModelPath) is None:
            return _("Choose a checkpoint file.")
        if entry is not None and entry.profile in estimates.PATCH_PROFILES and not p.noduleSegmentIds:
            return _("{model} synthesises nodules only: tick a nodule segment or add one.").format(model=entry.title)
        return panel.precision_problem(p.precision, p.device, self.logic.cudaGpuDetected())

    def updateButtons(self) -> None:
        """Enable the buttons that make sense for the inputs and the job state."""
        p = self._parameterNode
        if p is None:
            return
        busy = self.uiState in ("starting", "running", "importing", "cancelling", "installing")
        self.ui.createLungButton.enabled = not busy and p.referenceVolume is not None and p.segmentation is not None
        self.ui.addNoduleButton.enabled = (not busy and p.referenceVolume is not None and bool(p.lungSegmentIds)
                                           and p.noduleMarkups is not None)
        self.ui.restoreViewButton.enabled = self.savedView is not None
        missing = self.missingInputs()
        if busy:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = self.uiState != "cancelling"
            self.ui.applyButton.toolTip = _("Stop the engine and all its processes; the scene is left as it was.")
        else:
            self.ui.applyButton.text = _("Synthesize")
            self.ui.applyButton.enabled = not missing
            self.ui.applyButton.toolTip = missing or _("Synthesise the variants in the background.")

    # -- actions ----------------------------------------------------------------------------------------------

    def runWithErrorDisplay(self, failure: str, action, waitCursor: bool = True):
        """Run action and return its result; on an error show it and return None.

        Like slicer.util.tryWithErrorDisplay, but errors the user can fix (engine messages, missing models,
        inputs or extensions) are shown as their message alone; unexpected errors get the traceback as details.
        """
        if waitCursor:
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            return action()
        except Exception as error:  # shown to the user below, never swallowed silently
            failed = error
            details = None if isinstance(error, USER_ERRORS) else traceback.format_exc()
        finally:
            if waitCursor:
                qt.QApplication.restoreOverrideCursor()
        logging.error(f"{failure} {failed}" + (f"\n{details}" if details else ""))
        extra = {"detailedText": details} if details else {}
        slicer.util.errorDisplay(f"{failure}\n\n{failed}", windowTitle=_("Lung DDPM"), **extra)
        return None

    def startTorchInstall(self) -> None:
        """Install PyTorch in the background after one confirmation (the panel stays usable; Cancel stops it)."""
        commands = install.torch_install_commands(engine.python_executable(), TORCH_REQUIREMENT)
        if not slicer.util.confirmOkCancelDisplay(
                _("Synthesis needs PyTorch {req} in Slicer's Python. Install it now in the background (light-the-torch "
                  "picks the CUDA build for your NVIDIA driver, or the CPU build; a few minutes)?\n\n{commands}").format(
                    req=TORCH_REQUIREMENT, commands="\n".join(" ".join(c) for c in commands)),
                windowTitle=_("Lung DDPM")):
            return
        self.ui.logText.clear()
        self.torchInstall = install.CommandSequence(commands, self.appendLog)
        self.torchInstall.start()
        self.setUiState("installing")
        self.pollTimer.start()

    def onCreateLung(self) -> None:
        """Add an automatic lung segment and select it."""
        p = self._parameterNode
        segmentId = self.runWithErrorDisplay(_("Automatic lung segmentation failed."),
                                             lambda: self.logic.createLungSegment(p.referenceVolume, p.segmentation))
        if segmentId:
            p.lungSegmentIds = [segmentId]
            self.appendLog(_("Added lung segment {id}").format(id=segmentId))
            warnings = jobs.lung_mask_warnings(p.segmentation, segmentId)
            for warning in warnings:
                self.appendLog(_("Lung mask warning: {warning}").format(warning=warning))
            if warnings:
                slicer.util.warningDisplay("\n\n".join(warnings), windowTitle=_("Check the lung segment"))

    def onAddNodule(self) -> None:
        """Add a nodule segment with the current attributes at the last point of the point list and choose it."""
        p = self._parameterNode
        segmentId = self.runWithErrorDisplay(_("Adding the nodule failed."), lambda: self.logic.addNodule(
            p.referenceVolume, p.segmentation, list(p.lungSegmentIds), p.noduleMarkups, p.noduleDiameterMm,
            p.noduleIrregularity, attributes=self.currentAttributes()))
        if segmentId:
            p.noduleSegmentIds = list(p.noduleSegmentIds) + [segmentId]
            self.appendLog(_("Added nodule segment {id}").format(id=segmentId))
            # the committed point is used up: its preview goes, and the next click places the next nodule
            p.noduleMarkups.RemoveNthControlPoint(p.noduleMarkups.GetNumberOfControlPoints() - 1)

    def onRestoreView(self) -> None:
        """Put back the views the user had before the synthesis."""
        if self.savedView is not None:
            compare.restore_view(slicer.mrmlScene, self.savedView)
            self.savedView = None
            self.updateButtons()

    def onClearCache(self) -> None:
        """Delete the checkpoint files in the model folder after a confirmation listing them."""
        folder = self.logic.modelCacheDir()
        files = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")) if folder.is_dir() else []
        if not files:
            slicer.util.infoDisplay(_("The model folder {folder} holds no checkpoint files.").format(folder=folder))
            return
        names = "\n".join(f.name for f in files)
        if slicer.util.confirmOkCancelDisplay(_("Delete these files from {folder}?\n\n{names}").format(folder=folder, names=names)):
            for f in files:
                f.unlink()

    def onApplyButton(self) -> None:
        """Synthesize when idle; Cancel while a job or the PyTorch install runs."""
        if self.torchInstall is not None:
            self.torchInstall.cancel()
            self.torchInstall = None
            self.setUiState("idle")
            self.ui.statusLabel.text = _("PyTorch installation cancelled.")
            return
        if self.job is not None and self.job.active:
            self.setUiState("cancelling")
            slicer.app.processEvents()
            self.job.cancel()
            self.setUiState("idle")
            self.ui.statusLabel.text = _("Cancelled; the scene is as it was before this variant.")
            return
        if self.savedView is None:  # the user's own views, before results replace what they show
            self.savedView = compare.save_view(slicer.mrmlScene)
        if self.runsOnServer():  # the server has its own torch: nothing to install here
            self.setUiState("starting")
            self.ui.logText.clear()
            self.startServerJob()
            return
        if not self.logic.torchSatisfied():
            self.startTorchInstall()
            return
        self.setUiState("starting")
        self.ui.logText.clear()
        p = self._parameterNode
        model = p.modelName if p.modelName != OTHER_CHECKPOINT else chosenPath(p.localModelPath)
        o = panel.sampling_options(p.sampler, p.steps, p.aasVariant, p.precision, p.patchSpacingMm)
        job = self.runWithErrorDisplay(_("Synthesis could not start."), lambda: self.logic.startSynthesis(
            p.referenceVolume, p.segmentation, list(p.lungSegmentIds), list(p.noduleSegmentIds), model,
            seed=p.seed, variants=p.variants, device=p.device, sampler=o.sampler, steps=o.steps,
            aasVariant=o.aas_variant, precision=o.precision, patchSpacingMm=o.patch_spacing_mm,
            localModelFile=chosenPath(p.localModelPath), keepTemporaryFiles=p.keepTemporaryFiles, log=self.appendLog,
            guidance=p.guidance, downloadProgress=self.showDownload))
        self.followJob(job)

    def followJob(self, job: jobs.SynthesisJob | None) -> None:
        """Show a started job (local or on a server) and poll it until it ends; None: it could not start."""
        if job is None:
            self.setUiState("failed")
            return
        self.job = job
        self.showJob()
        if job.active:
            self.pollTimer.start()

    def showDownload(self, received: int, total: int | None) -> None:
        """Show a model download's progress (the download runs between GUI updates)."""
        self.ui.progressBar.value = int(1000 * received / total) if total else 0
        self.ui.statusLabel.text = _("Downloading the model: {got:.0f} of {total} MB").format(
            got=received / 1e6, total=f"{total / 1e6:.0f}" if total else "?")
        slicer.app.processEvents()

    # -- Run on: this computer | server (a `lungddpm serve` machine) ---------------------------------------

    def setupServerPanel(self) -> None:
        """Fill the Run-on group from Slicer's settings and connect it; the token is shown masked."""
        self.serverModelAttributes: dict[str, tuple[str, ...]] = {}  # per server model: the attributes it takes
        settings = qt.QSettings()
        self.ui.runOnCombo.currentText = settings.value(SERVER_SETTINGS["runOn"], self.ui.runOnCombo.itemText(0))
        self.ui.serverUrlLineEdit.text = settings.value(SERVER_SETTINGS["url"], "")
        self.ui.serverTokenLineEdit.text = settings.value(SERVER_SETTINGS["token"], "")
        self.ui.runOnCombo.currentIndexChanged.connect(self.onServerSettingsChanged)
        self.ui.serverUrlLineEdit.editingFinished.connect(self.onServerSettingsChanged)
        self.ui.serverTokenLineEdit.editingFinished.connect(self.onServerSettingsChanged)
        self.ui.serverModelCombo.currentIndexChanged.connect(lambda index: self.updateButtons())
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.showServerWidgets()

    def runsOnServer(self) -> bool:
        """Whether Synthesize sends the job to the server."""
        return self.ui.runOnCombo.currentText == RUN_ON_SERVER

    def showServerWidgets(self) -> None:
        """Enable the server's fields only when running there."""
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit, self.ui.testConnectionButton,
                       self.ui.serverModelCombo):
            widget.enabled = self.runsOnServer()

    def onServerSettingsChanged(self, *args) -> None:
        """Keep the choice, URL and token in Slicer's settings; a new address needs a new connection test."""
        settings = qt.QSettings()
        settings.setValue(SERVER_SETTINGS["runOn"], self.ui.runOnCombo.currentText)
        settings.setValue(SERVER_SETTINGS["url"], self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(SERVER_SETTINGS["token"], self.ui.serverTokenLineEdit.text.strip())
        self.showServerWidgets()
        self.updateButtons()

    def server(self) -> remote.Server:
        """The server of the panel's URL and token; UserInputError naming what to fix."""
        try:
            return remote.connect(self.ui.serverUrlLineEdit.text, self.ui.serverTokenLineEdit.text)
        except ValueError as error:
            raise UserInputError(str(error)) from None

    def serverProblem(self) -> str:
        """Why a server job cannot start yet (empty when it can)."""
        try:
            self.server()
        except UserInputError as error:
            return str(error)
        if not self.ui.serverModelCombo.currentText:
            return _("Press Test connection to list the server's models, then choose one.")
        return ""

    def onTestConnection(self) -> None:
        """Ask the server who it is and fill the server-model list from its answer."""
        self.onServerSettingsChanged()

        def ask():
            server = self.server()
            return remote.test_connection(server), remote.list_models(server)

        answer = self.runWithErrorDisplay(_("The server did not answer."), ask)
        self.ui.serverModelCombo.clear()
        if answer is None:
            self.ui.serverStatusLabel.text = _("Not connected.")
        else:
            line, offered = answer
            self.ui.serverStatusLabel.text = line
            self.serverModelAttributes = {entry["name"]: tuple(entry.get("attributes") or ()) for entry in offered}
            for entry in offered:
                self.ui.serverModelCombo.addItem(entry["name"])
        self.updateButtons()

    def startServerJob(self) -> None:
        """Start the synthesis on the server with the panel's settings (the server chooses its device)."""
        p = self._parameterNode
        o = panel.sampling_options(p.sampler, p.steps, p.aasVariant, p.precision, p.patchSpacingMm)
        self.followJob(self.runWithErrorDisplay(_("Synthesis could not start on the server."), lambda:
            self.logic.startServerSynthesis(
                p.referenceVolume, p.segmentation, list(p.lungSegmentIds), list(p.noduleSegmentIds), self.server(),
                self.ui.serverModelCombo.currentText, seed=p.seed, variants=p.variants, sampler=o.sampler,
                steps=o.steps, aasVariant=o.aas_variant, precision=o.precision, patchSpacingMm=o.patch_spacing_mm,
                keepTemporaryFiles=p.keepTemporaryFiles, log=self.appendLog,
                modelAttributes=self.serverModelAttributes.get(self.ui.serverModelCombo.currentText, ()),
                guidance=p.guidance)))

    def onPollJob(self) -> None:
        """Timer tick: let the install or the job read its output (and import finished variants)."""
        if self.torchInstall is not None:
            self.pollInstall()
            return
        if self.job is None:
            self.pollTimer.stop()
            return
        self.job.poll()
        self.showJob()
        if not self.job.active:
            self.pollTimer.stop()

    def pollInstall(self) -> None:
        """Follow the PyTorch install; when it ends say what to do next."""
        self.torchInstall.poll()
        state = self.torchInstall.state
        if state is install.InstallState.RUNNING:
            return
        self.pollTimer.stop()
        error, self.torchInstall = self.torchInstall.error, None
        importlib.invalidate_caches()
        if state is install.InstallState.DONE and self.logic.torchSatisfied():
            self.setUiState("idle")
            self.ui.statusLabel.text = _("PyTorch is installed: press Synthesize.")
        else:
            self.setUiState("failed")
            self.ui.statusLabel.text = _("PyTorch could not be installed: {error}").format(error=error or state.value)
            slicer.util.errorDisplay(self.ui.statusLabel.text, windowTitle=_("Lung DDPM"))

    def showJob(self) -> None:
        """Show the job's state, progress and, after a failure, the engine's one-line message."""
        job = self.job
        state = job.state
        self.ui.progressBar.value = int(1000 * job.fraction)
        variants = len(job.request.seeds)
        if state is jobs.JobState.RUNNING:
            eta = "" if job.eta_s is None else _(", about {eta} left").format(eta=estimates.format_duration(job.eta_s))
            self.ui.statusLabel.text = _("Variant {n}/{total}: step {step}/{steps}{eta}").format(
                n=job.variant + 1, total=variants, step=job.step, steps=job.total or "?", eta=eta)
            self.setUiState("running")
        elif state is jobs.JobState.IMPORTING:
            self.setUiState("importing")
        elif state is jobs.JobState.DONE:
            self.ui.statusLabel.text = _("Done: {n} synthetic CT(s) added beside the reference.").format(n=len(job.outputs))
            if self._parameterNode.compareAfterSynthesis and job.outputs:
                compare.show_compare(slicer.mrmlScene, job.request.reference_volume, job.outputs[-1].volume_node,
                                     self._parameterNode.fade)
            self.setUiState("idle")
        elif state is jobs.JobState.FAILED:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error)
            self.setUiState("failed")
            slicer.util.errorDisplay(job.error, windowTitle=_("Lung DDPM"))

    def setUiState(self, state: str) -> None:
        """Set the panel state (idle, installing, starting, running, importing, cancelling, failed) and update buttons."""
        self.uiState = state
        if state == "starting":
            self.ui.statusLabel.text = _("Starting: exporting the inputs…")
        elif state == "installing":
            self.ui.statusLabel.text = _("Installing PyTorch in the background (see the log)…")
        elif state == "importing":
            self.ui.statusLabel.text = _("Importing the result…")
        elif state == "cancelling":
            self.ui.statusLabel.text = _("Cancelling…")
        self.updateButtons()

    def appendLog(self, text: str) -> None:
        """Append a line to the panel's log and to Slicer's log."""
        self.ui.logText.appendPlainText(text)
        logging.info(text)


#
# Logic
#


class LungDDPMSlicerLogic(ScriptedLoadableModuleLogic):
    """Scriptable operations without the widget: create lung/nodule segments, synthesise, manage models.

    Example (Python console or a batch script)::

        from LungDDPMSlicer import LungDDPMSlicerLogic

        logic = LungDDPMSlicerLogic()
        lungId = logic.createLungSegment(ctNode, segNode)
        noduleId = logic.addNodule(ctNode, segNode, lungId, pointListNode, diameterMm=12.0)
        outputs = logic.synthesize(ctNode, segNode, lungId, [noduleId], "demo-native-32", seed=0, variants=2)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.models = models.load_model_list(resourcePath("models.json"))
        self._gpus: list[estimates.Gpu] | None = None
        self._modelAttributes: dict[tuple[str, float], checkpoint_info.ModelAttributes] = {}
        self._worker: worker.EngineWorker | None = None  # one engine per Slicer session: models stay loaded

    def getParameterNode(self) -> LungDDPMSlicerParameterNode:
        """The module's parameter node, typed."""
        return LungDDPMSlicerParameterNode(super().getParameterNode())

    def context(self) -> mrml.MrmlContext:
        """Slicer's scene and the logics the Qt-free layer needs."""
        return mrml.MrmlContext(slicer.mrmlScene, slicer.modules.segmentations.logic(), slicer.app.applicationLogic())

    def segmentEditorNode(self):
        """The module's own Segment Editor node (its effects' settings), created once per scene."""
        return mrml.segment_editor_node(slicer.mrmlScene)

    def engineWorker(self) -> worker.EngineWorker:
        """The session's long-lived engine process (started by its first job)."""
        if self._worker is None:
            self._worker = worker.EngineWorker(engine.python_executable())
        return self._worker

    def stopWorker(self) -> None:
        """End the engine worker and its children (scene close, module cleanup); the next job starts a new one."""
        if self._worker is not None:
            self._worker.kill()

    def engineDir(self) -> Path:
        """The folder holding the bundled `lungddpm` package."""
        return engine.find_engine_dir(MODULE_DIR)

    def modelCacheDir(self) -> Path:
        """The model folder: the application setting, else $LUNGDDPM_MODEL_CACHE or the user cache folder."""
        value = slicer.util.settingsValue(CACHE_SETTING, "")
        return Path(value) if value else models.default_cache_dir()

    def setModelCacheDir(self, path: Path) -> None:
        """Use another model folder from now on (stored in the application settings)."""
        qt.QSettings().setValue(CACHE_SETTING, str(path))

    def modelEntry(self, name: str) -> models.ModelEntry | None:
        """The model-list entry with this name, or None."""
        return next((entry for entry in self.models if entry.name == name), None)

    def gpus(self) -> list[estimates.Gpu]:
        """The CUDA GPUs of this computer (nvidia-smi, asked once)."""
        if self._gpus is None:
            self._gpus = estimates.detect_gpus()
        return self._gpus

    def cudaGpuDetected(self) -> bool:
        """Whether nvidia-smi reports a CUDA GPU (fp16 is offered only then)."""
        return bool(self.gpus())

    def autoPrecisions(self) -> dict[str, str]:
        """What the engine's precision auto runs on this computer: on its CUDA GPU (if detected) and on its CPU."""
        precision = nodule_attributes.engine_module(self.engineDir(), "lungddpm.runtime.precision")  # torch-free
        gpu = {"the CUDA GPU": precision.auto_precision("cuda")} if self.cudaGpuDetected() else {}
        return {**gpu, "this CPU": precision.auto_precision("cpu")}

    def estimate(self, modelName: str, device: str, variants: int, sampler: str = engine.DEFAULT_SAMPLER,
                 steps: int | None = None, nodules: int = 1) -> estimates.Estimate:
        """Expected time and memory of a synthesis on this computer, with warnings (nodules: for patch models)."""
        entry = self.modelEntry(modelName)
        if entry is None:
            raise ValueError(f"{modelName!r} is not a model of the list")
        demo = next((e for e in self.models if e.source == "bundled"), None)
        return estimates.estimate(entry, device, variants, self.gpus(), estimates.system_memory_gb(), demo=demo,
                                  sampler=sampler, steps=steps, nodules=nodules, apple_gpu=estimates.apple_gpu_likely())

    def presentModelFile(self, model: str, localFile: Path | None = None) -> Path | None:
        """The model file of a model-list name or of the chosen checkpoint if it is already here (no download)."""
        entry = self.modelEntry(model)
        if entry is None:
            return localFile if localFile is not None and localFile.is_file() else None
        return models.present_model_file(entry, engine_dir=self.engineDir(), cache_dir=self.modelCacheDir(),
                                         local_file=localFile)

    def modelAttributes(self, path: Path) -> checkpoint_info.ModelAttributes:
        """The nodule attributes a model file takes (read once per file version, without torch)."""
        key = (str(path), path.stat().st_mtime)
        if key not in self._modelAttributes:
            self._modelAttributes[key] = checkpoint_info.read_model_attributes(path)
        return self._modelAttributes[key]

    def resolveModel(self, model: str | Path, localFile: Path | None = None, downloadProgress=None) -> Path:
        """The checkpoint file of a model-list name (bundled, chosen, cached or downloaded) or of a path.

        downloadProgress(received, total): called while a model is downloaded (bytes; total None if unknown).
        """
        entry = self.modelEntry(str(model)) if model is not None else None
        if entry is None:
            path = Path(model) if model is not None else None
            if path is None or not path.is_file():
                raise models.ModelUnavailableError(f"{model!r} is neither a model of the list nor an existing checkpoint file")
            return path
        return models.resolve_model_file(entry, engine_dir=self.engineDir(), cache_dir=self.modelCacheDir(),
                                         local_file=localFile,
                                         downloader=lambda url, target: models.urllib_download(url, target,
                                                                                                downloadProgress))

    # -- dependencies -------------------------------------------------------------------------------------------

    @staticmethod
    def torchSatisfied() -> bool:
        """Whether torch >= 2.1 is installed in Slicer's Python (checked without importing it)."""
        if importlib.util.find_spec("torch") is None:
            return False
        version = importlib.metadata.version("torch").split("+")[0].split(".")
        return (int(version[0]), int(version[1])) >= (2, 1)

    def installDependencies(self) -> None:
        """Install torch and wait (scripts and self-tests; the panel runs the same install in the background).

        The engine needs only torch beyond what Slicer ships (numpy, SimpleITK are never replaced). psutil,
        when present, makes Cancel find every child process; without it the process group (or taskkill) does.
        """
        if self.torchSatisfied():
            return
        sequence = install.CommandSequence(install.torch_install_commands(engine.python_executable(), TORCH_REQUIREMENT),
                                           logging.info)
        sequence.start()
        while sequence.state is install.InstallState.RUNNING:
            sequence.poll()
            time.sleep(0.2)
        importlib.invalidate_caches()
        if not self.torchSatisfied():
            raise UserInputError(_("PyTorch {req} could not be installed: {error}").format(
                req=TORCH_REQUIREMENT, error=sequence.error or sequence.state.value))

    # -- operations ---------------------------------------------------------------------------------------------

    def createLungSegment(self, referenceVolumeNode, segmentationNode, name: str = "lung") -> str:
        """Segment both lungs of the CT automatically (engine, subprocess) and add them as a segment; its ID.

        The engine's report (each lung's volume) and warnings go into the segment's tags (jobs.lung_mask_warnings).
        """
        return jobs.create_lung_segment(self.context(), referenceVolumeNode, segmentationNode,
                                        engine_dir=self.engineDir(), work_dir=Path(slicer.util.tempDirectory("LungDDPM")),
                                        name=name)

    def addNodule(self, referenceVolumeNode, segmentationNode, lungSegments: str | list[str], markupsNode,
                  diameterMm: float, irregularity: float = 0.0, attributes: dict[str, float] | None = None) -> str:
        """Add a nodule segment centred at the last point of a point list (in or at the lung); its segment ID.

        attributes: the nodule's known characteristics by field (LIDC codes), kept as its segment's tags.
        """
        count = markupsNode.GetNumberOfControlPoints() if markupsNode else 0
        if count == 0:
            raise UserInputError(_("Place a point in the lung first."))
        center = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(count - 1, center)
        seed = segmentationNode.GetSegmentation().GetNumberOfSegments()
        return jobs.add_nodule_segment(self.context(), referenceVolumeNode, segmentationNode, lungSegments, center,
                                       diameterMm, irregularity=irregularity, attributes=attributes,
                                       engine_dir=self.engineDir(), work_dir=Path(slicer.util.tempDirectory("LungDDPM")),
                                       seed=seed)

    def startSynthesis(self, referenceVolumeNode, segmentationNode, lungSegments: str | list[str],
                       noduleSegmentIds: list[str], model: str | Path, seed: int = 0, variants: int = 1, device: str = "auto",
                       sampler: str = engine.DEFAULT_SAMPLER, steps: int | None = None, aasVariant: str = "paper",
                       precision: str = engine.DEFAULT_PRECISION, patchSpacingMm: float | None = None, localModelFile: Path | None = None,
                       keepTemporaryFiles: bool = False, log=None, guidance: float | None = None,
                       downloadProgress=None) -> jobs.SynthesisJob:
        """Start a background synthesis (one variant per seed: seed, seed+1, ...); poll() the returned job.

        lungSegments: the lung segment's ID, or several (e.g. five lobe segments) whose union is the lung.
        steps: few-step solvers only (None: the model file's own default, else 3); aasVariant: ddpm only; patchSpacingMm:
        Lung-DDPM+ models only (None: the model's own cube voxel size). For a model file that takes nodule
        attributes, each nodule segment's attribute tags are sent, with guidance (None: the model's default).
        """
        modelPath = self.resolveModel(model, localModelFile, downloadProgress)
        takes = self.modelAttributes(modelPath).attributes
        request = jobs.SynthesisRequest(referenceVolumeNode, segmentationNode, lungSegments, list(noduleSegmentIds),
                                        modelPath, panel.variant_seeds(seed, variants),
                                        device=device, sampler=sampler, steps=steps, aas_variant=aasVariant,
                                        precision=precision, patch_spacing_mm=patchSpacingMm, model_attributes=takes,
                                        guidance=guidance)
        job = jobs.SynthesisJob(self.context(), request, engine_dir=self.engineDir(),
                                work_dir=Path(slicer.util.tempDirectory("LungDDPM")), log=log,
                                keep_files=keepTemporaryFiles, worker=self.engineWorker())
        job.start()
        return job

    def startServerSynthesis(self, referenceVolumeNode, segmentationNode, lungSegments: str | list[str],
                             noduleSegmentIds: list[str], server: remote.Server, model: str, seed: int = 0,
                             variants: int = 1, sampler: str = engine.DEFAULT_SAMPLER, steps: int | None = None,
                             aasVariant: str = "paper", precision: str = engine.DEFAULT_PRECISION, patchSpacingMm: float | None = None,
                             keepTemporaryFiles: bool = False, log=None, modelAttributes: tuple[str, ...] = (),
                             guidance: float | None = None) -> remote_jobs.RemoteSynthesisJob:
        """Start a synthesis on a `lungddpm serve` server (model: a name it lists); poll() the returned job.

        The job has the local job's states, progress and cancel; its results are imported as a local run's.
        modelAttributes: what the server lists for the model; when it takes attributes, each nodule segment's
        attribute tags are sent (the sidecar document), with guidance (None: the model's default).
        """
        request = jobs.SynthesisRequest(referenceVolumeNode, segmentationNode, lungSegments, list(noduleSegmentIds),
                                        Path(model), panel.variant_seeds(seed, variants), sampler=sampler, steps=steps,
                                        aas_variant=aasVariant, precision=precision, patch_spacing_mm=patchSpacingMm,
                                        model_attributes=tuple(modelAttributes), guidance=guidance)
        job = remote_jobs.RemoteSynthesisJob(self.context(), request, server=server, model=model,
                                             work_dir=Path(slicer.util.tempDirectory("LungDDPM")), log=log,
                                             keep_files=keepTemporaryFiles, engine_dir=self.engineDir())
        job.start()
        return job

    def synthesize(self, referenceVolumeNode, segmentationNode, lungSegments: str | list[str],
                   noduleSegmentIds: list[str], model: str | Path, seed: int = 0, variants: int = 1, device: str = "auto",
                   sampler: str = engine.DEFAULT_SAMPLER, steps: int | None = None, aasVariant: str = "paper",
                   precision: str = engine.DEFAULT_PRECISION, patchSpacingMm: float | None = None, localModelFile: Path | None = None,
                   keepTemporaryFiles: bool = False) -> list[jobs.SynthesisOutput]:
        """Synthesise and wait (batch use); the new volume and layout segmentation nodes per variant.

        Raises jobs.EngineError with the engine's message if it fails.
        """
        job = self.startSynthesis(referenceVolumeNode, segmentationNode, lungSegments, noduleSegmentIds, model,
                                  seed=seed, variants=variants, device=device, sampler=sampler, steps=steps,
                                  aasVariant=aasVariant, precision=precision, patchSpacingMm=patchSpacingMm,
                                  localModelFile=localModelFile,
                                  keepTemporaryFiles=keepTemporaryFiles)
        while job.active:
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.2)
        if job.state is jobs.JobState.FAILED:
            raise jobs.EngineError(job.error)
        return job.outputs


#
# Test
#


class LungDDPMSlicerTest(ScriptedLoadableModuleTest):
    """Self-test on the CTChest sample: export/import round trip; real inference when LUNGDDPM_SELFTEST_INFERENCE=1."""

    def setUp(self) -> None:
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run all tests."""
        self.setUp()
        self.test_ExportImportRoundTrip()
        if os.environ.get(SELFTEST_INFERENCE_ENV) == "1":
            self.setUp()
            self.test_SynthesisWithDemoModel()
        else:
            self.delayDisplay(f"Inference skipped; set {SELFTEST_INFERENCE_ENV}=1 to run it")

    def loadChest(self):
        """The CTChest sample and an empty segmentation on its grid."""
        import SampleData

        ct = SampleData.downloadSample("CTChest")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "layout")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        return ct, segmentation

    def test_ExportImportRoundTrip(self) -> None:
        """Export CT + layout, re-import the exported CT as a result node: labels, geometry and voxels agree."""
        import numpy as np

        self.delayDisplay("Export/import round trip on CTChest")
        ct, segmentation = self.loadChest()
        hu = slicer.util.arrayFromVolume(ct)
        k, j, i = np.ogrid[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
        central = (np.abs(i - hu.shape[2] / 2) < hu.shape[2] * 0.4) & (np.abs(j - hu.shape[1] / 2) < hu.shape[1] * 0.35)
        lung = (hu < -400) & central
        centre = tuple(np.argwhere(lung)[np.count_nonzero(lung) // 2])
        nodule = ((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) <= 16
        lungId = mrml.add_segment(segmentation, ct, mrml.SegmentData("lung", lung, jobs.LUNG_COLOR))
        noduleId = mrml.add_segment(segmentation, ct, mrml.SegmentData("nodule 1", nodule, jobs.NODULE_COLOR))

        context = LungDDPMSlicerLogic().context()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        folder = Path(slicer.util.tempDirectory("LungDDPMSelfTest"))
        exported = mrml.export_layout(context, ct, segmentation, lungId, [noduleId], folder)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(int(exported.layout[centre]), mrml.NODULE)
        self.assertEqual(set(np.unique(exported.layout).tolist()), {0, 1, 2})
        node = mrml.import_synthetic_volume(context, exported.reference_path, ct, "round trip")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(node), hu))
        self.assertTrue(np.array_equal(mrml.ijk_to_ras(node), mrml.ijk_to_ras(ct)))
        self.assertEqual(node.GetAttribute("LungDDPM.SYNTHETIC"), "true")
        shutil.rmtree(folder)
        self.delayDisplay("Round trip passed")

    def test_SynthesisWithDemoModel(self) -> None:
        """Dependencies, automatic lung segment, a nodule at a point in it, and a real synthesis with the demo model."""
        import numpy as np

        self.delayDisplay("Synthesis with the demo model on CTChest")
        logic = LungDDPMSlicerLogic()
        logic.installDependencies()
        ct, segmentation = self.loadChest()
        lungId = logic.createLungSegment(ct, segmentation)
        lung = mrml.segment_mask(logic.context(), segmentation, lungId, ct)
        k, j, i = np.argwhere(lung)[np.count_nonzero(lung) // 2]
        point = mrml.ijk_to_ras(ct) @ np.array([i, j, k, 1.0])
        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "centre")
        markups.AddControlPointWorld(point[:3].tolist())
        noduleId = logic.addNodule(ct, segmentation, lungId, markups, 12.0, 0.2, attributes={"texture": 5})
        outputs = logic.synthesize(ct, segmentation, lungId, [noduleId], "demo-native-32", seed=3, variants=1)
        self.assertEqual(len(outputs), 1)
        volume = outputs[0].volume_node
        self.assertEqual(volume.GetName(), f"{ct.GetName()} synthetic (seed 3)")
        self.assertTrue(np.array_equal(mrml.ijk_to_ras(volume), mrml.ijk_to_ras(ct)))
        self.assertEqual(mrml.provenance(volume)["seed"], "3")
        self.assertEqual(mrml.provenance(volume)["SYNTHETIC"], "true")
        logic.stopWorker()
        self.delayDisplay("Synthesis passed")
