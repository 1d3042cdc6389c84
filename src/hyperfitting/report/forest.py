"""The claims at a glance: one row per claim, its effect and 95% interval against its margin, coloured by its verdict
after Holm. Each claim has units of its own (a TTR difference, a share of the gain, a participation ratio), so each
row has its own scale; what the eye compares is where the interval lies against the dashed margin."""

from __future__ import annotations

from pathlib import Path

from hyperfitting.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_RUN
from hyperfitting.figures import new_figure, savefig

COLOURS = {HOLDS: "#1a7f37", FAILS: "#cf222e", INCONCLUSIVE: "#6e7781", NOT_RUN: "#afb8c1"}
LABELS = {HOLDS: "holds", FAILS: "does not hold", INCONCLUSIVE: "inconclusive", NOT_RUN: "not run"}


def plot_claims(
    claims: list, path: Path, title: str = "Claims: effect and 95% interval (dashed: the margin; grey: zero)"
) -> None:
    """One row per claim (sorted as the report's table): the interval, the estimate, the margin (dashed; both signs for
    a claim of difference either way) and zero (thin), and the verdict after Holm on the right."""
    claims = sorted(claims, key=lambda c: str(c.number))
    figure, axes = new_figure(len(claims), 1, figsize=(8.5, 0.62 * len(claims) + 0.7))
    axes = list(axes) if len(claims) > 1 else [axes]
    for axis, claim in zip(axes, claims):
        verdict = claim.holm or claim.verdict
        colour = COLOURS.get(verdict, COLOURS[INCONCLUSIVE])
        margins = [claim.margin, -claim.margin] if claim.direction == "apart" else [claim.margin]
        e = claim.estimate
        points = margins + [0.0] + ([e["low"], e["high"], e["value"]] if e else [])
        points = [p for p in points if p == p and abs(p) != float("inf")]
        low, high = min(points), max(points)
        pad = (high - low) * 0.08 or abs(high) * 0.1 or 0.1
        axis.set_xlim(low - pad, high + pad)
        axis.set_ylim(-1, 1)
        axis.axvline(0.0, color="#d0d7de", linewidth=0.8)
        for margin in margins:
            axis.axvline(margin, color="#24292f", linestyle="--", linewidth=0.9)
        if e and e["low"] == e["low"] and e["high"] == e["high"]:
            axis.plot([e["low"], e["high"]], [0, 0], color=colour, linewidth=3, solid_capstyle="butt")
        if e and e["value"] == e["value"]:
            axis.plot([e["value"]], [0], "o", color=colour, markersize=6, markeredgecolor="white")
        if not e:
            axis.text(
                0.5,
                0,
                "no estimate",
                transform=axis.get_yaxis_transform(),
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
        axis.set_yticks([])
        axis.tick_params(axis="x", labelsize=7, length=2, pad=1)
        for side in ("top", "right", "left"):
            axis.spines[side].set_visible(False)
        name = claim.name if len(claim.name) <= 48 else claim.name[:47] + "..."
        axis.text(-0.01, 0.5, f"{claim.number}. {name}", transform=axis.transAxes, ha="right", va="center", fontsize=8)
        axis.text(
            1.01,
            0.5,
            LABELS.get(verdict, verdict),
            transform=axis.transAxes,
            ha="left",
            va="center",
            fontsize=8,
            color=colour,
            fontweight="bold",
        )
    figure.suptitle(title, fontsize=9, x=0.5, y=1.0)
    figure.subplots_adjust(hspace=1.1)
    savefig(figure, path)
