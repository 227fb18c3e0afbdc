"""Export the processed table as one Petastorm dataset per split, with classes.json and manifest.json.

    ./spark-submit.sh export --output /data/shards [--as-of-version N]
"""
import sys
from dataclasses import asdict

from imgshards import cli
from imgshards.export import run_export


def parse_args(argv=None):
    parser = cli.base_parser(__doc__)
    cli.add_version_argument(parser)
    return parser


def run(spark, config, args, run_id):
    return {"export": asdict(run_export(spark, config, run_id, args.as_of_version))}


def main(argv=None, stop_session=True):
    return cli.run_job("export", parse_args(argv), run, argv, stop_session=stop_session)


if __name__ == "__main__":
    sys.exit(main())
