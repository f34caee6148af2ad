"""Imports run one way (DEVELOPERS.md): api -> gateway -> drivers. drivers never import gateway, api or the
simulators; simulators never import the code they simulate for (so one bug cannot hide in both sides); only
the composition root (gateway/daemon.py, gateway/cli.py with its sub-commands, gateway/demo.py) wires api and
simulators in. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "gateway", "drivers", "simulators", "bench", "tests")
FORBIDDEN = {
    "drivers": {"gateway", "api", "simulators", "bench", "tests"},
    "simulators": {"gateway", "api", "drivers", "bench", "tests"},
    "api": {"simulators", "drivers", "bench", "tests"},
    "gateway": {"api", "simulators", "bench", "tests"},
}
COMPOSITION_ROOT = ("gateway/daemon.py", "gateway/cli.py", "gateway/demo.py", "gateway/commands/")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if package == "gateway" and relative.startswith(COMPOSITION_ROOT):
            continue
        wrong += [f"{relative}:{line} imports {top}" for top, line in imported_packages(path)
                  if top in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gateway.events import EventBus\n    return EventBus\n")
    assert imported_packages(module) == {("gateway", 2)}
