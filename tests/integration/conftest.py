"""Fixtures shared by the integration tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from daemon_support import DaemonPool


@pytest.fixture(scope="module")
def pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonPool]:
    """The daemons of one test module, all killed when the module is done."""
    daemons = DaemonPool(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield daemons
    finally:
        daemons.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's headless Chromium; the test skips where it is absent."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install chromium; .ci/run installs it as root)"
        )
    return path
