"""Check the Python that the driver and every executor run: interpreter, prefix, where imgshards comes
from, the versions of Spark, Delta, pyarrow, numpy and pandas in the JVM and each Python, and the packages the
jobs need. Exits 1 when an executor lacks one.

    ./spark-submit.sh --profile standalone doctor [--min-executors 2]
"""
import sys

from imgshards.jobs.contract import Job
from imgshards.observe.doctor import describe_python, executor_environments, jvm_versions


def _arguments(parser):
    parser.add_argument("--min-executors", type=int, default=1, metavar="N",
                        help="wait (up to --timeout seconds) until N executors have registered (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for executors (default 120)")


def run(spark, config, args, run_id):
    executors = executor_environments(spark, args.min_executors, args.timeout)
    return {"ok": not any(e["missing"] for e in executors), "jvm": jvm_versions(spark), "driver": describe_python(),
            "executors": executors}


def format_doctor(summary):
    jvm = summary["jvm"]
    lines = [f"jvm       Spark {jvm['spark']}, Delta {jvm['delta'] or 'unknown'}"]
    for role, facts in [("driver", summary["driver"])] + [("executor", e) for e in summary["executors"]]:
        lines.append(f"{role:<9} {facts['host']} python {facts['python']} {facts['prefix']}"
                     f"{'  (packed environment)' if facts['packed_environment'] else ''}")
        imgshards = facts["modules"]["imgshards"]
        lines.append(f"          imgshards {imgshards['file'] if imgshards else 'MISSING'}")
        lines.append("          " + ", ".join(f"{name} {version or 'MISSING'}" for name, version in facts["stack"].items()))
        if facts["missing"]:
            lines.append(f"          missing: {', '.join(facts['missing'])}")
    lines.append("ok" if summary["ok"] else "NOT OK: an executor lacks packages the jobs need")
    return "\n".join(lines)


JOB = Job("doctor", __doc__, run, add_arguments=_arguments, formatter=format_doctor)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
