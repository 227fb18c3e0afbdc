#!/usr/bin/env bash
# Create a project environment with its pinned stack and fetch its jars (Delta, S3A) once.
#   scripts/setup.sh                    # the default stack, spark4: Spark 4.2, Delta 4.4, pyarrow 26, numpy 2 (.venv)
#   scripts/setup.sh --stack spark35    # the Spark 3.5 line: Delta 3.3, pyarrow 14, numpy 1.26, Petastorm 0.12
#                                       #   and 0.13 readers, torch (.venv-spark35); no DALI
#   FORCE=1 scripts/setup.sh            # reinstall the Python packages even if the stamp matches
# IMGSHARDS_STACK picks the stack as --stack does; IMGSHARDS_VENV another folder for the environment.
# Each stack's pins are constraints[-<stack>].txt, its jars go to .jars/<stack>/ (S3A in .jars/<stack>/s3/),
# and the environment names its stack in <venv>/.imgshards-stack (spark-submit.sh and the tests read it).
# Idempotent: when the pins, pyproject.toml and the jars are unchanged it returns in about a second.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stack="${IMGSHARDS_STACK:-spark4}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack) stack="$2"; shift 2 ;;
    --stack=*) stack="${1#--stack=}"; shift ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"

case "$stack" in
  spark4)
    venv="${IMGSHARDS_VENV:-$root/.venv}"
    constraints="$root/constraints.txt"
    extras="local,connect,gpu,train,mds,webdataset,dev,package"
    big_wheels=(nvidia-dali-cuda120)
    # The newest Delta release's jars served by Maven Central for Spark 4.2 (Scala 2.13). Only these two:
    # their dependency tree pins older Hadoop and Parquet than Spark 4.2 ships.
    jars=(io.delta:delta-spark_4.2_2.13:4.4.0 io.delta:delta-storage:4.4.0)
    # S3A for Spark 4.2's Hadoop 3.5.0, with the AWS SDK v2 bundle and the S3 analytics accelerator (its
    # input streams' library) at the versions that Hadoop release names.
    s3_jars=(org.apache.hadoop:hadoop-aws:3.5.0 software.amazon.awssdk:bundle:2.35.4
             software.amazon.s3.analyticsaccelerator:analyticsaccelerator-s3:1.3.1)
    ;;
  spark35)
    venv="${IMGSHARDS_VENV:-$root/.venv-spark35}"
    constraints="$root/constraints-spark35.txt"
    extras="local,petastorm,train,test"
    big_wheels=()
    jars=(io.delta:delta-spark_2.12:3.3.3 io.delta:delta-storage:3.3.3)
    s3_jars=(org.apache.hadoop:hadoop-aws:3.3.4 com.amazonaws:aws-java-sdk-bundle:1.12.262)
    ;;
  *) echo "setup.sh: unknown stack '$stack' (spark4 or spark35)" >&2; exit 2 ;;
esac
jar_dir="$root/.jars/$stack"

log() { printf '[setup] %s\n' "$*" >&2; }

stamp_of() {
  cat "$constraints" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1
}

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi

want="$(stamp_of)"
have="$(cat "$venv/.setup-stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" || -n "${FORCE:-}" ]]; then
  log "installing the $stack stack into $venv (first time: several GB; later runs use pip's cache)"
  "$venv/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=77,<80" wheel
  if [[ ${#big_wheels[@]} -gt 0 ]]; then
    source "$root/scripts/big_wheels.sh"
    install_big_wheels "$venv/bin/python" "$constraints" "${big_wheels[@]}"
  fi
  "$venv/bin/python" -m pip install --quiet -c "$constraints" -e "$root[$extras]"
  if [[ "$stack" == spark35 ]]; then
    # Petastorm 0.13.1 beside the 0.12.1 the environment imports: a reader test puts it first on PYTHONPATH.
    "$venv/bin/python" -m pip install --quiet --no-deps --upgrade --target "$venv/petastorm-0.13.1" petastorm==0.13.1
  fi
  echo "$stack" > "$venv/.imgshards-stack"
  echo "$want" > "$venv/.setup-stamp"
else
  log "python environment up to date ($venv, $stack)"
fi

# Delta (shipped with every job) in .jars/<stack>/; the S3A connector and its AWS SDK in .jars/<stack>/s3/
# (on the class path of this machine's driver and executors; clusters bring their own).
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
for coordinates in "${jars[@]}"; do fetch "$coordinates" "$jar_dir"; done
for coordinates in "${s3_jars[@]}"; do fetch "$coordinates" "$jar_dir/s3"; done
log "ready: $venv ($stack), jars in $jar_dir"
