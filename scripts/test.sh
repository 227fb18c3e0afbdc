#!/usr/bin/env bash
# The project's test command: sets the environments up (idempotent) and runs pytest in them.
#   scripts/test.sh                    # what CI runs: the whole suite on the default stack (spark4), then the
#                                      #   Spark 3.5 subset (SPARK35_SUBSET) on the spark35 stack
#   scripts/test.sh --fast             # the Spark-free tier only (tests marked fast by tests/conftest.py)
#   scripts/test.sh -k imaging -x      # any pytest arguments, on the default stack
#   scripts/test.sh --stack spark35 [pytest arguments]   # on the Spark 3.5 line (default: SPARK35_SUBSET)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# On Spark 3.5: the whole pipeline with every reader check (the loader's two backends, Petastorm's readers,
# DDP), and Petastorm's unpickler on a hostile dataset.
SPARK35_SUBSET=(tests/test_end_to_end.py tests/test_loader.py tests/test_security.py::test_petastorm_refuses_this_pickle)
cd "$root"
export SPARK_LOCAL_IP=127.0.0.1

stack=spark4
case "${1:-}" in
  --fast)
    shift
    "$root/scripts/setup.sh"
    exec "$root/.venv/bin/python" -m pytest -m fast "$@" ;;
  --stack) stack="$2"; shift 2 ;;
  --stack=*) stack="${1#--stack=}"; shift ;;
esac
"$root/scripts/setup.sh" --stack "$stack"
"$root/scripts/test_tools.sh"
venv="$root/.venv"
[[ "$stack" == spark4 ]] || venv="$root/.venv-$stack"

run_suite() {  # stack venv pytest-args...
  local stack="$1" venv="$2"
  shift 2
  # One local job first, so that the launcher's one-time class-data archive (spark-submit.sh) is made here
  # and not inside a test that times or kills its run (the history job of an empty warehouse: a few seconds).
  mkdir -p .work
  IMGSHARDS_STACK="$stack" "$root/spark-submit.sh" history --warehouse ".work/test-launch-$stack" \
    >".work/test-launch-$stack.log" 2>&1 \
    || echo "[test] ./spark-submit.sh history failed (.work/test-launch-$stack.log); the tests go on" >&2
  IMGSHARDS_STACK="$stack" "$venv/bin/python" -m pytest --durations=25 "$@"
}

if [[ "$stack" != spark4 || $# -gt 0 ]]; then
  [[ "$stack" == spark4 || $# -gt 0 ]] || set -- "${SPARK35_SUBSET[@]}"
  run_suite "$stack" "$venv" "$@"
  exit
fi
# CI: both stacks; the Spark 3.5 subset runs even when the main suite failed, and either failure fails.
"$root/scripts/setup.sh" --stack spark35
status=0
run_suite spark4 "$venv" || status=$?
echo "[test] the Spark 3.5 subset on the spark35 stack: ${SPARK35_SUBSET[*]}" >&2
run_suite spark35 "$root/.venv-spark35" "${SPARK35_SUBSET[@]}" || status=$?
exit "$status"
