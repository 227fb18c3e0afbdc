#!/usr/bin/env bash
# The one launcher for every job:
#   ./spark-submit.sh [--profile NAME] [--master URL] [--deploy-mode client|cluster] <job> [job args]
# Runs the project environment's spark-submit with the Delta jars and SQL extensions and the Spark settings
# of lib/imgshards/spark-defaults.conf and conf/spark/<profile>.conf (default: local). Sets the environment
# up on first use (scripts/setup.sh).
#
# On a cluster (profiles standalone and gpu, or any --master that is not local) executors get nothing from
# this machine's Python: scripts/package.sh builds the packed runtime environment (the gpu profile's has
# DALI), it goes out with --archives ...#environment, and the executors run ./environment/bin/python.
# IMGSHARDS_ENV_ARCHIVE names another archive (e.g. an s3a:// or hdfs:// URL the nodes can reach).
# In cluster deploy mode on a standalone master the driver runs on a worker from that environment too
# (through dist/imgshards-driver.jar, since Spark's standalone master takes no Python driver itself).
# Extra spark-submit options go in SPARK_SUBMIT_OPTS_EXTRA, e.g. "--conf spark.executor.memory=8g".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The stack (scripts/setup.sh): spark4 by default in .venv, IMGSHARDS_STACK=spark35 for the Spark 3.5 line.
case "${IMGSHARDS_STACK:-spark4}" in
  spark4) venv="${IMGSHARDS_VENV:-$root/.venv}" ;;
  *) venv="${IMGSHARDS_VENV:-$root/.venv-$IMGSHARDS_STACK}" ;;
esac
profile="${IMGSHARDS_PROFILE:-local}"
master=""
deploy_mode="client"

java_module_options() {
  printf '%s ' -XX:+IgnoreUnrecognizedVMOptions -Djdk.reflect.useDirectMethodHandle=false
  local package
  for package in java.lang java.lang.invoke java.lang.reflect java.io java.net java.nio java.util \
      java.util.concurrent java.util.concurrent.atomic jdk.internal.ref sun.nio.ch sun.nio.cs \
      sun.security.action sun.util.calendar; do
    printf -- '--add-opens=java.base/%s=ALL-UNNAMED ' "$package"
  done
  printf -- '--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED'
}

