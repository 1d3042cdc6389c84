"""What the claims read from a run folder, as one typed view: a claim decides from this and nothing else, so a
report can be rebuilt from the folder, and the calibration and `hyperfit validate` can hand a claim constructed
evidence through the same door."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Evidence:
    """The results a study's claims are decided on.

    ``analyses``: per analysis, its results for each hyperfitted replicate (one dict in a single-seed study);
    ``trains``: their training summaries (or, for a planted model, its mechanism); ``controls``: the control arms'
    results (claim 5); ``frontier``: per replicate, the judged diversity-quality points of its temperature analysis;
    ``lowest_heldout``: per analysis, its results on the first run at its lowest held-out loss (the non-hyperfitting
    control shown beside a verdict)."""

    analyses: dict[str, list[dict]]
    trains: list[dict | None]
    controls: dict | None = None
    frontier: list[dict] | None = None
    lowest_heldout: dict[str, dict | None] = field(default_factory=dict)

    def results(self, analysis: str) -> list[dict]:
        return self.analyses.get(analysis) or []

    @classmethod
    def of_run(cls, run_dir: str | Path, full_finetune: bool = False) -> Evidence:
        """A finished (or partly finished) study folder's evidence: its hyperfitted replicates, or with
        ``full_finetune`` its fully fine-tuned model (no control arms: those belong to the main recipe)."""
        from hyperfitting.layout import LOWEST, RunFolder, analysis_stage_name, full_suffix, replicate_suffix
        from hyperfitting.registry import analysis_names

        run = RunFolder(run_dir)  # a folder of a stage the study does not have reads as not run
        config, study = run.config, run.metrics or {}
        studied = [name for name in dict.fromkeys(config["study"]["analyses"]) if name in analysis_names()]
        frontier = ((run.stage("quality").results or {}).get("judge") or {}).get("frontier", {})
        replicates = config["study"].get("replicates", 1)
        if full_finetune:  # its seeds, as many as the main run's (an older folder: one)
            seeds = [full_suffix(k) for k in range(replicates)]
            points = [p for suffix in seeds if (p := frontier.get(analysis_stage_name("temperature", suffix)))]
            return cls(
                {name: [r for suffix in seeds if (r := run.analysis(name, suffix=suffix).results)] for name in studied},
                study.get("full_finetune_replicates") or [study.get("full_finetune")],
                frontier=points or None,
            )
        return cls(
            {name: [r for k in range(replicates) if (r := run.analysis(name, k).results)] for name in studied},
            study.get("replicates") or [study.get("train")],
            controls=run.stage("controls").results,
            frontier=[
                p
                for k in range(replicates)
                if (p := frontier.get(analysis_stage_name("temperature", replicate_suffix(k))))
            ],
            lowest_heldout={name: run.analysis(name, suffix=LOWEST).results for name in studied},
        )
