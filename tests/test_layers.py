"""The package layers of docs/architecture.md: data flows one way, and no module imports a layer
above its own (read from the source with ``ast``, so lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "avda"

# package -> packages it must never import (at module level or inside a function)
FORBIDDEN = {
    "data_manifests": ["cache", "extract", "train", "evaluate", "sweep", "scoring", "cli", "api"],
    "cache": ["extract", "train", "evaluate", "sweep", "scoring", "cli", "api"],
    "scoring": ["cache", "extract", "train", "evaluate", "sweep", "cli", "api"],
    "extract": ["train", "evaluate", "sweep", "scoring", "cli", "api"],
    "train": ["extract", "evaluate", "sweep", "cli", "api"],
    "evaluate": ["extract", "train", "sweep", "cli", "api"],
    "sweep": ["extract", "cli", "api"],
}


def imported_modules(path: Path) -> set[str]:
    """Every ``avda...`` module ``path`` imports, absolute or relative, anywhere in the file."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "avda" or m.startswith("avda.")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package):
    forbidden = set(FORBIDDEN[package])
    offences = []
    for path in sorted((SRC / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if layer_of(module) in forbidden:
                offences.append(f"{path.relative_to(SRC)} imports {module}")
    assert not offences, "\n".join(offences)


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    module = SRC / "train" / "_layers_probe.py"
    module.write_text(
        "def f():\n    from avda.evaluate import report\n\nfrom ..scoring import metrics\n"
    )
    try:
        found = imported_modules(module)
    finally:
        module.unlink()
    assert "avda.evaluate.report" in found and "avda.scoring.metrics" in found
