#!/bin/bash
# EMR on EC2 bootstrap action for the GPU cluster (deploy/emr/ec2/run-job-flow-gpu.json): the cgroup
# folder YARN's GPU isolation mounts (yarn.nodemanager.linux-container-executor.cgroups.mount-path), as in
# the EMR release guide's "emr-spark-rapids" set-up.
set -euxo pipefail
sudo mkdir -p /spark-rapids-cgroup/devices
sudo mount -t cgroup -o devices cgroupv1-devices /spark-rapids-cgroup/devices
sudo chmod a+rwx -R /spark-rapids-cgroup
