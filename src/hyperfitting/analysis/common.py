"""What the mechanism analyses share beside teacher forcing: the pair of models, and their decoded paths, each decoded
once."""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np

from hyperfitting.config import RunConfig, replace
from hyperfitting.errors import ConfigError
from hyperfitting.generation.decoding import Continuation, LogitsProcessor
from hyperfitting.hashing import weights_version
from hyperfitting.metrics.diversity import seq_rep_n, ttr


def load_pair(config: RunConfig):
    """(base model, hyperfitted model, tokenizer); the hyperfitted one from an adapter, model or run folder."""
    from hyperfitting.models.loading import load_hyperfitted, load_model

    target = config.analysis.hyperfitted
    if not target:
        raise ConfigError(
            "Name the hyperfitted model: analysis.hyperfitted=PATH (an adapter folder, a model folder or a hyperfit "
            "run folder)."
        )
    base, tokenizer = load_model(replace(config.model, adapter=None))
    tuned, _ = load_hyperfitted(config.model, target)
    return base, tuned, tokenizer


def per_prompt_ttr(continuations: Sequence[Continuation]) -> list[float]:
    """TTR of each continuation: the unit the verdicts' intervals resample."""
    return [ttr([c.token_ids]) for c in continuations]


def path_summary(continuations: Sequence[Continuation]) -> dict[str, float]:
    ids = [c.token_ids for c in continuations]
    decoded = [v for c in continuations for v in c.decoded_entropy]
    return {
        "ttr": ttr(ids),
        "bigram_rep": seq_rep_n(ids, 2),
        "trigram_rep": seq_rep_n(ids, 3),
        "entropy": sum(decoded) / len(decoded) if decoded else float("nan"),
    }


_DECODED: dict[tuple, tuple[weakref.ref, list[Continuation]]] = {}


def _decode_args(config: RunConfig, temperature: float | None, seed: int, top_k: int, top_p: float):
    return replace(
        config.generate,
        max_new_tokens=analysis_tokens(config),
        do_sample=temperature is not None,
        temperature=temperature or 1.0,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        citation_blocker=False,
        # A sampled row is plain sampling: contrastive search (generate.contrastive_top_k) is a deterministic search.
        contrastive_top_k=config.generate.contrastive_top_k if temperature is None else 0,
    )


def _decode_key(model, prompts, args) -> tuple:
    return (
        id(model),
        weights_version(model),
        hash(tuple(map(tuple, prompts))),
        args.max_new_tokens,
        args.do_sample,
        round(args.temperature, 6) if args.do_sample else None,
        args.seed if args.do_sample else None,
        args.batch_size,
        (args.top_k, args.top_p) if args.do_sample else None,
    )


def decode(
    model,
    tokenizer,
    prompts,
    config: RunConfig,
    *,
    temperature: float | None = None,
    seed: int = 0,
    top_k: int = 0,
    top_p: float = 1.0,
    processors: Sequence[LogitsProcessor] = (),
    desc: str = "",
    shard: bool = True,
) -> list[Continuation]:
    """Greedy when ``temperature`` is None, else sampling at that temperature (pure unless ``top_k``/``top_p``
    truncate).

    Plain decodes (no processors) are remembered for the life of the model and of its weights, so
    analyses that need the same setting (greedy paths, base sampling at T=1 for several seeds)
    share one run, and a model changed in place (an optimizer step) decodes afresh.
    """
    request = {"temperature": temperature, "seed": seed, "top_k": top_k, "top_p": top_p, "processors": processors}
    return decode_many(model, tokenizer, prompts, config, [request], desc=desc, shard=shard)[0]


def decode_many(
    model, tokenizer, prompts, config: RunConfig, requests: Sequence[dict], desc: str = "", shard: bool = True
) -> list[list[Continuation]]:
    """Several decodes of the same prompts, each a dict of :func:`decode`'s keywords (temperature, seed, top_k,
    top_p, processors), run together in batches of prompts x requests (``generate_variants``): a step of the
    analyses' 16 prompts under 5 settings is one 80-row forward pass.

    Only a single request is remembered (and answered from memory). A row's floats depend, in their last
    bits, on how wide the matrix products were, so a stacked decode is always run with the same company:
    whether a study ran straight or was resumed in a fresh process, every number comes out the same.
    """
    from hyperfitting.generation.decoding import generate_variants

    settings = [
        (
            _decode_args(config, r.get("temperature"), r.get("seed", 0), r.get("top_k", 0), r.get("top_p", 1.0)),
            list(r.get("processors", ())),
        )
        for r in requests
    ]
    key = _decode_key(model, prompts, settings[0][0]) if len(settings) == 1 and not settings[0][1] else None
    if key is not None and key in _DECODED and _DECODED[key][0]() is model:
        return [_DECODED[key][1]]
    decoded = generate_variants(model, tokenizer, prompts, settings, desc=desc, shard=shard)
    if key is not None:
        _DECODED[key] = (weakref.ref(model), decoded[0])
    return decoded


def analysis_tokens(config: RunConfig) -> int:
    """New tokens per analysis continuation: the generation table's length unless analysis.max_new_tokens says
    otherwise."""
    return config.analysis.max_new_tokens or config.generate.max_new_tokens


def mean_and_spread(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))} for k in keys}
