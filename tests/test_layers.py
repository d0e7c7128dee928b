"""The package's layers (docs/architecture.md): a module imports only from its own layer or
below, so the data flow reads one way.  Checked on the source, imports inside functions
included."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "agi" / "clinica_asterisk"

# Lowest first.  A top-level module is named by itself, a subpackage by its folder.
LAYERS = [
    {"variables", "deadline", "redact", "config", "logs", "values"},  # leaves: names, time, settings, records
    {"calls", "agi", "pbx", "store"},  # pure call logic; the protocols; the store
    {"delivery"},  # sending the outbox to the CRM
    {"hooks", "api"},  # what Asterisk runs; what the CRM calls
    {"cli", "devtools", "__main__"},  # commands; developer tools
]
LAYER_OF = {name: n for n, names in enumerate(LAYERS) for name in names}


def unit_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_units(path: Path):
    """(line, unit) for every import of another part of the package."""
    parts = path.relative_to(PACKAGE).parts
    depth = len(parts) - 1  # folders below the package root
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                if up > depth:
                    continue
                base = list(parts[:depth - up])
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    yield node.lineno, target[0]
                else:  # from . import x (at the root)
                    for alias in node.names:
                        yield node.lineno, alias.name
            elif node.module and node.module.startswith("clinica_asterisk."):
                yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("clinica_asterisk."):
                    yield node.lineno, alias.name.split(".")[1]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_has_a_layer():
    units = {unit_of(p) for p in MODULES} - {"__init__"}
    assert units <= set(LAYER_OF), f"no layer for: {sorted(units - set(LAYER_OF))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward(path):
    unit = unit_of(path)
    if unit == "__init__":
        return
    upward = [f"line {line}: {target}" for line, target in imported_units(path)
              if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[unit]]
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {LAYER_OF[unit]}) imports upward: {upward}"
