#!/usr/bin/env bash
# A second, modern training environment (.venv-modern): numpy 2, current pyarrow, torch, Pillow and no
# Petastorm or Spark. The tests use it to prove the `arrow` reader backend works where Petastorm cannot
# be imported. Idempotent and quick when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMGSHARDS_MODERN_VENV:-$root/.venv-modern}"
python="${PYTHON:-python3}"
requirements="numpy>=2 pyarrow>=17 pillow>=11 torch==2.13.0"
stamp="$(echo "$requirements" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
if [[ "$(cat "$venv/.setup-stamp" 2>/dev/null || true)" != "$stamp" ]]; then
  echo "[setup-modern] installing $requirements into $venv" >&2
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet $requirements
  echo "$stamp" > "$venv/.setup-stamp"
fi
