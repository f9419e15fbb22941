#!/usr/bin/env bash
# Sets everything up (.venv) and runs the live demo: three nodes as separate processes on 127.0.0.1
# replicate a model registry, one is killed with SIGKILL and restarted, and they converge again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/live_demo.py "$@"
