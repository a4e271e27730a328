"""Static checks of the extension: CMake lists and the bundle they build, the .ui file against the code, the icon."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slicer_testing import MAIN_SCRIPT, MODULE_DIR, REPO, parameter_fields

UI_FILE = REPO / "Resources" / "UI" / "LungDDPMSlicer.ui"
# Every widget the Python code touches through self.ui, with the class the code relies on.
EXPECTED_WIDGETS = {
    "segmentationSelector": "qMRMLNodeComboBox",
    "lungSegmentSelector": "qMRMLSegmentSelectorWidget",
    "noduleSegmentSelector": "qMRMLSegmentSelectorWidget",
    "attributesInfoLabel": "QLabel",
    "promptLineEdit": "QLineEdit",
    "fillFromPromptButton": "QPushButton",
    "textureAttributeCombo": "QComboBox",
    "marginAttributeCombo": "QComboBox",
    "spiculationAttributeCombo": "QComboBox",
    "lobulationAttributeCombo": "QComboBox",
    "calcificationAttributeCombo": "QComboBox",
    "sphericityAttributeCombo": "QComboBox",
    "malignancyAttributeCombo": "QComboBox",
    "guidanceSpinBox": "QDoubleSpinBox",
    "applyAttributesButton": "QPushButton",
    "restoreViewButton": "QPushButton",
    "segmentEditorWidget": "qMRMLSegmentEditorWidget",
    "noduleMarkupsSelector": "qMRMLNodeComboBox",
    "noduleMarkupsPlaceWidget": "qSlicerMarkupsPlaceWidget",
    "createLungButton": "QPushButton",
    "addNoduleButton": "QPushButton",
    "modelCombo": "QComboBox",
    "modelPathLineEdit": "ctkPathLineEdit",
    "modelInfoLabel": "QLabel",
    "samplerCombo": "QComboBox",
    "stepsSpinBox": "QSpinBox",
    "aasVariantCombo": "QComboBox",
    "precisionCombo": "QComboBox",
    "deviceCombo": "QComboBox",
    "patchSpacingSpinBox": "QDoubleSpinBox",
    "estimateLabel": "QLabel",
    "modelCacheDirLineEdit": "ctkPathLineEdit",
    "clearCacheButton": "QPushButton",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "logText": "QPlainTextEdit",
    # Run on: this computer | server (issue 17)
    "runOnCombo": "QComboBox",
    "serverUrlLineEdit": "QLineEdit",
    "serverTokenLineEdit": "QLineEdit",
    "testConnectionButton": "QPushButton",
    "serverStatusLabel": "QLabel",
    "serverModelCombo": "QComboBox",
}
HAND_WIRED_PARAMETERS = {"lungSegmentIds", "noduleSegmentIds", "modelName", "localModelPath", "noduleAttributes"}  # no parameterNodeWrapper connector
MRML_WIDGETS = {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qSlicerMarkupsPlaceWidget", "qMRMLSegmentEditorWidget"}


def cmake_list(text: str, variable: str) -> list[str]:
    """The items of `set(VARIABLE ...)` in a CMake file, with ${MODULE_NAME} expanded."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [item.replace("${MODULE_NAME}", "LungDDPMSlicer") for item in match.group(1).split()]


def ui_widgets() -> dict[str, ET.Element]:
    """Every widget element of the .ui file by name."""
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_every_file_in_the_cmake_lists_exists_and_every_script_is_listed():
    """Scripts and top-level resources named in the module's CMakeLists exist; no module script is left out."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_TOPLEVEL_RESOURCES")
    assert [s for s in scripts if not (MODULE_DIR / s).is_file()] == []
    assert [r for r in resources if not (REPO / "Resources" / r).is_file()] == []
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk == set(scripts)
    top = (REPO / "CMakeLists.txt").read_text()
    for required in ('EXTENSION_DEPENDS "PyTorch"', "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                     "add_subdirectory(LungDDPMSlicer)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                     "include(${Slicer_EXTENSION_CPACK})"):
        assert required in top
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


STUB_PROJECT = """
cmake_minimum_required(VERSION 3.16)
project(LungDDPMSlicerBundleCheck NONE)
# Stand-ins for what find_package(Slicer) provides, enough to configure, build and install the module folder.
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(STUB "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${STUB_SCRIPTS})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "missing script ${f}")
    endif()
    get_filename_component(d ${f} DIRECTORY)
    install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/${f} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${d})
  endforeach()
