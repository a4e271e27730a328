"""Extract the Qt declarations (base class, Q_PROPERTYs, signals, public slots and Q_INVOKABLEs, enums) of the Slicer and
CTK widgets the module's .ui file uses, from their real headers, into Testing/slicer/data/qt_declarations.json.

The .ui check (Testing/slicer/test_slicer_ui.py) builds PyQt5 stand-ins from that file, so the check follows the
real classes, not a hand-written list. Rerun when Slicer or CTK change:

    python tools/qt_declarations.py --slicer /path/to/Slicer --ctk /path/to/CTK   # source trees or bare git dirs
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "Testing" / "slicer" / "data" / "qt_declarations.json"
HEADERS = {  # class -> (project, path of its header)
    "qMRMLWidget": ("Slicer", "Libs/MRML/Widgets/qMRMLWidget.h"),
    "qSlicerWidget": ("Slicer", "Base/QTGUI/qSlicerWidget.h"),
    "qMRMLNodeComboBox": ("Slicer", "Libs/MRML/Widgets/qMRMLNodeComboBox.h"),
    "qMRMLSegmentSelectorWidget": ("Slicer", "Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.h"),
    "qSlicerMarkupsPlaceWidget": ("Slicer", "Modules/Loadable/Markups/Widgets/qSlicerMarkupsPlaceWidget.h"),
    "qMRMLSegmentEditorWidget": ("Slicer", "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h"),
    "ctkCollapsibleButton": ("CTK", "Libs/Widgets/ctkCollapsibleButton.h"),
    "ctkPathLineEdit": ("CTK", "Libs/Widgets/ctkPathLineEdit.h"),
    "ctkSliderWidget": ("CTK", "Libs/Widgets/ctkSliderWidget.h"),
}
SECTION = re.compile(r"^\s*(public|protected|private)?\s*(slots|Q_SLOTS)?\s*:\s*$|^\s*(signals|Q_SIGNALS)\s*:\s*$")
METHOD = re.compile(r"(?:Q_INVOKABLE\s+)?(?:virtual\s+|static\s+)?[\w:<>,\*&\s]*?\b(\w+)\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)"
                    r"\s*(?:const)?\s*(?:override)?\s*(?:=\s*0)?\s*[;{]", re.S)


def read(project_dir: Path, path: str) -> tuple[str, str]:
    """A header's text and the commit it came from (a bare git dir is read at HEAD, a work tree from disk)."""
    if (project_dir / path).is_file():
        commit = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
        return (project_dir / path).read_text(), commit.stdout.strip()
    text = subprocess.run(["git", f"--git-dir={project_dir}", "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout
    commit = subprocess.run(["git", f"--git-dir={project_dir}", "rev-parse", "HEAD"], capture_output=True, text=True)
    return text, commit.stdout.strip()


def strip_comments(text: str) -> str:
    """The header without // and /* */ comments."""
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def declarations(name: str, text: str) -> dict:
    """Base class, properties, signals and the slots / Q_INVOKABLE methods callable from Python of one class."""
    code = strip_comments(text)
    base = re.search(rf"class\s+(?:\w+_EXPORT\s+)?{name}\s*:\s*public\s+(\w+)", code).group(1)
    properties = []
    for match in re.finditer(r"Q_PROPERTY\(\s*([\w:<>\*]+(?:\s*\*)?)\s+(\w+)\s+([^)]*)\)", code):
        properties.append({"name": match.group(2), "type": match.group(1).replace(" ", ""),
                           "writable": "WRITE" in match.group(3).split()})
    body = code[code.index("{", code.index(f"{name} : public") if f"{name} : public" in code else 0):]
    signals, slots, section = [], [], ""
    for line_block in re.split(r"\n(?=\s*(?:public|protected|private|signals|Q_SIGNALS)\b[^\n:]*:\s*\n)", body):
        head = line_block.strip().split("\n", 1)[0].strip()
        if SECTION.match(head):
            section = head.replace("Q_SLOTS", "slots").replace("Q_SIGNALS", "signals").rstrip(":").strip()
        for method in METHOD.finditer(line_block):
            entry = {"name": method.group(1), "args": " ".join(method.group(2).split())}
            if method.group(1) in (name, "Q_PROPERTY", "Q_DECLARE_PRIVATE", "Q_DISABLE_COPY", "QScopedPointer"):
                continue
            if section == "signals":
                signals.append(entry)
            elif section == "public slots" or (section == "public" and "Q_INVOKABLE" in method.group(0)):
                slots.append(entry)
    return {"base": base, "properties": properties, "signals": signals, "slots": slots, "enums": enums(code)}


def enums(code: str) -> dict[str, int]:
    """Every enum member of the header with its value (explicit, or one more than the previous)."""
    members: dict[str, int] = {}
    for match in re.finditer(r"\benum\s+(?:class\s+)?\w*\s*\{([^}]*)\}", code):
        value = -1
        for item in match.group(1).split(","):
            name, _, expression = item.partition("=")
            name = name.strip()
            if not re.fullmatch(r"\w+", name):
                continue
            expression = expression.strip()
            if expression:
                try:
                    value = constant(expression, members)
                except (SyntaxError, ValueError, KeyError):
                    continue
            else:
                value += 1
            members[name] = value
    return members


def constant(expression: str, known: dict[str, int]) -> int:
    """The value of an enum initialiser such as 0x0001, 1 << 2 or Files | Dirs (ValueError for anything else)."""
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return known[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else ~value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not a constant: {ast.dump(node)}")

    return value(ast.parse(expression.strip(), mode="eval").body)


OPERATORS = {ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.LShift: operator.lshift, ast.Add: operator.add,
             ast.Sub: operator.sub}


def main() -> None:
    """Read the headers and write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer", type=Path, required=True, help="Slicer source tree or bare git dir")
    parser.add_argument("--ctk", type=Path, required=True, help="CTK source tree or bare git dir")
    args = parser.parse_args()
    projects = {"Slicer": args.slicer, "CTK": args.ctk}
    classes, sources = {}, {}
    for name, (project, path) in HEADERS.items():
        text, commit = read(projects[project], path)
        sources[project] = commit
        classes[name] = {"header": f"{project}:{path}", **declarations(name, text)}
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps({"sources": sources, "classes": classes}, indent=1) + "\n")
    print(f"{OUTPUT}: {len(classes)} classes")


if __name__ == "__main__":
    main()
