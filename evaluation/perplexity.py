"""Perplexity by context length on long source files (Code Llama paper §3.3, Fig. on long-context
extrapolation).

Each file is tokenised ([BOS] + tokens) and read once from its start up to the largest context length
(one causal forward; the output layer and loss run in chunks, so the logits are never all in memory).
Because the model is causal, the per-token losses of that single pass at positions < L are exactly
those of a forward over the file's first L tokens, so:

    ppl@L      = exp(mean loss of the tokens at positions [0, L))        (cumulative)
    ppl_bin@L  = exp(mean loss of the tokens at positions [L_prev, L))   (the curve's shape)

Token-weighted over the files that have at least L + 1 tokens. If the model uses long context, ppl_bin
keeps falling with L; past the trained length without long-context fine-tuning it rises.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.inference_mode()
def token_losses(model, tokens: list[int], chunk_size: int = 2048, device=None) -> torch.Tensor:
    """Loss of predicting tokens[1:], one value per position: one causal forward to the final hidden
    states, then the output layer and the loss `chunk_size` positions at a time (the [T, vocab] logits
    of a long file never exist at once)."""
    device = device or next(model.parameters()).device
    ids = torch.tensor(tokens, dtype=torch.long, device=device)[None]
    hidden = model(ids[:, :-1], return_hidden=True)[0]
    targets = ids[0, 1:]
    losses = []
    for start in range(0, targets.shape[0], chunk_size):
        logits = model.output(hidden[start:start + chunk_size])
        losses.append(F.cross_entropy(logits.float(), targets[start:start + chunk_size], reduction="none"))
    return torch.cat(losses).cpu()


def perplexity_by_context_length(model, tokenizer, texts: Sequence[str], context_lengths: Sequence[int],
                                 chunk_size: int = 2048) -> dict:
    lengths = sorted(set(int(L) for L in context_lengths))
    if not lengths or lengths[0] < 1:
        raise ValueError(f"context lengths must be positive integers, got {list(context_lengths)}")
    model.eval()
    sums = {L: 0.0 for L in lengths}
    bin_sums = {L: 0.0 for L in lengths}
    files = {L: 0 for L in lengths}
    for text in texts:
        tokens = [tokenizer.bos_id] + tokenizer.encode(text)
        usable = [L for L in lengths if len(tokens) >= L + 1]
        if not usable:
            continue
        losses = token_losses(model, tokens[:usable[-1] + 1], chunk_size).double()
        cumulative = torch.cat([torch.zeros(1, dtype=torch.double), losses.cumsum(0)])
        previous = 0
        for L in usable:
            sums[L] += float(cumulative[L])
            bin_sums[L] += float(cumulative[L] - cumulative[previous])
            files[L] += 1
            previous = L
    result = {"context_lengths": lengths, "n_files": [files[L] for L in lengths], "ppl": [], "ppl_bin": []}
    previous = 0
    for L in lengths:
        if files[L]:
            result["ppl"].append(math.exp(sums[L] / (files[L] * L)))
            result["ppl_bin"].append(math.exp(bin_sums[L] / (files[L] * (L - previous))))
        else:
            result["ppl"].append(None)
            result["ppl_bin"].append(None)
        previous = L
    return result


def loss_sums_by_context_length(model, tokenizer, texts: Sequence[str], context_lengths: Sequence[int],
                                chunk_size: int = 2048) -> list[list[float]]:
    """Per file, the summed loss of its tokens at positions [0, L) for every L (the files must all have at least
    max(L) + 1 tokens): exp(Σ_files sum@L / (files · L)) is ppl@L, and per-file values allow a bootstrap."""
    lengths = [int(L) for L in context_lengths]
    model.eval()
    rows = []
    for text in texts:
        tokens = [tokenizer.bos_id] + tokenizer.encode(text)
        if len(tokens) < max(lengths) + 1:
            raise ValueError(f"a file of {len(tokens)} tokens is shorter than the longest context {max(lengths)} + 1")
        cumulative = torch.cat([torch.zeros(1, dtype=torch.double),
                                token_losses(model, tokens[:max(lengths) + 1], chunk_size).double().cumsum(0)])
        rows.append([float(cumulative[L]) for L in lengths])
    return rows
