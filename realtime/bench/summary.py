"""One Markdown page from a folder of benchmark reports and check steps: what `.ci/gpu-check`
leaves as `summary.md`.

    python -m realtime.bench.summary WORK_DIR OUT/summary.md

WORK_DIR holds `bench/<scenario>/bench.json` (one per scenario), `steps.tsv` (one line per step:
name, exit status, seconds, note) and `environment.txt`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STEP_STATUS = {"0": "ok", "124": "timed out", "137": "killed", "skip": "skipped"}


def scenario_row(name: str, report: dict[str, Any]) -> str:
    """One table row: fps, latency, per-stage medians (ms), people, compiles, memory, syncs, and
    every YOLO-pose peer's fps (a report from before there were several peers: its one)."""
    stages = report["stages"]
    peers = report.get("references", [report["reference"]] if report.get("reference") else [])
    ms = "/".join(f"{stages[k]['median_ms']:.1f}" for k in ("detect", "crop", "pose", "refine"))
    latency = report["latency_ms"]
    memory = report["device"].get("peak_memory_mb")
    syncs = report.get("host_syncs_per_frame")
    reference = "; ".join(_peer(p) for p in peers) or "-"
    return (
        f"| {name} | {report['profile']['pose']['precision']} | {report['fps']:.1f} | "
        f"{latency['median_ms']:.1f} / {latency['p95_ms']:.1f} | {ms} | "
        f"{report['people']['per_frame']:.1f} | {report.get('graphs_compiled_after_warmup')} | "
        f"{'-' if memory is None else f'{memory:.0f}'} | "
        f"{'-' if syncs is None else f'{syncs:.2f}'} | {reference} |"
    )


def _peer(peer: dict[str, Any]) -> str:
    """The weights' stem, fps and people per frame: "yolo11m-pose 55.0 (40 people)"."""
    name = f"{Path(peer['weights']).stem} " if peer.get("weights") else ""
    return f"{name}{peer['fps']:.1f} ({peer['people_per_frame']:.0f} people)"


def summarize(work: Path) -> str:
    """The page for the check's work folder (see the module docstring)."""
    lines = ["# gpu-check", ""]
    environment = work / "environment.txt"
    if environment.is_file():
        lines += ["```", environment.read_text().strip(), "```", ""]
    lines += ["## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    steps = work / "steps.tsv"
    for line in steps.read_text().splitlines() if steps.is_file() else []:
        name, status, seconds, note = (line.split("\t") + ["", "", ""])[:4]
        lines.append(
            f"| {name} | {STEP_STATUS.get(status, f'failed ({status})')} | {seconds} | {note} |"
        )
    lines += [
        "",
        "## Scenarios",
        "",
        "fps end to end; latency p50 / p95 ms (decoded frame -> poses on the host); median ms of "
        "detect/crop/pose/refine (launch times on CUDA in throughput mode unless synced); "
        "people per frame; graphs compiled after warm-up (must be 0); peak device memory MiB; "
        "host syncs per frame; each YOLO-pose peer's fps (weights, fps, people per frame).",
        "",
        "| scenario | precision | fps | latency ms | detect/crop/pose/refine ms | people | "
        "compiled | memory MiB | syncs/frame | peers fps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(work.glob("bench/*/bench.json")):
        try:
            lines.append(scenario_row(path.parent.name, json.loads(path.read_text())))
        except (KeyError, TypeError, ValueError) as err:
            lines.append(f"| {path.parent.name} | unreadable report: {err} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the check's work folder")
    parser.add_argument("out", type=Path, help="the Markdown file to write")
    args = parser.parse_args()
    args.out.write_text(summarize(args.work))


if __name__ == "__main__":
    main()
