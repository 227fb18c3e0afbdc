#!/usr/bin/env bash
# Create the project environment (.venv) with the pinned stack and fetch the Delta jars (.jars/) once.
# Idempotent: when constraints.txt, setup.cfg and the jars are unchanged it returns in about a second.
#   scripts/setup.sh            # install or refresh
#   FORCE=1 scripts/setup.sh    # reinstall the Python packages even if the stamp matches
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMGSHARDS_VENV:-$root/.venv}"
jars="$root/.jars"
python="${PYTHON:-python3}"
delta_version="3.3.3"
scala_version="2.12"

log() { printf '[setup] %s\n' "$*" >&2; }

stamp_of() {
  cat "$root/constraints.txt" "$root/setup.cfg" | sha256sum | cut -d' ' -f1
}

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi

want="$(stamp_of)"
have="$(cat "$venv/.setup-stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" || -n "${FORCE:-}" ]]; then
  log "installing the pinned stack (first time: several GB for torch; later runs use pip's cache)"
  "$venv/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=70,<80" wheel
  "$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" -e "$root[local,gpu,train,dev,package]"
  echo "$want" > "$venv/.setup-stamp"
else
  log "python environment up to date ($venv)"
fi

mkdir -p "$jars"
for artifact in "delta-spark_${scala_version}" "delta-storage"; do
  jar="$jars/${artifact}-${delta_version}.jar"
  if [[ ! -s "$jar" ]]; then
    log "fetching io.delta:${artifact}:${delta_version} with Maven"
    mvn -q -B -Dstyle.color=never dependency:copy -Dartifact="io.delta:${artifact}:${delta_version}" \
      -DoutputDirectory="$jars" -Dmdep.overWriteIfNewer=false >&2
  fi
done
log "ready: $venv, jars in $jars"
