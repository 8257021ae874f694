"""The training loop of one stage: `run(cfg)` sets everything up, `fit(ctx)` is the loop.

One optimizer update ("step") consumes `trainer.batch_tokens` tokens: `grad_accum` micro-batches of
`micro_batch_size × seq_len` tokens on each of `world_size` processes. Around the loop:
- resume: the latest complete checkpoint under run_dir/checkpoints is loaded (model, optimizer, step, tokens,
  every rank's data-pipeline position and RNG states); the run continues as if it had never stopped;
- stop signals: SIGTERM / SIGUSR1 set a flag; at the next step boundary, or between two micro-batches of a
  step under gradient accumulation, every rank agrees, a checkpoint is written and `run` returns normally (exit
  code 0). A step interrupted between micro-batches is abandoned (no update) and the checkpoint holds the data
  position and RNG states of its start, so the resumed run redoes it exactly;
- numerical faults: a non-finite loss or gradient norm skips the update on every rank (DeepSpeed's overflow
  check, or GuardedAdamW at ZeRO stage 0) and is counted; `trainer.max_nonfinite_in_row` in a row stops;
- the end: a last checkpoint, the Hugging Face export (run_dir/hf, with tokenizer.model) and run_dir/DONE.json.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.atomic import replace_dir_atomic, write_json_atomic
from codellama_recipe.core.run_dir_lock import run_dir_lock
from codellama_recipe.core.schema import TrainConfig
from codellama_recipe.train import checkpoint_identity as ckpt_identity
from codellama_recipe.train import checkpoint_integrity as ckpt_integrity
from codellama_recipe.train import checkpoint_reading as ckpt_reading
from codellama_recipe.train import checkpoints as ckpt
from codellama_recipe.train.callbacks import Callback, Callbacks
from codellama_recipe.train.config_checks import RunPlan, check_config, typed_train_config
from codellama_recipe.train.distributed import all_reduce
from codellama_recipe.train.engine_setup import (ModelSetup, build_engine, build_model, compile_blocks,
                                                 compile_wanted, device_and_backend, init_distributed,
                                                 is_compile_failure, loss_chunk_tokens, prepare_model,
                                                 uncompile_blocks)
from codellama_recipe.train.loss import chunked_token_losses, mean_loss, token_losses, valid_tokens
from codellama_recipe.train.metrics import (IntervalMetrics, MetricsLogger, ProgressBar, memory_gb, mfu_metrics,
                                            peak_flops_per_device)
from codellama_recipe.train.model import ModelConfig
from codellama_recipe.train.optim import lr_at, set_lr
from codellama_recipe.train.peers import (PeerLost, apply_collective_timeout, describe_lost, is_lost_peer,
                                          rank0_work, start_watch)
from codellama_recipe.train.stop_flag import StopFlag, launcher_gone
from codellama_recipe.train.weight_formats import DTYPES, save_hf

# DeepSpeed calls torch.distributed's deprecated collective names on every step; one warning per rank and call
# site drowns the log.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)

DONE_FILE = "DONE.json"
# Keys that change how a run is observed, not what it computes (left out of the DONE.json fingerprint).
OBSERVATION_KEYS = ("run_dir", "cache_dir", "wandb", "deepspeed", "trainer.log_every", "trainer.checkpoint_every",
                    "trainer.keep_last", "trainer.val_every", "trainer.val_batches", "trainer.allow_config_change",
                    "trainer.progress_bar", "trainer.collective_timeout_s")


class TooManyNonFinite(RuntimeError):
    """`trainer.max_nonfinite_in_row` consecutive updates had a non-finite loss or gradient norm."""


@dataclass
class TrainState:
    step: int = 0                  # optimizer updates done (skipped ones included)
    tokens_seen: int = 0
    elapsed_s: float = 0.0         # wall time of all sessions of this run
    wandb_run_id: str | None = None
    nonfinite_skipped: int = 0
    damaged_checkpoints_skipped: int = 0     # newer checkpoints that failed verification at a resume
    last_train_loss: float | None = None
    last_val: dict = field(default_factory=dict)

    @classmethod
    def from_client(cls, client: dict) -> "TrainState":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in client.get("train_state", {}).items() if k in names})


@dataclass
class LoopState:
    """What the loop keeps between steps of one session besides TrainState (which checkpoints carry)."""
    last_saved_step: int | None = None         # the step whose checkpoint is the latest on disk, if known
    mfu_warned: bool = False                   # MFU above 1 reported once (the peak is wrong)
    compile_pending: bool = False              # the blocks are compiled and the first step has not run yet
    where: str = "at the start of training"    # named when a peer is lost
    step_start: dict | None = None             # data position and RNG states at the start of the current step
    abandoned: str | None = None               # a stop signal interrupted the current step (where)
    backward_started: bool = False


@dataclass
class TrainContext:
    """What the loop works with: built by `run`, handed to every step of `fit` and to every callback."""
    cfg: TrainConfig               # the typed config (core/schema.py); the loop never reads the DictConfig
    record: dict                   # the resolved config as written to config.yaml and every checkpoint
    plan: RunPlan
    engine: Any                    # deepspeed.DeepSpeedEngine
    optimizer: Any                 # its optimizer, whose param_groups carry the learning rate
    train_loader: Any              # data.pipeline's stateful loader (or a test's stand-in)
    val_loaders: dict
    logger: MetricsLogger
    callbacks: Callbacks           # the logger, the progress bar and the caller's callbacks (train/callbacks.py)
    stop: StopFlag
    rank: int
    device: torch.device
    run_dir: Path
    state: TrainState
    model_config: dict
    identity: dict                 # what a checkpoint must share with the run that resumes it
    fingerprint: str               # of everything that determines the result (DONE.json)
    flops_per_token: float
    peak_flops: float              # per process; the MFU denominator
    tokenizer_path: str
    loss_chunk_size: int = 0                   # trainer.loss_chunk_size as used (null resolved)
    loop: LoopState = field(default_factory=LoopState)
    session_start: float = field(default_factory=time.time)
    elapsed_before: float = field(init=False)   # wall time of the earlier sessions

    def __post_init__(self):
        self.elapsed_before = self.state.elapsed_s

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def elapsed_s(self) -> float:
        return self.elapsed_before + time.time() - self.session_start


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[train] {msg}", flush=True)


def fingerprinted_config(record: dict) -> dict:
    """The resolved config (`ckpt_identity.resolved`) without the keys that only change how a run is observed
    (OBSERVATION_KEYS)."""
    full = copy.deepcopy(record)
    for dotted in OBSERVATION_KEYS:
        *parents, leaf = dotted.split(".")
        node = full
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return full


def run_fingerprint(record: dict) -> str:
    """Hash of everything that determines the result of the stage."""
    return ckpt_identity.fingerprint(fingerprinted_config(record))


def resolve_tokenizer_path(cfg: TrainConfig) -> str:
    """The stage's tokenizer by data.tokenizer_resolution's rule (tokenizer_path, else the one that comes with
    `init_from`, else the embedded default for a random initialisation). A stage that trains infilling from a
    Llama-2-style tokenizer of `init_from` without the infilling pieces gets it extended to Code Llama's layout
    (ids 32007-32010) in run_dir/tokenizer.model, as Code Llama did; the engine then grows the embeddings to match."""
    from codellama_recipe.data.tokenizer import Tokenizer, extend_with_infilling
    from codellama_recipe.data.tokenizer_resolution import resolve_tokenizer

    path = resolve_tokenizer(cfg.tokenizer_path, cfg.init_from, weights_key="init_from", cache_dir=cfg.cache_dir)
    came_with_init_from = bool(cfg.init_from) and not cfg.tokenizer_path
    if not came_with_init_from or not cfg.data.fim.enabled:
        return path
    if Tokenizer(path).has_infilling:
        return path
    extended = Path(str(cfg.run_dir)) / "tokenizer.model"
    if not extended.is_file():
        extend_with_infilling(path, str(extended))  # deterministic, atomic: every rank may do it
    return str(extended)


def build_loaders(cfg: TrainConfig, tokenizer, rank: int, world_size: int, plan: RunPlan):
    from codellama_recipe.data.pipeline import build_train_loader, build_val_loaders

    train_loader = build_train_loader(plan.data, tokenizer, rank, world_size, plan.micro_batch_size)
    train_loader.pin_memory = torch.cuda.is_available()   # the device the engine trains on (device_and_backend)
    val_loaders = {}
    if cfg.trainer.val_every and cfg.trainer.val_batches:
        val_loaders = build_val_loaders(plan.data, tokenizer, rank, world_size, plan.micro_batch_size,
                                        cfg.trainer.val_batches)
    return train_loader, val_loaders


def token_losses_of(engine, batch: dict, chunk_size: int, intra_doc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token fp32 losses [B, T] and the bool mask of tokens that carry a loss."""
    kwargs = {"doc_ids": batch["doc_ids"]} if intra_doc else {}
    valid = valid_tokens(batch["labels"], batch.get("loss_mask"))
    if chunk_size:
        hidden = engine(batch["input_ids"], return_hidden=True, **kwargs)
        losses = chunked_token_losses(hidden, engine.module.output, batch["labels"], batch.get("loss_mask"),
                                      chunk_size)
    else:
        losses = token_losses(engine(batch["input_ids"], **kwargs), batch["labels"], batch.get("loss_mask"))
    return losses, valid


