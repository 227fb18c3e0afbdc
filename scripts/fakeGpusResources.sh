#!/usr/bin/env bash
# A discovery script that advertises FAKE_GPU_COUNT (default 2) GPUs that do not exist, so tests can
# check Spark's GPU scheduling on a machine without one. Never use it on a real cluster.
count="${FAKE_GPU_COUNT:-2}"
echo "{\"name\": \"gpu\", \"addresses\": [$(seq -s, -f '"%g"' 0 $((count - 1)))]}"
