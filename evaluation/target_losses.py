"""Per-token losses of chosen target tokens, for many token sequences at once.

Sequences are right-padded into batches: in a causal model the padding after a sequence changes none of
its own positions, so a padded row computes exactly what the sequence would alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.inference_mode()
def target_losses(model, sequences: Sequence[Sequence[int]], targets_from: Sequence[int], pad_id: int,
                  batch_size: int = 16) -> list[np.ndarray]:
    """For each sequence, the losses of predicting its tokens at positions targets_from[i] .. end from the
    tokens before them (targets_from >= 1)."""
    if any(t < 1 or t > len(s) for s, t in zip(sequences, targets_from)):
        raise ValueError("every target start must lie in 1..len(sequence)")
    device = next(model.parameters()).device
    model.eval()
    out: list[np.ndarray] = [np.zeros(0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))   # similar lengths share a batch
    for begin in range(0, len(order), batch_size):
        rows = order[begin:begin + batch_size]
        width = max(len(sequences[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
        for r, i in enumerate(rows):
            ids[r, :len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
        hidden = model(ids[:, :-1], return_hidden=True)
        for r, i in enumerate(rows):
            start, end = targets_from[i], len(sequences[i])
            logits = model.output(hidden[r, start - 1:end - 1])
            out[i] = F.cross_entropy(logits.float(), ids[r, start:end], reduction="none").double().cpu().numpy()
    return out
