"""The planted-truth table of `hyperfit validate` (pipeline/validate.py), for its own folder and for RESULTS.md."""

from __future__ import annotations

from hyperfitting.claims import INCONCLUSIVE


def validation_markdown(summary: dict, heading: str = "# Planted truths through the real pipeline") -> str:
    env = summary.get("environment", {})
    lines = [
        heading,
        "",
        f"`{env.get('command', 'command not recorded')}`, {env.get('date', 'date not recorded')}, hyperfitting commit "
        f"{env.get('commit') or 'not recorded'}, {env.get('device', '?')} ({env.get('threads', '?')} threads); the "
        "cases' "
        f"analyses took {sum(summary.get('seconds', {}).values()) / 60:.1f} min.",
        "",
        "Every case is the base model with one mechanism known by construction, analysed and judged by the study's "
        "own "
        f"code ({summary['prompts']} prompts). A verdict its truth forbids is a failure of the rules. "
        f"{summary['contradictions']} contradiction(s); {summary['decided']} of {len(summary['rows'])} checks decided "
        f"(holds or does not hold), the rest inconclusive; {summary.get('untested', 0)} untested: a manipulation check "
        "(most often: the plant did not raise greedy TTR on these prompts) kept the rule from deciding, so that row "
        "says nothing about the rule. Planted models have no training seed: no declared seed spread is added.",
        "",
        "| case | claim | verdict (after Holm) | effect [95% interval] | forbidden | agrees | tested | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        estimate = r["estimate"]
        effect = f"{estimate['value']:+.3f} [{estimate['low']:+.3f}, {estimate['high']:+.3f}]" if estimate else "-"
        verdict = r["verdict"] + (f" ({r['holm']})" if r["holm"] and r["holm"] != r["verdict"] else "")
        lines.append(
            f"| {r['case']} | {r['claim']} | {verdict} | {effect} | {' / '.join(r['forbidden'])} | "
            f"{'yes' if r['agrees'] else '**NO**'} | {'yes' if r.get('tested', True) else 'no'} | {r['truth']} |"
        )
    sub = "#" * (len(heading) - len(heading.lstrip("#")) + 1)  # one level below the heading, alone or inside RESULTS.md
    lines += ["", f"{sub} The planted mechanisms", ""]
    for case in summary["cases"]:
        mechanism = next(r["mechanism"] for r in summary["rows"] if r["case"] == case)
        lines.append(f"- **{case}**: {mechanism}")
    lines += ["", f"{sub} Why each inconclusive verdict is inconclusive", ""]
    lines += [
        f"- {r['case']}, claim {r['claim']}: {r['reason']}" for r in summary["rows"] if r["verdict"] == INCONCLUSIVE
    ]
    return "\n".join(lines) + "\n"
