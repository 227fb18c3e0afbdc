"""Write the dataset report: one self-contained HTML file, <output>/report.html, from the tables, the
export's manifest and the newest run summaries (the pipeline writes it as its last step).

    ./spark-submit.sh report [--output /data/shards]
"""
import sys

from imgshards.jobs.contract import Job
from imgshards.observe.report import write_report


def run(spark, config, args, run_id):
    return {"report": write_report(spark, config, run_id)}


def format_report(summary):
    return f"report written: {summary['report']}"


JOB = Job("report", __doc__, run, locations=("warehouse", "output"), workers_at_start=True,
          formatter=format_report)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
