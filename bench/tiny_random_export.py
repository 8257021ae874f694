"""A randomly initialised conf/model/tiny.yaml model exported as an HF folder with a given tokenizer: a model for
timing the evaluation's generation and judging (its pass@k is 0), without training anything.

    python bench/tiny_random_export.py OUT_DIR [TOKENIZER.model] [--seed 0]

TOKENIZER.model defaults to the embedded tokenizer (built on first use).
"""
from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf

from codellama_recipe.core.config import conf_dir
from codellama_recipe.data.tokenizer import Tokenizer
from codellama_recipe.train.model import Llama, ModelConfig
from codellama_recipe.train.weight_formats import save_hf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("tokenizer", nargs="?")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.tokenizer is None:
        from codellama_recipe.data.embedded import ensure_embedded

        args.tokenizer = str(ensure_embedded().tokenizer_path)
    keys = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / "tiny.yaml"))
    keys.pop("name", None)
    keys["vocab_size"] = Tokenizer(args.tokenizer).vocab_size
    torch.manual_seed(args.seed)
    model = Llama(ModelConfig(**keys))
    print(save_hf(model.state_dict(), model.cfg, args.out_dir, tokenizer_path=args.tokenizer))


if __name__ == "__main__":
    main()