def combine_data_metrics(per_rank: list[dict]) -> dict:
    """Shares and epochs are averaged over ranks; counts (skipped documents, ...) are summed."""
    out = {}
    for key in sorted({k for m in per_rank for k in m}):
        values = [float(m[key]) for m in per_rank if key in m]
        averaged = "/share" in key or "/epoch" in key or key.endswith("share") or key.endswith("epoch")
        out[key] = sum(values) / len(values) if averaged else sum(values)
    return out


@torch.no_grad()
def validate(engine, val_loaders: dict, device, chunk_size: int, intra_doc: bool) -> dict[str, float]:
    """Token-weighted loss per source over every rank. Every rank runs the same number of forward passes
    (ZeRO-3 gathers weights collectively): a source ends when any rank runs out of batches."""
    engine.eval()
    results = {}
    for source, loader in val_loaders.items():
        total = torch.zeros(2, dtype=torch.float64, device=device)
        iterator = iter(loader)
        while True:
            batch = next(iterator, None)
            have = all_reduce(torch.tensor([0 if batch is None else 1]), dist.ReduceOp.MIN)
            if not int(have.item()):
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            losses, valid = token_losses_of(engine, batch, chunk_size, intra_doc)
            total += torch.stack([(losses * valid).sum().double(), valid.sum().double()])
        total = all_reduce(total)
        if total[1] > 0:
            results[source] = float(total[0] / total[1])
    engine.train()
    return results


