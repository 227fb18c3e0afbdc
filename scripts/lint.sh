#!/usr/bin/env bash
# The linters CI runs before the tests (pre-commit runs the same): ruff on the whole tree, mypy on the
# Spark-free packages (pyproject.toml [tool.mypy]), and the configuration page checked against the schema.
#   scripts/lint.sh          # check
#   scripts/lint.sh --fix    # let ruff fix what it can and regenerate docs/configuration.md
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"
if [[ "${1:-}" == "--fix" ]]; then
  "$py" -m ruff check --fix .
  "$py" scripts/gen_config_docs.py
else
  "$py" -m ruff check .
  "$py" scripts/gen_config_docs.py --check
fi
"$py" -m mypy
echo "[lint] ruff, mypy and docs/configuration.md are clean" >&2
