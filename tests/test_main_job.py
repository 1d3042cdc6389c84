"""benchmarks/main_job.py: a study's stage table, with where each stage's time went read from its captured output when
the run folder does not record it."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("main_job", ROOT / "benchmarks" / "main_job.py")
main_job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(main_job)


def _bar(description: str, done: int, total: int, elapsed: str) -> str:
    return f"\r{description}:  {100 * done // total}%|###   | {done}/{total} [{elapsed}<00:10,  6.50step/s]"


def test_each_stage_counts_its_bars_from_its_last_sitting(tmp_path):
    first = tmp_path / "sitting-1.log"
    first.write_text(
        "Precision: fp32 (set explicitly).\n"
        "\n== [2/5] train: training (0.1 min so far, about 9 min left on a 2-core CPU)\n"
        + _bar("epoch 1/20", 8, 16, "00:07")
        + _bar("epoch 1/20", 16, 16, "00:14")
        + "\n"
        + _bar("epoch 2/20", 16, 16, "00:15")
        + "\n== [3/5] analysis-ranks: the rank analysis  (1.0 min so far, about 8 min left)\n"
        + _bar("rank transplant, T=1", 384, 384, "03:50")
        + "\n"
        + _bar("rank transplant, T=1", 100, 384, "01:00")  # interrupted: redone in the next sitting
    )
    second = tmp_path / "sitting-2.log"
    second.write_text(
        "\n== [3/5] analysis-ranks: the rank analysis  (0.1 min so far, about 8 min left)\n"
        + _bar("rank transplant, T=1", 384, 384, "03:40")
        + _bar("rank transplant, T=1", 10, 384, "00:06")  # a second bar under the same description
        + _bar("rank transplant, T=1", 383, 384, "03:35")  # a bar that clears itself stops one step short
        + "\n"
        + _bar("hyperfitted, unexplained overrides reverted", 384, 384, "1:02:03")
        + "\n== [5/5] report: the report\n"
    )
    steps = main_job.steps_from_logs([first, second])
    assert steps["train"] == {"epoch": 29}
    assert steps["analysis-ranks"] == {
        "rank transplant, T=1": 220 + 215,
        "hyperfitted, unexplained overrides reverted": 3723,
    }
    assert steps["report"] == {}

    # The table fills a stage's steps from the log only where its own record has none, and names the rest of its time.
    run = tmp_path / "run"
    for stage, seconds in (("train", 40.0), ("analysis-ranks", 4200.0)):
        (run / stage).mkdir(parents=True)
        (run / stage / "stage-done.json").write_text(json.dumps({"wall_seconds": seconds}))
    rows, _ = main_job.stage_rows(run, [first, second])
    assert {row[0]: row[4] for row in rows} == {
        "train": "epoch 29 s, the rest 11 s",
        "analysis-ranks": (
            "rank transplant, T=1 435 s, hyperfitted, unexplained overrides reverted 3723 s, the rest 42 s"
        ),
    }
