"""Where the numbers go: run_dir/metrics.jsonl, wandb, a progress bar; and the MFU denominator.

Metric names are grouped by prefix (`train/`, `val/`, `perf/`, `data/`; evaluation adds `eval/`), so wandb's
workspace forms one section per group. Each logged step is one JSON line in metrics.jsonl with `step`,
`loss`, `lr`, `tokens_per_s`, `mfu` as top-level keys plus every prefixed name.

Resuming: the JSONL file is cut back to the checkpoint's step (a run killed with -9 may have logged steps
after its last checkpoint; they are logged again by the resumed run, so every step appears exactly once).
wandb continues the same run id with resume="allow"; all panels use our `step` as x axis
(`define_metric(step_metric="step")`), so steps logged again after a kill land on the same x values and
nothing is dropped by wandb's monotonic internal step.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from codellama_recipe.core.atomic import write_json_atomic, write_text_atomic
from codellama_recipe.train.callbacks import Callback
from codellama_recipe.train.distributed import all_reduce

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"
METRIC_GROUPS = ("train", "val", "perf", "data", "eval")
# Dense bf16 tensor-core peaks (FLOP/s) by device name; MFU uses these unless trainer.peak_flops_per_device is set.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12,
                  "L40S": 362e12, "L4": 121e12, "A10": 125e12, "V100": 125e12, "MI300X": 1307e12}
TOP_LEVEL = {"loss": "train/loss", "lr": "train/lr", "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu"}


# --------------------------------------------------------------------------------------------------------
# Peak FLOP/s per device (the MFU denominator)
# --------------------------------------------------------------------------------------------------------

def measure_matmul_flops(n: int = 1024, repeats: int = 8, dtype=torch.float32) -> float:
    """Best rate of an n×n×n matmul on this process's CPU threads (FLOP/s)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def _cpu_key() -> str:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{model}|threads={torch.get_num_threads()}|fp32"


def cpu_peak_flops(cache_dir: Path) -> float:
    """The best fp32 matmul rate seen on this (host, CPU, thread count), kept in <cache_dir>/peak_flops.json.

    Measured again at every start (~0.1 s) and the maximum kept: a measurement taken while other jobs loaded
    the machine would otherwise stay as a too-low denominator (and inflate MFU) for good."""
    cache = Path(cache_dir) / "peak_flops.json"
    key = _cpu_key()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    measured = measure_matmul_flops()
    if measured > known.get(key, 0.0):
        known[key] = measured
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, known)
    return float(known[key])


def peak_flops_per_device(configured, device: torch.device, cache_dir: Path) -> tuple[float, str]:
    """(FLOP/s, where the number comes from)."""
    if configured:
        return float(configured), "trainer.peak_flops_per_device"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"bf16 dense peak of {name}"
        return measure_matmul_flops(4096, 10, torch.bfloat16), f"measured bf16 matmul on {name}"
    return cpu_peak_flops(cache_dir), "measured fp32 matmul on this CPU (cached)"


def mfu_metrics(achieved_flops: float, peak_flops: float) -> tuple[dict, str | None]:
    """{"perf/mfu": achieved / peak} when that is at most 1. Above 1 the denominator is wrong (a CPU peak measured
    while the machine was busy, a wrong trainer.peak_flops_per_device): the ratio is logged as
    perf/achieved_over_peak instead, with a warning, and never as MFU."""
    ratio = achieved_flops / peak_flops
    if ratio <= 1.0:
        return {"perf/mfu": ratio}, None
    return {"perf/achieved_over_peak": ratio}, (
        f"MFU would be {ratio:.2f} > 1: the peak of {peak_flops / 1e12:.3f} TFLOP/s per process is too low "
        "(measured while the machine was busy?); MFU is not logged; set trainer.peak_flops_per_device")


def memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory since the last call, or this process's resident CPU memory."""
    if device.type == "cuda":
        value = torch.cuda.max_memory_allocated(device) / 1e9
        torch.cuda.reset_peak_memory_stats(device)
        return value
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------------------------------------
# What one metrics line sums up
# --------------------------------------------------------------------------------------------------------

