"""vit_rpe uses Lightning through its public API only, so a Lightning upgrade cannot break it
through a private call (mid-epoch resume, the signal stop and the run summary included)."""

from __future__ import annotations

import ast
from pathlib import Path

import vit_rpe

PACKAGE = Path(vit_rpe.__file__).parent
LIGHTNING_OBJECTS = ("trainer", "loop", "strategy", "pl_module", "lightning_module")


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def attribute_reached(node: ast.AST) -> tuple[ast.expr, str] | None:
    """(object, attribute name) of ``obj.name`` and of ``getattr(obj, "name", ...)``."""
    if isinstance(node, ast.Attribute):
        return node.value, node.attr
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
        name = node.args[1] if len(node.args) > 1 else None
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return node.args[0], name.value
    return None


def private_lightning_attributes(root: Path) -> dict[str, list[str]]:
    """Private attributes (``_name``) reached through a Trainer, a loop, a strategy or a module,
    in the Python files under ``root``."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            reached = attribute_reached(node)
            if reached is None or not is_private(reached[1]):
                continue
            owner, attr = ast.unparse(reached[0]), reached[1]
            if any(name in owner for name in LIGHTNING_OBJECTS):
                where = f"{path.relative_to(root.parent)}:{node.lineno} ({owner}.{attr})"
                found.setdefault(attr, []).append(where)
    return found


def test_vit_rpe_uses_no_private_lightning_api():
    found = private_lightning_attributes(PACKAGE)
    assert not found, f"vit_rpe reaches into Lightning's private API: {found}; use its public API"


def test_a_private_call_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "hook.py").write_text(
        "def on_train_batch_end(trainer, pl_module):\n"
        "    trainer._logger_connector.update_train_step_metrics()\n"
        "    getattr(pl_module, '_device', None)\n"
        "    trainer.__class__\n"
    )
    assert sorted(private_lightning_attributes(package)) == ["_device", "_logger_connector"]
