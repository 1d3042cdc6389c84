"""Overlap of generated text with the training data: is the hyperfitted model reciting?

A suffix automaton over the training blocks answers "longest span of this continuation that
appears verbatim in training" in time linear in the continuation's length.
"""

from __future__ import annotations

from typing import Sequence


class SuffixAutomaton:
    """Suffix automaton of a set of token sequences (a match never spans two sequences)."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        separator = -1
        for sequence in sequences:
            last = 0
            for token in list(sequence) + [separator]:
                last = self._extend(last, token)
            separator -= 1  # a fresh separator per sequence keeps spans inside one sequence

    def _extend(self, last: int, token: int) -> int:
        nxt, link, length = self.next, self.link, self.length
        current = len(length)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        state = last
        while state != -1 and token not in nxt[state]:
            nxt[state][token] = current
            state = link[state]
        if state != -1:
            target = nxt[state][token]
            if length[state] + 1 == length[target]:
                link[current] = target
            else:
                clone = len(length)
                nxt.append(dict(nxt[target]))
                length.append(length[state] + 1)
                link.append(link[target])
                while state != -1 and nxt[state].get(token) == target:
                    nxt[state][token] = clone
                    state = link[state]
                link[target] = clone
                link[current] = clone
        return current

    def longest_match(self, tokens: Sequence[int]) -> int:
        """Length of the longest contiguous span of ``tokens`` that occurs in the indexed sequences."""
        state, current, best = 0, 0, 0
        for token in tokens:
            while state != 0 and token not in self.next[state]:
                state = self.link[state]
                current = self.length[state]
            if token in self.next[state]:
                state = self.next[state][token]
                current += 1
            best = max(best, current)
        return best


def training_overlap(
    continuations: Sequence[Sequence[int]], index: SuffixAutomaton, threshold: int = 10
) -> dict[str, float]:
    spans = [index.longest_match(c) for c in continuations]
    return {
        "train_overlap_mean_span": sum(spans) / len(spans) if spans else float("nan"),
        "train_overlap_max_span": float(max(spans, default=0)),
        f"train_overlap_share_over_{threshold}": sum(s > threshold for s in spans) / len(spans)
        if spans
        else float("nan"),
    }