usage() {
  echo "usage: $0 [--profile NAME] [--master URL] [--deploy-mode client|cluster] <job> [job args]" >&2
  echo "  jobs:     $(cd "$root/jobs" && ls ./*.py | sed 's|./||; s|\.py$||' | tr '\n' ' ')" >&2
  echo "  profiles: $(cd "$root/conf/spark" && ls ./*.conf | sed 's|./||; s|\.conf$||' | tr '\n' ' ')" >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) [[ $# -ge 2 ]] || usage; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#--profile=}"; shift ;;
    --master) [[ $# -ge 2 ]] || usage; master="$2"; shift 2 ;;
    --master=*) master="${1#--master=}"; shift ;;
    --deploy-mode) [[ $# -ge 2 ]] || usage; deploy_mode="$2"; shift 2 ;;
    --deploy-mode=*) deploy_mode="${1#--deploy-mode=}"; shift ;;
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
[[ "$deploy_mode" == client || "$deploy_mode" == cluster ]] \
  || { echo "spark-submit.sh: --deploy-mode must be client or cluster, got '$deploy_mode'" >&2; exit 2; }

"$root/scripts/setup.sh" --stack "${IMGSHARDS_STACK:-spark4}"

# The shared defaults, then the profile (later keys win); profiles may name project files as @ROOT@/...
dist="$root/.work/dist"
mkdir -p "$dist"
properties="$dist/spark-$profile.conf"
# Written under a name of its own, then renamed over: launches at the same time never read a half-written file.
staged="$(mktemp "$dist/.spark-$profile.XXXXXX")"
cat "$root/lib/imgshards/spark-defaults.conf" "$profile_file" | sed "s|@ROOT@|$root|g" > "$staged"
mv -f "$staged" "$properties"
[[ -n "$master" ]] || master="$(awk '$1 == "spark.master" {print $2}' "$properties")"
[[ -n "$master" ]] || { echo "spark-submit.sh: profile '$profile' sets no spark.master; pass --master URL" >&2; exit 2; }

# --driver-java-options (below) replaces the properties' spark.driver.extraJavaOptions: the profile's go with it.
driver_java="$(awk '$1 == "spark.driver.extraJavaOptions" {$1 = ""; print substr($0, 2)}' "$properties")"
log4j="-Dlog4j.configurationFile=file:$root/conf/log4j2.properties"
jar_dir="$root/.jars/$(cat "$venv/.imgshards-stack")"
jars="$(ls "$jar_dir"/*.jar | paste -sd, -)"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export SPARK_HOME="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export PATH="$venv/bin:$PATH"
# The S3A connector (.jars/<stack>/s3/, with its AWS SDK) goes on the class path where this machine's files
# are (local runs, the local standalone cluster) instead of being copied to every executor; a real cluster's
# Spark brings its own.
s3_jars="$jar_dir/s3/*"
submit=(
  "$venv/bin/spark-submit" --master "$master" --properties-file "$properties" --jars "$jars"
  --conf "spark.driver.extraClassPath=$s3_jars" --conf "spark.executor.extraClassPath=$s3_jars"
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog
)

# Class data sharing for local runs (IMGSHARDS_CDS=0: off). Loading and verifying Spark's, Delta's and
# Hadoop's classes is much of a small run's time: once per Java and set of jars, a short job
# (scripts/class_data_job.py) dumps the classes it loaded into an archive as it exits (JDK dynamic CDS),
# and every local run maps that archive instead (benchmarks/README.md). A stale or damaged archive is
# ignored by the JVM, which then loads the classes from the jars as usual.
class_data_options() {
  local java key dir archive dump
  java="$(readlink -f "${JAVA_HOME:+$JAVA_HOME/bin/java}" 2>/dev/null || readlink -f "$(command -v java)")"
  key="$(ls -l --time-style=+%s "$java" "$SPARK_HOME"/jars/*.jar "$jar_dir"/*.jar "$jar_dir"/s3/*.jar 2>/dev/null \
    | awk '{print $5, $6, $7}' | sha256sum | cut -c1-16)"
  dir="$jar_dir/cds"; archive="$dir/classes-$key.jsa"
  local quiet=(-Xlog:cds=off -Xlog:cds+dynamic=off)  # its notes would go to the job's stdout
  # A failed dump is not tried again for these jars and this Java (delete the .failed file to retry).
  if [[ ! -s "$archive" && ! -e "$archive.failed" ]] && mkdir -p "$dir" 2>/dev/null; then
    rm -f "$dir"/classes-*.jsa "$dir"/classes-*.failed  # made for other jars or another Java
    dump="$archive.$$"
    echo "[setup] class-data archive for faster JVM starts (once for these jars and this Java)" >&2
    if "${submit[@]}" --driver-java-options "$log4j -XX:ArchiveClassesAtExit=$dump ${quiet[*]} $driver_java" \
        "$root/scripts/class_data_job.py" >"$dir/last-dump.log" 2>&1 && [[ -s "$dump" ]]; then
      mv -f "$dump" "$archive"
    else
      echo "[setup] no class-data archive (see $dir/last-dump.log); runs load the classes as usual" >&2
      touch "$archive.failed"
    fi
    rm -f "$dump"
  fi
  [[ -s "$archive" ]] && printf '%s ' "-XX:SharedArchiveFile=$archive" "${quiet[@]}"
  return 0
}

if [[ "$master" == local* ]]; then
  [[ "$deploy_mode" == client ]] || { echo "spark-submit.sh: a local master has no cluster deploy mode" >&2; exit 2; }
  # One machine: driver and executors run the project environment, which has the package installed.
  export PYSPARK_PYTHON="$venv/bin/python" PYSPARK_DRIVER_PYTHON="$venv/bin/python"
  class_data=""
  [[ "${IMGSHARDS_CDS:-1}" == 0 ]] || class_data="$(class_data_options)"
  submit+=(--driver-java-options "$log4j $class_data $driver_java")
  target=("$job_file")
else
  variant=()
  [[ "$profile" == gpu ]] && variant=(--gpu)
  archive="${IMGSHARDS_ENV_ARCHIVE:-}"
  if [[ -z "$archive" ]]; then
    archive="$("$root/scripts/package.sh" "${variant[@]}")" \
      || { echo "spark-submit.sh: could not build the packed environment (scripts/package.sh ${variant[*]})" >&2; exit 2; }
  elif [[ "$archive" != *://* && ! -s "$archive" ]]; then
    echo "spark-submit.sh: IMGSHARDS_ENV_ARCHIVE names $archive, which does not exist (build it with scripts/package.sh ${variant[*]})" >&2
    exit 2
  fi
  unset PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON
  submit+=(--archives "$archive#environment" --conf spark.pyspark.python=./environment/bin/python)
  if [[ "$deploy_mode" == client ]]; then
    submit+=(--conf "spark.pyspark.driver.python=$venv/bin/python"
             --driver-java-options "$log4j $driver_java")
    target=("$job_file")
  elif [[ "$master" == spark://* ]]; then
    # The driver jar must be where the worker that runs the driver can read it (here: this machine).
    # A worker starts a driver's JVM without the module options Spark's launcher gives JVMs on Java 17
    # (org.apache.spark.launcher.JavaModuleOptions), so they are passed here.
    submit+=(--deploy-mode cluster --conf spark.standalone.submit.waitAppCompletion=true
             --class imgshards.ClusterPythonDriver
             --conf "spark.driver.extraJavaOptions=$(java_module_options) $driver_java")
    driver_jar="${IMGSHARDS_DIST:-$root/dist}/imgshards-driver.jar"
    [[ -s "$driver_jar" ]] || "$root/scripts/package.sh" "${variant[@]}" >/dev/null
    # spark-submit exits 0 whatever became of a standalone cluster-mode driver: its last state says.
    # shellcheck disable=SC2086
    "${submit[@]}" ${SPARK_SUBMIT_OPTS_EXTRA:-} "$driver_jar" "imgshards-$job" "$@" 2>&1 | tee "$dist/cluster-submit.log"
    state="$(grep -o 'State of driver [^ ]* is [A-Z]*' "$dist/cluster-submit.log" | tail -1 | awk '{print $NF}')"
    [[ "$state" == FINISHED ]] && exit 0
    echo "spark-submit.sh: the driver ended ${state:-in an unknown state}; its stdout and stderr are in the" \
      "work directory of the worker that ran it (driver-*/)" >&2
    exit 1
  else
    # YARN and Kubernetes start a Python driver in cluster mode themselves, inside the unpacked archive.
    submit+=(--deploy-mode cluster --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python)
    target=("$job_file")
  fi
fi

# shellcheck disable=SC2086
exec "${submit[@]}" ${SPARK_SUBMIT_OPTS_EXTRA:-} "${target[@]}" "$@"
