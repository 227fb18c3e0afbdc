"""Decode, orient, convert, resize and encode the images table into the Delta table processed.

    ./spark-submit.sh preprocess [--as-of-version N] [--set preprocess.size=128]
"""
import sys
from dataclasses import asdict

from imgshards.jobs.contract import Job, add_version_argument
from imgshards.preprocess.run import run_preprocess


def run(spark, config, args, run_id):
    return {"warehouse": config.warehouse,
            "preprocess": asdict(run_preprocess(spark, config, run_id, args.as_of_version))}


JOB = Job("preprocess", __doc__, run, locations=("warehouse",), add_arguments=add_version_argument)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
