"""Interleaving sources so that realized TOKEN shares converge to the configured weights.

Deterministic deficit scheduling: the next document comes from the source whose token count is
furthest behind its target, i.e. argmin_i tokens_i / weight_i (ties: the first source in config
order). After any prefix of the stream, each source's count is within one document of
weight_i * total, so shares converge as 1/total with no sampling noise, and the whole state is the
per-source token counters (trivially resumable, independent of how documents were read).
"""
from __future__ import annotations

from typing import Sequence


class TokenMixture:
    def __init__(self, names: Sequence[str], weights: Sequence[float]):
        if len(names) != len(weights) or not names:
            raise ValueError("TokenMixture needs one weight per source name")
        if any(w <= 0 for w in weights):
            raise ValueError(f"mixture weights must be > 0, got {list(weights)}")
        total = float(sum(weights))
        self.names = list(names)
        self.weights = [w / total for w in weights]
        self.tokens = [0] * len(names)

    def pick(self, exclude=()) -> int:
        """Index of the source the next document should come from (never one in `exclude`)."""
        best, best_ratio = -1, None
        for i, (t, w) in enumerate(zip(self.tokens, self.weights)):
            if i in exclude:
                continue
            ratio = t / w
            if best_ratio is None or ratio < best_ratio:
                best, best_ratio = i, ratio
        return best

    def add(self, index: int, num_tokens: int) -> None:
        self.tokens[index] += int(num_tokens)

    def shares(self) -> dict[str, float]:
        total = sum(self.tokens)
        return {n: (t / total if total else 0.0) for n, t in zip(self.names, self.tokens)}

    def state_dict(self) -> dict:
        return {"tokens": list(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        tokens = list(state["tokens"])
        if len(tokens) != len(self.tokens):
            raise ValueError(f"mixture state has {len(tokens)} sources, this mixture has {len(self.tokens)}")
        self.tokens = [int(t) for t in tokens]
