#!/usr/bin/env bash
# The one launcher for every job:
#   ./spark-submit.sh [--profile NAME] <job> [job args]
# Runs the project environment's spark-submit with the Delta jars and SQL extensions, the project's code
# for the executors (--py-files), PYSPARK_PYTHON set to the environment's python, and the Spark settings
# of lib/imgshards/spark-defaults.conf and conf/spark/<profile>.conf (default: local). Sets the environment up on first use (scripts/setup.sh).
# Extra spark-submit options go in SPARK_SUBMIT_OPTS_EXTRA, e.g. "--conf spark.executor.memory=8g".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${IMGSHARDS_VENV:-$root/.venv}"
profile="${IMGSHARDS_PROFILE:-local}"

usage() {
  echo "usage: $0 [--profile NAME] <job> [job args]" >&2
  echo "  jobs:     $(cd "$root/jobs" && ls ./*.py | sed 's|./||; s|\.py$||' | tr '\n' ' ')" >&2
  echo "  profiles: $(cd "$root/conf/spark" && ls ./*.conf | sed 's|./||; s|\.conf$||' | tr '\n' ' ')" >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) [[ $# -ge 2 ]] || usage; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#--profile=}"; shift ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage
job="$1"; shift
job_file="$root/jobs/$job.py"
profile_file="$root/conf/spark/$profile.conf"
[[ -f "$job_file" ]] || { echo "spark-submit.sh: unknown job '$job'" >&2; usage; }
[[ -f "$profile_file" ]] || { echo "spark-submit.sh: unknown profile '$profile' (no $profile_file)" >&2; usage; }

"$root/scripts/setup.sh"

# The library, zipped for the executors (same code the driver imports from the environment).
dist="$root/.work/dist"
mkdir -p "$dist"
code_zip="$dist/imgshards.zip"
(cd "$root/lib" && find imgshards -name '*.py' -newer "$code_zip" 2>/dev/null | grep -q . || [[ ! -s "$code_zip" ]]) \
  && (cd "$root/lib" && rm -f "$code_zip" && "$venv/bin/python" -m zipfile -c "$code_zip" imgshards >/dev/null)

# The shared defaults, then the profile (later keys win); profiles may name project files as @ROOT@/...
properties="$dist/spark-$profile.conf"
cat "$root/lib/imgshards/spark-defaults.conf" "$profile_file" | sed "s|@ROOT@|$root|g" > "$properties"

jars="$(ls "$root"/.jars/*.jar | paste -sd, -)"
export PYSPARK_PYTHON="$venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$venv/bin/python"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export SPARK_HOME="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export PATH="$venv/bin:$PATH"

# shellcheck disable=SC2086
exec "$venv/bin/spark-submit" \
  --properties-file "$properties" \
  --jars "$jars" \
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
  --conf "spark.executorEnv.PYSPARK_PYTHON=$venv/bin/python" \
  --driver-java-options "-Dlog4j.configurationFile=file:$root/conf/log4j2.properties" \
  --py-files "$code_zip" \
  ${SPARK_SUBMIT_OPTS_EXTRA:-} \
  "$job_file" "$@"