endmacro()
function(slicer_add_python_unittest)
endfunction()
add_subdirectory("{module}" module)
"""


def test_cmake_bundles_resources_and_the_engine(tmp_path):
    """Configure, build and install the module with stand-in Slicer macros: `import lungddpm` works from the bundle."""
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    assert cmake, "cmake is missing: `make setup` installs it (the cmake wheel of engine[test])"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(STUB_PROJECT.replace("{module}", MODULE_DIR.as_posix()))
    for args in (["-S", tmp_path / "src", "-B", tmp_path / "build"], ["--build", tmp_path / "build"],
                 ["--install", tmp_path / "build", "--prefix", tmp_path / "install"]):
        result = subprocess.run([cmake, *map(str, args)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    module = tmp_path / "install" / "lib" / "Slicer" / "qt-scripted-modules"
    for relative in ("LungDDPMSlicer.py", "LungDDPMSlicerLib/mrml.py", "Resources/UI/LungDDPMSlicer.ui",
                     "Resources/Icons/LungDDPMSlicer.png", "Resources/models.json", "lungddpm/__init__.py",
                     "lungddpm/cli.py", "lungddpm/__main__.py", "lungddpm/sampling/aas.py", "lungddpm/synthesis/synthesize.py",
                     "lungddpm/models/demo-native-32.pt"):
        assert (module / relative).is_file(), relative
    engine_files = {p.relative_to(REPO / "engine").as_posix() for p in (REPO / "engine" / "lungddpm").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
                    and p.suffix not in (".pyc", ".tmp")}
    bundled = {p.relative_to(module).as_posix() for p in (module / "lungddpm").rglob("*") if p.is_file()}
    assert bundled == engine_files
    built = tmp_path / "build" / "lib" / "Slicer" / "qt-scripted-modules"
    assert (built / "Resources" / "UI" / "LungDDPMSlicer.ui").is_file() and (built / "lungddpm" / "cli.py").is_file()
    sys.path.insert(0, str(module))
    try:
        from LungDDPMSlicerLib import engine
        assert engine.find_engine_dir(module) == module
    finally:
        sys.path.remove(str(module))
    env = engine.engine_environment(module, "cpu")
    found = subprocess.run([sys.executable, "-c", "import lungddpm, sys; sys.stdout.write(lungddpm.__file__)"],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert Path(found).resolve() == (module / "lungddpm" / "__init__.py").resolve()


def test_ui_is_valid_and_has_every_widget_the_code_uses():
    """Valid Qt Designer XML; each self.ui.X of the code exists with the expected class."""
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("class").text == "LungDDPMSlicer"
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MAIN_SCRIPT.read_text()))
    assert used - EXPECTED_WIDGETS.keys() == set(), "declare the expected class of newly used widgets"
    for name in used:
        assert name in widgets, f"{name} is used by the code but missing from the .ui"
        assert widgets[name].get("class") == EXPECTED_WIDGETS[name], name


def test_ui_custom_widgets_and_scene_connections():
    """Slicer/CTK classes are declared as custom widgets; every MRML widget receives the scene."""
    root = ET.parse(UI_FILE).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {name for name, w in ui_widgets().items() if w.get("class") in MRML_WIDGETS}
    assert mrml and mrml <= receivers


def connector_classes(annotation: str) -> set[str]:
    """The widget classes Slicer's parameterNodeWrapper can bind to a field of this annotation."""
    base = annotation.removeprefix("Annotated[").split(",")[0].rstrip("]")
    if base.startswith("vtkMRML"):
        return {"qMRMLNodeComboBox"}
    if base == "float":
        return {"ctkSliderWidget", "QDoubleSpinBox"} if "WithinRange" in annotation else {"QDoubleSpinBox"}
    if base == "int":
        return {"QSpinBox"}
    if base == "str":
        return {"QComboBox"} if "Choice" in annotation else {"QLineEdit"}
    if base == "Path":
        return {"ctkPathLineEdit"}
    if base == "bool":
        return {"QCheckBox"}
    return set()


def test_parameter_names_bind_to_fields_with_a_fitting_widget():
    """Each SlicerParameterName names a parameter-node field whose type Slicer can connect to that widget."""
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert bound.keys() <= fields.keys()
    for parameter, widget_class in bound.items():
        assert widget_class in connector_classes(fields[parameter]), (parameter, widget_class, fields[parameter])
    assert fields.keys() - bound.keys() == HAND_WIRED_PARAMETERS


def test_icon_is_a_128_pixel_png():
    """The module icon: a 128 x 128 PNG."""
    import SimpleITK as sitk

    path = REPO / "Resources" / "Icons" / "LungDDPMSlicer.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sitk.ReadImage(str(path)).GetSize() == (128, 128)


