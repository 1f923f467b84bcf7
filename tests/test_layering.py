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


def _above_the_engine(module: str) -> bool:
    """A model family, a task, or what only the dense tasks share."""
    return (module.startswith(("mambaout.tasks", "mambaout.dense"))
            or module.removeprefix("mambaout.models.") in FAMILIES)


def test_the_engine_names_no_model_family_and_no_task():
    reached = [f"{path.name}: {module}" for path in sorted((PACKAGE / "engine").glob("*.py"))
               for module, _ in _imports(path) if _above_the_engine(module)]
    assert reached == []
    assert _above_the_engine("mambaout.models.mambaout") and _above_the_engine("mambaout.tasks.detection.task")
    assert not _above_the_engine("mambaout.models") and not _above_the_engine("mambaout.engine.loop")


def test_a_task_package_takes_nothing_from_another_task():
    tasks = sorted(p.name for p in (PACKAGE / "tasks").iterdir() if (p / "__init__.py").exists())
    assert tasks == ["classification", "detection", "segmentation"]
    crossed = [f"{task}/{path.name}: {module}" for task in tasks
               for path in sorted((PACKAGE / "tasks" / task).glob("*.py")) for module, _ in _imports(path)
               if module.startswith("mambaout.tasks.") and module.split(".")[2] != task]
    assert crossed == []


def _declared_flags(path: Path) -> list[str]:
    """Every option string given to an `add_argument` call in the file."""
    return [arg.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")]


# one spelling, two options: benchmark's --mode (infer or train) and the segmentation commands' (whole or slide)
SAME_NAME_OTHER_OPTION = {"--mode"}


def test_the_command_line_declares_each_option_once():
    """Options that several commands share are declared once, in cli_options.py; cli.py declares the rest."""
    declared = _declared_flags(PACKAGE / "cli.py") + _declared_flags(PACKAGE / "cli_options.py")
    assert len(declared) > 40 and "--checkpoint" in declared
    twice = {flag for flag in declared if declared.count(flag) > 1}
    assert twice - SAME_NAME_OTHER_OPTION == set()
    assert all(declared.count(flag) == 2 for flag in SAME_NAME_OTHER_OPTION)


def test_no_formatter_directives_without_a_formatter():
    """`make test` lints with ruff check and runs no formatter, so formatter markers would only be noise."""
    root = PACKAGE.parents[1]
    marked = [f"{path.relative_to(root)}:{number}" for folder in ("src", "tests", "benchmarks")
              for path in sorted((root / folder).rglob("*.py"))
              for number, line in enumerate(path.read_text().splitlines(), 1) if "# fmt" + ":" in line]
    assert marked == []


def test_importing_the_package_loads_no_training_code():
    """`import mambaout` (create_model, create_detector, ...) must not pull in the engine loop or a task's training."""
    import subprocess
    import sys

    probe = ("import sys, mambaout; print(sorted(m for m in sys.modules if m.startswith(('mambaout.engine.loop', "
             "'mambaout.tasks.classification.task', 'mambaout.tasks.detection.task', "
             "'mambaout.tasks.segmentation.task'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    assert "create_detector" in dir(mambaout) and "create_segmenter" in dir(mambaout)
