"""The .ui file loaded with a real Qt binding (PyQt5, offscreen), its Slicer and CTK widgets stood in for by classes
built from the real headers' declarations (Testing/slicer/data/qt_declarations.json, tools/qt_declarations.py).

Loading fails on a property a class does not declare or a connection to a signal or slot it lacks; then
every `self.ui.<widget>.<member>` of the module's code must exist on the loaded widget.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
from slicer_testing import MODULE_DIR, REPO

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PyQt5.QtWidgets", reason="PyQt5 is part of `make setup`: pip install PyQt5")
from PyQt5 import QtCore, uic  # noqa: E402

DECLARATIONS = Path(__file__).parent / "data" / "qt_declarations.json"
UI_FILE = REPO / "Resources" / "UI" / "LungDDPMSlicer.ui"
MAIN_SCRIPT = MODULE_DIR / "LungDDPMSlicer.py"
PY_TYPES = {"bool": bool, "int": int, "double": float, "QString": str, "QStringList": "QStringList"}


def stand_in(name: str, declared: dict, classes: dict[str, type]) -> type:
    """A PyQt5 class with the declared properties (with setters), signals and slots of one Slicer/CTK class."""
    base = classes.get(declared["base"]) or getattr(QtWidgets, declared["base"])
    members: dict[str, object] = {}
    for prop in declared["properties"]:
        kind = PY_TYPES.get(prop["type"], "QVariant")
        storage = f"_{prop['name']}"

        def getter(self, storage=storage):
            return getattr(self, storage, None)

        def setter(self, value, storage=storage):
            setattr(self, storage, value)

        members[prop["name"]] = QtCore.pyqtProperty(kind, getter, setter if prop["writable"] else None)
        if prop["writable"]:
            members["set" + prop["name"][0].upper() + prop["name"][1:]] = setter
    for signal in declared["signals"]:
        count = len([a for a in signal["args"].split(",") if a.strip()])
        members[signal["name"]] = QtCore.pyqtSignal(*([object] * count))
    members.update(declared["enums"])
    for slot in declared["slots"]:
        if slot["name"] not in members:
            members[slot["name"]] = lambda self, *args: None
    return type(name, (base,), members)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The .ui file loaded with the stand-ins, and the declarations."""
    document = json.loads(DECLARATIONS.read_text())
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    classes: dict[str, type] = {}
    pending = dict(document["classes"])
    while pending:  # bases first
        for name, declared in list(pending.items()):
            if declared["base"] not in pending:
                classes[name] = stand_in(name, declared, classes)
                del pending[name]
    modules = {}
    for name, cls in classes.items():
        module = types.ModuleType(name)
        setattr(module, name, cls)
        modules[name] = module
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)  # uic imports each custom widget from the module its header names
    # VTK pointer types are not Qt-registered types: the connections name them as Python objects for PyQt5
    # (test_connections_match_the_declared_signals_and_slots checks the real signatures).
    loadable = Path(tmp_path_factory.mktemp("ui")) / UI_FILE.name
    loadable.write_text(re.sub(r"\(vtkMRML\w+\*\)", "(PyQt_PyObject)", UI_FILE.read_text()))
    try:
        widget = uic.loadUi(str(loadable))
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    yield widget, document
    widget.deleteLater()
    app.processEvents()


def test_every_custom_widget_of_the_ui_has_real_declarations(loaded):
    """Every Slicer/CTK class in the .ui is one of the declared classes (so the stand-ins cover the whole file)."""
    import xml.etree.ElementTree as ET

    _, document = loaded
    used = {w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= set(document["classes"])


def test_ui_loads_and_every_member_the_code_uses_exists(loaded):
    """The file loads with the declared properties and signals; each self.ui.X.member of the code is declared."""
    widget, _ = loaded
    used = set(re.findall(r"self\.ui\.(\w+)\.(\w+)", MAIN_SCRIPT.read_text()))
    assert used, "the module's code uses no widget member: the check would be empty"
    missing = []
    for name, member in sorted(used):
        child = widget.findChild(QtCore.QObject, name)
        assert child is not None, f"{name} is missing from the .ui"
        # PythonQt (Slicer) reaches Qt properties as attributes (combo.enabled); PyQt5 through the meta-object
        if not hasattr(child, member) and child.metaObject().indexOfProperty(member) < 0:
            missing.append(f"{name}.{member} ({type(child).__name__})")
    assert missing == []
    assert type(widget).__name__ == "qMRMLWidget" and hasattr(widget, "setMRMLScene")


def test_connections_match_the_declared_signals_and_slots(loaded):
    """Each connection of the .ui names a signal of its sender's class and a slot of its receiver's, with those types."""
    import xml.etree.ElementTree as ET

    _, document = loaded
    root = ET.parse(UI_FILE).getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}

    def members(cls: str, kind: str) -> set[str]:
        """'name(types)' of a declared class's signals or slots, its bases' included."""
        found = set()
        while cls in document["classes"]:
            for entry in document["classes"][cls][kind]:
                types_ = [re.sub(r"\s*\w+$", "", a.strip()) if " " in a.strip() else a.strip()
                          for a in entry["args"].split(",") if a.strip()]
                found.add(f"{entry['name']}({','.join(t.replace(' ', '') for t in types_)})")
            cls = document["classes"][cls]["base"]
        return found

    connections = list(root.iter("connection"))
    assert connections
    for connection in connections:
        sender, receiver = classes[connection.find("sender").text], classes[connection.find("receiver").text]
        assert connection.find("signal").text in members(sender, "signals"), (sender, connection.find("signal").text)
        assert connection.find("slot").text in members(receiver, "slots"), (receiver, connection.find("slot").text)
