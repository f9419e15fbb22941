"""`crdtsync demo` (being written)."""

from __future__ import annotations


def run_demo(work_dir: str | None, base_port: int, seconds: float | None) -> int:
    raise SystemExit("crdtsync demo is not ready yet")
