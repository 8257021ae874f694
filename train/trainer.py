"""The training loop of one stage: `run(cfg)` sets everything up, `fit(...)` is the loop.

One optimizer update ("step") consumes `trainer.batch_tokens` tokens: `grad_accum` micro-batches of
`micro_batch_size × seq_len` tokens on each of `world_size` processes. Around the loop:
- resume: the latest complete checkpoint under run_dir/checkpoints is loaded (model, optimizer, step, tokens,
  every rank's data-pipeline position and RNG states); the run continues as if it had never stopped;
- stop signals: SIGTERM / SIGUSR1 set a flag; at the next step boundary every rank agrees, a checkpoint is
  written and `run` returns normally (exit code 0);
- numerical faults: a non-finite loss or gradient norm skips the update on every rank (DeepSpeed's overflow
  check, or GuardedAdamW at ZeRO stage 0) and is counted; `trainer.max_nonfinite_in_row` in a row stops;
- the end: a last checkpoint, the Hugging Face export (run_dir/hf, with tokenizer.model) and run_dir/DONE.json.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from codellama_recipe.train import checkpoints as ckpt
from codellama_recipe.train.config_checks import RunPlan, check_config
from codellama_recipe.train.engine_setup import (ModelSetup, build_engine, build_model, device_and_backend, init_distributed,
                                prepare_model)
from codellama_recipe.train.loss import chunked_token_losses, mean_loss, token_losses, valid_tokens
from codellama_recipe.train.metrics import MetricsLogger, ProgressBar, memory_gb, peak_flops_per_device
from codellama_recipe.train.model import ModelConfig
from codellama_recipe.train.optim import lr_at, set_lr

# DeepSpeed calls torch.distributed's deprecated collective names on every step; one warning per rank and call
# site drowns the log.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)

DONE_FILE = "DONE.json"
# Keys that change how a run is observed, not what it computes (left out of the DONE.json fingerprint).
OBSERVATION_KEYS = ("run_dir", "cache_dir", "wandb", "deepspeed", "trainer.log_every", "trainer.checkpoint_every",
                    "trainer.keep_last", "trainer.val_every", "trainer.val_batches", "trainer.allow_config_change",
                    "trainer.progress_bar", "trainer.debug_inject_nan_steps", "trainer.debug_inject_nan_rank",
                    "trainer.debug_hang_at_step", "trainer.debug_hang_in_save_at_step")


class TooManyNonFinite(RuntimeError):
    """`trainer.max_nonfinite_in_row` consecutive updates had a non-finite loss or gradient norm."""


@dataclass
class TrainState:
    step: int = 0                  # optimizer updates done (skipped ones included)
    tokens_seen: int = 0
    elapsed_s: float = 0.0         # wall time of all sessions of this run
    wandb_run_id: str | None = None
    nonfinite_skipped: int = 0
    last_train_loss: float | None = None
    last_val: dict = field(default_factory=dict)

    @classmethod
    def from_client(cls, client: dict) -> "TrainState":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in client.get("train_state", {}).items() if k in names})


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (SLURM preemption); read at step boundaries."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[train] {msg}", flush=True)


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(t: torch.Tensor, device: torch.device, op=dist.ReduceOp.SUM) -> torch.Tensor:
    t = t.to(_comm_device(device))
    dist.all_reduce(t, op=op)
    return t


def fingerprinted_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys that only change how a run is observed (OBSERVATION_KEYS)."""
    full = ckpt.resolved(cfg)
    for dotted in OBSERVATION_KEYS:
        *parents, leaf = dotted.split(".")
        node = full
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return full


