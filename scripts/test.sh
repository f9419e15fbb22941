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
.venv/bin/python -m pytest "$@"
