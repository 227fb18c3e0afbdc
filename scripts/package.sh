#!/usr/bin/env bash
# Build what a cluster runs: the wheel and a packed runtime environment for the executors.
#   scripts/package.sh                 # dist/imgshards-<version>-py3-none-any.whl + dist/imgshards-env.tar.gz
#   scripts/package.sh --gpu           # ... + dist/imgshards-gpu-env.tar.gz (the `gpu` extra: NVIDIA DALI)
#   scripts/package.sh --no-spark      # dist/imgshards-nospark-env.tar.gz: no pyspark, for clusters whose Spark
#                                      #   puts its own pyspark first (EMR, YARN); with --gpu as well:
#                                      #   dist/imgshards-nospark-gpu-env.tar.gz
#   scripts/package.sh --wheel-only    # just the wheel (Databricks installs it into the runtime's Python)
# Each prints the archive's (or wheel's) path. It also builds dist/imgshards-driver.jar, the application jar
# that runs a Python driver in standalone cluster deploy mode (lib/jvm/imgshards/ClusterPythonDriver.java).
# Idempotent: a stamp of the code, pyproject.toml, constraints.txt and the variant skips work already done.
#
# The runtime environment is a separate virtualenv (not the editable development .venv, which venv-pack
# refuses): the wheel installed with -c constraints.txt, no torch, no test tools, packed with venv-pack as
# .tar.gz (Spark untars .tar without keeping permissions, SPARK-38632). venv-pack keeps bin/python a
# symlink to the base interpreter, so that interpreter must exist at the same path on every node; build
# the archive on the cluster's OS (deploy/emr/Dockerfile.env for EMR). Executors unpack it as
# ./environment (spark-submit.sh passes --archives ...#environment).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMGSHARDS_VENV:-$root/.venv}"
dist="${IMGSHARDS_DIST:-$root/dist}"
gpu=""
no_spark=""
wheel_only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpu) gpu=1; shift ;;
    --no-spark) no_spark=1; shift ;;
    --wheel-only) wheel_only=1; shift ;;
    --dist) dist="$2"; shift 2 ;;
    *) echo "package.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# The variant: imgshards[-nospark][-gpu]-env.tar.gz, built from .work/package/env-<variant>.
suffix="${no_spark:+-nospark}${gpu:+-gpu}"
variant="${suffix#-}"
variant="${variant:-cpu}"
archive_name="imgshards$suffix-env.tar.gz"
extras="local"
[[ -z "$no_spark" ]] || extras=""
[[ -z "$gpu" ]] || extras="${extras:+$extras,}gpu"
extras="${extras:+[$extras]}"
archive="$dist/$archive_name"

log() { printf '[package] %s\n' "$*" >&2; }

[[ -x "$venv/bin/python" ]] || "$root/scripts/setup.sh"
version="$("$venv/bin/python" -c 'import imgshards; print(imgshards.__version__)')"
wheel="$dist/imgshards-$version-py3-none-any.whl"
mkdir -p "$dist" "$root/.work/package"

code_stamp() {
  (cd "$root" && find lib/imgshards -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.conf' -o -name 'py.typed' \) \
      -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum; cat pyproject.toml constraints.txt) \
    | sha256sum | cut -d' ' -f1
}
stamp="$(code_stamp)"

if [[ ! -s "$wheel" || "$(cat "$wheel.stamp" 2>/dev/null)" != "$stamp" ]]; then
  log "building $wheel"
  build_dir="$root/.work/package/build"
  rm -rf "$build_dir" "$root/build"
  # --no-isolation: build with the project environment's setuptools instead of fetching a fresh one.
  "$venv/bin/python" -m build --wheel --no-isolation --outdir "$build_dir" "$root" >"$root/.work/package/build.log" 2>&1 \
    || { cat "$root/.work/package/build.log" >&2; exit 1; }
  rm -rf "$root/build"
  mv -f "$build_dir/imgshards-$version-py3-none-any.whl" "$wheel"
  echo "$stamp" > "$wheel.stamp"
fi
[[ -n "$wheel_only" ]] && { echo "$wheel"; exit 0; }

# The application jar of standalone cluster deploy mode (lib/jvm/imgshards/ClusterPythonDriver.java).
driver_jar="$dist/imgshards-driver.jar"
driver_src="$root/lib/jvm/imgshards/ClusterPythonDriver.java"
if [[ ! -s "$driver_jar" || "$driver_src" -nt "$driver_jar" ]]; then
  log "building $driver_jar"
  spark_jars="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
  classes="$root/.work/package/classes"
  rm -rf "$classes" && mkdir -p "$classes"
  javac -nowarn --release 8 -d "$classes" -cp "$spark_jars/*" "$driver_src" 2>&1 | grep -v "^warning: \[options\]" >&2 || true
  [[ -s "$classes/imgshards/ClusterPythonDriver.class" ]] || { log "javac failed"; exit 1; }
  jar cf "$driver_jar" -C "$classes" imgshards
fi

env_stamp="$stamp-$variant"
if [[ -s "$archive" && "$(cat "$archive.stamp" 2>/dev/null)" == "$env_stamp" ]]; then
  log "up to date: $archive"
  echo "$archive"
  exit 0
fi

# The runtime environment is built with the interpreter behind .venv, so the driver (which runs .venv in
# client mode) and the executors run the same Python version, as PySpark requires.
base_python="$("$venv/bin/python" -c 'import sys; print(sys._base_executable)')"
env_dir="$root/.work/package/env-$variant"
if [[ ! -x "$env_dir/bin/python" ]]; then
  log "creating the runtime environment $env_dir with $base_python"
  "$base_python" -m venv "$env_dir"
fi
log "installing the wheel$extras into $env_dir (pinned by constraints.txt)"
"$env_dir/bin/python" -m pip install --quiet --upgrade "pip>=24"
"$env_dir/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
if [[ "$extras" == *gpu* ]]; then
  source "$root/scripts/big_wheels.sh"
  install_big_wheels "$env_dir/bin/python" "$root/constraints.txt" nvidia-dali-cuda120
fi
"$env_dir/bin/python" -m pip install --quiet -c "$root/constraints.txt" "$wheel$extras"
if [[ -n "$no_spark" ]]; then
  # The `delta` Python module only: Spark and the Delta jars come from the cluster.
  "$env_dir/bin/python" -m pip install --quiet --no-deps -c "$root/constraints.txt" delta-spark
fi
# Executors and drivers use the cluster's own Spark JVM; pyspark's 300 MB of jars would only be unpacked
# on every executor for nothing.
rm -rf "$env_dir"/lib/python3*/site-packages/pyspark/jars
"$env_dir/bin/python" - <<'EOF'
import importlib.util, sys
for name in ("torch", "pytest"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"package.sh: {name} ended up in the runtime environment; it must not")
import imgshards.jobs, imgshards.preprocess.transform  # the job code and its native dependencies import
EOF

log "packing $archive"
partial="$dist/.partial-$archive_name"   # venv-pack names the format by the extension
rm -f "$partial"
"$venv/bin/venv-pack" --quiet -p "$env_dir" -o "$partial" --compress-level 1
mv -f "$partial" "$archive"
echo "$env_stamp" > "$archive.stamp"
log "ready: $archive ($(du -h "$archive" | cut -f1))"
echo "$archive"