# --------------------------------------------------------------------------------------------------------
# Entry point of one stage
# --------------------------------------------------------------------------------------------------------

def run(cfg: DictConfig, callbacks: list[Callback] = (), loaders=build_loaders) -> dict:
    """Train one stage as configured; returns DONE.json's content (or {'stopped': signal} after SIGTERM).

    Everything that can be checked without a process group is checked first (ConfigError / ResumeRefused),
    and the run_dir is held by this job alone (RunDirBusy, exit 2, when another process has it).
    callbacks: hooks into the loop (train/callbacks.py) after the metrics logger and the progress bar;
    loaders: what builds the data loaders, `build_loaders`'s signature (a caller's own data source)."""
    plan = check_config(cfg)
    record = ckpt_identity.resolved(cfg)
    cfg = typed_train_config(cfg)   # from here on, every component reads its part of the typed config
    run_dir = Path(str(cfg.run_dir)).absolute()
    with run_dir_lock(run_dir, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _run_locked(cfg, record, plan, run_dir, list(callbacks), loaders)


@dataclass
class RunStart:
    """What is settled before the process group starts: what the run is and where it resumes."""
    record: dict                  # the resolved config (config.yaml, checkpoints, wandb)
    plan: RunPlan
    run_dir: Path
    identity: dict                # what a checkpoint must match to be resumed
    fingerprint: str              # DONE.json's: the same command on a finished run does nothing
    tag: str | None               # the intact checkpoint to resume from; None: a fresh start
    damaged: list                 # [(tag, problem)] of damaged checkpoints skipped
    diffs: list[str]              # config changes since that checkpoint (trainer.allow_config_change)
    resume_client: dict | None    # that checkpoint's client state (read without unpickling)


def _run_locked(cfg: TrainConfig, record: dict, plan: RunPlan, run_dir: Path, callbacks: list[Callback],
                loaders) -> dict:
    start = resume_point(cfg, record, plan, run_dir)
    done_file = run_dir / DONE_FILE
    if done_file.is_file():
        done = json.loads(done_file.read_text())
        if done.get("fingerprint") == start.fingerprint:
            _log(int(os.environ.get("RANK", "0")),
                 f"{run_dir} already finished with this configuration ({DONE_FILE}); nothing to do")
            return done
    tokenizer, setup = tokenizer_and_model(cfg, start)

    # ---- the process group starts here ----
    progress = {"where": "while the process group started"}
    try:
        return _run_distributed(cfg, start, setup, tokenizer, progress, callbacks, loaders)
    except Exception as e:
        if is_lost_peer(e):   # a frozen or dead rank: one line naming it (train/peers.py), never a traceback
            latest = ckpt_integrity.latest_tag(run_dir / "checkpoints")
            # A killed launcher takes torchrun's store with it: the collective that fails then is its symptom.
            cause = launcher_gone()
            raise PeerLost(f"{describe_lost(e, progress['where'])}; "
                           + (f"this rank stopped {cause}; " if cause else "")
                           + (f"the latest checkpoint {latest} is intact and rerunning the same command resumes "
                              f"from it" if latest else "no checkpoint written yet")) from None
        raise


def resume_point(cfg: TrainConfig, record: dict, plan: RunPlan, run_dir: Path) -> RunStart:
    """The newest intact checkpoint and whether this configuration may resume it (refused otherwise)."""
    ckpt_dir = run_dir / "checkpoints"
    identity = ckpt_identity.resume_identity(record, plan.world_size)
    tag, damaged = ckpt_integrity.newest_intact_tag(ckpt_dir)
    if damaged and tag is None:
        raise ckpt_integrity.no_intact_checkpoint(ckpt_dir, damaged)
    for bad, problem in damaged:
        _log(int(os.environ.get("RANK", "0")), f"checkpoint {bad} is damaged ({problem}); skipped, resuming from {tag}")
    client = ckpt_integrity.read_client_state(ckpt_dir, tag) if tag else None
    diffs = ckpt_identity.check_resumable(client, identity, cfg.trainer.allow_config_change) if client else []
    return RunStart(record=record, plan=plan, run_dir=run_dir, identity=identity, fingerprint=run_fingerprint(record),
                    tag=tag, damaged=damaged, diffs=diffs, resume_client=client)


def tokenizer_and_model(cfg: TrainConfig, start: RunStart):
    """The tokenizer, and the model: the checkpoint's shape when resuming it unchanged, else as configured (with
    the init_from weights on a fresh start)."""
    from codellama_recipe.data.tokenizer import Tokenizer

    tokenizer = Tokenizer(resolve_tokenizer_path(cfg))
    client = start.resume_client
    if client and not start.diffs:
        return tokenizer, ModelSetup(ModelConfig.from_dict(client["model_config"]).validate())
    return tokenizer, prepare_model(cfg, tokenizer.vocab_size, load_weights=client is None)


def _run_distributed(cfg: TrainConfig, start: RunStart, setup: ModelSetup, tokenizer, progress: dict,
                     callbacks: list[Callback], loaders) -> dict:
    plan, run_dir = start.plan, start.run_dir
    device, backend = device_and_backend()
    timeout_s = float(cfg.trainer.collective_timeout_s)
    rank, world_size = init_distributed(backend, timeout_s)
    start_watch(timeout_s)
    if world_size != plan.world_size:
        raise RuntimeError(f"process group has {world_size} ranks but WORLD_SIZE said {plan.world_size}")
    for note in setup.notes:
        _log(rank, note)
    for d in start.diffs:
        _log(rank, f"config changed since the checkpoint (trainer.allow_config_change=true): {d}")

    model = build_model(setup, seed=int(cfg.seed), activation_checkpointing=cfg.trainer.activation_checkpointing)
    flops_per_token = model.flops_per_token(plan.seq_len)  # before ZeRO-3 partitions the weights
    _log(rank, f"model {setup.config.to_dict()}: {model.num_params() / 1e6:.2f}M parameters; "
               f"ZeRO {plan.zero_stage}, {plan.precision}, {world_size} process(es) on {device.type}; "
               f"batch {plan.batch_tokens} tokens = {plan.grad_accum} accumulation × {plan.micro_batch_size} × "
               f"{plan.seq_len} × {world_size}")
    progress["where"] = "while the DeepSpeed engine was built"
    engine, optimizer = build_engine(cfg, plan, model, device)
    groups = apply_collective_timeout(timeout_s)   # DeepSpeed's own groups too
    _log(rank, f"collective timeout {timeout_s:g} s on {groups} process group(s) (trainer.collective_timeout_s)")
    train_loader, val_loaders = loaders(cfg, tokenizer, rank, world_size, plan)
    if rank == 0:
        prepare_run_dir(run_dir, setup.config.to_dict(), start.record)
    dist.barrier()
    state = resume_or_seed(engine, train_loader, run_dir / "checkpoints", start.tag, start.damaged, rank=rank,
                           world_size=world_size, seed=int(cfg.seed))

    logger = MetricsLogger(run_dir, rank=rank, resume_step=state.step, wandb_cfg=cfg.wandb,
                           config=start.record, run_id=state.wandb_run_id)
    state.wandb_run_id = logger.run_id
    peak, peak_source = (peak_flops_per_device(cfg.trainer.peak_flops_per_device, device, Path(str(cfg.cache_dir)))
                         if rank == 0 else (float("nan"), ""))
    _log(rank, f"MFU denominator: {peak / 1e12:.3f} TFLOP/s per process ({peak_source})")
    chunk = loss_chunk_tokens(cfg.trainer.loss_chunk_size, plan.micro_batch_size * plan.seq_len,
                              setup.config.vocab_size)
    compiled = compile_wanted(cfg.trainer.compile, device)
    if compiled:
        compile_blocks(engine.module)
        _log(rank, "torch.compile per transformer block (the first step compiles them)")
    stop = StopFlag()
    stop.install()
    exit_code = 1
    ctx = TrainContext(
        cfg=cfg, record=start.record, plan=plan, engine=engine, optimizer=optimizer, train_loader=train_loader,
        val_loaders=val_loaders, logger=logger,
        callbacks=Callbacks([logger, ProgressBar(cfg.trainer.progress_bar, rank=rank), *callbacks]),
        stop=stop, rank=rank, device=device, run_dir=run_dir,
        state=state, model_config=setup.config.to_dict(), identity=start.identity, fingerprint=start.fingerprint,
        flops_per_token=flops_per_token, peak_flops=peak, tokenizer_path=tokenizer.path,
        loss_chunk_size=chunk, loop=LoopState(compile_pending=compiled))
    try:
        result = fit(ctx)
        exit_code = 0
        return result
    finally:
        progress["where"] = ctx.loop.where
        stop.restore()
        ctx.callbacks.on_train_end(ctx, exit_code)


def prepare_run_dir(run_dir: Path, model_config: dict, record: dict) -> None:
    """Rank 0, before training: leftovers of an interrupted save removed, the folder markers and config.yaml
    written, an earlier DONE.json removed (it would describe another run)."""
    ckpt_dir = run_dir / "checkpoints"
    removed = ckpt_integrity.remove_incomplete(ckpt_dir)
    if removed:
        _log(0, f"removed incomplete checkpoint folder(s) {removed} (a save was interrupted)")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_marker(run_dir, "run", model_config)
    ckpt.write_marker(ckpt_dir, "checkpoints", model_config)
    OmegaConf.save(OmegaConf.create(record), run_dir / "config.yaml")
    (run_dir / DONE_FILE).unlink(missing_ok=True)


def resume_or_seed(engine, train_loader, ckpt_dir: Path, tag: str | None, damaged: list, *, rank: int,
                   world_size: int, seed: int) -> TrainState:
    """Every stateful part from checkpoint `tag` (the engine's, the TrainState, this rank's `rank_parts`), or,
    with no checkpoint, Python's and NumPy's RNGs seeded per rank."""
    if not tag:
        random.seed(seed + rank)
        np.random.seed(seed + rank)
        return TrainState()
    client, rank_state = ckpt.load(engine, ckpt_dir, tag, rank)
    state = TrainState.from_client(client)
    state.damaged_checkpoints_skipped += len(damaged)
    if rank_state is not None and client.get("identity", {}).get("world_size") == world_size:
        restore_rank_parts(train_loader, rank_state)
    else:
        _log(rank, "the data pipeline starts from the beginning of its stream (other number of processes)")
    _log(rank, f"resumed from {ckpt_dir / tag}: step {state.step}, {state.tokens_seen:,} tokens seen")
    return state


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------

def fit(ctx: TrainContext) -> dict:
    """Optimizer updates from ctx.state.step to trainer.max_steps; returns DONE.json's content, or
    {'stopped': signal, ...} when a stop signal ended the session early (a checkpoint is written either way)."""
    t, state = ctx.cfg.trainer, ctx.state
    saved = ckpt_integrity.latest_tag(ctx.ckpt_dir) == ckpt_integrity.tag_for(state.step)
    ctx.loop.last_saved_step = state.step if saved else None
    interval = IntervalMetrics(list(ctx.train_loader.source_names), ctx.device)
    nonfinite_in_row, grad_norm = 0, float("nan")
    batches = iter(ctx.train_loader)
    _log(ctx.rank, f"training steps {state.step + 1}..{t.max_steps}")
    ctx.callbacks.on_train_start(ctx)

    while state.step < t.max_steps:
        ctx.loop.where = f"before step {state.step + 1} (the stop-signal check)"
        if stop_requested(ctx):
            break

        ctx.loop.where = f"in step {state.step + 1}"
        started = time.perf_counter()
        lr = learning_rate(ctx.cfg, state.step)
        if ctx.plan.grad_accum > 1:   # what a checkpoint of an interrupted step must hold
            ctx.loop.step_start = rank_parts(ctx.train_loader)
        applied = train_step(ctx, batches, lr, interval)
        if applied is None:           # a stop signal between micro-batches: the step is abandoned
            break
        state.step += 1
        state.tokens_seen += ctx.plan.batch_tokens
        if applied:
            nonfinite_in_row = 0
            grad_norm = global_grad_norm(ctx.engine)
        else:
            state.nonfinite_skipped += 1
            interval.skipped_steps += 1
            nonfinite_in_row += 1
            _log(ctx.rank, f"step {state.step}: non-finite loss or gradient norm; update skipped "
                           f"({nonfinite_in_row} in a row, {state.nonfinite_skipped} in total)")
        interval.steps += 1
        interval.time_s += time.perf_counter() - started
        ctx.loop.where = f"after step {state.step} (metrics, validation or checkpoint)"
        too_many = nonfinite_in_row >= t.max_nonfinite_in_row

        is_last = state.step == t.max_steps
        validate_now = bool(ctx.val_loaders) and (state.step % t.val_every == 0 or is_last) and not too_many
        if state.step % t.log_every == 0 or validate_now or is_last or too_many:
            ctx.callbacks.on_metrics(ctx, interval_metrics(ctx, interval, lr=lr, grad_norm=grad_norm,
                                                           with_validation=validate_now))
            interval = IntervalMetrics(interval.sources, ctx.device)

        if too_many:
            raise TooManyNonFinite(
                f"{nonfinite_in_row} consecutive updates had a non-finite loss or gradient norm (last at step "
                f"{state.step}); stopping. The latest checkpoint ({ckpt_integrity.latest_tag(ctx.ckpt_dir)}) holds "
                f"finite weights. Lower optim.lr, check the data, or raise trainer.max_nonfinite_in_row.")
        maybe_save_checkpoint(ctx)
        ctx.callbacks.on_step_end(ctx)

    ctx.loop.where = f"at step {state.step} (its checkpoint, or the export)"
    if ctx.loop.last_saved_step != state.step:
        save_checkpoint(ctx)
    if state.step < t.max_steps:
        interrupted = (f" (step {state.step + 1} was interrupted {ctx.loop.abandoned}, before its update; the resumed "
                       f"run redoes it)") if ctx.loop.abandoned else ""
        _log(ctx.rank, f"stopped {ctx.stop.reason} at step {state.step}{interrupted}; rerun the same command to "
                       f"resume")
        return {"stopped": int(ctx.stop.signum), "steps": state.step, "tokens": state.tokens_seen}
    return finish(ctx)


def stop_requested(ctx: TrainContext) -> bool:
    """At a step or micro-batch boundary: did any rank receive SIGTERM/SIGUSR1, or lose its launcher? Every rank gets the same
    answer."""
    ctx.stop.check_launcher()
    return bool(all_reduce(torch.tensor([ctx.stop.signum]), dist.ReduceOp.MAX).item())


def learning_rate(cfg: TrainConfig, step: int) -> float:
    o = cfg.optim
    return lr_at(step, lr=o.lr, schedule=o.schedule, warmup_steps=o.warmup_steps, max_steps=cfg.trainer.max_steps,
                 final_lr_ratio=o.final_lr_ratio)


def train_step(ctx: TrainContext, batches, lr: float, interval: IntervalMetrics) -> bool | None:
    """One optimizer update over `grad_accum` micro-batches; False when it was skipped on every rank (a non-finite
    loss on any rank, or a non-finite gradient norm); None when a stop signal interrupted it between two
    micro-batches (no update; `ctx.loop.abandoned` says where). The first step of compiled blocks compiles them; if that
    fails before any backward pass, the step runs again eagerly, after one warning."""
    if not ctx.loop.compile_pending:
        return _train_step(ctx, batches, lr, interval)
    ctx.loop.compile_pending = False
    taken = []

    def recorded():
        while True:
            taken.append(next(batches))
            yield taken[-1]
    try:
        return _train_step(ctx, recorded(), lr, interval)
    except Exception as e:
        if not is_compile_failure(e) or ctx.loop.backward_started:
            raise
        root = e   # dynamo keeps the compiler's own error as inner_exception (or the cause)
        while (getattr(root, "inner_exception", None) or root.__cause__) is not None:
            root = getattr(root, "inner_exception", None) or root.__cause__
        why = f"{type(e).__name__}" + (f" <- {type(root).__name__}: {str(root).splitlines()[0][:200]}" if root is not e
                                       else f": {str(e).splitlines()[0][:200] if str(e) else ''}")
        _log(ctx.rank, f"WARNING: torch.compile failed ({why}); training eagerly (set trainer.compile=false to "
                       "skip the attempt)")
        uncompile_blocks(ctx.engine.module)
        return _train_step(ctx, itertools.chain(taken, batches), lr, interval)


def _train_step(ctx: TrainContext, batches, lr: float, interval: IntervalMetrics) -> bool | None:
    set_lr(ctx.optimizer, lr)
    n = ctx.plan.grad_accum
    for i in range(n):
        # Between two micro-batches every rank agrees on a stop request (one tiny all-reduce per micro-batch):
        # the step is abandoned before its update, so a stop waits one micro-batch, not one step.
        if i and stop_requested(ctx):
            ctx.loop.abandoned = f"after micro-batch {i} of {n}"
            return None
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in next(batches).items()}
        losses, valid, loss = microbatch_loss(ctx, batch)
        loss = ctx.callbacks.on_microbatch_loss(ctx, i, loss)
        finite = torch.isfinite(loss)
        # A non-finite loss must poison the gradients (an inf loss can have finite ones) so that the overflow
        # check skips the update on every rank; a finite loss is multiplied by exactly 1.
        ctx.loop.backward_started = True
        ctx.engine.backward(loss * torch.where(finite, 1.0, float("nan")).detach())
        ctx.engine.step()
        interval.add_microbatch(losses, valid, finite, batch["is_fim"], batch["source_ids"])
    return ctx.engine.was_step_applied()