def test_old_slicer_or_python_is_refused_at_module_load_with_one_message():
    """Slicer 5.8 (Python 3.9) gets a message naming the versions; the check runs before anything newer than 3.9."""
    from LungDDPMSlicerLib import compat

    message = compat.unsupported_reason((3, 9, 10, "final", 0), (5, 8))
    assert "Slicer 5.10 or later" in message and "Slicer 5.8 with Python 3.9.10" in message
    assert compat.unsupported_reason((3, 12, 4), (5, 10)) == "" and compat.unsupported_reason((3, 12), (6, 0)) == ""
    assert "Python 3.10 or later" in compat.unsupported_reason((3, 9, 10), (5, 10))
    with pytest.raises(ImportError, match="download.slicer.org"):
        compat.require_supported((3, 9, 10), (5, 8))
    for path in (MAIN_SCRIPT, MODULE_DIR / "LungDDPMSlicerLib" / "compat.py"):  # both must parse on Python 3.9
        ast.parse(path.read_text(), feature_version=(3, 9))
    body = ast.parse(MAIN_SCRIPT.read_text()).body
    check = next(n for n, node in enumerate(body) if isinstance(node, ast.Expr) and "require_supported" in ast.unparse(node))
    later_lib = [n for n, node in enumerate(body) if isinstance(node, ast.ImportFrom) and node.module == "LungDDPMSlicerLib"
                 and [a.name for a in node.names] != ["compat"]]
    assert later_lib and check < min(later_lib)


def test_attribute_combos_cover_the_panel_attributes_and_no_step_but_synthesis_needs_torch():
    """One combo per panel attribute; Create lung segment and Add nodule start no PyTorch install, Synthesize does."""
    from LungDDPMSlicerLib import nodule_attributes

    text = MAIN_SCRIPT.read_text()
    methods = {n.name: n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)}
    pairs = re.findall(r'"(\w+)": self\.ui\.(\w+)AttributeCombo', ast.get_source_segment(text, methods["attributeCombos"]))
    assert [field for field, _ in pairs] == list(nodule_attributes.PANEL_ATTRIBUTES)
    assert all(field == widget for field, widget in pairs)
    for name in ("onCreateLung", "onAddNodule"):
        assert "Torch" not in ast.unparse(methods[name]) and "Dependencies" not in ast.unparse(methods[name])
    assert "startTorchInstall" in ast.unparse(methods["onApplyButton"])


def test_make_setup_installs_the_qt_binding_of_the_ui_check():
    """The .ui check skips without PyQt5; `make setup` (what CI runs) installs it, so in CI it always runs."""
    assert re.search(r"pip install [^\n]*PyQt5==", (REPO / "Makefile").read_text())
    assert "PyQt5.QtWidgets" in (REPO / "Testing" / "slicer" / "test_slicer_ui.py").read_text()


def test_choice_combos_show_a_label_for_every_choice_in_the_choice_order():
    """Each choice combo's Choice list is panel.CHOICES (the order its labels follow), and every choice has a label."""
    from LungDDPMSlicerLib import panel

    fields = parameter_fields()
    for field, choices in panel.CHOICES.items():
        assert fields[field] == f"Annotated[str, Choice(list(panel.CHOICES['{field}']))]" or \
            fields[field] == "Annotated[str, Choice(list(panel.AAS_VARIANTS))]", (field, fields[field])
        assert set(panel.CHOICE_LABELS[field]) == set(choices)
        assert len(set(panel.CHOICE_LABELS[field].values())) == len(choices)  # labels tell the choices apart
    assert panel.CHOICES["aasVariant"] == panel.AAS_VARIANTS
    assert panel.CHOICE_LABELS["sampler"]["dpmpp2m"] == "DPM-Solver++ (2M)" and panel.CHOICE_LABELS["precision"]["bf16"] == "bfloat16"


def test_nodule_segments_are_chosen_with_a_multi_selection_segment_selector():
    """Nodules are chosen like lung segments (a segment selector with multi-selection), not a self-clearing list."""
    widget = ui_widgets()["noduleSegmentSelector"]
    props = {p.get("name"): p.find("bool").text for p in widget.findall("property") if p.find("bool") is not None}
    assert widget.get("class") == "qMRMLSegmentSelectorWidget" and props["multiSelection"] == "true"
    assert "QListWidget" not in {w.get("class") for w in ui_widgets().values()}
    assert "segmentSelectionChanged.connect(self.onNoduleSegmentsChanged)" in MAIN_SCRIPT.read_text()


def test_the_precision_defaults_to_automatic_labelled_with_what_runs_here():
    """The parameter node's precision default is the engine's (auto), and the combo's label comes from the engine's rule."""
    tree = ast.parse(MAIN_SCRIPT.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LungDDPMSlicerParameterNode"]
    (field,) = [s for s in cls.body if isinstance(s, ast.AnnAssign) and s.target.id == "precision"]
    assert ast.unparse(field.value) == "engine.DEFAULT_PRECISION"
    methods = {n.name: ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "panel.choice_labels(self.logic.autoPrecisions())" in methods["describeChoices"]
    assert "'lungddpm.runtime.precision'" in methods["autoPrecisions"]
