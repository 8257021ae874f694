"""Hooks into the training loop (OLMo-core's callbacks, smaller): the loop calls each hook at a fixed point, in the
order the callbacks were given. Metrics files, wandb and the progress bar attach here (train/metrics.py), and so
does anything a user or a test adds through `codellama_recipe.train.cli.main(callbacks=[...])`: the loop itself
has no observers or fault hooks of its own.

Every hook receives the loop's `TrainContext` (train/trainer.py): its `state` (step, tokens) is the one to read.
Hooks run on every rank unless they say otherwise; a hook that uses a collective must do so on every rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch


class Callback:
    """Override the hooks you need; the defaults do nothing."""

    def on_train_start(self, ctx: Any) -> None:
        """Before the first step of this session (after a resume: before the first step still to do)."""

    def on_microbatch_loss(self, ctx: Any, index: int, loss: torch.Tensor) -> torch.Tensor:
        """The mean loss of micro-batch `index` (0-based) of step `ctx.state.step + 1`, before its backward pass;
        returns the loss the backward pass starts from."""
        return loss

    def on_metrics(self, ctx: Any, metrics: dict) -> None:
        """A line of metrics for step `ctx.state.step` (identical on every rank)."""

    def on_step_end(self, ctx: Any) -> None:
        """After step `ctx.state.step`: its metrics logged and its periodic checkpoint written."""

    def on_checkpoint_files_written(self, ctx: Any, tmp_dir: Path) -> None:
        """Inside a checkpoint save: this rank's files are in `tmp_dir`, not yet published."""

    def on_export_start(self, ctx: Any) -> None:
        """Rank 0 only: after the last checkpoint, before the Hugging Face export."""

    def on_train_end(self, ctx: Any, exit_code: int) -> None:
        """When the session ends: 0 finished or stopped by a signal (a checkpoint written), 1 an error."""


class Callbacks(Callback):
    """Several callbacks as one: each hook calls theirs in order (a loss passes through every one)."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args) -> None:
        for c in self.callbacks:
            getattr(c, hook)(*args)

    def on_train_start(self, ctx):
        self._each("on_train_start", ctx)

    def on_microbatch_loss(self, ctx, index, loss):
        for c in self.callbacks:
            loss = c.on_microbatch_loss(ctx, index, loss)
        return loss

    def on_metrics(self, ctx, metrics):
        self._each("on_metrics", ctx, metrics)

    def on_step_end(self, ctx):
        self._each("on_step_end", ctx)

    def on_checkpoint_files_written(self, ctx, tmp_dir):
        self._each("on_checkpoint_files_written", ctx, tmp_dir)

    def on_export_start(self, ctx):
        self._each("on_export_start", ctx)

    def on_train_end(self, ctx, exit_code):
        self._each("on_train_end", ctx, exit_code)
