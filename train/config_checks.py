"""Every check of a composed codellama-train config that its types cannot express, in one place.

The schema (core/schema.py) has already refused unknown keys and wrong types. Here: value ranges and
choices, the rules between values (the batch in tokens must split into whole micro-batches on every
process), and what the file system must hold (data paths that match files, the fields the sources name,
init_from and tokenizer_path). It all runs before any process group, model or data loader exists, so a bad
command fails in a second with one `ConfigError` naming the key, the value and what is allowed.
Two parts: `check_values` is pure (no file is read; a `-m` sweep runs it for every job up front) and derives the
values the engine needs (gradient accumulation, the typed data plan) in exactly one place; `check_inputs` looks
at what the run will read, where the run starts. `check_config` is both.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError, InputError
from codellama_recipe.core.schema import DataConfig, TrainConfig
from codellama_recipe.data.embedded.cache import ensure_corpus_for, in_embedded_corpus
from codellama_recipe.data.pipeline import data_config
from codellama_recipe.data.source_files import Location

ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("cosine", "constant", "linear")
WANDB_MODES = ("online", "offline", "disabled")
OPTIMIZER_IMPLS = ("torch", "deepspeed")
EXPORT_DTYPES = ("fp32", "bf16")
PROGRESS_BAR = ("auto", "true", "false")


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
    data: DataConfig


def world_size_from_env() -> int:
    """WORLD_SIZE as set by torchrun / the deepspeed launcher / SLURM wrappers; 1 for a plain process."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError("WORLD_SIZE (environment)", value, "must be a positive integer")
    return int(value)


def _at_least(node, name: str, minimum, where: str) -> None:
    value = node[name]
    if value < minimum:
        raise ConfigError(f"{where}.{name}", value, f"must be >= {minimum}")


def _one_of(node, name: str, allowed, where: str) -> None:
    value = node[name]
    if str(value).lower() not in allowed:
        raise ConfigError(f"{where}.{name}", value, f"allowed values: {', '.join(map(str, allowed))}")


def check_trainer(t) -> None:
    for name, minimum in (("max_steps", 1), ("batch_tokens", 1), ("micro_batch_size", 1), ("checkpoint_every", 0),
                          ("keep_last", 1), ("log_every", 1), ("val_every", 0), ("val_batches", 0),
                          ("max_nonfinite_in_row", 1)):
        _at_least(t, name, minimum, "trainer")
    if t.loss_chunk_size is not None:
        _at_least(t, "loss_chunk_size", 0, "trainer")
    if t.precision == "fp16":
        raise ConfigError("trainer.precision", t.precision,
                          f"fp16 (loss scaling) is not supported; allowed values: {', '.join(PRECISIONS)}")
    _one_of(t, "precision", PRECISIONS, "trainer")
    _one_of(t, "export_dtype", EXPORT_DTYPES, "trainer")
    _one_of(t, "progress_bar", PROGRESS_BAR, "trainer")
    if not (math.isfinite(t.collective_timeout_s) and t.collective_timeout_s > 0):
        raise ConfigError("trainer.collective_timeout_s", t.collective_timeout_s,
                          "must be a positive number of seconds (e.g. 600)")
    if t.peak_flops_per_device is not None and not t.peak_flops_per_device > 0:
        raise ConfigError("trainer.peak_flops_per_device", t.peak_flops_per_device, "must be > 0, or null")


def check_optim(o) -> None:
    if not o.lr > 0:
        raise ConfigError("optim.lr", o.lr, "must be > 0")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError("optim.betas", list(o.betas), "must be two numbers in [0, 1)")
    if not o.eps > 0:
        raise ConfigError("optim.eps", o.eps, "must be > 0")
    _at_least(o, "weight_decay", 0, "optim")
    _at_least(o, "grad_clip", 0, "optim")
    _at_least(o, "warmup_steps", 0, "optim")
    if not 0 <= o.final_lr_ratio <= 1:
        raise ConfigError("optim.final_lr_ratio", o.final_lr_ratio, "must lie in [0, 1]")
    _one_of(o, "schedule", SCHEDULES, "optim")
    _one_of(o, "impl", OPTIMIZER_IMPLS, "optim")


def zero_stage_of(cfg: DictConfig) -> int:
    zero = cfg.deepspeed.get("zero_optimization") or {}
    stage = zero.get("stage")
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ConfigError("deepspeed.zero_optimization.stage", stage,
                          f"ZeRO stages are {', '.join(map(str, ZERO_STAGES))} "
                          f"(presets: deepspeed=zero0|zero1|zero2|zero3|zero3_offload)")
    return int(stage)


def check_paths(cfg: DictConfig, init_from_pending: bool) -> None:
    if not str(cfg.run_dir).strip():
        raise ConfigError("run_dir", cfg.run_dir, "must be a folder path")
    if Path(str(cfg.run_dir)).is_file():
        raise InputError("run_dir", str(cfg.run_dir), "is a file; expected a folder (it is created if missing)")
    for key, what in (("init_from", "a Hugging Face, Meta or codellama-train checkpoint folder"),
                      ("tokenizer_path", "a SentencePiece .model file")):
        path = cfg[key]
        if key == "init_from" and init_from_pending:
            continue
        if path is not None and not Path(str(path)).exists():
            raise InputError(key, str(path), f"no such file or folder; expected {what} (or null)")


