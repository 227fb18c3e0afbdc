"""Ingest image files under an input path into the Delta tables images, quarantine and duplicates.

    ./spark-submit.sh ingest --input /data/raw-images [--set ingest.max_pixels=50000000]
    ./spark-submit.sh ingest --input /data/incoming --stream [--set ingest.stream.trigger='30 seconds']
"""
import sys
import time
from dataclasses import asdict

from imgshards.config import ConfigError
from imgshards.ingest.run import run_ingest, run_ingest_stream
from imgshards.jobs.contract import Job
from imgshards.observe import metrics


def _arguments(parser):
    parser.add_argument("--stream", action="store_true",
                        help="Structured Streaming over the input with a checkpoint (see ingest.stream.*)")


def run(spark, config, args, run_id):
    if not config.input:
        raise ConfigError("input is not set: pass --input PATH or set input in the config file")
    if not args.stream:
        counts = run_ingest(spark, config, config.input, run_id)
    else:
        started = time.monotonic()

        def push_totals(totals):  # the Pushgateway's group always holds the running totals
            metrics.push(config, "ingest", run_id, {"ingest": asdict(totals),
                                                    "seconds": {"ingest": time.monotonic() - started}})

        counts = run_ingest_stream(spark, config, config.input, run_id, on_batch=push_totals)
    return {"input": config.input, "warehouse": config.warehouse, "ingest": asdict(counts)}


JOB = Job("ingest", __doc__, run, locations=("input", "warehouse"), add_arguments=_arguments)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
