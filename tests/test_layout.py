"""The rooms of the package, checked: ``utils/`` is the ground floor, and callbacks live in
``vit_rpe/callbacks/``. Rules a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
from pathlib import Path

import vit_rpe

PACKAGE = Path(vit_rpe.__file__).parent


def modules(folder: Path):
    for path in sorted(folder.rglob("*.py")):
        yield path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module a file imports, at the top or inside a function (absolute imports only)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "vit_rpe uses absolute imports"
            names.add(node.module)
    return names


def test_utils_imports_no_other_vit_rpe_module():
    """utils/ is what every other module may use, so it uses none of them (no cycles, no
    feature pulled in by a helper)."""
    reaching_up = {}
    for path, tree in modules(PACKAGE / "utils"):
        names = imported_modules(tree)
        features = sorted(n for n in names if n.startswith("vit_rpe") and not n.startswith("vit_rpe.utils"))
        if features:
            reaching_up[path] = features
    assert not reaching_up, f"utils/ imports feature modules: {reaching_up}"


def test_every_callback_lives_in_the_callbacks_package():
    defined_elsewhere = []
    for path, tree in modules(PACKAGE):
        if path.startswith("vit_rpe/callbacks/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base) for base in node.bases}
                if bases & {"L.Callback", "Callback", "lightning.Callback", "pl.Callback"}:
                    defined_elsewhere.append(f"{path}: {node.name}")
    assert not defined_elsewhere, f"callbacks outside vit_rpe/callbacks/: {defined_elsewhere}"


TESTS = Path(__file__).parent


def test_tests_mirror_the_package_and_import_no_other_test_module():
    """tests/<name>/ exists only for a subpackage vit_rpe/<name>/; shared helpers live in conftest.py
    and helpers.py, so no test module imports another (a test moved or renamed breaks nothing)."""
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name not in ("__pycache__", "snapshots")}
    assert folders <= subpackages, f"test folders without a package: {sorted(folders - subpackages)}"
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        test_modules = {m for m in imported_modules(tree) if m and m.split(".")[-1].startswith("test_")}
        assert not test_modules, f"{path.relative_to(TESTS)} imports test modules {sorted(test_modules)}"
