"""hyperfitting: hyperfit any causal LM, measure what it does to greedy generation, and test why.

The public API, for notebooks and scripts (the `hyperfit` command is built on the same functions)::

    import hyperfitting as hf

    config = hf.load_config("configs/quick.yaml", ["data.eval_prompts=8"])
    base, tokenizer = hf.load_model(config.model)
    data = hf.prepare_data(config.data, tokenizer)
    trained = hf.hyperfit(hf.load_model(config.model, for_training=True)[0], data.train_blocks,
                          data.heldout_blocks, config)  # no folder needed; give one to checkpoint and resume
    greedy = hf.generate(trained.model, tokenizer, [p.prompt_ids for p in data.prompts["fiction"]], config.generate)
    print(hf.ttr([c.token_ids for c in greedy]))
    geometry = hf.geometry_analysis(base, trained.model, data.heldout_blocks, sample_tokens=512)

Analyses return plain results (dictionaries of numbers and per-prompt evidence) and write nothing;
`run_study` runs everything as resumable stages of a run folder. Importing the package changes no
global state and loads nothing heavy: each name is imported when first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    # configuration
    "load_config": "hyperfitting.config",
    "RunConfig": "hyperfitting.config",
    # models and data
    "load_model": "hyperfitting.models.loading",
    "load_hyperfitted": "hyperfitting.models.loading",
    "tokenizer_for": "hyperfitting.models.loading",
    "load_corpus": "hyperfitting.data.corpora",
    "prepare_data": "hyperfitting.data.splits",
    "PreparedData": "hyperfitting.data.splits",
    # training and decoding
    "hyperfit": "hyperfitting.training.hyperfit",
    "prepare_for_training": "hyperfitting.training.methods",
    "generate": "hyperfitting.generation.decoding",
    "decode_batch": "hyperfitting.generation.decoding",
    # metrics
    "ttr": "hyperfitting.metrics.diversity",
    "distinct_n": "hyperfitting.metrics.diversity",
    "seq_rep_n": "hyperfitting.metrics.diversity",
    "self_bleu": "hyperfitting.metrics.diversity",
    "METRICS": "hyperfitting.metrics.registry",
    # the analyses (claims 1-4): models and data in, results out
    "temperature_analysis": "hyperfitting.analysis.temperature",
    "static_bias_analysis": "hyperfitting.analysis.static_bias",
    "rank_analysis": "hyperfitting.analysis.ranks",
    "geometry_analysis": "hyperfitting.analysis.geometry",
    "block_swap_analysis": "hyperfitting.analysis.block_swap",
    "swapped_block": "hyperfitting.analysis.block_swap",
    # analyses of one's own (study.plugins)
    "Analysis": "hyperfitting.registry",
    "register": "hyperfitting.registry",
    # statistics and verdicts
    "Estimate": "hyperfitting.stats",
    "ClaimSpec": "hyperfitting.claims",
    "register_claim": "hyperfitting.claims",
    "claim_specs": "hyperfitting.claims",
    "decide": "hyperfitting.claims",
    # the study
    "run_study": "hyperfitting.pipeline.runner",
    "study_graph": "hyperfitting.pipeline.graph",
    "build_report": "hyperfitting.report.build",
    "RunFolder": "hyperfitting.layout",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hyperfitting' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
