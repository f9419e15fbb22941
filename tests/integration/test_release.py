"""The release: `python -m build` makes a wheel that pip installs into a fresh venv (with its
dependencies, from the package index), and the installed crdtsync runs there on its own, not from this checkout:
`crdtsync --version` and a bounded `crdtsync demo` (three daemons, kill -9, restart, convergence).

The build reads a copy of the sources (it writes build/ and *.egg-info beside them) and the
commands run in a temp dir, so nothing of the checkout is on their import path. The fresh venv
is made from the base interpreter: none of the dev venv's packages are in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "README.md")
"""What the build reads besides the package itself."""
STEP_TIMEOUT_S = 300.0
DEMO_SECONDS = 20


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout_s: float = STEP_TIMEOUT_S) -> str:
    """Run a command to completion; its stdout, or a failure with both its outputs."""
    started = time.monotonic()
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    print(f"{time.monotonic() - started:5.1f} s  {' '.join(str(arg) for arg in args)}")
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
        f"--- stderr\n{result.stderr[-4000:]}"
    )
    return result.stdout


def package_files(root: Path) -> set[str]:
    """The files of the crdtsync package under `root`, as wheel paths (no bytecode caches)."""
    return {
        path.relative_to(root).as_posix()
        for path in (root / "crdtsync").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    source = tmp_path / "source"
    shutil.copytree(
        REPO / "crdtsync", source / "crdtsync", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name in BUILD_INPUTS:
        shutil.copy2(REPO / name, source / name)

    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, source], tmp_path, env)
    wheels = sorted(dist.glob("crdtsync-*.whl"))
    assert [wheel.name for wheel in wheels] == [f"crdtsync-{version}-py3-none-any.whl"]
    assert (dist / f"crdtsync-{version}.tar.gz").is_file()
    with zipfile.ZipFile(wheels[0]) as archive:
        in_wheel = set(archive.namelist())
    missing = package_files(source) - in_wheel
    assert not missing, f"files of the package that the wheel lacks (declare them as package data): {missing}"
    assert "crdtsync/py.typed" in in_wheel

    # The fresh venv has no pip of its own: the dev venv's pip installs into it (`--python`), three
    # times quicker than the older pip that `venv` would bootstrap, and the same install.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python, crdtsync = venv / "bin" / "python", venv / "bin" / "crdtsync"
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "--quiet", wheels[0]], tmp_path, env)
    run([*pip, "check"], tmp_path, env)

    where = run(
        [
            python,
            "-c",
            "import importlib.util, crdtsync, sys\n"
            "print(crdtsync.__file__)\n"
            "print(sys.prefix)\n"
            "print(importlib.util.find_spec('pytest') is None)",
        ],
        tmp_path,
        env,
    ).splitlines()
    installed = Path(where[0]).resolve()
    assert installed.is_relative_to(venv.resolve()), f"crdtsync imported from {installed}, not the venv"
    assert not installed.is_relative_to(REPO)
    assert Path(where[1]).resolve() == venv.resolve()
    assert where[2] == "True", "the fresh venv sees the dev venv's packages"
    assert (installed.parent / "py.typed").is_file()

    assert run([crdtsync, "--version"], tmp_path, env) == f"crdtsync, version {version}\n"
    run(
        [crdtsync, "demo", "--seconds", str(DEMO_SECONDS), "--dir", tmp_path / "demo"],
        tmp_path,
        env,
        timeout_s=DEMO_SECONDS + 120.0,
    )
