"""The report's HTML: plots drawn with matplotlib (Agg, SVG) and the page with a Jinja2 template, every plot
and thumbnail inlined as a data URI, so the one file opens anywhere without a network."""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from imgshards import __version__
from imgshards.observe.metrics import stage_images
from imgshards.schemas import SPLITS

TEMPLATE = "report.html.j2"
SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "imgshards", "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False})


def _svg(fig) -> str:
    out = io.BytesIO()
    fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _jpeg(data) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii") if data else ""


def bars(labels: list, values: list, title: str, xlabel: str = "files", color: str = "#4C72B0") -> str:
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(labels) + 1.0))
    ax.barh(range(len(labels)), values, color=color)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,}", va="center")
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left")
    return _svg(fig)


def balance_plot(balance: dict, title: str) -> str:
    """Grouped bars: one group per class, one bar per split."""
    classes = sorted(balance)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(classes) + 2), 3.2))
    width = 0.8 / len(SPLITS)
    for i, split in enumerate(SPLITS):
        ax.bar([c + i * width for c in range(len(classes))], [balance[c].get(split, 0) for c in classes], width,
               label=split, color=SPLIT_COLORS[split])
    ax.set_xticks([c + width for c in range(len(classes))], classes, rotation=30 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set_ylabel("samples")
    ax.set_title(title, loc="left")
    ax.legend(frameon=False)
    return _svg(fig)


def histogram(bins: list, label_of, title: str, xlabel: str) -> str:
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.bar(range(len(bins)), [n for _, n in bins], color="#8172B3")
    ax.set_xticks(range(len(bins)), [label_of(b) for b, _ in bins], rotation=45, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title, loc="left")
    return _svg(fig)


def stage_plot(seconds: dict) -> str:
    stages = [s for s in ("ingest", "preprocess", "export", "report") if s in seconds]
    return bars(stages, [round(seconds[s], 1) for s in stages], "Stage wall time", "seconds", "#937860")


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}"
        n /= 1024
    return ""


def plots(data: dict) -> dict:
    out = {}
    fates = data["fates"]
    labels, values = ["images (live)", "duplicates"], [fates["images"], fates["duplicates"]]
    for q in fates["quarantine"]:
        labels.append(f"quarantined at {q['stage']}: {q['reason']}")
        values.append(q["count"])
    if fates["skipped"]:
        labels += ["skipped: hidden", "skipped: not an image"]
        values += [fates["skipped"]["hidden"], fates["skipped"]["non_image"]]
    out["fates"] = bars(labels, values, "What became of every file")
    profile = data.get("profile")
    if profile and profile["balance"]:
        out["balance"] = balance_plot(profile["balance"], "Images per class and split (before augmentation)")
        out["formats"] = bars(list(profile["formats"]), list(profile["formats"].values()), "Formats", "images", "#64B5CD")
        side = lambda b: f"≥{2 ** (b / 2):,.0f}"  # noqa: E731
        out["width"] = histogram(profile["width"], side, "Width", "pixels")
        out["height"] = histogram(profile["height"], side, "Height", "pixels")
        out["aspect"] = histogram(profile["aspect"], lambda b: f"{b / 4:.2f}", "Aspect ratio (width / height)", "ratio")
        out["size_bytes"] = histogram(profile["size_bytes"], lambda b: "≥" + _bytes(2 ** b), "File size", "bytes")
    manifest = data["lineage"]["manifest"]
    if manifest:
        exported = {}
        for split, info in manifest["splits"].items():
            for label, n in info["per_class"].items():
                exported.setdefault(label or "(unlabeled)", {})[split] = n
        if exported:
            out["exported"] = balance_plot(exported, "Exported samples per class and split (with augmented copies)")
    run = data["runs"].get("pipeline")
    if run and run.get("seconds"):
        out["stages"] = stage_plot(run["seconds"])
    return out


def stage_rows(runs: dict) -> list:
    """Time and throughput per stage, from the newest summaries."""
    rows = []
    for job in ("pipeline", "ingest", "preprocess", "export"):
        summary = runs.get(job)
        if not summary:
            continue
        for stage, seconds in (summary.get("seconds") or {}).items():
            images = stage_images(stage, summary.get(stage))
            rows.append({"job": job, "run_id": summary["run_id"], "stage": stage, "seconds": seconds, "images": images,
                         "rate": images / seconds if images is not None and seconds else None})
    return rows


def render(data: dict, run_id: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(__file__)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["jpeg"] = _jpeg
    env.filters["bytes"] = _bytes
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    return env.get_template(TEMPLATE).render(
        data=data, plots=plots(data), stages=stage_rows(data["runs"]), run_id=run_id, version=__version__,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), splits=SPLITS,
    )
