"""The layering of DESIGN.md, pinned: the sans-IO core imports no driver, transport, store, daemon or
simulator module, and none of the standard modules through which I/O, clocks, threads or global
randomness would come in."""

from __future__ import annotations

import ast
from pathlib import Path

import crdtsync.core

CORE = Path(crdtsync.core.__file__).parent
FORBIDDEN_PREFIXES = (
    "crdtsync.node",
    "crdtsync.transport",
    "crdtsync.store",
    "crdtsync.daemon",
    "crdtsync.sim",
    "crdtsync.testing",
    "crdtsync.cli",
)
FORBIDDEN_MODULES = {"asyncio", "zmq", "sqlite3", "time", "random", "os", "threading", "socket", "secrets"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def test_core_modules_are_found() -> None:
    files = sorted(path.name for path in CORE.glob("*.py"))
    assert "replica.py" in files and "causal.py" in files and "antientropy.py" in files


def test_core_imports_no_io_clock_or_randomness() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for name in sorted(_imports(path)):
            top = name.split(".")[0]
            if top in FORBIDDEN_MODULES or name.startswith(FORBIDDEN_PREFIXES):
                offenders.append(f"{path.name} imports {name}")
    assert offenders == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom crdtsync.store.sqlite import SqliteStore\nfrom . import wire\n")
    assert _imports(bad) == {"time", "crdtsync.store.sqlite"}
