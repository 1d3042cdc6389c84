"""From documents to token tensors: the document split, training blocks and evaluation prompts.

The split is by group (a work or an article), drawn from a seed, so no evaluation prompt and
no held-out block comes from a document that training saw.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace

import torch

from hyperfitting.config import DataArgs
from hyperfitting.data.corpora import Document, load_corpus
from hyperfitting.errors import DataError


@dataclass
class DocumentSplit:
    train: list[Document]
    heldout: list[Document]


@dataclass
class Prompt:
    corpus: str
    source: str
    prompt_ids: list[int]
    reference_ids: list[int]
    """The human continuation that followed the prompt."""


@dataclass
class PreparedData:
    """Everything a run draws from its corpora; the fingerprint names it in metrics."""

    train_blocks: torch.Tensor  # (N, T) token ids
    heldout_blocks: torch.Tensor  # (M, T)
    prompts: dict[str, list[Prompt]]  # corpus name -> prompts
    manifest: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.train_blocks.numpy().tobytes())
        digest.update(self.heldout_blocks.numpy().tobytes())
        for name in sorted(self.prompts):
            for prompt in self.prompts[name]:
                digest.update(str(prompt.prompt_ids).encode())
        return digest.hexdigest()[:16]


def split_documents(documents: list[Document], heldout_fraction: float, seed: int) -> DocumentSplit:
    groups = sorted({doc.group for doc in documents})
    if len(groups) < 2:
        raise DataError(
            f"The corpus has a single document group ({groups[0] if groups else 'none'}), so nothing can be held out "
            "for evaluation. Give at least two documents (files, rows or articles)."
        )
    rng = random.Random(seed)
    rng.shuffle(groups)
    n_heldout = min(len(groups) - 1, max(1, round(heldout_fraction * len(groups))))
    heldout_groups = set(groups[:n_heldout])
    return DocumentSplit(
        train=[d for d in documents if d.group not in heldout_groups],
        heldout=[d for d in documents if d.group in heldout_groups],
    )


def tokenize_documents(tokenizer, documents: list[Document]) -> list[list[int]]:
    """Token ids of each document, no special tokens (blocks are slices of running text)."""
    if not documents:
        return []
    encoded = tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


def chunk_windows(token_lists: list[list[int]], length: int) -> list[tuple[int, int]]:
    """(document index, start) of every non-overlapping window of `length` tokens."""
    return [(doc, start) for doc, ids in enumerate(token_lists) for start in range(0, len(ids) - length + 1, length)]


def draw_blocks(token_lists: list[list[int]], count: int, length: int, seed: int, what: str) -> torch.Tensor:
    windows = chunk_windows(token_lists, length)
    if len(windows) < count:
        total = sum(len(ids) for ids in token_lists)
        raise DataError(
            f"The {what} text has {total} tokens, enough for {len(windows)} blocks of {length} tokens, but {count} "
            f"were asked. Give more text, or lower data.block_tokens / data.train_blocks / data.heldout_blocks."
        )
    chosen = random.Random(seed).sample(windows, count)
    return torch.tensor([token_lists[doc][start : start + length] for doc, start in chosen], dtype=torch.long)


def draw_prompts(
    corpus: str, documents: list[Document], token_lists: list[list[int]], args: DataArgs, seed: int
) -> list[Prompt]:
    """P prompts with their reference continuations, spread round-robin over documents."""
    length = args.prompt_tokens + args.reference_tokens
    per_document = [[(d, s) for s in range(0, len(ids) - length + 1, length)] for d, ids in enumerate(token_lists)]
    rng = random.Random(seed)
    order = list(range(len(per_document)))
    rng.shuffle(order)
    for windows in per_document:
        rng.shuffle(windows)
    chosen: list[tuple[int, int]] = []
    depth = 0
    # Take one window from each document before a second from any, so prompts are as varied as possible.
    while len(chosen) < args.eval_prompts and any(depth < len(w) for w in per_document):
        for d in order:
            if depth < len(per_document[d]) and len(chosen) < args.eval_prompts:
                chosen.append(per_document[d][depth])
        depth += 1
    if len(chosen) < args.eval_prompts:
        raise DataError(
            f"Corpus '{corpus}' has held-out text for only {len(chosen)} prompts of {args.prompt_tokens}+"
            f"{args.reference_tokens} tokens, but data.eval_prompts={args.eval_prompts}. Lower data.eval_prompts, "
            f"raise data.heldout_fraction, or give more documents."
        )
    prompts = []
    for d, start in chosen:
        ids = token_lists[d][start : start + length]
        prompts.append(Prompt(corpus, documents[d].source, ids[: args.prompt_tokens], ids[args.prompt_tokens :]))
    return prompts


def leading_special_tokens(tokenizer) -> list[int]:
    """The tokens a tokenizer puts before any text by default (Gemma's <bos>; none for SmolLM2).

    A model pretrained with them in front of every sequence degenerates without them (Gemma-3
    ends its continuation at once), so every block and prompt starts with them.
    """
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) - len(plain)
    return list(with_special[:extra]) if extra > 0 and list(with_special[extra:]) == list(plain) else []


def _with_prefix(blocks: torch.Tensor, prefix: list[int]) -> torch.Tensor:
    if not prefix:
        return blocks
    return torch.cat([torch.tensor(prefix, dtype=torch.long).expand(len(blocks), -1), blocks], dim=1)


def prepare_data(args: DataArgs, tokenizer) -> PreparedData:
    """Load, split and tokenise the training corpus and every evaluation corpus."""
    train_documents = load_corpus(args.corpus, args.text_column, args.streaming, args.max_documents)
    split = split_documents(train_documents, args.heldout_fraction, args.seed)
    train_tokens = tokenize_documents(tokenizer, split.train)
    heldout_tokens = tokenize_documents(tokenizer, split.heldout)
    prefix = leading_special_tokens(tokenizer)
    text_tokens = args.block_tokens - len(prefix)  # blocks keep data.block_tokens tokens in all
    train_blocks = _with_prefix(
        draw_blocks(train_tokens, args.train_blocks, text_tokens, args.seed, "training"), prefix
    )
    heldout_blocks = (
        _with_prefix(draw_blocks(heldout_tokens, args.heldout_blocks, text_tokens, args.seed + 1, "held-out"), prefix)
        if args.heldout_blocks
        else torch.empty(0, args.block_tokens, dtype=torch.long)
    )
    prompts: dict[str, list[Prompt]] = {}
    manifest = {
        "train_corpus": args.corpus,
        "train_documents": len(split.train),
        "heldout_documents": len(split.heldout),
        "heldout_groups": sorted({d.group for d in split.heldout}),
        "train_tokens_available": sum(map(len, train_tokens)),
        "prefix_tokens": prefix,
    }
    for corpus in args.eval_corpora:
        if corpus == args.corpus:
            documents, tokens = split.heldout, heldout_tokens
        else:
            # Another corpus was never trained on: all of it is held out.
            documents = load_corpus(corpus, args.text_column, args.streaming, args.max_documents)
            tokens = tokenize_documents(tokenizer, documents)
        prompts[corpus] = [
            replace(p, prompt_ids=prefix + p.prompt_ids)
            for p in draw_prompts(corpus, documents, tokens, args, args.seed + 2)
        ]
    return PreparedData(train_blocks, heldout_blocks, prompts, manifest)
