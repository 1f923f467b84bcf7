"""docs/architecture.md stays true to the tree: every path it names exists, and it names every module.

Paths are read in two spellings: from the repository root (`src/mambaout/engine/loop.py`, `tests/test_models.py`,
`benchmarks/models_cpu.py`) and from the package (`engine/loop.py`, `checkpoints/*_layout.py`). A glob must match at
least one file; placeholders (`models/<family>.py`) are skipped. A module counts as mentioned when its path from the
package is written (`engine/loop.py`); a package's `__init__.py` when its folder is (`engine/`); a top-level module
only in its full form (`src/mambaout/cli.py`), so that a bare `cli.py` in prose cannot stand in for it.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "mambaout"
DOC = REPO / "docs" / "architecture.md"
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())

_CHARS = r"[\w./*<>{}-]*"
_FROM_ROOT = re.compile(rf"(?<![\w/.-])((?:src/mambaout|tests|benchmarks)(?:/{_CHARS})?)")
_FROM_PACKAGE = re.compile(rf"(?<![\w/.-])((?:{'|'.join(SUBPACKAGES)})/{_CHARS})")


def _clean(token: str) -> str:
    return token.rstrip(".,:;")


def _paths() -> list[tuple[str, Path]]:
    """(as written, path from the repository root) for every path token of the document, placeholders left out."""
    text = DOC.read_text(encoding="utf-8")
    found = [(t, REPO / t) for t in map(_clean, _FROM_ROOT.findall(text))]
    found += [(t, PACKAGE / t) for t in map(_clean, _FROM_PACKAGE.findall(text))]
    return [(token, path) for token, path in found if not re.search(r"[<>{}]", token)]


def _exists(path: Path) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(REPO.glob(relative)) if "*" in relative else path.exists()


def _mentioned() -> set[str]:
    """Package-relative forms of every path the document writes ('engine/loop.py', 'engine', 'cli.py', ...)."""
    names = set()
    for token, path in _paths():
        try:
            relative = path.relative_to(PACKAGE)
        except ValueError:
            continue
        if token.startswith("src/mambaout") or relative.parts[0] in SUBPACKAGES:
            names.add(relative.as_posix())
    return names


def test_the_document_exists_and_names_paths():
    assert DOC.is_file(), f"{DOC} is missing"
    assert len(_paths()) > 50


def test_every_path_in_the_document_exists():
    missing = sorted({token for token, path in _paths() if not _exists(path)})
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")))
def test_every_module_is_mentioned(module):
    mentioned = _mentioned()
    parts = module.split("/")
    if len(parts) == 1:  # top level: only the full form counts (the short-form pattern reads subpackages only)
        assert module in mentioned, f"docs/architecture.md does not mention src/mambaout/{module}"
        return
    folder = "/".join(parts[:-1])
    forms = {module} | ({folder} if parts[-1] == "__init__.py" else set())
    assert forms & mentioned, f"docs/architecture.md does not mention {module} (src/mambaout/{module})"