def check_validation_sources(cfg: DictConfig, data: DataConfig) -> None:
    """A source that trains on its own data (local files or a hub dataset) validates on its own data, never on
    the embedded demo corpus its val_paths default to: that would be a silent, meaningless validation loss."""
    if not (cfg.trainer.val_every and cfg.trainer.val_batches):
        return
    for spec in data.sources.values():
        trains_on_embedded = not spec.hub and all(in_embedded_corpus(p, cfg.cache_dir) for p in spec.paths)
        embedded_val = [p for p in spec.val_paths if in_embedded_corpus(p, cfg.cache_dir)]
        if embedded_val and not trains_on_embedded and not spec.val_hub:
            where = f"the hub dataset {dict(spec.hub).get('path')}" if spec.hub else f"{list(spec.paths)}"
            via = f"corpus.{spec.name}" if spec.name in (cfg.get("corpus") or {}) else f"data.sources.{spec.name}"
            raise ConfigError(
                f"data.sources.{spec.name}.val_paths", list(spec.val_paths),
                f"points at the embedded demo corpus's validation split while the source trains on {where}; give its own "
                f"validation data ({via}.val_paths=[...] or {via}.val_hub='{{path: ..., split: validation}}'), or "
                f"{via}.val_paths=null to leave it out of validation (or trainer.val_every=0)")


def check_data_files(cfg: DictConfig, data: DataConfig) -> None:
    """Every configured glob matches a file and every named field exists (train splits; validation splits
    when validation runs). The embedded corpus is built first when the paths point at it."""
    # Your own local files first (a glob that matches nothing is the first thing to say), then whether your
    # sources validate on your data, before the embedded corpus is built or a hub dataset is contacted.
    own_files = [s for s in data.sources.values()
                 if not s.hub and not all(in_embedded_corpus(p, cfg.cache_dir) for p in s.paths)]
    for spec in own_files:
        Location(spec, "train").check_fields()
    check_validation_sources(cfg, data)
    ensure_corpus_for(data.sources.values(), cfg.cache_dir)
    validating = cfg.trainer.val_every and cfg.trainer.val_batches
    for spec in data.sources.values():
        if spec not in own_files:
            Location(spec, "train").check_fields()
        if validating and (spec.val_paths or spec.val_hub):
            Location(spec, "val").check_fields()


def check_tokenizer(cfg: DictConfig) -> None:
    """The tokenizer the run will use exists and is a SentencePiece model (data.tokenizer_resolution's rule)."""
    from codellama_recipe.data.tokenizer import Tokenizer
    from codellama_recipe.data.tokenizer_resolution import resolve_tokenizer

    path = resolve_tokenizer(cfg.tokenizer_path, cfg.init_from, weights_key="init_from", cache_dir=cfg.cache_dir)
    key = "tokenizer_path" if cfg.tokenizer_path else "init_from"
    try:
        tokenizer = Tokenizer(path)
    except Exception as e:  # SentencePiece says little more than "could not parse"
        raise InputError(key, path, f"is not a SentencePiece tokenizer model ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    # A tokenizer that came with init_from is extended with the infilling pieces by the stage itself.
    if cfg.data.fim.enabled and not tokenizer.has_infilling and (cfg.tokenizer_path or not cfg.init_from):
        raise InputError("data.fim.enabled", True, f"the tokenizer {path} has no infilling pieces (<PRE> <SUF> "
                                                    f"<MID> <EOT>); extend it (codellama-tokenizer extend) or "
                                                    f"set data.fim.enabled=false")


def typed_train_config(cfg: DictConfig) -> TrainConfig:
    """The composed codellama-train config as the schema's dataclass: what the trainer and its components read."""
    return typed(TrainConfig, cfg, "config")


def check_values(cfg: DictConfig, world_size: int | None = None) -> RunPlan:
    """The pure part of the checks: values, choices and the rules between them; no file is read or written.
    Raise ConfigError for the first invalid value; return the derived RunPlan."""
    world_size = world_size_from_env() if world_size is None else world_size
    check_trainer(cfg.trainer)
    check_optim(cfg.optim)
    _one_of(cfg.wandb, "mode", WANDB_MODES, "wandb")
    stage = zero_stage_of(cfg)

    t = cfg.trainer
    data = data_config(cfg.data)
    per_pass = data.seq_len * t.micro_batch_size * world_size
    if t.batch_tokens % per_pass:
        lower = max(per_pass, t.batch_tokens // per_pass * per_pass)
        raise ConfigError(
            "trainer.batch_tokens", t.batch_tokens,
            f"must be a multiple of data.seq_len × trainer.micro_batch_size × world size = "
            f"{data.seq_len} × {t.micro_batch_size} × {world_size} = {per_pass} (gradient accumulation = "
            f"batch_tokens / that); nearest valid values: {lower} or {lower + per_pass}")
    return RunPlan(world_size=world_size, seq_len=data.seq_len, micro_batch_size=t.micro_batch_size,
                   grad_accum=t.batch_tokens // per_pass, batch_tokens=t.batch_tokens, zero_stage=stage,
                   precision=t.precision, data=data)


def check_inputs(cfg: DictConfig, plan: RunPlan, *, init_from_pending: bool = False) -> None:
    """What the run will read: run_dir, init_from, tokenizer_path, the data files and fields (the embedded demo
    corpus is built here when the paths point at it; a hub dataset is opened). Done where a run starts, still
    before any process group. `init_from_pending`: the weights to start from do not exist yet (a later stage of a
    pipeline), so init_from and the tokenizer that comes with it are not checked."""
    check_paths(cfg, init_from_pending)
    check_data_files(cfg, plan.data)
    if not init_from_pending:
        check_tokenizer(cfg)


def check_config(cfg: DictConfig, world_size: int | None = None, *, init_from_pending: bool = False) -> RunPlan:
    """check_values, then check_inputs: everything a run needs before it starts."""
    plan = check_values(cfg, world_size)
    check_inputs(cfg, plan, init_from_pending=init_from_pending)
    return plan
