#!/usr/bin/env bash
# Create the project environment (.venv) with the pinned stack and fetch the jars (Delta, S3A) once.
# Idempotent: when constraints.txt, pyproject.toml and the jars are unchanged it returns in about a second.
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
  cat "$root/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1
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
  source "$root/scripts/big_wheels.sh"
  install_big_wheels "$venv/bin/python" nvidia-dali-cuda120
  "$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" -e "$root[local,gpu,train,dev,package]"
  echo "$want" > "$venv/.setup-stamp"
else
  log "python environment up to date ($venv)"
fi

# Delta (shipped with every job) in .jars/; the S3A connector matching Spark 3.5's Hadoop 3.3.4 and its AWS
# SDK in .jars/s3/ (on the class path of this machine's driver and executors; clusters bring their own).
fetch() {  # group:artifact:version folder
  local coordinates="$1" folder="$2" name
  name="$(cut -d: -f2 <<<"$coordinates")-$(cut -d: -f3 <<<"$coordinates").jar"
  if [[ ! -s "$folder/$name" ]]; then
    log "fetching $coordinates with Maven"
    mkdir -p "$folder"
    mvn -q -B -Dstyle.color=never dependency:copy -Dartifact="$coordinates" \
      -DoutputDirectory="$folder" -Dmdep.overWriteIfNewer=false >&2
  fi
}
fetch "io.delta:delta-spark_${scala_version}:${delta_version}" "$jars"
fetch "io.delta:delta-storage:${delta_version}" "$jars"
fetch "org.apache.hadoop:hadoop-aws:3.3.4" "$jars/s3"
fetch "com.amazonaws:aws-java-sdk-bundle:1.12.262" "$jars/s3"
log "ready: $venv, jars in $jars"
