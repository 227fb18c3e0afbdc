#!/usr/bin/env bash
# The project's test command: sets the environment up (idempotent) and runs pytest in it.
#   scripts/test.sh                 # the whole suite
#   scripts/test.sh -k imaging -x   # any pytest arguments
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/test_tools.sh"
cd "$root"
export SPARK_LOCAL_IP=127.0.0.1
exec "$root/.venv/bin/python" -m pytest "$@"
