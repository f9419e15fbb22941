"""The README's first command: `crdtsync demo`, bounded, on real daemons with the default store."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_kills_restarts_and_converges_with_every_acknowledged_write() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crdtsync", "demo", "--seconds", "22"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(done.stdout[-4000:], done.stderr[-2000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "kept every write it acknowledged before the kill" in done.stdout
    assert "converged: equal merkle roots" in done.stdout
    assert "dc=dc1*" in done.stdout or "dc=dc2*" in done.stdout, "a relay is shown"
