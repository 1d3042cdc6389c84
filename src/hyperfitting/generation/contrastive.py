"""Contrastive search (Su et al., 2022; Su and Collier, 2023), implemented here.

transformers moved contrastive search out of its core into downloadable community code, which
needs the network and remote code; this is the scoring rule as the papers define it. At each step
the top-k tokens of the model's distribution are candidates, and the chosen one maximises

    (1 - alpha) * p(v | x_<t)  -  alpha * max_j cos(h_v, h_j)

where h_v is the model's last hidden state (after the final norm, as ``hidden_states[-1]``) at
the candidate's position and h_j those of every earlier token, prompt included: model confidence
minus a degeneration penalty. alpha = 0 is greedy decoding. The k candidates of every row run as
one batch on a copy of the row's KV cache, and the winner's cache is kept.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from hyperfitting.generation.batches import SYNC_EVERY, Continuation, left_padded


def contrastive_scores(
    probabilities: torch.Tensor,
    candidates: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Scores (B, k) of k candidates per row: probabilities (B, k), candidate states (B, k, d), context states (B, T, d)
    with ``context_mask`` (B, T) true where a state is a real token (left padding is not)."""
    candidates = torch.nn.functional.normalize(candidates.float(), dim=-1)
    context = torch.nn.functional.normalize(context.float(), dim=-1)
    similarity = torch.einsum("bkd,btd->bkt", candidates, context).masked_fill(~context_mask[:, None, :], -1.0)
    return (1 - alpha) * probabilities - alpha * similarity.max(dim=-1).values


@torch.no_grad()
def contrastive_batch(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_token_id: int,
    top_k: int = 4,
    alpha: float = 0.6,
    eos_token_id: int | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[Continuation]:
    """Contrastive search over one batch of prompts (lists of token ids), left-padded, with a KV cache."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    batch = len(prompts)
    input_ids, attention_mask = left_padded(prompts, pad_token_id, device)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        output_hidden_states=True,
    )
    logits, context = out.logits[:, -1, :].float(), out.hidden_states[-1]
    context_mask = attention_mask.bool()
    rows = torch.arange(batch, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # per step (5, B) on the device: token, entropy, top-1 prob, chosen prob, finished before; read once at the end
    steps = []
    for step_index in range(max_new_tokens):
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum(-1)
        top_probs, top_ids = probs.topk(top_k, dim=-1)  # (B, k)
        # Every candidate one step further, on its own copy of its row's cache.
        cache.batch_repeat_interleave(top_k)
        step_mask = torch.cat(
            [attention_mask, torch.ones((batch, 1), dtype=attention_mask.dtype, device=device)], dim=1
        )
        step = model(
            input_ids=top_ids.reshape(-1, 1),
            attention_mask=step_mask.repeat_interleave(top_k, dim=0),
            position_ids=(positions[:, -1:] + 1).repeat_interleave(top_k, dim=0),
            cache=cache,
            use_cache=True,
            output_hidden_states=True,
        )
        candidate_states = step.hidden_states[-1][:, -1, :].reshape(batch, top_k, -1)
        best = contrastive_scores(top_probs, candidate_states, context, context_mask, alpha).argmax(dim=-1)  # (B,)
        chosen = rows * top_k + best
        cache.batch_select_indices(chosen)
        tokens = top_ids[rows, best]
        steps.append(
            torch.stack(
                [
                    tokens.double(),
                    entropy.double(),
                    top_probs[:, 0].double(),
                    top_probs[rows, best].double(),
                    finished.double(),
                ]
            )
        )
        if eos_token_id is not None:
            finished |= tokens == eos_token_id
            if (step_index + 1) % SYNC_EVERY == 0 and bool(finished.all()):  # later steps are dropped below
                break
        logits = step.logits[chosen, -1, :].float()
        context = torch.cat([context, candidate_states[rows, best][:, None, :]], dim=1)
        context_mask = torch.cat([context_mask, torch.ones((batch, 1), dtype=torch.bool, device=device)], dim=1)
        attention_mask, positions = step_mask, torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if on_step is not None:
            on_step()
    outputs = [Continuation(list(p), []) for p in prompts]
    for row, (tokens, entropy, top1, chosen, was_finished) in enumerate(
        torch.stack(steps).permute(2, 1, 0).tolist() if steps else []
    ):
        live = [i for i, done in enumerate(was_finished) if not done]  # steps after this row's EOS are dropped
        out = outputs[row]
        out.token_ids = [int(tokens[i]) for i in live]
        out.entropy = [entropy[i] for i in live]
        out.top1_prob = [top1[i] for i in live]
        out.chosen_prob = [chosen[i] for i in live]
        out.decoded_entropy = [0.0] * len(live)  # deterministic: the choice has no distribution
    return outputs
