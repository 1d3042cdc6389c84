"""The main job: wall time and peak memory of each stage of a finished study, from its run folder.

    .venv/bin/hyperfit study configs/quick.yaml                          # or make run
    .venv/bin/python benchmarks/main_job.py runs/quick [--name main-job-quick]

It reads what the study recorded (metrics.json: the stages, their seconds and peak memory; the command, date and
commit it ran with) and, with --name, records the table in benchmarks/results/NAME.json for BENCHMARKS.md. Of a study
not finished yet (one resumed across sittings) it reads each finished stage's stage-done.json. Run the study alone:
two heavy jobs on this machine's two cores slow each other several-fold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import record  # noqa: E402


def finished_stages(run_dir: Path) -> dict:
    """A study not finished yet (one resumed across sittings): each stage that finished, in the order it finished, from
    its stage-done.json. A stage resumed after an interruption counts only its last sitting's seconds."""
    done = sorted(run_dir.glob("*/stage-done.json"), key=lambda path: path.stat().st_mtime)
    profile = {}
    for path in done:
        record = json.loads(path.read_text())
        profile[path.parent.name] = {
            "seconds": record["wall_seconds"],
            "process_peak_memory_mib": record.get("process_peak_memory_mib"),
        }
    return {"stage_profile": profile}  # how the study ran is recorded by its report, which it has not written yet


def stage_rows(run_dir: Path) -> tuple[list[list], dict]:
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        metrics = finished_stages(run_dir)
    profile = metrics.get("stage_profile") or {}
    rows = []
    for stage in metrics.get("stages") or list(profile):
        if stage not in profile:
            continue
        seconds, peak = profile[stage]["seconds"], profile[stage].get("process_peak_memory_mib")
        steps = profile[stage].get("step_seconds") or {}
        detail = ", ".join(f"{name} {value:.0f} s" for name, value in steps.items() if value >= 0.5)
        rows.append([stage, round(seconds), None, peak, detail or None])
    total = sum(row[1] for row in rows)
    for row in rows:
        row[2] = f"{row[1] / total:.0%}" if total else "-"
    return rows, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default="runs/quick", type=Path)
    parser.add_argument("--name", default=None, help="record the table as benchmarks/results/NAME.json")
    parser.add_argument(
        "--note", action="append", default=[], help="a measured fact the run folder does not hold (e.g. the wall time)"
    )
    parser.add_argument(
        "--command",
        default=None,
        help="the study's command, for a study not finished yet (a finished one recorded its own in metrics.json)",
    )
    args = parser.parse_args(argv)
    if not any(args.run_dir.glob("*/stage-done.json")):
        sys.exit(f"No finished stage in {args.run_dir}: run the study first.")
    rows, metrics = stage_rows(args.run_dir)
    total = sum(row[1] for row in rows)
    finished = (args.run_dir / "metrics.json").exists()
    environment = metrics.get("environment", {})
    command = environment.get("command") or args.command or f"hyperfit study (run folder {args.run_dir})"
    wall = metrics.get("wall_seconds")
    print("| stage | seconds | share | process peak memory (MiB) | steps |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join("-" if value is None else str(value) for value in row) + " |")
    slowest = max(rows, key=lambda row: row[1])
    findings = args.note + [
        f"Stages {total} s ({total / 60:.1f} min); the last invocation's wall time {wall:.0f} s ({wall / 60:.1f} min)."
        if wall
        else f"Stages {total} s ({total / 60:.1f} min).",
        f"Slowest stage: {slowest[0]} ({slowest[1]} s, {slowest[2]}).",
        f"The study ran as `{command}` at commit {environment.get('commit')}, "
        f"{environment.get('date')}, {environment.get('threads')} threads."
        if finished
        else f"The study has not finished: {len(rows)} stages have (each stage's seconds in its last sitting).",
    ]
    print("\n".join(findings))
    if args.name:
        record(
            args.name,
            f"The main job: `{' '.join(command.split()[:3])}`, stage by stage"
            + ("" if finished else " (not finished)"),
            ["stage", "seconds", "share", "process peak memory (MiB)", "steps"],
            rows,
            findings,
            # an unfinished study has no report yet to say how it ran: this checkout's commit and today's date
            provenance={
                "command": f"{command}, then .venv/bin/python benchmarks/main_job.py {args.run_dir}",
                **(
                    {
                        "commit": environment.get("commit") or "unknown",
                        "date": (environment.get("date") or "unknown")[:10],
                    }
                    if finished
                    else {}
                ),
            },
            wall_seconds=wall,
            environment=environment,
        )


if __name__ == "__main__":
    main()