@dataclass
class IntervalMetrics:
    """The training numbers of one metrics line, summed over the micro-batches and steps since the previous one.

    Loss sums and token counts are float64 tensors on the training device (no host sync per micro-batch), added
    up over ranks in one collective by `all_reduced`; steps, time and skipped steps are the same on every rank.
    A micro-batch with a non-finite loss is only counted as such: its tokens are left out of every sum."""
    sources: list[str]
    device: torch.device
    steps: int = 0
    time_s: float = 0.0
    skipped_steps: int = 0

    def __post_init__(self):
        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=self.device)

        self.loss_sum, self.tokens = zeros(), zeros()
        self.fim_loss_sum, self.fim_tokens = zeros(), zeros()
        self.plain_loss_sum, self.plain_tokens = zeros(), zeros()
        self.nonfinite_microbatches = zeros()
        self.source_loss_sums, self.source_tokens = zeros(len(self.sources)), zeros(len(self.sources))

    @torch.no_grad()
    def add_microbatch(self, losses: torch.Tensor, valid: torch.Tensor, finite: torch.Tensor,
                       is_fim: torch.Tensor, source_ids: torch.Tensor) -> None:
        """Per-token losses [B, T], the mask of tokens that carry one, whether the micro-batch's loss was finite
        (0-dim bool), and per token whether it is part of an infilling example and the index of its source."""
        kept = valid & finite
        token_losses = torch.where(kept, losses.detach(), 0.0).double()
        fim = is_fim.bool() & kept
        plain = ~is_fim.bool() & kept
        sources = source_ids[kept]
        self.loss_sum += token_losses.sum()
        self.tokens += kept.sum()
        self.fim_loss_sum += token_losses[fim].sum()
        self.fim_tokens += fim.sum()
        self.plain_loss_sum += token_losses[plain].sum()
        self.plain_tokens += plain.sum()
        self.nonfinite_microbatches += (~finite).double()
        self.source_loss_sums.index_add_(0, sources, token_losses[kept])
        self.source_tokens.index_add_(0, sources, torch.ones_like(sources, dtype=torch.float64))

    def all_reduced(self) -> "IntervalMetrics":
        """This interval with every sum taken over all ranks (one all-reduce of the packed sums), on the CPU."""
        n = len(self.sources)
        packed = torch.cat([torch.stack([self.loss_sum, self.tokens, self.fim_loss_sum, self.fim_tokens,
                                         self.plain_loss_sum, self.plain_tokens, self.nonfinite_microbatches]),
                            self.source_loss_sums, self.source_tokens])
        total = all_reduce(packed).cpu()
        out = IntervalMetrics(self.sources, total.device, self.steps, self.time_s, self.skipped_steps)
        (out.loss_sum, out.tokens, out.fim_loss_sum, out.fim_tokens, out.plain_loss_sum, out.plain_tokens,
         out.nonfinite_microbatches) = total[:7]
        out.source_loss_sums, out.source_tokens = total[7:7 + n], total[7 + n:]
        return out

    def mean_loss(self) -> float:
        return float(self.loss_sum / self.tokens) if self.tokens > 0 else float("nan")

    def loss_breakdown(self) -> dict[str, float]:
        """train/loss/fim, train/loss/plain and train/loss/<source>, for those that had tokens."""
        out = {}
        if self.fim_tokens > 0:
            out["train/loss/fim"] = float(self.fim_loss_sum / self.fim_tokens)
        if self.plain_tokens > 0:
            out["train/loss/plain"] = float(self.plain_loss_sum / self.plain_tokens)
        for name, loss_sum, tokens in zip(self.sources, self.source_loss_sums, self.source_tokens):
            if tokens > 0:
                out[f"train/loss/{name}"] = float(loss_sum / tokens)
        return out


# --------------------------------------------------------------------------------------------------------
# metrics.jsonl
# --------------------------------------------------------------------------------------------------------

def truncate_jsonl(path: Path, max_step: int) -> int:
    """Keep the lines with step <= max_step (and drop a torn last line); returns how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= max_step:
                kept.append(line)
                continue
        except (ValueError, KeyError, TypeError):
            pass
        dropped += 1
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the information readable
    return v


def _new_run_id() -> str:
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class MetricsLogger(Callback):
    """metrics.jsonl and wandb, as a callback of the loop: rank 0 writes; other ranks hold a logger that does
    nothing."""

    def __init__(self, run_dir: Path, *, rank: int, resume_step: int, wandb_cfg, config: dict,
                 run_id: str | None):
        self.enabled = rank == 0
        self.path = Path(run_dir) / METRICS_FILE
        self.run = None
        self.run_id = run_id
        if not self.enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.dropped = truncate_jsonl(self.path, resume_step)
        self._file = open(self.path, "a")
        mode = str(wandb_cfg.mode)
        if mode != "disabled":
            self.run = self._init_wandb(Path(run_dir), wandb_cfg, config, run_id)
            self.run_id = self.run.id

    @staticmethod
    def _init_wandb(run_dir: Path, wandb_cfg, config: dict, run_id: str | None):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        if run_id is None and id_file.is_file():
            run_id = id_file.read_text().strip()  # an attempt that died before its first checkpoint
        run_id = run_id or _new_run_id()
        id_file.write_text(run_id)
        run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, group=wandb_cfg.group,
                         job_type=wandb_cfg.job_type, name=wandb_cfg.name, id=run_id, resume="allow",
                         dir=str(run_dir), mode=str(wandb_cfg.mode), config=config,
                         settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
        run.define_metric("step")
        for group in METRIC_GROUPS:
            run.define_metric(f"{group}/*", step_metric="step")
        return run

    def log(self, step: int, metrics: dict) -> dict:
        if not self.enabled:
            return {}
        row = {"step": step}
        for short, long in TOP_LEVEL.items():
            if long in metrics:
                row[short] = _jsonable(metrics[long])
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log({"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        return row

    def on_metrics(self, ctx, metrics: dict) -> None:
        self.log(ctx.state.step, metrics)

    def on_train_end(self, ctx, exit_code: int) -> None:
        self.close(exit_code)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def close(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


class ProgressBar(Callback):
    """tqdm on rank 0, as a callback of the loop: steps, loss, tokens/s and the ETA of the remaining steps."""

    def __init__(self, mode, *, rank: int = 0):
        """mode: "auto" (only when attached to a terminal), "true"/True or "false"/False."""
        self.mode, self.rank, self.bar = str(mode).lower(), rank, None

    def on_train_start(self, ctx) -> None:
        if self.mode == "false" or self.rank != 0:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=ctx.cfg.trainer.max_steps, initial=ctx.state.step, unit="step", dynamic_ncols=True,
                        mininterval=1.0, disable=None if self.mode == "auto" else False, desc="train")

    def on_metrics(self, ctx, metrics: dict) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix({"loss": f"{metrics['train/loss']:.4f}",
                              "tok_s": f"{metrics['perf/tokens_per_s']:,.0f}"}, refresh=False)
        self.bar.update(ctx.state.step - self.bar.n)
        if ctx.state.step >= ctx.cfg.trainer.max_steps:
            self.on_train_end(ctx, 0)

    def on_train_end(self, ctx, exit_code: int) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
