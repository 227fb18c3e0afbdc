"""Decode, orient, convert, resize and encode the images table into the Delta table processed.

    ./spark-submit.sh preprocess [--as-of-version N] [--set preprocess.size=128]
"""
import sys
from dataclasses import asdict

from imgshards import cli
from imgshards.preprocess import run_preprocess


def parse_args(argv=None):
    parser = cli.base_parser(__doc__)
    cli.add_version_argument(parser)
    return parser


def run(spark, config, args, run_id):
    return {"warehouse": config.warehouse, "preprocess": asdict(run_preprocess(spark, config, run_id, args.as_of_version))}


def main(argv=None, stop_session=True):
    return cli.run_job("preprocess", parse_args(argv), run, argv, stop_session=stop_session)


if __name__ == "__main__":
    sys.exit(main())
