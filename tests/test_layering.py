"""The house stays as built: imports read with ast, so a shortcut across the layers fails here."""

import ast
import importlib
import inspect
from pathlib import Path

import mambaout

PACKAGE = Path(mambaout.__file__).parent
FAMILIES = sorted(p.stem for p in (PACKAGE / "models").glob("*.py") if not p.stem.startswith("_"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every `from ... import` in the file, function bodies included."""
    package = ".".join(("mambaout", *path.relative_to(PACKAGE).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, (base, node.module))) if node.level else node.module
            found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_the_relative_import_reader_resolves_packages():
    imports = dict(_imports(PACKAGE / "models" / "local_mamba.py"))
    assert "Block" in imports["mambaout.models.vim"] and "mambaout.models._mamba_layers" in imports


def test_a_model_family_takes_only_public_classes_from_another_family():
    borrowed = []
    for family in FAMILIES:
        for module, names in _imports(PACKAGE / "models" / f"{family}.py"):
            other = module.removeprefix("mambaout.models.")
            if other in FAMILIES and other != family:
                source = importlib.import_module(module)
                borrowed += [f"{family} <- {other}.{name}" for name in names
                             if name.startswith("_") or inspect.isfunction(getattr(source, name))]
    assert borrowed == [], "shared helpers belong in models/_*.py, not in another family's file"


def _names_a_family_or_dense(module: str) -> bool:
    return module.startswith("mambaout.dense") or module.removeprefix("mambaout.models.") in FAMILIES


def test_the_engine_names_no_model_family_and_no_dense_task():
    reached = [f"{path.name}: {module}" for path in sorted((PACKAGE / "engine").glob("*.py"))
               for module, _ in _imports(path) if _names_a_family_or_dense(module)]
    assert reached == []
    assert _names_a_family_or_dense("mambaout.models.mambaout") and not _names_a_family_or_dense("mambaout.models")


def test_no_formatter_directives_without_a_formatter():
    """`make test` lints with ruff check and runs no formatter, so formatter markers would only be noise."""
    root = PACKAGE.parents[1]
    marked = [f"{path.relative_to(root)}:{number}" for folder in ("src", "tests", "benchmarks")
              for path in sorted((root / folder).rglob("*.py"))
              for number, line in enumerate(path.read_text().splitlines(), 1) if "# fmt" + ":" in line]
    assert marked == []
