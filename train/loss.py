"""Masked next-token cross-entropy, per token, in fp32.

`labels[b, t]` is the token that position t must predict (the data pipeline already shifted it); -100 and
`loss_mask == False` mean "no loss here". Per-token losses (not just their mean) are returned so that the
trainer can also report the loss per data source and for FIM vs plain tokens.

The chunked variant never holds the [tokens × vocab] fp32 logits of the whole micro-batch: it runs the
output layer on `chunk_size` tokens at a time under activation checkpointing, so only one chunk's logits
exist at once, in the forward and again in the backward (at 16,384 tokens × 32,016 pieces the full fp32
logits alone would take 2.1 GB per sequence, plus as much for their gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def valid_tokens(labels: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, T]: positions that carry a loss."""
    valid = labels != IGNORE_INDEX
    return valid if loss_mask is None else valid & loss_mask.bool()


def token_losses(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, V] logits (any dtype) -> [B, T] fp32 cross-entropy, 0 where no loss is due."""
    targets = labels.masked_fill(~valid_tokens(labels, loss_mask), IGNORE_INDEX)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none")
    return losses.view_as(labels)


def _chunk_losses(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="none")


def chunked_token_losses(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
                         loss_mask: torch.Tensor | None = None, chunk_size: int = 4096) -> torch.Tensor:
    """[B, T, D] final hidden states + the output layer -> [B, T] fp32 losses, `chunk_size` tokens at a time.

    Every rank runs the same number of chunks (a function of the shape only): under ZeRO-3 each call of
    `head` gathers its weight collectively.
    """
    targets = labels.masked_fill(~valid_tokens(labels, loss_mask), IGNORE_INDEX).flatten()
    flat = hidden.flatten(0, 1)
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        h, y = flat[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_losses, head, h, y, use_reentrant=False))
        else:
            pieces.append(_chunk_losses(head, h, y))
    return torch.cat(pieces).view_as(labels)


def mean_loss(losses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the positions that carry a loss (0 with a graph when there are none)."""
    return (losses * valid).sum() / valid.sum().clamp(min=1)
