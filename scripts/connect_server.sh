#!/usr/bin/env bash
# A Spark Connect server on this machine, on the default stack (Spark 4): Delta, the S3A connector and the
# project's Spark settings (lib/imgshards/spark-defaults.conf), pandas UDFs in the project environment's
# Python. Runs in the foreground until stopped (Ctrl-C, or SIGTERM).
#   scripts/connect_server.sh [--port 15002] [--master 'local[2]'] [--metastore DIR]
# --metastore DIR: a Hive metastore on an embedded Derby database in DIR (created on first use), managed
# tables under DIR/warehouse, so that jobs can keep their tables by name (tables.schema; docs/clusters.md).
# Jobs then run on it through a Spark Connect session, as on Databricks serverless or standard access mode:
#   SPARK_REMOTE=sc://127.0.0.1:15002 .venv/bin/imgshards-pipeline --input /data/raw --output /data/shards
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
port=15002
master='local[2]'
catalog=()
java_opts="-Dlog4j.configurationFile=file:$root/conf/log4j2.properties"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --master) master="$2"; shift 2 ;;
    --metastore)
      mkdir -p "$2"; metastore="$(cd "$2" && pwd)"; shift 2
      catalog=(--conf spark.sql.catalogImplementation=hive
               --conf "spark.hadoop.javax.jdo.option.ConnectionURL=jdbc:derby:;databaseName=$metastore/metastore_db;create=true"
               --conf "spark.sql.warehouse.dir=$metastore/warehouse")
      java_opts+=" -Dderby.system.home=$metastore" ;;
    *) echo "connect_server.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
"$root/scripts/setup.sh" --stack spark4 >&2
venv="$root/.venv"
jar_dir="$root/.jars/spark4"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export SPARK_HOME="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export PYSPARK_PYTHON="$venv/bin/python"
exec "$venv/bin/spark-submit" --master "$master" \
  --class org.apache.spark.sql.connect.service.SparkConnectServer \
  --properties-file "$root/lib/imgshards/spark-defaults.conf" \
  --jars "$(ls "$jar_dir"/*.jar | paste -sd, -)" \
  --conf "spark.driver.extraClassPath=$jar_dir/s3/*" \
  --conf spark.hadoop.fs.s3.impl=org.apache.hadoop.fs.s3a.S3AFileSystem \
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
  --conf spark.connect.grpc.binding.address=127.0.0.1 --conf "spark.connect.grpc.binding.port=$port" \
  "${catalog[@]}" \
  --driver-java-options "$java_opts" \
  spark-internal
