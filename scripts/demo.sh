#!/usr/bin/env bash
# Sets everything up (.venv) and runs `crdtsync demo`: three daemons as separate processes on
# 127.0.0.1, live writes over HTTP, one killed with SIGKILL and restarted, and they converge again.
# The daemons keep running until Ctrl-C; pass --seconds N for a bounded run (see docs/cli.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/crdtsync demo "$@"
