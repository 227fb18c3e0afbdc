"""Forget images for good (a takedown, a privacy request): remove their rows from every table, vacuum the
table files of older versions that hold them (forget.retention_hours), and refuse their content in later
ingests. Name them by path (as the images table holds it, or a local path) or by sha256; each path's
content is forgotten under every path that holds it. The summary says what was removed, and which export
versions under --output still hold one (the next export holds none).

    ./spark-submit.sh forget --path /data/raw/cats/cat_17.jpg --reason "takedown #123"
    ./spark-submit.sh forget --from-file takedowns.txt --reason "privacy request" --set forget.retention_hours=0
"""
import logging
import re
import sys

from imgshards.config import ConfigError
from imgshards.export.publish import versions_holding
from imgshards.ingest.forget import forget
from imgshards.io import storage
from imgshards.jobs.contract import Job

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")


def _arguments(parser):
    parser.add_argument("--path", action="append", default=[], help="an image's path (repeatable)")
    parser.add_argument("--sha256", action="append", default=[], help="an image's content hash, hex (repeatable)")
    parser.add_argument("--from-file", metavar="FILE",
                        help="a local text file with one path or sha256 per line (blank lines and # comments skipped)")
    parser.add_argument("--reason", required=True, help="why (kept in the forgotten table and quarantine rows)")


def _targets(args) -> tuple:
    """(paths, sha256s) from the arguments; a ConfigError for a malformed hash or an empty request."""
    entries = [("path", p) for p in args.path] + [("sha256", s) for s in args.sha256]
    if args.from_file:
        with open(args.from_file, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    entries.append(("sha256" if SHA256.fullmatch(line.lower()) else "path", line))
    sha256s = [value.lower() for kind, value in entries if kind == "sha256"]
    for value in sha256s:
        if not SHA256.fullmatch(value):
            raise ConfigError(f"--sha256 must be 64 hex digits, got {value!r}")
    paths = [value for kind, value in entries if kind == "path"]
    if not paths and not sha256s:
        raise ConfigError("forget needs at least one --path, --sha256 or --from-file entry")
    return paths, sha256s


def run(spark, config, args, run_id):
    paths, sha256s = _targets(args)
    summary = forget(spark, config, [storage.qualify(spark, p) for p in paths], sha256s, args.reason, run_id)
    contents = summary.pop("content_frame")
    summary["exports_holding"] = versions_holding(spark, config.output, contents) if summary["contents"] else []
    if summary["exports_holding"]:
        log.warning("export versions %s under %s still hold a forgotten image: run export to publish one without "
                    "them (older versions beyond export.keep_versions are pruned), or delete them",
                    summary["exports_holding"], config.output)
    return summary


def format_forget(summary):
    lines = [f"forgot {summary['contents']} image content(s) ({summary['newly_forgotten']} new in the forgotten table)",
             "rows removed:   " + (", ".join(f"{t}={n}" for t, n in summary["removed_rows"].items()) or "none"),
             "files vacuumed: " + (", ".join(f"{t}={n}" for t, n in summary["vacuumed_files"].items()) or "none")]
    if summary["exports_holding"]:
        lines.append("export versions still holding one: " + ", ".join(summary["exports_holding"])
                     + " (run export to publish one without them)")
    return "\n".join(lines)


JOB = Job("forget", __doc__, run, locations=("warehouse", "output"), add_arguments=_arguments,
          formatter=format_forget)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