def run_fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that determines the result of the stage."""
    return ckpt.fingerprint(fingerprinted_config(cfg))


def resolve_tokenizer_path(cfg: DictConfig) -> str:
    """The stage's tokenizer by data.tokenizer_resolution's rule (tokenizer_path, else the one that comes with
    `init_from`, else the embedded default for a random initialisation). A stage that trains infilling from a
    Llama-2-style tokenizer of `init_from` without the infilling pieces gets it extended to Code Llama's layout
    (ids 32007-32010) in run_dir/tokenizer.model, as Code Llama did; the engine then grows the embeddings to match."""
    from codellama_recipe.data.tokenizer import Tokenizer, extend_with_infilling
    from codellama_recipe.data.tokenizer_resolution import resolve_tokenizer

    path = resolve_tokenizer(cfg.tokenizer_path, cfg.init_from, weights_key="init_from", cache_dir=cfg.cache_dir)
    came_with_init_from = bool(cfg.init_from) and not cfg.tokenizer_path
    if not came_with_init_from or not OmegaConf.select(cfg, "data.fim.enabled", default=False):
        return path
    if Tokenizer(path).has_infilling:
        return path
    extended = Path(str(cfg.run_dir)) / "tokenizer.model"
    if not extended.is_file():
        extend_with_infilling(path, str(extended))  # deterministic, atomic: every rank may do it
    return str(extended)


def build_loaders(cfg: DictConfig, tokenizer, rank: int, world_size: int, plan: RunPlan):
    from codellama_recipe.data.pipeline import build_train_loader, build_val_loaders

    train_loader = build_train_loader(cfg.data, tokenizer, rank, world_size, plan.micro_batch_size)
    val_loaders = {}
    if cfg.trainer.val_every and cfg.trainer.val_batches:
        val_loaders = build_val_loaders(cfg.data, tokenizer, rank, world_size, plan.micro_batch_size,
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
            have = _all_reduce(torch.tensor([0 if batch is None else 1]), device, dist.ReduceOp.MIN)
            if not int(have.item()):
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            losses, valid = token_losses_of(engine, batch, chunk_size, intra_doc)
            total += torch.stack([(losses * valid).sum().double(), valid.sum().double()])
        total = _all_reduce(total, device)
        if total[1] > 0:
            results[source] = float(total[0] / total[1])
    engine.train()
    return results


# --------------------------------------------------------------------------------------------------------
# Entry point of one stage
# --------------------------------------------------------------------------------------------------------

def run(cfg: DictConfig) -> dict:
    """Train one stage as configured; returns DONE.json's content (or {'stopped': signal} after SIGTERM).

    Everything that can be checked without a process group is checked first (ConfigError / ResumeRefused)."""
    plan = check_config(cfg)
    run_dir = Path(str(cfg.run_dir)).absolute()
    ckpt_dir = run_dir / "checkpoints"
    rank_env = int(os.environ.get("RANK", "0"))

    identity = ckpt.resume_identity(cfg, plan.world_size)
    tag = ckpt.latest_tag(ckpt_dir)
    resume_client = ckpt.read_client_state(ckpt_dir, tag) if tag else None
    allow_change = bool(OmegaConf.select(cfg, "trainer.allow_config_change", default=False))
    diffs = ckpt.check_resumable(resume_client, identity, allow_change) if resume_client else []

    fingerprint = run_fingerprint(cfg)
    done_file = run_dir / DONE_FILE
    if done_file.is_file():
        done = json.loads(done_file.read_text())
        if done.get("fingerprint") == fingerprint:
            _log(rank_env, f"{run_dir} already finished with this configuration ({DONE_FILE}); nothing to do")
            return done

    from codellama_recipe.data.tokenizer import Tokenizer

    tokenizer = Tokenizer(resolve_tokenizer_path(cfg))
    if resume_client and not diffs:
        setup = ModelSetup(ModelConfig.from_dict(resume_client["model_config"]).validate())
    else:
        setup = prepare_model(cfg, tokenizer.vocab_size, load_weights=resume_client is None)

    # ---- the process group starts here ----
    device, backend = device_and_backend()
    rank, world_size = init_distributed(backend)
    if world_size != plan.world_size:
        raise RuntimeError(f"process group has {world_size} ranks but WORLD_SIZE said {plan.world_size}")
    for note in setup.notes:
        _log(rank, note)
    for d in diffs:
        _log(rank, f"config changed since the checkpoint (trainer.allow_config_change=true): {d}")

    model = build_model(setup, seed=int(cfg.seed),
                        activation_checkpointing=bool(cfg.trainer.activation_checkpointing))
    flops_per_token = model.flops_per_token(plan.seq_len)  # before ZeRO-3 partitions the weights
    _log(rank, f"model {setup.config.to_dict()}: {model.num_params() / 1e6:.2f}M parameters; "
               f"ZeRO {plan.zero_stage}, {plan.precision}, {world_size} process(es) on {device.type}; "
               f"batch {plan.batch_tokens} tokens = {plan.grad_accum} accumulation × {plan.micro_batch_size} × "
               f"{plan.seq_len} × {world_size}")
    engine, optimizer = build_engine(cfg, plan, model, device)
    train_loader, val_loaders = build_loaders(cfg, tokenizer, rank, world_size, plan)

    if rank == 0:
        removed = ckpt.remove_incomplete(ckpt_dir)
        if removed:
            _log(rank, f"removed incomplete checkpoint folder(s) {removed} (a save was interrupted)")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_marker(run_dir, "run", setup.config.to_dict())
        ckpt.write_marker(ckpt_dir, "checkpoints", setup.config.to_dict())
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        done_file.unlink(missing_ok=True)  # trained again below: DONE.json describes the end of this run
    dist.barrier()

    state = TrainState()
    if tag:
        client, rank_state = ckpt.load(engine, ckpt_dir, tag, rank)
        state = TrainState.from_client(client)
        if rank_state is not None and client.get("identity", {}).get("world_size") == world_size:
            train_loader.load_state_dict(rank_state["data"])
            ckpt.set_rng_state(rank_state["rng"])
        else:
            _log(rank, "the data pipeline starts from the beginning of its stream (other number of processes)")
        _log(rank, f"resumed from {ckpt_dir / tag}: step {state.step}, {state.tokens_seen:,} tokens seen")
    else:
        random.seed(int(cfg.seed) + rank)
        np.random.seed(int(cfg.seed) + rank)

    logger = MetricsLogger(run_dir, rank=rank, resume_step=state.step, wandb_cfg=cfg.wandb,
                           config=ckpt.resolved(cfg), run_id=state.wandb_run_id)
    state.wandb_run_id = logger.run_id
    peak, peak_source = (peak_flops_per_device(OmegaConf.select(cfg, "trainer.peak_flops_per_device"), device,
                                               Path(str(cfg.cache_dir)))
                         if rank == 0 else (float("nan"), ""))
    _log(rank, f"MFU denominator: {peak / 1e12:.3f} TFLOP/s per process ({peak_source})")
    stop = StopFlag()
    stop.install()
    exit_code = 1
    try:
        result = fit(cfg, plan, engine=engine, optimizer=optimizer, train_loader=train_loader,
                     val_loaders=val_loaders, state=state, logger=logger, stop=stop, rank=rank, device=device,
                     run_dir=run_dir, setup=setup, identity=identity, fingerprint=fingerprint,
                     flops_per_token=flops_per_token, peak_flops=peak,
                     tokenizer_path=tokenizer.path)
        exit_code = 0
        return result
    finally:
        stop.restore()
        logger.close(exit_code)


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------

def fit(cfg: DictConfig, plan: RunPlan, *, engine, optimizer, train_loader, val_loaders: dict, state: TrainState,
        logger: MetricsLogger, stop: StopFlag, rank: int, device: torch.device, run_dir: Path, setup: ModelSetup,
        identity: dict, fingerprint: str, flops_per_token: float, peak_flops: float, tokenizer_path: str) -> dict:
    t = cfg.trainer
    max_steps = int(t.max_steps)
    ckpt_dir = run_dir / "checkpoints"
    chunk_size = int(OmegaConf.select(cfg, "trainer.loss_chunk_size", default=0) or 0)
    intra_doc = bool(OmegaConf.select(cfg, "trainer.intra_document_attention", default=False))
    max_in_row = int(OmegaConf.select(cfg, "trainer.max_nonfinite_in_row", default=5))
    nan_steps = set(OmegaConf.select(cfg, "trainer.debug_inject_nan_steps", default=[]) or [])
    nan_rank = int(OmegaConf.select(cfg, "trainer.debug_inject_nan_rank", default=-1))
    hang_at_step = OmegaConf.select(cfg, "trainer.debug_hang_at_step", default=None)
    hang_in_save = OmegaConf.select(cfg, "trainer.debug_hang_in_save_at_step", default=None)
    sources = list(train_loader.source_names)
    n_src = len(sources)
    world_size = plan.world_size

    def lr_for(step: int) -> float:
        return lr_at(step, lr=float(cfg.optim.lr), schedule=str(cfg.optim.schedule),
                     warmup_steps=int(cfg.optim.warmup_steps), max_steps=max_steps,
                     final_lr_ratio=float(cfg.optim.final_lr_ratio))

    session_start = time.time()
    elapsed_base = state.elapsed_s
    last_saved = state.step if ckpt.latest_tag(ckpt_dir) == ckpt.tag_for(state.step) else None

    def save_checkpoint() -> None:
        nonlocal last_saved
        state.elapsed_s = elapsed_base + time.time() - session_start
        client = {"train_state": asdict(state), "identity": identity,
                  "fingerprint": ckpt.fingerprint(identity), "config": ckpt.resolved(cfg),
                  "model_config": setup.config.to_dict(), "world_size": world_size, "step": state.step}
        rank_state = {"rank": rank, "data": train_loader.state_dict(), "rng": ckpt.rng_state()}

        def hang(tmp_dir):
            if hang_in_save is not None and state.step == int(hang_in_save):
                (run_dir / f"debug_hang_rank{rank}").write_text(f"in save of step {state.step}")
                while True:  # a test kills the processes here (kill -9 in the middle of a save)
                    time.sleep(0.05)

        tag = ckpt.save(engine, ckpt_dir, state.step, client, rank_state, rank=rank, keep_last=int(t.keep_last),
                        model_config=setup.config.to_dict(), hook_mid_save=hang)
        last_saved = state.step
        _log(rank, f"checkpoint {ckpt_dir / tag}")

    # Interval accumulators, summed over micro-batches and steps between two logs; all-reduced when logging.
    # [loss sum, tokens, fim sum, fim tokens, plain sum, plain tokens, non-finite micro-batches,
    #  per-source sums (n_src), per-source tokens (n_src)]
    acc = torch.zeros(7 + 2 * n_src, dtype=torch.float64, device=device)
    interval_steps, interval_time, interval_skipped = 0, 0.0, 0
    nonfinite_in_row = 0
    grad_norm = float("nan")
    lr = lr_for(state.step)
    bar = ProgressBar(OmegaConf.select(cfg, "trainer.progress_bar", default="auto") if rank == 0 else False,
                      total=max_steps, initial=state.step)
    batches = iter(train_loader)
    _log(rank, f"training steps {state.step + 1}..{max_steps}")

    while state.step < max_steps:
        # ---- step boundary: did any rank receive SIGTERM/SIGUSR1? ----
        if _all_reduce(torch.tensor([stop.signum]), device, dist.ReduceOp.MAX).item():
            break

        # ---- one optimizer update ----
        t0 = time.perf_counter()
        step_number = state.step + 1
        lr = lr_for(state.step)
        set_lr(optimizer, lr)
        for _ in range(plan.grad_accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            losses, valid = token_losses_of(engine, batch, chunk_size, intra_doc)
            loss = mean_loss(losses, valid)
            if step_number in nan_steps and nan_rank in (-1, rank):
                loss = loss * float("nan")
            finite = torch.isfinite(loss)
            # A non-finite loss must poison the gradients (an inf loss can have finite ones) so that the
            # overflow check skips the update on every rank; a finite loss is multiplied by exactly 1.
            engine.backward(loss * torch.where(finite, 1.0, float("nan")).detach())
            engine.step()

            with torch.no_grad():
                kept = valid & finite
                tok = torch.where(kept, losses.detach(), 0.0).double()
                fim = batch["is_fim"].bool() & kept
                plain = ~batch["is_fim"].bool() & kept
                src = batch["source_ids"][kept]
                acc[0] += tok.sum()
                acc[1] += kept.sum()
                acc[2] += tok[fim].sum()
                acc[3] += fim.sum()
                acc[4] += tok[plain].sum()
                acc[5] += plain.sum()
                acc[6] += (~finite).double()
                acc[7:7 + n_src].index_add_(0, src, tok[kept])
                acc[7 + n_src:].index_add_(0, src, torch.ones_like(src, dtype=torch.float64))

        state.step += 1
        state.tokens_seen += plan.batch_tokens
        if engine.was_step_applied():
            nonfinite_in_row = 0
            norm = engine.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else float("nan")
        else:
            state.nonfinite_skipped += 1
            interval_skipped += 1
            nonfinite_in_row += 1
            _log(rank, f"step {state.step}: non-finite loss or gradient norm; update skipped "
                       f"({nonfinite_in_row} in a row, {state.nonfinite_skipped} in total)")
        interval_steps += 1
        interval_time += time.perf_counter() - t0
        too_many = nonfinite_in_row >= max_in_row

        # ---- metrics ----
        is_last = state.step == max_steps
        do_val = bool(val_loaders) and (state.step % int(t.val_every) == 0 or is_last) and not too_many
        if state.step % int(t.log_every) == 0 or do_val or is_last or too_many:
            total = _all_reduce(acc, device).cpu()
            tokens_per_s = plan.batch_tokens * interval_steps / max(interval_time, 1e-9)
            metrics = {
                "train/loss": float(total[0] / total[1]) if total[1] > 0 else float("nan"),
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/tokens_seen": state.tokens_seen,
                "train/nonfinite_skipped": state.nonfinite_skipped,
                "train/nonfinite_in_interval": interval_skipped,
                "train/nonfinite_microbatches": int(total[6]),
                "perf/tokens_per_s": tokens_per_s,
                "perf/mfu": flops_per_token * tokens_per_s / (peak_flops * world_size),
                "perf/step_time_s": interval_time / interval_steps,
                "perf/memory_gb": memory_gb(device),
            }
            if total[3] > 0:
                metrics["train/loss/fim"] = float(total[2] / total[3])
            if total[5] > 0:
                metrics["train/loss/plain"] = float(total[4] / total[5])
            for i, name in enumerate(sources):
                if total[7 + n_src + i] > 0:
                    metrics[f"train/loss/{name}"] = float(total[7 + i] / total[7 + n_src + i])
            per_rank = [None] * world_size
            dist.all_gather_object(per_rank, train_loader.metrics())
            metrics.update(combine_data_metrics(per_rank))
            if do_val:
                state.last_val = validate(engine, val_loaders, device, chunk_size, intra_doc)
                metrics.update({f"val/loss/{s}": v for s, v in state.last_val.items()})
            if math.isfinite(metrics["train/loss"]):
                state.last_train_loss = metrics["train/loss"]
            logger.log(state.step, metrics)
            bar.update(interval_steps, loss=f"{metrics['train/loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            acc.zero_()
            interval_steps, interval_time, interval_skipped = 0, 0.0, 0

        if too_many:
            bar.close()
            raise TooManyNonFinite(
                f"{nonfinite_in_row} consecutive updates had a non-finite loss or gradient norm (last at step "
                f"{state.step}); stopping. The latest checkpoint ({ckpt.latest_tag(ckpt_dir)}) holds finite weights. "
                f"Lower optim.lr, check the data, or raise trainer.max_nonfinite_in_row.")

        # ---- checkpoint ----
        if int(t.checkpoint_every) and state.step % int(t.checkpoint_every) == 0 and state.step < max_steps:
            save_checkpoint()

        if hang_at_step is not None and state.step == int(hang_at_step):
            (run_dir / f"debug_hang_rank{rank}").write_text(f"after step {state.step}")
            while not stop.signum:  # a test sends a signal or kills the processes here
                time.sleep(0.05)
    bar.close()

    if state.step < max_steps:  # stopped by a signal
        if last_saved != state.step:
            save_checkpoint()
        _log(rank, f"stopped by signal {stop.signum} at step {state.step}; rerun the same command to resume")
        return {"stopped": int(stop.signum), "steps": state.step, "tokens": state.tokens_seen}

    if last_saved != state.step:
        save_checkpoint()
    state.elapsed_s = elapsed_base + time.time() - session_start
    done = {"fingerprint": fingerprint, "steps": state.step, "tokens": state.tokens_seen,
            "time_s": state.elapsed_s, "train_loss": state.last_train_loss, "val_loss": state.last_val,
            "nonfinite_skipped": state.nonfinite_skipped, "wandb_run_id": state.wandb_run_id,
            "checkpoint": str(ckpt_dir / ckpt.tag_for(state.step)), "hf_dir": str(run_dir / "hf"),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if rank == 0:
        export_hf(ckpt_dir / ckpt.tag_for(state.step), run_dir / "hf", tokenizer_path,
                  str(OmegaConf.select(cfg, "trainer.export_dtype", default="fp32")))
        ckpt.write_json_atomic(run_dir / DONE_FILE, done)
        logger.summary({"final/train_loss": state.last_train_loss, "final/steps": state.step,
                        **{f"final/val_loss/{s}": v for s, v in state.last_val.items()}})
        _log(rank, f"done: {state.step} steps, {state.tokens_seen:,} tokens, {state.elapsed_s:.0f}s; "
                   f"weights in {run_dir / 'hf'}")
    dist.barrier()
    return done


def export_hf(tag_dir: Path, out_dir: Path, tokenizer_path: str, dtype: str) -> None:
    """Consolidate a checkpoint (ZeRO shards included) and write it in Hugging Face format, atomically."""
    from codellama_recipe.train.weight_formats import save_hf

    model_cfg, state_dict = ckpt.load_consolidated(tag_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(state_dict, model_cfg, tmp, tokenizer_path=tokenizer_path,
            dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