def microbatch_loss(ctx: TrainContext, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token losses, mask of the tokens that carry one, their mean: the loss the backward pass starts from)."""
    losses, valid = token_losses_of(ctx.engine, batch, ctx.loss_chunk_size, ctx.cfg.trainer.intra_document_attention)
    return losses, valid, mean_loss(losses, valid)


def global_grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def interval_metrics(ctx: TrainContext, interval: IntervalMetrics, *, lr: float, grad_norm: float,
                     with_validation: bool) -> dict:
    """One line of metrics (all ranks take part): the interval's losses over all ranks, throughput, the data
    pipeline's counters and, when due, the validation losses."""
    state, total = ctx.state, interval.all_reduced()
    tokens_per_s = ctx.plan.batch_tokens * total.steps / max(total.time_s, 1e-9)
    metrics = {
        "train/loss": total.mean_loss(),
        "train/lr": lr,
        "train/grad_norm": grad_norm,
        "train/tokens_seen": state.tokens_seen,
        "train/nonfinite_skipped": state.nonfinite_skipped,
        "train/nonfinite_in_interval": total.skipped_steps,
        "train/nonfinite_microbatches": int(total.nonfinite_microbatches),
        "perf/tokens_per_s": tokens_per_s,
        "perf/step_time_s": total.time_s / total.steps,
        "perf/memory_gb": memory_gb(ctx.device),
        **total.loss_breakdown(),
    }
    utilisation, problem = mfu_metrics(ctx.flops_per_token * tokens_per_s, ctx.peak_flops * ctx.plan.world_size)
    metrics.update(utilisation)
    if problem and not ctx.loop.mfu_warned:
        ctx.loop.mfu_warned = True
        _log(ctx.rank, problem)
    per_rank = [None] * ctx.plan.world_size
    dist.all_gather_object(per_rank, ctx.train_loader.metrics())
    metrics.update(combine_data_metrics(per_rank))
    if with_validation:
        t = ctx.cfg.trainer
        state.last_val = validate(ctx.engine, ctx.val_loaders, ctx.device, ctx.loss_chunk_size,
                                  t.intra_document_attention)
        metrics.update({f"val/loss/{s}": v for s, v in state.last_val.items()})
    if math.isfinite(metrics["train/loss"]):
        state.last_train_loss = metrics["train/loss"]
    return metrics


