"""The main job: wall time and peak memory of each stage of a finished study, from its run folder.

    .venv/bin/hyperfit study configs/quick.yaml                          # or make run
    .venv/bin/python benchmarks/main_job.py runs/quick [--name main-job-quick] [--log study.log ...]

It reads what the study recorded (metrics.json: the stages, their seconds and peak memory; the command, date and
commit it ran with) and, with --name, records the table in benchmarks/results/NAME.json for BENCHMARKS.md. Of a study
not finished yet (one resumed across sittings) it reads each finished stage's stage-done.json. Run the study alone:
two heavy jobs on this machine's two cores slow each other several-fold.

Each stage's record says where its time went (step_seconds: the seconds of its progress bars). For a study run by a
version that did not record them, --log reads the bars from the study's captured output (each stage's under its
"== [k/N] stage" line): one log per sitting, in the order they ran.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common import record  # noqa: E402

from hyperfitting.progress import step_name  # noqa: E402 (common puts src on the path)


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
            "step_seconds": record.get("step_seconds"),
        }
    return {"stage_profile": profile}  # how the study ran is recorded by its report, which it has not written yet


STAGE_LINE = re.compile(r"^== \[\d+/\d+\] (?P<stage>[^:\s]+):")
# A tqdm bar's state: "desc:  53%|#####     | 204/384 [00:43<00:26, 6.67step/s]" (elapsed H:MM:SS past an hour).
BAR = re.compile(r"^(?P<desc>.+?): +\d+%\|.*\| *(?P<done>\d+)/\d+ \[(?P<elapsed>[\d:]+)<")


def _seconds(clock: str) -> int:
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def steps_from_logs(logs: list[Path]) -> dict[str, dict[str, float]]:
    """Seconds of each progress bar, summed by description, per stage, from the study's captured output.

    A bar's last printed state gives its elapsed time (a bar that clears itself may stop one step short); a stage that
    ran in several sittings (interrupted, then redone) counts its last run only, as its stage-done.json does.
    """
    stages: dict[str, dict[str, float]] = {}
    for log in logs:
        stage, bars = None, []  # bars: [description, seconds, steps done] in the order they started

        def close():
            if stage is not None:
                steps: dict[str, float] = {}
                for description, seconds, _ in bars:
                    step = step_name(description)  # the rule the stages' own records use
                    steps[step] = steps.get(step, 0) + seconds
                stages[stage] = steps

        for line in log.read_text(errors="replace").replace("\r", "\n").split("\n"):
            line = line.strip()
            if started := STAGE_LINE.match(line):
                close()
                stage, bars = started.group("stage"), []
                continue
            bar = BAR.match(line)
            if bar is None or stage is None:
                continue
            description = bar.group("desc").strip()
            done, seconds = int(bar.group("done")), _seconds(bar.group("elapsed"))
            last = next((b for b in reversed(bars) if b[0] == description), None)
            if last is None or done < last[2] or (done == last[2] and seconds < last[1]):
                bars.append([description, seconds, done])  # a bar starts (perhaps again under its description)
            else:
                last[1:] = [seconds, done]
        close()
    return stages


def stage_rows(run_dir: Path, logs: list[Path] = ()) -> tuple[list[list], dict]:
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        metrics = finished_stages(run_dir)
    profile = metrics.get("stage_profile") or {}
    for stage, steps in steps_from_logs(list(logs)).items():
        if stage in profile and not profile[stage].get("step_seconds"):
            profile[stage]["step_seconds"] = steps
    rows = []
    for stage in metrics.get("stages") or list(profile):
        if stage not in profile:
            continue
        seconds, peak = profile[stage]["seconds"], profile[stage].get("process_peak_memory_mib")
        steps = profile[stage].get("step_seconds") or {}
        parts = [f"{name} {value:.0f} s" for name, value in steps.items() if value >= 0.5]
        if parts and seconds - sum(steps.values()) >= 0.5:  # loading, teacher forcing: what no step timed
            parts.append(f"the rest {seconds - sum(steps.values()):.0f} s")
        detail = ", ".join(parts)
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
        "--log",
        action="append",
        default=[],
        type=Path,
        help="the study's captured output, for stages whose records lack their steps (one per sitting, in order)",
    )
    parser.add_argument(
        "--command",
        default=None,
        help="the study's command, for a study not finished yet (a finished one recorded its own in metrics.json)",
    )
    args = parser.parse_args(argv)
    if not any(args.run_dir.glob("*/stage-done.json")):
        sys.exit(f"No finished stage in {args.run_dir}: run the study first.")
    rows, metrics = stage_rows(args.run_dir, args.log)
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
