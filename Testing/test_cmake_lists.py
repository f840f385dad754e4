"""The extension's packaging: every module file is in its CMake lists, the Extensions Index entry is
consistent with the top-level CMakeLists.txt, and the module's Python parses on Python 3.10."""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = (ROOT / "CMakeLists.txt").read_text()
IGNORED_PARTS = {"__pycache__", ".pytest_cache"}


def cmake_set(text: str, variable: str) -> list[str]:
    """Items of ``set(VARIABLE item item ...)`` (comments dropped), or [] when absent."""
    text = re.sub(r"#[^\n]*", "", text)
    match = re.search(r"set\(\s*" + re.escape(variable) + r"\s+([^)]*)\)", text)
    return match.group(1).split() if match else []


def modules() -> list[str]:
    return re.findall(r"^\s*add_subdirectory\(\s*([^\s)]+)\s*\)", TOP, flags=re.MULTILINE)


def module_files(folder: Path) -> set[str]:
    """Files that must be installed: everything except CMake files, caches and build-time tests."""
    files = set()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if not p.is_file() or IGNORED_PARTS & set(rel.parts) or p.suffix == ".pyc" or p.name.startswith("."):
            continue
        if p.name == "CMakeLists.txt" or rel.parts[0] == "Testing":
            continue
        files.add(rel.as_posix())
    return files


@pytest.mark.parametrize("module", modules())
def test_every_module_file_is_in_its_cmake_lists(module):
    folder = ROOT / module
    cmake = folder / "CMakeLists.txt"
    if not cmake.is_file():
        if not folder.is_dir() or not any(folder.iterdir()):
            pytest.skip(f"{module}/ is not written yet")
        pytest.fail(f"{module}/ has files but no CMakeLists.txt (the top-level CMakeLists.txt adds it)")
    text = cmake.read_text()
    name = cmake_set(text, "MODULE_NAME")
    assert name == [module], f"{module}/CMakeLists.txt sets MODULE_NAME {name}"
    listed = [item.replace("${MODULE_NAME}", module)
              for item in cmake_set(text, "MODULE_PYTHON_SCRIPTS") + cmake_set(text, "MODULE_PYTHON_RESOURCES")]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    present = module_files(folder)
    assert not present - set(listed), f"in {module}/ but missing from its CMake lists: {sorted(present - set(listed))}"
    assert not set(listed) - present, f"listed in {module}/CMakeLists.txt but missing: {sorted(set(listed) - present)}"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)


def test_top_level_cmake_declares_the_extension():
    assert re.search(r"^project\(GASE\)", TOP, flags=re.MULTILINE)
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(" + variable + r"\s+\"[^\"]+\"", TOP), variable
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"', TOP)
    order = [TOP.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                    "add_subdirectory(GASESegmentation)", "add_subdirectory(GASETraining)",
                                    "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)
    # The core package and the demo model are installed with the extension.
    assert "gase/*.py" in TOP and "Resources/Models/*" in TOP and "Resources/requirements.txt" in TOP
    assert "ctkMacroCompilePythonScript(" in TOP and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in TOP


def test_extensions_index_entry_matches():
    entry = json.loads((ROOT / "GASE.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["category"] == re.search(r'set\(EXTENSION_CATEGORY\s+"([^"]+)"', TOP).group(1)
    repo = re.search(r'set\(GASE_REPOSITORY\s+"([^"]+)"', TOP).group(1)
    assert entry["scm_url"] == f"https://github.com/{repo}.git"
    assert 1 <= entry["tier"] <= 5
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    # Icon and screenshot URLs point at files of this repository.
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = re.search(r"set\(" + variable + r'\s+"([^"]+)"', TOP).group(1)
        path = url.split("/main/", 1)[1]
        if variable == "EXTENSION_SCREENSHOTURLS" and not (ROOT / path).exists():
            pytest.skip(f"{path} is not rendered yet (Testing/test_slicer_segmentation_logic.py writes it)")
        assert (ROOT / path).is_file(), path


def test_icons_are_128_pixel_pngs():
    import vtk

    for path in (ROOT / "GASE.png", ROOT / "GASESegmentation" / "Resources" / "Icons" / "GASESegmentation.png"):
        reader = vtk.vtkPNGReader()
        reader.SetFileName(str(path))
        reader.Update()
        assert reader.GetOutput().GetDimensions()[:2] == (128, 128), path


def test_module_python_parses_on_python_3_10_and_the_ui_has_every_widget_used():
    folder = ROOT / "GASESegmentation"
    for path in sorted(folder.rglob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    widget = (folder / "GASESegmentation.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", widget))
    ui = ET.parse(folder / "Resources" / "UI" / "GASESegmentation.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    assert used and not used - names, f"used in GASESegmentation.py but not in the .ui: {sorted(used - names)}"
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    declared = set(re.findall(r"^    (\w+): ", widget[widget.index("class GASESegmentationParameterNode"):],
                              flags=re.MULTILINE))
    assert bound <= declared, f"GUI parameters without a parameter-node field: {bound - declared}"


def test_the_library_never_imports_qt_or_torch():
    for path in sorted((ROOT / "GASESegmentation" / "GASESegmentationLib").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert not imported & {"qt", "ctk", "torch", "monai", "PythonQt"}, (path.name, imported)


@pytest.mark.parametrize("module", ["GASESegmentation", "GASETraining"])
def test_module_file_defines_the_classes_slicer_looks_for(module):
    """Slicer loads a scripted module through a class named like the file (plus Widget/Logic/Test)."""
    import ast

    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    bases = {node.name: [getattr(b, "id", None) for b in node.bases]
             for node in tree.body if isinstance(node, ast.ClassDef)}
    assert "ScriptedLoadableModule" in bases.get(module, []), f"{module}.py lacks class {module}(ScriptedLoadableModule)"
    assert "ScriptedLoadableModuleWidget" in bases.get(f"{module}Widget", [])
    assert "ScriptedLoadableModuleTest" in bases.get(f"{module}Test", [])
