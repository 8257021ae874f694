"""Fixtures for the model / checkpoint tests: small random models and an independent Meta-shard writer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from codellama_recipe.train.model import Llama, ModelConfig

# Small, but with every feature that conversions get wrong: GQA (8 query heads, 2 kv heads), theta 1e6,
# a non-default FFN width (ffn_dim_multiplier), and head_dim 16.
TINY = dict(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=320, multiple_of=32,
            ffn_dim_multiplier=1.3, rope_theta=1e6, max_seq_len=128)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def random_model(cfg: ModelConfig | None = None, seed: int = 0) -> Llama:
    """A model whose every tensor is random, norms included (init leaves them at 1, hiding transposition bugs)."""
    torch.manual_seed(seed)
    model = Llama(cfg or tiny_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.08)
    return model.eval()


# How Meta's fairscale layers split each tensor across model-parallel ranks, written out by hand (independent
# of train.weight_formats): ColumnParallelLinear -> rows (dim 0), RowParallelLinear -> columns (dim 1),
# ParallelEmbedding -> the embedding dimension (dim 1), RMSNorm weights replicated.
META_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1,
                  "tok_embeddings": 1}


def write_meta_checkpoint(model: Llama, out_dir: Path, num_shards: int = 2, llama2_params: bool = False) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    for rank in range(num_shards):
        shard = {}
        for name, t in state.items():
            kind = name.split(".")[-2]  # wq, w1, tok_embeddings, output, attention_norm, norm, ...
            split = META_SPLIT_DIM.get(kind)
            if split is None:
                shard[name] = t.clone()
            else:
                size = t.shape[split] // num_shards
                shard[name] = t.narrow(split, rank * size, size).clone()
        torch.save(shard, out_dir / f"consolidated.{rank:02d}.pth")
    cfg = model.cfg
    params = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
              "vocab_size": -1 if llama2_params else cfg.vocab_size, "multiple_of": cfg.multiple_of,
              "ffn_dim_multiplier": cfg.ffn_dim_multiplier, "norm_eps": cfg.norm_eps}
    if not llama2_params:  # Llama 2's params.json has no rope_theta (10000) and vocab_size -1
        params["rope_theta"] = cfg.rope_theta
    (out_dir / "params.json").write_text(json.dumps(params))
    return out_dir


def assert_same_state(a: dict, b: dict):
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        assert torch.equal(a[k], b[k]), k
