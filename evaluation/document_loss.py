"""Left-to-right loss of held-out documents, one (sum, count) per document.

A document is [BOS] Enc(text) [EOS], read in consecutive windows of `window` tokens (as the training rows cut
it), at most `max_windows` of them; a window's first token is context only.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from codellama_recipe.evaluation.target_losses import target_losses


def document_windows(tokens: Sequence[int], window: int, max_windows: int) -> list[list[int]]:
    """Windows of window + 1 tokens overlapping by one, so every token after the first is a target once."""
    windows = []
    for start in range(0, len(tokens) - 1, window):
        windows.append(list(tokens[start:start + window + 1]))
        if len(windows) == max_windows:
            break
    return windows


def document_losses(model, tokenizer, texts: Sequence[str], window: int, max_windows: int,
                    batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(summed loss, number of predicted tokens) per document."""
    owners, windows = [], []
    for d, text in enumerate(texts):
        for w in document_windows(tokenizer.encode(text, bos=True, eos=True), window, max_windows):
            owners.append(d)
            windows.append(w)
    losses = target_losses(model, windows, [1] * len(windows), tokenizer.pad_id, batch_size)
    sums, counts = np.zeros(len(texts)), np.zeros(len(texts))
    for d, values in zip(owners, losses):
        sums[d] += values.sum()
        counts[d] += len(values)
    return sums, counts
