"""Generation speed: KV cache vs full recomputation, same random model, same prompts, greedy.

    python bench/generate.py [--dim 256 --layers 4 --heads 8 --kv-heads 4 --vocab 4096
                              --batch 4 --prompt 64 --new 64 --repeats 3 --threads 1]

Prints tokens/s of each (new tokens only; the best of --repeats runs), checks both produce the same
tokens, and ends with the line `kv/recompute = X.XX` (the speed ratio).
"""
from __future__ import annotations

import argparse
import time
import types

import torch

from codellama_recipe.evaluation.generation import GenerationParams, Generator
from codellama_recipe.train.model import Llama, ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="generated tokens per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0 = torch's default). 1 by default: on a shared CPU several OpenMP "
                         "threads made small-batch decoding >10x slower and the figures noise")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                      vocab_size=args.vocab, multiple_of=64, max_seq_len=args.prompt + args.new)
    model = Llama(cfg).to(args.device).eval()
    with torch.no_grad():   # larger weights than the init: logits far from uniform, no argmax near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    tokenizer = types.SimpleNamespace(pad_id=0, eos_id=1)       # only ids are needed for token-level generation
    generator = Generator(model, tokenizer, batch_size=args.batch, device=args.device)
    prompts = torch.randint(2, args.vocab, (args.batch, args.prompt)).tolist()
    params = GenerationParams(max_new_tokens=args.new, stop_token_ids=())
    print(f"model: {model.num_params() / 1e6:.1f}M params (dim {args.dim}, {args.layers} layers), device "
          f"{args.device}, {torch.get_num_threads()} threads; batch {args.batch}, prompt {args.prompt}, "
          f"new {args.new} tokens")

    generator.generate_tokens(prompts, GenerationParams(max_new_tokens=4, stop_token_ids=()))   # warm-up
    speeds, outputs = {}, {}
    for name, use_cache in (("kv_cache", True), ("recompute", False)):
        best = float("inf")
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name] = generator.generate_tokens(prompts, params, use_cache=use_cache)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        speeds[name] = args.batch * args.new / best
        print(f"{name:10s} {speeds[name]:10.1f} tokens/s  ({best:.2f} s)")
    same = outputs["kv_cache"] == outputs["recompute"]
    print(f"same tokens: {same}")
    print(f"kv/recompute = {speeds['kv_cache'] / speeds['recompute']:.2f}")


if __name__ == "__main__":
    main()
