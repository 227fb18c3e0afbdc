#!/usr/bin/env bash
# The project's test command: sets the environment up (idempotent) and runs pytest in it.
#   scripts/test.sh                 # the whole suite (what CI runs)
#   scripts/test.sh --fast          # the Spark-free tier only (tests marked fast by tests/conftest.py)
#   scripts/test.sh -k imaging -x   # any pytest arguments
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
if [[ "${1:-}" == "--fast" ]]; then
  shift
  exec "$root/.venv/bin/python" -m pytest -m fast "$@"
fi
"$root/scripts/test_tools.sh"
export SPARK_LOCAL_IP=127.0.0.1
# One local job first, so that the launcher's one-time class-data archive (spark-submit.sh) is made here
# and not inside a test that times or kills its run (the history job of an empty warehouse: a few seconds).
mkdir -p .work
"$root/spark-submit.sh" history --warehouse .work/test-launch >.work/test-launch.log 2>&1 \
  || echo "[test] ./spark-submit.sh history failed (.work/test-launch.log); the tests go on" >&2
exec "$root/.venv/bin/python" -m pytest "$@"
