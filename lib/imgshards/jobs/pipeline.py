"""Run ingest -> preprocess -> export, then print a summary.

With no input configured, it generates a small labeled sample dataset under <workdir>/sample first:

    ./spark-submit.sh pipeline                          # embedded default
    ./spark-submit.sh pipeline --input /data/raw --output /data/shards
"""
import sys

from imgshards import cli
from imgshards.pipeline import format_summary, run_pipeline


def parse_args(argv=None):
    return cli.base_parser(__doc__)


def run(spark, config, args, run_id):
    return run_pipeline(spark, config, run_id)


def main(argv=None, stop_session=True):
    return cli.run_job("pipeline", parse_args(argv), run, argv, stop_session=stop_session, formatter=format_summary)


if __name__ == "__main__":
    sys.exit(main())
