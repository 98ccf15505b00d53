"""The tests' layout: helpers come from ``tests.support`` only. No module under ``tests/`` (nor a
script) imports from a conftest module or from a test module, and every module under ``tests/``
outside ``tests/support/`` is a test module, a conftest module or a package's ``__init__``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def package_of(path: Path) -> str:
    """The package a module file lies in (a package's ``__init__``: that package)."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def imported(source: str, package: str) -> set[str]:
    """Every module ``source`` imports, and for ``from X import y`` also ``X.y`` (``y`` may be a
    module); relative imports resolved against ``package``, the one ``source`` lies in."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def forbidden(name: str) -> bool:
    """A conftest module or a test module (``test_*``) of this project's tests."""
    parts = name.split(".")
    return parts[0] == "tests" and any(p == "conftest" or p.startswith("test_") for p in parts)


def test_nothing_imports_from_conftest_or_test_modules() -> None:
    paths = [p for d in (TESTS, ROOT / "scripts", ROOT / "bench") for p in sorted(d.rglob("*.py"))]
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in paths
        for name in sorted(imported(path.read_text(encoding="utf-8"), package_of(path)))
        if forbidden(name)
    ]
    assert not found, "import helpers from tests.support instead:\n" + "\n".join(found)


def test_helpers_live_in_tests_support() -> None:
    support = TESTS / "support"
    strays = [
        str(path.relative_to(ROOT))
        for path in sorted(TESTS.rglob("*.py"))
        if support not in path.parents
        and not path.name.startswith("test_")
        and path.name not in ("conftest.py", "__init__.py")
    ]
    assert not strays, "helper modules belong in tests/support/: " + ", ".join(strays)


def test_the_checks_see_what_they_forbid() -> None:
    assert forbidden("tests.conftest") and forbidden("tests.api.conftest.make_settings")
    assert forbidden("tests.api.test_explore.count_tiles")
    assert not forbidden("tests.support.models") and not forbidden("tests.support.servers.stop")
    source = "from tests.api.conftest import ADMIN\nfrom .test_explore import count_tiles\n"
    source += "from .. import conftest\nimport tests.support.servers\n"
    names = imported(source, "tests.api")
    assert {"tests.api.conftest.ADMIN", "tests.api.test_explore.count_tiles"} <= names
    assert {"tests.conftest", "tests.support.servers"} <= names
