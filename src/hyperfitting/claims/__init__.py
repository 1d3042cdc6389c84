"""The claims a study decides, one file each, registered like the analyses (registry.py).

``core`` holds what they share (the rule, the decision, Holm's correction, the registry); ``evidence`` the
typed view of a run folder they read; ``worlds`` the pieces of the simulated studies the calibration runs them
on. Importing this package registers the built-in claims, in the papers' order.
"""

from hyperfitting.claims.core import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_RUN,
    Check,
    Claim,
    ClaimSpec,
    Rule,
    claim_specs,
    decide,
    get_claim,
    make_claim,
    not_run,
    register_claim,
    unregister_claim,
    with_holm,
)
from hyperfitting.claims.evidence import Evidence
from hyperfitting.claims.worlds import Design, Spreads, Truths

# registers them, in this order
from hyperfitting.claims import (
    temperature,
    static_bias,
    ranks,
    geometry,
    late_stage,
    frontier,
)

__all__ = [
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "NOT_RUN",
    "Check",
    "Claim",
    "ClaimSpec",
    "Design",
    "Evidence",
    "Rule",
    "Spreads",
    "Truths",
    "claim_specs",
    "decide",
    "decide_claims",
    "get_claim",
    "make_claim",
    "not_run",
    "register_claim",
    "unregister_claim",
    "with_holm",
    "temperature",
    "static_bias",
    "ranks",
    "geometry",
    "late_stage",
    "frontier",
]


def decide_claims(evidence: Evidence, full_finetune: bool = False) -> list[Claim]:
    """Every registered claim decided on ``evidence``, each with its verdict after Holm's correction over the study's
    rules beside it. ``full_finetune``: only the claims decided again on a fully fine-tuned model."""
    return with_holm([spec.decide(evidence) for spec in claim_specs() if spec.on_full_finetune or not full_finetune])
