"""The repository's layout rules, over every Python file git knows (tracked, or new and not
ignored): no module over 400 lines and no function over 60 (under ``tests/``: 600 and 80), no
``sys.path`` edits (packages and ``python -m`` instead); and helpers come from ``tests.support``
only: no module imports from a conftest module or from a test module, and every module under
``tests/`` outside ``tests/support/`` is a test module, a conftest module or a package's
``__init__``."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
LIMITS = {"tests": (600, 80)}  # top-level folder: (lines per module, lines per function)
DEFAULT_LIMITS = (400, 60)
PATH_EDITS = {"insert", "append", "extend", "remove", "pop", "clear", "__setitem__"}


def python_files() -> list[Path]:
    """Every .py file git knows here; outside a git checkout, every one under the root but
    hidden folders and the ignored data, build and runs folders."""
    argv = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"]
    try:
        listed = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    except OSError:  # no git here
        listed = subprocess.CompletedProcess(argv, 127)
    if listed.returncode == 0:
        names = {name for name in listed.stdout.split("\0") if name}
        return sorted(p for name in names if (p := ROOT / name).is_file())
    skipped = {"data", "build", "runs"}
    return sorted(
        path for path in ROOT.rglob("*.py")
        if not any(part.startswith(".") or part in skipped for part in path.relative_to(ROOT).parts)
    )  # fmt: skip


def over_limits(path: Path, source: str) -> list[str]:
    """The module, and each function (from its ``def`` line to its last), over its limit."""
    relative = path.relative_to(ROOT)
    module_limit, function_limit = LIMITS.get(relative.parts[0], DEFAULT_LIMITS)
    found = []
    if (lines := len(source.splitlines())) > module_limit:
        found.append(f"{relative}: {lines} lines (limit {module_limit})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > function_limit:
                found.append(f"{relative}:{node.lineno} {node.name}: {length} lines "
                             f"(limit {function_limit})")  # fmt: skip
    return found


def is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys")  # fmt: skip


def sys_path_edits(source: str) -> list[int]:
    """Lines that change ``sys.path``: a call of one of its list methods, or an assignment to it
    or to a slice or item of it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in PATH_EDITS and is_sys_path(node.func.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if is_sys_path(target) or (
                    isinstance(target, ast.Subscript) and is_sys_path(target.value)
                ):
                    lines.append(node.lineno)
    return sorted(lines)


def test_no_module_or_function_over_its_limit() -> None:
    found = [
        line for path in python_files()
        for line in over_limits(path, path.read_text(encoding="utf-8"))
    ]  # fmt: skip
    assert not found, "split these:\n" + "\n".join(found)


def test_no_sys_path_edits() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files()
        for line in sys_path_edits(path.read_text(encoding="utf-8"))
    ]
    assert not found, "a package and python -m instead of sys.path edits:\n" + "\n".join(found)


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
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files()
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


def test_the_limit_and_path_checks_see_what_they_forbid() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    source = f"import sys\n\n\ndef f() -> None:\n{body}"  # 64 lines, f has 61
    (found,) = over_limits(ROOT / "service" / "x.py", source)
    assert found.endswith("x.py:4 f: 61 lines (limit 60)")
    assert over_limits(TESTS / "x.py", source) == []  # tests: functions up to 80
    (found,) = over_limits(TESTS / "x.py", source * 10)
    assert found.endswith("x.py: 640 lines (limit 600)")
    # the sample's edits are made from parts, so no line of this file is itself one
    path = "sys" + ".path"
    edits = f"import sys\n{path}.insert(0, 'a')\n{path}.append('b')\n{path}[:0] = ['c']\n"
    edits += f"{path} = []\n{path} += ['d']\nprint({path})\nother.path.append('e')\n"
    assert sys_path_edits(edits) == [2, 3, 4, 5, 6]
