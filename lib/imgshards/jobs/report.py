"""Write the dataset report: one self-contained HTML file, <output>/report.html, from the tables, the
export's manifest and the newest run summaries (the pipeline writes it as its last step).

    ./spark-submit.sh report [--output /data/shards]
"""
import sys

from imgshards import cli
from imgshards.report import write_report


def parse_args(argv=None):
    return cli.base_parser(__doc__)


def run(spark, config, args, run_id):
    return {"report": write_report(spark, config, run_id)}


def main(argv=None, stop_session=True):
    return cli.run_job("report", parse_args(argv), run, argv, stop_session=stop_session,
                       formatter=lambda summary: f"report written: {summary['report']}")


if __name__ == "__main__":
    sys.exit(main())
