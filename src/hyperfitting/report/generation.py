"""The generation table: every metric of the base and hyperfitted continuations beside the human text, per corpus."""

from __future__ import annotations

from hyperfitting.metrics.registry import METRICS

# metrics.json's rows (study["metrics"]) and their columns' names in the table.
BLOCKED = "hyperfitted, citation blocker"


def comparison_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per metric (with its direction), one column per model/corpus."""
    names = [n for n in METRICS if any(n in col for col in columns.values())]
    header = "| metric | better | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name in names:
        direction = {True: "higher", False: "lower", None: "-"}[METRICS[name].higher_is_better]
        cells = [f"{col[name]:.3f}" if name in col and col[name] == col[name] else "n/a" for col in columns.values()]
        lines.append(f"| {name} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generation_columns(metrics: dict[str, dict]) -> dict[str, dict[str, float]]:
    """A study's rows as the table's columns: per corpus base, hyperfitted, blocked (where decoded) and human."""
    base = metrics["base"]
    columns: dict[str, dict[str, float]] = {}
    for corpus in [c for c in base if not c.endswith(":human")]:
        columns[f"{corpus}: base"] = base[corpus]
        columns[f"{corpus}: hyperfitted"] = metrics["hyperfitted"][corpus]
        if BLOCKED in metrics:
            columns[f"{corpus}: hyperfitted, citation blocker"] = metrics[BLOCKED][corpus]
        columns[f"{corpus}: human"] = base[f"{corpus}:human"]
    return columns


def generation_table(metrics: dict[str, dict]) -> str:
    return comparison_table(generation_columns(metrics))
