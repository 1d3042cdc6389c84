"""The report's capability-retention table, from the results the retention stage wrote."""

from __future__ import annotations


def retention_markdown(results: dict) -> list[str]:
    """The report's retention rows: accuracy [95% CI from the harness's standard error] and perplexity, base beside
    hyperfitted."""
    md = [
        "## Capability retention",
        "",
        "The LM Evaluation Harness on both models. Our last-word tasks (hyperfit_lastword_*) are built from this run's "
        "held-out "
        "passages in the harness's task format: predict a passage's last word (accuracy of the greedy word; perplexity "
        "of it).",
        "",
        "| task | items | base accuracy [95% CI] | hyperfitted accuracy [95% CI] | base perplexity | hyperfitted "
        "perplexity |",
        "|---|---|---|---|---|---|",
    ]

    def accuracy(row: dict | None) -> str:
        if not row or "acc" not in row:
            return "n/a"
        half = 1.959963984540054 * row.get("acc_stderr", 0.0)
        return f"{row['acc']:.3f} [{max(0.0, row['acc'] - half):.3f}, {min(1.0, row['acc'] + half):.3f}]"

    def perplexity(row: dict | None) -> str:
        return f"{row['perplexity']:.1f}" if row and "perplexity" in row else "n/a"

    for task, rows in results["tasks"].items():
        n = (rows.get("base") or {}).get("n")
        md.append(
            f"| {task} | {n if n is not None else '-'} | {accuracy(rows.get('base'))} | "
            f"{accuracy(rows.get('hyperfitted'))} | "
            f"{perplexity(rows.get('base'))} | {perplexity(rows.get('hyperfitted'))} |"
        )
    for task, why in results.get("skipped", {}).items():
        md.append(f"| {task} | skipped: its data is not in the local cache ({why[:90]}) | | | | |")
    return md + [""]