def maybe_save_checkpoint(ctx: TrainContext) -> None:
    """The periodic checkpoint (trainer.checkpoint_every); the last step's is written when the loop ends."""
    t, step = ctx.cfg.trainer, ctx.state.step
    if t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.max_steps:
        save_checkpoint(ctx)


def rank_parts(train_loader) -> dict:
    """This rank's stateful parts besides the engine's (model, optimizer): the data pipeline's position and the
    RNG states. `restore_rank_parts` is the inverse; a checkpoint holds them per rank (client/rank_N.json)."""
    return {"data": train_loader.state_dict(), "rng": ckpt.rng_state()}


def restore_rank_parts(train_loader, parts: dict) -> None:
    train_loader.load_state_dict(parts["data"])
    ckpt.set_rng_state(parts["rng"])


def save_checkpoint(ctx: TrainContext) -> None:
    """Every stateful part in one checkpoint: the engine's (model, optimizer) through DeepSpeed, the run's
    TrainState and identity (client_state.json, rank 0), and each rank's `rank_parts`."""
    state = ctx.state
    state.elapsed_s = ctx.elapsed_s()
    client = {"train_state": asdict(state), "identity": ctx.identity,
              "fingerprint": ckpt_identity.fingerprint(ctx.identity),
              "config": ctx.record, "model_config": ctx.model_config,
              "world_size": ctx.plan.world_size, "step": state.step}
    # After a stop between micro-batches: the parts at the interrupted step's start (the resume redoes it).
    parts = ctx.loop.step_start if ctx.loop.abandoned else rank_parts(ctx.train_loader)
    rank_state = {"rank": ctx.rank, **parts}
    tag = ckpt.save(ctx.engine, ctx.ckpt_dir, state.step, client, rank_state, rank=ctx.rank,
                    keep_last=ctx.cfg.trainer.keep_last, model_config=ctx.model_config,
                    files_written=lambda tmp_dir: ctx.callbacks.on_checkpoint_files_written(ctx, tmp_dir))
    ctx.loop.last_saved_step = state.step
    _log(ctx.rank, f"checkpoint {ctx.ckpt_dir / tag}")


