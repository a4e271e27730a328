"""Render the module panel from Resources/UI/LungDDPMSlicer.ui offscreen (PyQt5) into Resources/Screenshots/panel-preview.png.

A rendering, not a screenshot (no Slicer application here): Slicer's and CTK's widgets are drawn as the standard
Qt widget closest to each (node and segment selectors as combo boxes, collapsible sections as group boxes, path
fields as line edits, sliders as spin boxes, the place widget as a tool button), and the image says so at the
bottom. The attribute combos show the engine's own value names; the texts are what the panel shows for the
bundled attribute model on a computer without a CUDA GPU.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=engine python tools/render_panel_preview.py
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PyQt5 import QtCore, QtGui, QtWidgets, uic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LungDDPMSlicer"))
from LungDDPMSlicerLib import checkpoint_info, nodule_attributes, panel  # noqa: E402
from LungDDPMSlicerLib.engine import DEFAULT_SOLVER_STEPS  # noqa: E402

UI_FILE = REPO / "Resources" / "UI" / "LungDDPMSlicer.ui"
DECLARATIONS = REPO / "Testing" / "slicer" / "data" / "qt_declarations.json"
OUTPUT = REPO / "Resources" / "Screenshots" / "panel-preview.png"
DRAWN_AS = {"qMRMLWidget": QtWidgets.QWidget, "qMRMLNodeComboBox": QtWidgets.QComboBox,
            "qMRMLSegmentSelectorWidget": QtWidgets.QComboBox, "qSlicerMarkupsPlaceWidget": QtWidgets.QToolButton,
            "ctkCollapsibleButton": QtWidgets.QGroupBox, "ctkPathLineEdit": QtWidgets.QLineEdit,
            "ctkSliderWidget": QtWidgets.QDoubleSpinBox, "qMRMLSegmentEditorWidget": QtWidgets.QLabel}
EXAMPLE = {"referenceVolumeSelector": "CTChest", "segmentationSelector": "CTChest layout",
           "lungSegmentSelector": "lung", "noduleSegmentSelector": "nodule 1, nodule 2", "noduleMarkupsSelector": "C",
           **{f"{field}Combo": labels[panel.CHOICES[field][0]] for field, labels in panel.CHOICE_LABELS.items()}}
CAPTION = ("A rendering of Resources/UI/LungDDPMSlicer.ui, not a screenshot:\n"
           "Slicer/CTK widgets drawn as standard Qt widgets (PyQt5, offscreen).")


def stand_ins() -> dict[str, types.ModuleType]:
    """A module per custom widget header: the standard Qt class it is drawn as, with the real class's enums and
    no-op setters for its declared properties that the Qt class lacks (Testing/slicer/data/qt_declarations.json)."""
    declared = json.loads(DECLARATIONS.read_text())["classes"]
    modules = {}
    for name, qt_class in DRAWN_AS.items():
        members: dict[str, object] = {"setMRMLScene": lambda self, scene=None: None,
                                      "mrmlSceneChanged": QtCore.pyqtSignal(object)}
        cls = name
        while cls in declared:
            members.update({k: v for k, v in declared[cls]["enums"].items() if k not in members})
            for prop in declared[cls]["properties"]:
                setter = "set" + prop["name"][0].upper() + prop["name"][1:]
                if prop["writable"] and not hasattr(qt_class, setter) and setter not in members:
                    members[setter] = lambda self, value: None
            cls = declared[cls]["base"]
        if qt_class is QtWidgets.QGroupBox:  # the collapsible button's 'text' is the group box's title
            members["setText"] = lambda self, text: self.setTitle(text)
        module = types.ModuleType(name)
        setattr(module, name, type(name, (qt_class,), members))
        modules[name] = module
    return modules


def main() -> None:
    """Load, fill with example texts, grab and save the panel."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    sys.modules.update(stand_ins())
    ui_text = re.sub(r"\(vtkMRML\w+\*\)", "(PyQt_PyObject)", UI_FILE.read_text())
    with tempfile.TemporaryDirectory() as folder:
        loadable = Path(folder) / UI_FILE.name
        loadable.write_text(ui_text)
        widget = uic.loadUi(str(loadable))
    for name, text in EXAMPLE.items():
        combo = widget.findChild(QtWidgets.QComboBox, name)
        if combo is not None and combo.count() == 0:
            combo.addItem(text)
    schema = nodule_attributes.schema(REPO / "engine")
    for field in nodule_attributes.PANEL_ATTRIBUTES:
        combo = widget.findChild(QtWidgets.QComboBox, f"{field}AttributeCombo")
        combo.addItems([c.label for c in nodule_attributes.choices(schema, field)])
    model = checkpoint_info.read_model_attributes(REPO / "engine" / "lungddpm" / "models" / "demo-nodules.pt")
    states = panel.attribute_states(model, nodule_attributes.PANEL_ATTRIBUTES, "Demo attribute model")
    for field, enabled in states.enabled.items():
        widget.findChild(QtWidgets.QComboBox, f"{field}AttributeCombo").setEnabled(enabled)
    widget.findChild(QtWidgets.QComboBox, "textureAttributeCombo").setCurrentIndex(3)
    info = widget.findChild(QtWidgets.QLabel, "attributesInfoLabel")
    info.setText(states.message)
    info.setMinimumHeight(info.heightForWidth(460))
    widget.findChild(QtWidgets.QDoubleSpinBox, "guidanceSpinBox").setValue(model.guidance_scale)
    widget.findChild(QtWidgets.QComboBox, "modelCombo").addItem("Demo attribute model (bundled, 16³ nodule cubes, phantoms)")
    for name, value in (("noduleDiameterSlider", 10.0), ("fadeSlider", 0.5), ("stepsSpinBox", DEFAULT_SOLVER_STEPS),
                        ("seedSpinBox", 0), ("variantsSpinBox", 1)):  # the parameter node's defaults
        box = widget.findChild(QtWidgets.QAbstractSpinBox, name)
        box.setMaximum(max(box.maximum(), value))
        box.setValue(value)
    widget.findChild(QtWidgets.QCheckBox, "compareCheckBox").setChecked(True)
    editor = widget.findChild(QtWidgets.QLabel, "segmentEditorWidget")
    editor.setText("[Slicer's Segment Editor: segments list and effects; section collapsed by default]")
    widget.findChild(QtWidgets.QPushButton, "applyButton").setText("Synthesize")
    widget.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)
    widget.findChild(QtWidgets.QLabel, "statusLabel").setText("")
    widget.resize(520, widget.sizeHint().height())
    widget.adjustSize()
    image = widget.grab().toImage()
    canvas = QtGui.QImage(image.width(), image.height() + 44, QtGui.QImage.Format_RGB32)
    canvas.fill(QtGui.QColor("white"))
    painter = QtGui.QPainter(canvas)
    painter.drawImage(0, 0, image)
    painter.setPen(QtGui.QColor("#a00000"))
    painter.drawText(QtCore.QRect(6, image.height() + 2, image.width() - 12, 42), QtCore.Qt.AlignLeft, CAPTION)
    painter.end()
    canvas.save(str(OUTPUT))
    print(f"{OUTPUT}: {canvas.width()} x {canvas.height()}")
    app.quit()


if __name__ == "__main__":
    main()
