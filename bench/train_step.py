"""Training-step throughput of codellama_recipe.train.model.Llama against transformers' LlamaForCausalLM, side by side.

Both models get the same configuration, batch, dtype and SDPA attention; one step is forward + cross-entropy
+ backward + AdamW (fused, the same for both). Steps are interleaved (ours, theirs, theirs, ours, ...) after warm-up,
so each pair of neighbouring steps sees the same machine load. Printed per model: wall-clock tokens/s of the
fastest and the median step, and MFU against the 2048^3 matmul rate in the run's dtype, measured in the same run
(between pairs, best sample kept). The last line is the median over the pairs of (their step time / our step
time): the median discards the bursts of other jobs on a shared machine, which swing single pairs by 0.7-1.45x.

    python bench/train_step.py                    # ~29M non-embedding params, seq 512, batch 4, fp32
    python bench/train_step.py --seq-len 256 --batch-size 2 --repeats 3

The last line is exactly `ours/transformers = X.XX` (ratio of tokens/s; > 1 means ours is faster).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from codellama_recipe.train.model import Llama, ModelConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=4)
    p.add_argument("--multiple-of", type=int, default=256)
    p.add_argument("--ffn-dim-multiplier", type=float, default=1.3)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    p.add_argument("--repeats", type=int, default=16, help="timed steps per model (interleaved)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def matmul_peak_flops(dtype=torch.float32, n=2048, repeats=3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def build_hf(cfg: ModelConfig, state_dict, dtype):
    import tempfile

    from transformers import LlamaForCausalLM

    from codellama_recipe.train.weight_formats import save_hf

    with tempfile.TemporaryDirectory() as d:
        save_hf(state_dict, cfg, d)
        model = LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=dtype)
    return model


class Runner:
    def __init__(self, name, model, logits_fn, batch, labels):
        self.name, self.model, self.logits_fn = name, model, logits_fn
        self.batch, self.labels = batch, labels
        # The same optimizer for both: fused AdamW (one pass per tensor; ~5x faster than foreach on CPU).
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        self.times = []
        self.losses = []

    def step(self, timed=True):
        t0 = time.perf_counter()
        logits = self.logits_fn(self.model, self.batch)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), self.labels.flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if timed:
            self.times.append(dt)
        self.losses.append(loss.item())


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = ModelConfig(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                      vocab_size=args.vocab_size, multiple_of=args.multiple_of,
                      ffn_dim_multiplier=args.ffn_dim_multiplier, max_seq_len=args.seq_len)
    ours = Llama(cfg).to(dtype).train()
    theirs = build_hf(cfg, ours.state_dict(), dtype).train()
    tokens = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1))
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    runners = [
        Runner("ours", ours, lambda m, x: m(x), inputs, labels),
        Runner("transformers", theirs, lambda m, x: m(input_ids=x, use_cache=False).logits, inputs, labels),
    ]
    print(f"config: {cfg.to_dict()} | hidden {cfg.hidden_dim}")
    print(f"params: {ours.num_params(include_embeddings=False) / 1e6:.2f}M non-embedding, "
          f"{ours.num_params() / 1e6:.2f}M total | batch {args.batch_size} x seq {args.seq_len} | {args.dtype} | "
          f"threads {torch.get_num_threads()}")
    peak = matmul_peak_flops(dtype)
    for _ in range(args.warmup):
        for r in runners:
            r.step(timed=False)
    # Alternate which model goes first (ABBA...): the second step of a pair was measurably favoured.
    for i in range(args.repeats):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            r.step()
        # The peak is sampled between pairs too: one sample taken during a burst of other load would otherwise
        # put MFU above 100%.
        peak = max(peak, matmul_peak_flops(dtype, repeats=1))
    step_tokens = args.batch_size * args.seq_len
    flops_per_step = ours.flops_per_token(args.seq_len) * step_tokens
    print(f"{args.dtype} matmul peak (2048^3, best of {args.repeats + 3} samples): {peak / 1e9:.1f} GFLOP/s; "
          f"model FLOPs/token {ours.flops_per_token(args.seq_len) / 1e6:.1f}M")
    for r in runners:
        med, best = statistics.median(r.times), min(r.times)
        print(f"{r.name:>12}: fastest step {best:.3f}s = {step_tokens / best:.0f} tokens/s, MFU "
              f"{flops_per_step / best / peak:.1%} | median {med:.3f}s = {step_tokens / med:.0f} tokens/s | "
              f"first/last loss {r.losses[0]:.4f}/{r.losses[-1]:.4f}")
    ours_r, theirs_r = runners
    pairs = [t / o for o, t in zip(ours_r.times, theirs_r.times)]
    print(f"their/our step time: fastest steps {min(theirs_r.times) / min(ours_r.times):.3f}, "
          f"per pair {', '.join(f'{r:.2f}' for r in pairs)}")
    print(f"ours/transformers = {statistics.median(pairs):.2f}")


if __name__ == "__main__":
    main()
