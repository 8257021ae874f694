"""Validate a composed codellama-train config before any process group, model or data loader exists.

Every problem is one `ConfigError` naming the key, the value and what is allowed, so a bad command fails in
a second instead of after DeepSpeed has started. `check_config` also derives the values the engine needs
(gradient accumulation from the token batch size) so they are computed in exactly one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.errors import ConfigError

ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("cosine", "constant", "linear")
WANDB_MODES = ("online", "offline", "disabled")
OPTIMIZER_IMPLS = ("torch", "deepspeed")
EXPORT_DTYPES = ("fp32", "bf16")
PROGRESS_BAR = ("auto", True, False)


@dataclass(frozen=True)
class RunPlan:
    """Values derived from the config and the launch environment."""
    world_size: int
    seq_len: int
    micro_batch_size: int
    grad_accum: int
    batch_tokens: int
    zero_stage: int
    precision: str


def world_size_from_env() -> int:
    """WORLD_SIZE as set by torchrun / the deepspeed launcher / SLURM wrappers; 1 for a plain process."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError("WORLD_SIZE (environment)", value, "must be a positive integer")
    return int(value)


def _get(cfg: DictConfig, key: str, default=...):
    value = OmegaConf.select(cfg, key, default=default if default is not ... else None,
                             throw_on_missing=False)
    if value is None and default is ...:
        raise ConfigError(key, None, "is required")
    return value


def _int(cfg, key, minimum, default=...) -> int:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"must be an integer >= {minimum}")
    return value


def _number(cfg, key, low, high=None, low_open=False, default=...) -> float:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "must be a number")
    bad = value <= low if low_open else value < low
    if bad or (high is not None and value > high):
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise ConfigError(key, value, f"must lie in {rng}")
    return float(value)


def _choice(cfg, key, allowed, default=...):
    value = _get(cfg, key, default)
    if value not in allowed:
        raise ConfigError(key, value, f"allowed values: {', '.join(map(str, allowed))}")
    return value


def check_config(cfg: DictConfig, world_size: int | None = None) -> RunPlan:
    """Raise ConfigError for the first invalid value; return the derived RunPlan."""
    world_size = world_size_from_env() if world_size is None else world_size

    if not str(_get(cfg, "run_dir")).strip():
        raise ConfigError("run_dir", cfg.run_dir, "must be a folder path")
    _int(cfg, "seed", 0)
    seq_len = _int(cfg, "data.seq_len", 1)
    micro = _int(cfg, "trainer.micro_batch_size", 1)
    batch_tokens = _int(cfg, "trainer.batch_tokens", 1)
    _int(cfg, "trainer.max_steps", 1)
    per_pass = seq_len * micro * world_size
    if batch_tokens % per_pass:
        lower = max(per_pass, batch_tokens // per_pass * per_pass)
        raise ConfigError(
            "trainer.batch_tokens", batch_tokens,
            f"must be a multiple of data.seq_len × trainer.micro_batch_size × world size = "
            f"{seq_len} × {micro} × {world_size} = {per_pass} (gradient accumulation = batch_tokens / that); "
            f"nearest valid values: {lower} or {lower + per_pass}")

    _int(cfg, "trainer.checkpoint_every", 0)
    _int(cfg, "trainer.keep_last", 1)
    _int(cfg, "trainer.log_every", 1)
    _int(cfg, "trainer.val_every", 0)
    _int(cfg, "trainer.val_batches", 0)
    _int(cfg, "trainer.loss_chunk_size", 0, default=0)
    _int(cfg, "trainer.max_nonfinite_in_row", 1, default=5)
    _choice(cfg, "trainer.export_dtype", EXPORT_DTYPES, default="fp32")
    _choice(cfg, "trainer.progress_bar", PROGRESS_BAR, default="auto")
    precision = _get(cfg, "trainer.precision")
    if precision == "fp16":
        raise ConfigError("trainer.precision", precision,
                          f"fp16 (loss scaling) is not supported; allowed values: {', '.join(PRECISIONS)}")
    _choice(cfg, "trainer.precision", PRECISIONS)
    peak = _get(cfg, "trainer.peak_flops_per_device", None)
    if peak is not None:
        _number(cfg, "trainer.peak_flops_per_device", 0, low_open=True)
    for key in ("trainer.debug_inject_nan_steps",):
        steps = _get(cfg, key, [])
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
            raise ConfigError(key, steps, "must be a list of step numbers")

    stage = _get(cfg, "deepspeed.zero_optimization.stage")
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ConfigError("deepspeed.zero_optimization.stage", stage,
                          f"ZeRO stages are {', '.join(map(str, ZERO_STAGES))} "
                          f"(presets: deepspeed=zero0|zero1|zero2|zero3|zero3_offload)")

    _number(cfg, "optim.lr", 0, low_open=True)
    betas = _get(cfg, "optim.betas")
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError("optim.betas", list(betas), "must be two numbers in [0, 1)")
    _number(cfg, "optim.eps", 0, low_open=True)
    _number(cfg, "optim.weight_decay", 0)
    _number(cfg, "optim.grad_clip", 0)
    _choice(cfg, "optim.schedule", SCHEDULES)
    _int(cfg, "optim.warmup_steps", 0)
    _number(cfg, "optim.final_lr_ratio", 0, 1)
    _choice(cfg, "optim.impl", OPTIMIZER_IMPLS, default="torch")

    _choice(cfg, "wandb.mode", WANDB_MODES)

    for key, what in (("init_from", "a Hugging Face, Meta or codellama-train checkpoint folder"),
                      ("tokenizer_path", "a SentencePiece .model file")):
        path = _get(cfg, key, None)
        if path is not None and not Path(str(path)).exists():
            raise ConfigError(key, str(path), f"no such file or folder; expected {what} (or null)")

    return RunPlan(world_size=world_size, seq_len=seq_len, micro_batch_size=micro,
                   grad_accum=batch_tokens // per_pass, batch_tokens=batch_tokens,
                   zero_stage=int(stage), precision=precision)
