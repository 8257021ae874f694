"""Will a stage fit? Memory per GPU for every stage of a configuration, before anything is queued.

    codellama-estimate model=7b hardware=8xh100
    codellama-estimate model=34b hardware=8xh100 deepspeed=zero3 hardware.devices=32

Composes each stage's codellama-train configuration with the same overrides (stage=code, python, long_context,
instruct) and adds up, per device:
- model states (ZeRO's accounting): weights, gradients and Adam states, in the precision trained (bf16: 2 + 2 bytes
  per parameter plus an fp32 master copy and two fp32 moments, 12 bytes; fp32: 4 + 4 + 8), each divided by the
  number of devices where the ZeRO stage partitions it (1: optimizer; 2: + gradients; 3: + weights);
- activations kept for the backward per micro-batch, counted per layer from the model's shapes (norm inputs and
  outputs, q/k/v, attention output, the three FFN projections and their product; memory-efficient attention
  keeps no seq × seq matrix); with activation checkpointing only each layer's input plus one layer recomputed;
- the logits and their loss: the whole micro-batch × vocabulary, or one loss chunk (trainer.loss_chunk_size);
- a fixed allowance for the CUDA context, allocator fragmentation and communication buffers (OVERHEAD_GB).
It is an estimate: tests/test_memory_estimate.py checks the parameter count against the model itself and the
activation count against the tensors autograd actually saves, on CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from codellama_recipe.core.cli import compose_checked, refuse
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import ModelConfig, TrainConfig
from codellama_recipe.train.config_checks import typed_train_config

STAGES = ("code", "python", "long_context", "instruct")
OVERHEAD_GB = 3.0
CODE_LLAMA_VOCAB = 32016   # Llama 2's 32,000 pieces + the infilling tokens, when model.vocab_size is null
GB = 1024 ** 3


@dataclasses.dataclass
class Estimate:
    stage: str
    seq_len: int
    micro_batch: int
    params: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + OVERHEAD_GB * GB


def parameter_count(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, vocab_size: int, ffn_dim: int) -> int:
    head_dim = dim // n_heads
    attention = dim * dim * 2 + 2 * dim * n_kv_heads * head_dim        # wq, wo, wk, wv
    ffn = 3 * dim * ffn_dim                                             # w1, w2, w3
    per_layer = attention + ffn + 2 * dim                               # two RMSNorm weights
    return n_layers * per_layer + 2 * vocab_size * dim + dim            # embedding, output, final norm


def activation_elements_per_layer(seq_len: int, micro_batch: int, dim: int, n_heads: int, n_kv_heads: int,
                                  ffn_dim: int) -> int:
    """Elements one transformer block keeps for its backward (memory-efficient attention: no seq × seq)."""
    tokens = seq_len * micro_batch
    kv = dim // n_heads * n_kv_heads
    # norm in/out, q, k, v, attention output, and its copy as the o-projection's input
    attention = tokens * (dim + dim + dim + 2 * kv + dim + dim)
    ffn = tokens * (dim + dim + 4 * ffn_dim)                # residual in, norm out, w1 out, w3 out, silu, product
    return attention + ffn


def model_states(params: int, precision: str, zero_stage: int, devices: int) -> tuple[float, float, float]:
    weight_bytes, grad_bytes, optim_bytes = (2, 2, 12) if precision == "bf16" else (4, 4, 8)
    weights, gradients, optimizer = params * weight_bytes, params * grad_bytes, params * optim_bytes
    if zero_stage >= 1:
        optimizer /= devices
    if zero_stage >= 2:
        gradients /= devices
    if zero_stage >= 3:
        weights /= devices
    return weights, gradients, optimizer


def estimate_stage(cfg: TrainConfig, devices: int) -> Estimate:
    from codellama_recipe.train.engine_setup import loss_chunk_tokens

    m = ModelConfig.from_dict(dataclasses.asdict(cfg.model))
    vocab = m.vocab_size or CODE_LLAMA_VOCAB
    ffn = m.hidden_dim
    t, seq, b = cfg.trainer, int(cfg.data.seq_len), int(cfg.trainer.micro_batch_size)
    params = parameter_count(m.dim, m.n_layers, m.n_heads, m.kv_heads, vocab, ffn)
    weights, gradients, optimizer = model_states(params, t.precision, int(cfg.deepspeed["zero_optimization"]["stage"]),
                                                 devices)
    act_bytes = 2 if t.precision == "bf16" else 4
    per_layer = activation_elements_per_layer(seq, b, m.dim, m.n_heads, m.kv_heads, ffn) * act_bytes
    if t.activation_checkpointing:
        activations = m.n_layers * seq * b * m.dim * act_bytes + per_layer
    else:
        activations = m.n_layers * per_layer
    chunk = loss_chunk_tokens(t.loss_chunk_size, seq * b, vocab)
    logit_tokens = chunk if chunk else seq * b
    logits = logit_tokens * vocab * (act_bytes + 4 + 4)   # logits, fp32 for the loss, their gradient
    return Estimate(cfg.stage.name, seq, b, params, weights, gradients, optimizer, activations, logits)


def table(estimates: list[Estimate], devices: int, device_gb: float) -> str:
    head = (f"{'stage':<13}{'seq':>7}{'micro':>6}{'weights':>9}{'grads':>8}{'optim':>8}{'activ.':>9}"
            f"{'logits':>8}{'total GB':>10}  fits {device_gb:g} GB")
    lines = [head]
    for e in estimates:
        fits = "yes" if e.total <= device_gb * GB else "NO"
        lines.append(f"{e.stage:<13}{e.seq_len:>7}{e.micro_batch:>6}{e.weights / GB:>9.1f}{e.gradients / GB:>8.1f}"
                     f"{e.optimizer / GB:>8.1f}{e.activations / GB:>9.1f}{e.logits / GB:>8.1f}{e.total / GB:>10.1f}"
                     f"  {fits}")
    lines.append(f"{estimates[0].params / 1e9:.2f}B parameters on {devices} devices; includes {OVERHEAD_GB:g} GB "
                 "per device for the CUDA context, fragmentation and buffers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codellama-estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="codellama-train overrides (model=7b hardware=8xh100 …)")
    args = parser.parse_args(argv)
    if any(o.split("=", 1)[0].lstrip("+~") == "stage" for o in args.overrides):
        return refuse("codellama-estimate", "config error: stage: every stage is estimated; leave stage= out")
    estimates = []
    try:
        for stage in STAGES:
            cfg = typed_train_config(compose_checked("train", [*args.overrides, f"stage={stage}"]))
            devices, device_gb = int(cfg.hardware.devices), float(cfg.hardware.device_memory_gb)
            if devices < 1 or device_gb <= 0:
                raise ConfigError("hardware.devices / hardware.device_memory_gb", f"{devices} / {device_gb}",
                                  "a positive number of devices and of GB each")
            estimates.append(estimate_stage(cfg, devices))
    except ConfigError as e:
        return refuse("codellama-estimate", str(e))
    print(table(estimates, devices, device_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
