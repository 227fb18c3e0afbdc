"""The workload whose classes go into the class-data archive of local runs (see spark-submit.sh): a
session with Delta, a pandas UDF, a Delta table created, merged into, appended to and read at a version,
an aggregation and a Parquet write, in a temporary folder that is removed afterwards. Classes that later
jobs load beyond these are loaded from the jars as usual."""
import shutil
import sys
import tempfile

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from imgshards.delta import tables
from imgshards.runtime import workers
from imgshards.schemas import QUARANTINE_KEYS, QUARANTINE_SCHEMA


def main() -> int:
    spark = SparkSession.builder.appName("imgshards-class-data").getOrCreate()
    folder = tempfile.mkdtemp(prefix="imgshards-class-data-")
    try:
        workers.start(spark).wait()
        path = f"{folder}/quarantine"
        rows = spark.range(0, 100, numPartitions=2).select(
            F.format_string("file:/x/%d.jpg", "id").alias("path"), F.lit("ingest").alias("stage"),
            F.lit("truncated").alias("reason"), F.lit("").alias("detail"), F.col("id").alias("size_bytes"),
            F.sha2(F.col("id").cast("string"), 256).alias("sha256"), F.current_timestamp().alias("quarantined_at"),
            F.lit("class-data").alias("run_id"))
        tables.upsert(spark, path, QUARANTINE_SCHEMA, rows, QUARANTINE_KEYS)
        tables.append(spark, path, QUARANTINE_SCHEMA, rows.withColumn("stage", F.lit("preprocess")),
                      tables.latest_version(spark, path), QUARANTINE_KEYS, "class-data")
        table = spark.read.format("delta").option("versionAsOf", 1).load(path)
        table.groupBy("reason").agg(F.count(F.lit(1)), F.sum("size_bytes")).collect()
        table.write.mode("overwrite").parquet(f"{folder}/parquet")
    finally:
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
