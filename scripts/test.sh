#!/usr/bin/env bash
# Sets everything up (.venv) and runs the whole suite: lint, types, unit, property, simulation,
# integration and the fuzz smoke runs. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
# Bytecode of the sources, once: every daemon, demo and example the tests start imports crdtsync
# afresh, and where PYTHONDONTWRITEBYTECODE is set each compiled every module again (0.2 s of CPU).
.venv/bin/python -m compileall -q crdtsync fuzz
# Two workers: most integration tests wait on daemons, timers and sockets, so one pytest process left
# a 2-core machine a third idle. A file runs whole in one worker (--dist loadfile): module fixtures
# start their daemons once, and a killed daemon's ports are the worker's own (testing/_processes.py).
# Files go in collection order (--no-loadscope-reorder): the fuzz smokes first, in fresh workers, as
# fuzz.network's peak RSS bound counts the whole process; the short unit tests last, evening the end.
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
