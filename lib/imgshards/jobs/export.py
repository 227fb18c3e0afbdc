"""Export the processed table as one Petastorm dataset per split, with classes.json and manifest.json.

    ./spark-submit.sh export --output /data/shards [--as-of-version N]
"""
import sys
from dataclasses import asdict

from imgshards.export.run import run_export
from imgshards.jobs.contract import Job, add_version_argument


def run(spark, config, args, run_id):
    return {"export": asdict(run_export(spark, config, run_id, args.as_of_version))}


JOB = Job("export", __doc__, run, locations=("warehouse", "output"), workers_at_start=True,
          add_arguments=add_version_argument)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
