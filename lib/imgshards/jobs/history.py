"""Print the Delta versions of the pipeline's tables with the run id, job, config fingerprint and counts
recorded in each commit.

    ./spark-submit.sh history [--table images] [--limit 20]
"""
import sys

from imgshards.delta import tables
from imgshards.jobs.contract import Job
from imgshards.schemas import TABLES


def _arguments(parser):
    parser.add_argument("--table", choices=TABLES, action="append", help="table(s) to show (default: all)")
    parser.add_argument("--limit", type=int, default=20, help="latest versions per table (default 20)")


def run(spark, config, args, run_id):
    return {"tables": {name: tables.history(spark, config.table(name), args.limit) for name in args.table or TABLES}}


def format_history(summary):
    lines = []
    for name, versions in summary["tables"].items():
        lines.append(f"{name}")
        if not versions:
            lines.append("  (no table yet)")
        for v in versions:
            counts = v.get("counts", {})
            shown = ", ".join(f"{k}={n}" for k, n in counts.items() if n) or ", ".join(
                f"{k}={n}" for k, n in v["metrics"].items() if k.startswith("numTarget") and n != "0")
            lines.append(f"  v{v['version']:<4} {v['timestamp'][:19]}  {v['operation']:<8} {v.get('job', '-'):<10}"
                         f" run={v.get('run_id', '-')} fingerprint={v.get('config_fingerprint', '-')}"
                         f" source_v={v.get('source_version', '-')}  {shown}")
    return "\n".join(lines)


JOB = Job("history", __doc__, run, locations=("warehouse",), add_arguments=_arguments,
          formatter=format_history)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
