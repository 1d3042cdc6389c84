"""Quality beside diversity: MAUVE against the human continuations, and the side-by-side reader's rank colouring."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from hyperfitting.analysis.common import teacher_forced_logits
from hyperfitting.analysis.static_bias import ranks_of


@torch.no_grad()
def continuation_features(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], batch_size: int = 8) -> np.ndarray:
    """One vector per continuation: the model's final post-norm state, averaged over the continuation's tokens."""
    device = next(model.parameters()).device
    features = []
    for start in range(0, len(prompts), batch_size):
        rows = [list(p) + list(c) for p, c in zip(prompts[start:start + batch_size], continuations[start:start + batch_size])]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, use_cache=False).hidden_states[-1]
        for r, prompt in enumerate(prompts[start:start + batch_size]):
            features.append(hidden[r, len(prompt):len(rows[r])].float().mean(0).cpu().numpy())
    return np.stack(features)


def mauve_score(human: np.ndarray, generated: np.ndarray, seed: int = 25) -> float:
    """MAUVE (mauve-text) of generated against human feature sets; with few samples it is coarse, so report n beside it."""
    import mauve

    result = mauve.compute_mauve(p_features=human, q_features=generated, verbose=False, seed=seed,
                                 num_buckets=max(2, min(len(human), len(generated)) // 10))
    return float(result.mauve)


def base_ranks_of_path(base, prompt: Sequence[int], continuation: Sequence[int]) -> list[int]:
    """Rank (1 = most likely) of each continuation token under the base model, given everything before it."""
    if not continuation:
        return []
    (_, logits), = teacher_forced_logits(base, [list(prompt) + list(continuation)], [len(prompt)])
    ranks = ranks_of(logits)
    return ranks.gather(1, torch.tensor(continuation)[:, None]).squeeze(1).tolist()


def judge_name(choice: str | None, studied: str) -> str | None:
    """The judge of a study: `auto` picks the other embedded model (Gemma judges SmolLM2 and the reverse)."""
    if choice in (None, "", "none"):
        return None
    if choice == "auto":
        return "smollm2-135m" if "gemma" in studied.lower() else "gemma3-270m"
    return choice


@torch.no_grad()
def judge_log_perplexities(judge, judge_tokenizer, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
    """Per continuation, the mean negative log-likelihood (nats per judge token) of its text under an independent model,
    given the prompt's text. Texts are re-tokenised by the judge, whose vocabulary differs from the studied model's."""
    device = next(judge.parameters()).device
    values = []
    for prompt, continuation in zip(prompts, continuations):
        context = judge_tokenizer(prompt)["input_ids"]  # with the judge's own leading tokens (Gemma's <bos>)
        target = judge_tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not target:
            values.append(float("nan"))
            continue
        ids = torch.tensor([context + target], device=device)
        log_probs = torch.log_softmax(judge(input_ids=ids, use_cache=False).logits[0, len(context) - 1:-1].float(), dim=-1)
        values.append(float(-log_probs.gather(1, torch.tensor(target, device=device)[:, None]).mean()))
    return values
