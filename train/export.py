"""codellama-export SRC OUT: convert a Meta, Hugging Face or project checkpoint into a Hugging Face folder.

OUT holds config.json (LlamaForCausalLM, with rope_theta, vocab_size, max_position_embeddings, GQA heads),
model.safetensors (sharded above --max-shard-gb) and, when a tokenizer is known, tokenizer.model with a minimal
tokenizer_config.json. `transformers.AutoModelForCausalLM.from_pretrained(OUT)` gives the same logits as
train.model.Llama on SRC.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codellama_recipe.train.pretrained import load_pretrained
from codellama_recipe.train.weight_formats import DTYPES, CheckpointError, grow_vocab, save_hf


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="codellama-export", description=__doc__.split("\n")[0])
    p.add_argument("src", help="Meta folder (params.json + consolidated.*.pth), Hugging Face folder "
                               "(config.json + *.safetensors) or a project training checkpoint")
    p.add_argument("out", help="output folder (created; existing weight files in it are replaced)")
    p.add_argument("--tokenizer", default=None,
                   help="SentencePiece tokenizer.model to ship with the export (default: SRC/tokenizer.model "
                        "when present)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="dtype of the exported weights (auto: keep the source's)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="grow the embedding/output to this many rows (new rows = mean of existing ones)")
    p.add_argument("--rope-theta", type=float, default=None, help="override rope_theta in the exported config")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="override max_position_embeddings in the exported config")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors file before sharding")
    return p.parse_args(argv)


def export(src, out, tokenizer=None, dtype: str = "auto", vocab_size=None, rope_theta=None, max_seq_len=None,
           max_shard_gb: float = 5.0) -> Path:
    cfg, state_dict = load_pretrained(src)
    if tokenizer is None and (Path(src) / "tokenizer.model").is_file():
        tokenizer = Path(src) / "tokenizer.model"
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        state_dict = grow_vocab(state_dict, vocab_size)
        cfg.vocab_size = vocab_size
    if rope_theta is not None:
        cfg.rope_theta = float(rope_theta)
    if max_seq_len is not None:
        cfg.max_seq_len = int(max_seq_len)
    torch_dtype = None if dtype == "auto" else DTYPES[dtype]
    return save_hf(state_dict, cfg, out, tokenizer_path=tokenizer, dtype=torch_dtype,
                   max_shard_bytes=int(max_shard_gb * 1024**3))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = export(args.src, args.out, args.tokenizer, args.dtype, args.vocab_size, args.rope_theta,
                     args.max_seq_len, args.max_shard_gb)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"codellama-export: error: {e}", file=sys.stderr)
        return 2
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {out}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
