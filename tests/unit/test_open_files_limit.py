"""`crdtsync serve` raises its open files limit for a full mesh, and says when it cannot."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import logging, resource, sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    soft, hard = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    from crdtsync.daemon.server import raise_open_files_limit
    raise_open_files_limit(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """
)


def _run(
    soft: int, hard: int, members_max: int, websockets_max: int = 0, watchers_max: int = 0
) -> tuple[int, str]:
    limits = [soft, hard, members_max, websockets_max, watchers_max]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, limits)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.strip()), done.stderr


HARD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.skipif(
    HARD_LIMIT != resource.RLIM_INFINITY and HARD_LIMIT < 2048, reason="hard limit too low here"
)
def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    soft, stderr = _run(256, 2048, 16)
    assert soft == 2048
    assert "open files limit" not in stderr


def test_a_hard_limit_below_the_mesh_needs_is_a_warning() -> None:
    soft, stderr = _run(256, 256, 1024)
    assert soft == 256
    assert (
        "WARNING the open files limit is 256: a node linked to 1024 members with 0 WebSocket "
        "connections and 0 watch streams needs about 6208"
    ) in stderr


def test_websocket_connections_count_in_the_need() -> None:
    soft, stderr = _run(256, 256, 16, 10_000)
    assert soft == 256
    assert "with 10000 WebSocket connections and 0 watch streams needs about 10160" in stderr, stderr


def test_watch_streams_count_in_the_need() -> None:
    soft, stderr = _run(256, 256, 16, 10_000, 4096)
    assert soft == 256
    assert "with 10000 WebSocket connections and 4096 watch streams needs about 14256" in stderr, stderr
    assert "http.watchers_max" in stderr
