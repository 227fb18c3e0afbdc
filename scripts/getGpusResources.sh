#!/usr/bin/env bash
# Spark GPU discovery script for real clusters: prints the GPUs nvidia-smi sees, as Spark expects:
#   {"name": "gpu", "addresses": ["0", "1", ...]}
# Used by conf/spark/gpu.conf (spark.executor.resource.gpu.discoveryScript) and by standalone workers
# (spark.worker.resource.gpu.discoveryScript).
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "getGpusResources.sh: nvidia-smi not found; this machine has no usable NVIDIA driver" >&2
  exit 1
fi
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/^ *//' -e 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
