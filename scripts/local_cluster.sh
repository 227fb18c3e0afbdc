#!/usr/bin/env bash
# A Spark standalone cluster on this machine, bound to 127.0.0.1: one master and N workers (default 2),
# each with its own work directory (<CLUSTER_DIR>/worker-<i>), where executors unpack the environment.
#   scripts/local_cluster.sh start [--workers N]     # N workers (default 2)
#   scripts/local_cluster.sh start [--gpus N]        # each worker offers this machine's N GPUs (nvidia-smi)
#   scripts/local_cluster.sh start [--fake-gpus N]   # N > 0: each worker advertises N fake GPUs (tests only)
#   scripts/local_cluster.sh stop                    # also removes the executors' copies of the environment
#   scripts/local_cluster.sh run [--deploy-mode cluster] <job> [job args]
#                                                    # start, run the job through ./spark-submit.sh --profile
#                                                    # standalone on this cluster, stop (one command)
# Env: SPARK_MASTER_PORT (7077), SPARK_WORKER_CORES (2 per worker), SPARK_WORKER_MEMORY (4g per worker),
# CLUSTER_DIR (.work/cluster). The workers get no project Python: jobs ship theirs (spark-submit.sh).
# The pip pyspark has no sbin/start-*.sh, so the daemons are started with spark-class.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMGSHARDS_VENV:-$root/.venv}"
dir="${CLUSTER_DIR:-$root/.work/cluster}"
port="${SPARK_MASTER_PORT:-7077}"
command="${1:-}"; shift || true
if [[ "$command" == run ]]; then
  # The cluster lives as long as the job: started here, stopped on the way out whatever the job did.
  trap '"$0" stop' EXIT
  "$0" start
  "$root/spark-submit.sh" --profile standalone --master "spark://127.0.0.1:$port" "$@"
  exit
fi
fake_gpus=0
gpus=0
workers=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --fake-gpus) fake_gpus="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

stop() {
  local pid_file pid pids=() copy
  for pid_file in "$dir"/worker-*.pid "$dir/master.pid"; do
    if [[ -f "$pid_file" ]]; then
      pids+=("$(cat "$pid_file")")
      kill "${pids[-1]}" 2>/dev/null || true
      rm -f "$pid_file"
    fi
  done
  for pid in "${pids[@]}"; do  # the workers stop their executors on the way out
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  done
  # Each executor (and a cluster-mode driver) fetched the packed environment and unpacked it in its own
  # directory: hundreds of MB per executor and run. Their logs (stdout, stderr) stay; the copies go.
  shopt -s nullglob
  for copy in "$dir"/worker-*/app-*/*/* "$dir"/worker-*/driver-*/*; do
    case "${copy##*/}" in stdout|stderr) ;; *) rm -rf "$copy" ;; esac
  done
  shopt -u nullglob
}

case "$command" in
  start)
    "$root/scripts/setup.sh"
    mkdir -p "$dir"
    stop
    export SPARK_HOME="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
    export SPARK_LOCAL_IP=127.0.0.1
    unset PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON
    nohup "$venv/bin/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$port" \
      --webui-port 0 > "$dir/master.log" 2>&1 &
    echo $! > "$dir/master.pid"
    worker_opts=""
    if [[ "$fake_gpus" -gt 0 ]]; then
      worker_opts="-Dspark.worker.resource.gpu.amount=$fake_gpus -Dspark.worker.resource.gpu.discoveryScript=$root/scripts/fakeGpusResources.sh"
      export FAKE_GPU_COUNT="$fake_gpus"
    elif [[ "$gpus" -gt 0 ]]; then
      worker_opts="-Dspark.worker.resource.gpu.amount=$gpus -Dspark.worker.resource.gpu.discoveryScript=$root/scripts/getGpusResources.sh"
    fi
    for i in $(seq 1 "$workers"); do
      SPARK_WORKER_OPTS="$worker_opts" nohup "$venv/bin/spark-class" org.apache.spark.deploy.worker.Worker \
        --host 127.0.0.1 --cores "${SPARK_WORKER_CORES:-2}" --memory "${SPARK_WORKER_MEMORY:-4g}" \
        --webui-port 0 --work-dir "$dir/worker-$i" "spark://127.0.0.1:$port" > "$dir/worker-$i.log" 2>&1 &
      echo $! > "$dir/worker-$i.pid"
    done
    for _ in $(seq 1 90); do
      registered="$(cat "$dir"/worker-*.log 2>/dev/null | grep -c "Successfully registered with master" || true)"
      if [[ "$registered" -ge "$workers" ]]; then
        echo "standalone cluster up: spark://127.0.0.1:$port, $workers workers (GPUs: $gpus, fake GPUs: $fake_gpus each)"
        exit 0
      fi
      sleep 1
    done
    echo "$workers workers did not all register within 90 s; see $dir/worker-*.log" >&2
    stop
    exit 1 ;;
  stop) stop ;;
  *) echo "usage: $0 start [--workers N] [--gpus N | --fake-gpus N] | stop | run [--deploy-mode cluster] <job> [args]" >&2
     exit 2 ;;
esac
