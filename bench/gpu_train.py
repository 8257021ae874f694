"""Single-GPU training throughput of codellama_recipe.train.model.Llama on a 1.1B-class model, with nothing but torch.

    PYTHONPATH=. python3 bench/gpu_train.py                 # 1.1B, seq 4096, bf16 autocast, ~50 steps
    PYTHONPATH=. python3 bench/gpu_train.py --smoke         # tiny dims, 2 steps (runs on CPU too)

First, a correctness check on this device's attention kernels: left-padded batched decoding with the KV cache
must equal each prompt recomputed alone (exit 1 otherwise).
Model: dim 2048, 22 layers, 32 heads, 4 kv heads, FFN 5632 (TinyLlama-1.1B's shape), vocab 32000. Random
tokens; fp32 master weights, bf16 autocast, fused AdamW, optional torch.compile per block (falls back to eager
if compiling fails). Reports tokens/s and MFU against --peak-flops (default 989e12: H100 SXM dense bf16), then
peak memory and tokens/s of one step on a single 16,384-token sequence (the long-context stage's length).
Lines starting with `RESULT` are the summary that bench/gpu_check.sh collects.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def import_model():
    """codellama_recipe.train.model, also from a bare checkout on a box with only torch (nothing installed):
    the repository root is then registered as the package it is installed as."""
    try:
        import codellama_recipe  # noqa: F401
    except ImportError:
        package = types.ModuleType("codellama_recipe")
        package.__path__ = [str(Path(__file__).resolve().parents[1])]
        sys.modules["codellama_recipe"] = package
    return importlib.import_module("codellama_recipe.train.model")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 steps: checks the script, not the GPU")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    p.add_argument("--long-seq-len", type=int, default=16384, help="length of the single long-sequence step")
    p.add_argument("--peak-flops", type=float, default=989e12, help="accelerator peak for MFU (bf16 dense)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    return p.parse_args(argv)


def model_config(M, smoke: bool):
    if smoke:
        return M.ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32)
    # int(8 * 2048 / 3) = 5461 -> 256 * ceil(5461 / 256) = 5632
    return M.ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, multiple_of=256)


@torch.no_grad()
def check_cached_decoding(M, device) -> float:
    """Left-padded batched decoding with the KV cache against each prompt recomputed alone, on this device's
    attention kernels (fp32, TF32 off). Returns the largest logit difference."""
    torch.manual_seed(0)
    model = M.Llama(M.ModelConfig(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=300,
                                  multiple_of=32, rope_theta=1e6)).to(device).eval()
    prompts = [torch.randint(3, 300, (n,), device=device) for n in (9, 5)]
    width, steps = 9, 4
    tokens = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long, device=device), p])
                          for p in prompts])
    valid = torch.stack([torch.arange(width, device=device) >= width - len(p) for p in prompts])
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    cache = model.new_kv_cache(2, width + steps)
    logits = model(tokens, kv_cache=cache, key_padding_mask=valid, position_ids=positions)[:, -1]
    seqs, worst = [p[None] for p in prompts], 0.0
    for step in range(steps):
        for i in range(2):
            worst = max(worst, (logits[i] - model(seqs[i])[0, -1]).abs().max().item())
        nxt = logits.argmax(-1)
        seqs = [torch.cat([s, nxt[i].view(1, 1)], dim=1) for i, s in enumerate(seqs)]
        valid = torch.cat([valid, torch.ones(2, 1, dtype=torch.bool, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(nxt[:, None], kv_cache=cache, start_pos=width + step, key_padding_mask=valid,
                       position_ids=positions)[:, -1]
    return worst


def make_step(model, opt, device):
    def step(tokens):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(step, batch_fn, n, device):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step(batch_fn())
    loss = loss.item()
    sync(device)
    return time.perf_counter() - t0, loss


def main(argv=None):
    args = parse_args(argv)
    M = import_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.steps, args.warmup, args.seq_len, args.batch_size, args.long_seq_len = 2, 1, 64, 2, 256
        args.no_compile = args.no_compile or device.type == "cpu"
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)} | torch {torch.__version__}")
    else:
        print(f"device: cpu (no CUDA) | torch {torch.__version__}")
    diff = check_cached_decoding(M, device)
    print(f"RESULT check: cached left-padded decoding vs full recomputation, max |diff| {diff:.1e} "
          f"({'ok' if diff < 1e-3 else 'MISMATCH'})")
    if diff >= 1e-3:
        sys.exit(1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    cfg = model_config(M, args.smoke)
    cfg.max_seq_len = max(args.seq_len, args.long_seq_len)
    model = M.Llama(cfg, activation_checkpointing=args.activation_checkpointing).to(device).train()
    print(f"model: {model.num_params() / 1e9:.3f}B params ({model.num_params(False) / 1e9:.3f}B non-embedding), "
          f"hidden {cfg.hidden_dim}, seq {args.seq_len}, batch {args.batch_size}")
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        fused = True
    except (RuntimeError, TypeError) as e:
        print(f"fused AdamW unavailable ({e}); using foreach")
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        fused = False
    step = make_step(model, opt, device)

    def batch(seq_len, batch_size):
        return torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=device)

    compiled = False
    if not args.no_compile:
        try:
            # Blocks differ only in the int attribute layer_idx: let dynamo treat it as dynamic (one graph for
            # all blocks) and allow a recompile per block where that is not honoured; with the default limit
            # of 8, blocks past the 8th silently ran eager.
            torch._dynamo.config.allow_unspec_int_on_nn_module = True
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(model.layers))
            for layer in model.layers:
                layer.compile()
            t0 = time.perf_counter()
            step(batch(args.seq_len, args.batch_size))
            sync(device)
            compiled = True
            print(f"torch.compile (per block): first step {time.perf_counter() - t0:.1f}s")
        except Exception as e:  # any compiler failure: measure eager instead
            print(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); falling back to eager")
            for layer in model.layers:
                layer._compiled_call_impl = None
            opt.zero_grad(set_to_none=True)
            torch._dynamo.reset()

    timed_steps(step, lambda: batch(args.seq_len, args.batch_size), args.warmup, device)
    seconds, loss = timed_steps(step, lambda: batch(args.seq_len, args.batch_size), args.steps, device)
    tokens_per_s = args.steps * args.batch_size * args.seq_len / seconds
    mfu = tokens_per_s * model.flops_per_token(args.seq_len) / args.peak_flops
    mode = "compiled" if compiled else "eager"
    print(f"RESULT train: {tokens_per_s:,.0f} tokens/s | MFU {mfu:.1%} of {args.peak_flops:.3g} FLOP/s | "
          f"{seconds / args.steps * 1000:.0f} ms/step | loss {loss:.3f} | {mode}, fused AdamW {fused}, "
          f"seq {args.seq_len} x batch {args.batch_size}")
    if device.type == "cuda":
        print(f"RESULT train peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    # One step on a single long sequence; the first call may recompile for the new shape, so time the second.
    timed_steps(step, lambda: batch(args.long_seq_len, 1), 1, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, loss = timed_steps(step, lambda: batch(args.long_seq_len, 1), 1, device)
    long_tps = args.long_seq_len / seconds
    long_mfu = long_tps * model.flops_per_token(args.long_seq_len) / args.peak_flops
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (cpu)"
    print(f"RESULT long {args.long_seq_len}-token step: {long_tps:,.0f} tokens/s | MFU {long_mfu:.1%} | "
          f"peak memory {memory} | loss {loss:.3f} | {mode}")


if __name__ == "__main__":
    main()