def finish(ctx: TrainContext) -> dict:
    """After the last step (its checkpoint written): the Hugging Face export, DONE.json and the wandb summary."""
    state = ctx.state
    state.elapsed_s = ctx.elapsed_s()
    last_checkpoint = ctx.ckpt_dir / ckpt_integrity.tag_for(state.step)
    done = {"fingerprint": ctx.fingerprint, "steps": state.step, "tokens": state.tokens_seen,
            "time_s": state.elapsed_s, "train_loss": state.last_train_loss, "val_loss": state.last_val,
            "nonfinite_skipped": state.nonfinite_skipped, "wandb_run_id": state.wandb_run_id,
            "damaged_checkpoints_skipped": state.damaged_checkpoints_skipped, "checkpoint": str(last_checkpoint), "hf_dir": str(ctx.run_dir / "hf"),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def on_rank0():
        ctx.callbacks.on_export_start(ctx)
        export_hf(last_checkpoint, ctx.run_dir / "hf", ctx.tokenizer_path, ctx.cfg.trainer.export_dtype)
        write_json_atomic(ctx.run_dir / DONE_FILE, done)
        ctx.logger.summary({"final/train_loss": state.last_train_loss, "final/steps": state.step,
                            **{f"final/val_loss/{s}": v for s, v in state.last_val.items()}})
        _log(ctx.rank, f"done: {state.step} steps, {state.tokens_seen:,} tokens, {state.elapsed_s:.0f}s; "
                       f"weights in {ctx.run_dir / 'hf'}")
    # The other ranks wait for the export as long as rank 0 is alive, not a collective's timeout (a 70B export
    # takes longer than that).
    rank0_work(on_rank0, "exporting the weights")
    return done


def export_hf(tag_dir: Path, out_dir: Path, tokenizer_path: str, dtype: str) -> None:
    """Consolidate a checkpoint (ZeRO shards included) and write it in Hugging Face format, atomically."""
    model_cfg, state_dict = ckpt_reading.load_consolidated(tag_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(state_dict, model_cfg, tmp, tokenizer_path=tokenizer_path, dtype=DTYPES[dtype])
    replace_dir_atomic(tmp, out_dir)
