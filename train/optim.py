"""AdamW with Llama's parameter groups, and the learning-rate schedules (paper §2.6; docs/recipe.md#optimisation).

The learning rate is a pure function of the step (`lr_at`), set on the optimizer's parameter groups before
every update: nothing about the schedule has to be checkpointed, and a resumed run gets the same values.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (attention, FFN, embedding, output); none on vectors (RMSNorm weights)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def lr_at(step: int, *, lr: float, schedule: str, warmup_steps: int, max_steps: int,
          final_lr_ratio: float) -> float:
    """Learning rate of update number `step` (0-based).

    Warm-up: linear from lr/warmup_steps (update 0) to lr (update warmup_steps-1). Then
    - cosine:   lr_min + (lr - lr_min) * (1 + cos(pi * progress)) / 2, lr_min = lr * final_lr_ratio
    - linear:   lr - (lr - lr_min) * progress
    - constant: lr
    where progress goes from 0 (first update after warm-up) to 1 (the last update, max_steps-1).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay_steps = max_steps - warmup_steps - 1
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    lr_min = lr * final_lr_ratio
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr - (lr - lr_min) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that clips and refuses non-finite gradients itself.

    DeepSpeed's ZeRO and bf16 optimizers already clip, detect a non-finite gradient norm (all ranks agree)
    and skip the update; with ZeRO stage 0 in fp32 DeepSpeed calls the client optimizer directly and would
    apply NaN. There `guard=True`: `step` computes the global norm (gradients are already all-reduced, so
    every rank computes the same norm), skips on inf/NaN and sets `overflow`, which DeepSpeed's engine reads
    to count the step as skipped.
    """

    def __init__(self, params, *, max_grad_norm: float = 0.0, guard: bool = False, **kwargs):
        super().__init__(params, **kwargs)
        self.guard, self.max_grad_norm = guard, max_grad_norm
        self.overflow = False
        if guard:
            self._global_grad_norm = None

    @torch.no_grad()
    def step(self, closure=None):
        if not self.guard:
            return super().step(closure)
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        self._global_grad_norm = float(norm)
        self.overflow = not math.isfinite(self._global_grad_norm)
        if self.overflow:
            return None
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        return super().step(closure)


def build_optimizer(model: nn.Module, optim_cfg, *, guard: bool, fused: bool = False) -> GuardedAdamW:
    """The client optimizer handed to deepspeed.initialize (torch's AdamW: no JIT-compiled op needed).

    guard: True when DeepSpeed will not clip / detect overflow itself (ZeRO stage 0 in fp32).
    fused: torch's fused CUDA kernel (parameters must already be on the GPU)."""
    kwargs = {"fused": True} if fused else {}
    return GuardedAdamW(param_groups(model, float(optim_cfg.weight_decay)), lr=float(optim_cfg.lr),
                        betas=tuple(float(b) for b in optim_cfg.betas), eps=float(optim_cfg.eps),
                        max_grad_norm=float(optim_cfg.grad_clip), guard=guard, **kwargs)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
