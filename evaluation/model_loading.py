"""A model and its tokenizer from a checkpoint this project can read (Hugging Face export, Meta folder, project
checkpoint), ready for evaluation. Every command that evaluates a model loads it here: codellama-eval, the
ablations' measurements and codellama-selfinstruct's local generator."""
from __future__ import annotations

import dataclasses

import torch

from codellama_recipe.core.errors import ConfigError, InputError
from codellama_recipe.train.weight_formats import DTYPES


@dataclasses.dataclass(frozen=True)
class ModelToLoad:
    """Which weights to load, with which tokenizer, where and in which precision."""
    model_path: str
    tokenizer_path: str | None = None   # None: the checkpoint's own, else the default for its vocabulary
    cache_dir: str | None = None        # where a default tokenizer is built or found
    device: str = "cpu"                 # cpu | cuda | auto (cuda when available)
    dtype: str = "float32"              # a key of train.weight_formats.DTYPES

    @classmethod
    def of(cls, cfg) -> "ModelToLoad":
        """From the keys of the same names in codellama-eval's config (core/schema.py EvalConfig)."""
        return cls(model_path=cfg.model_path, tokenizer_path=cfg.tokenizer_path, cache_dir=cfg.cache_dir,
                   device=cfg.device, dtype=cfg.dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_and_tokenizer(source: ModelToLoad):
    from codellama_recipe.data.tokenizer import Tokenizer
    from codellama_recipe.data.tokenizer_resolution import resolve_tokenizer
    from codellama_recipe.train.model import Llama
    from codellama_recipe.train.pretrained import load_pretrained

    if not source.model_path:
        raise ConfigError("model_path", None, "give an HF export, a Meta folder or a project checkpoint")
    # the tokenizer before the weights: a missing one fails fast
    tokenizer = Tokenizer(resolve_tokenizer(source.tokenizer_path, source.model_path, weights_key="model_path",
                                            cache_dir=source.cache_dir))
    model_cfg, state_dict = load_pretrained(source.model_path)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise InputError("tokenizer_path", tokenizer.path,
                          f"{tokenizer.vocab_size} pieces but the model has vocab_size {model_cfg.vocab_size}")
    model = Llama(model_cfg)
    model.load_state_dict(state_dict)
    model.to(device=resolve_device(source.device), dtype=DTYPES[source.dtype]).eval()
    return model, tokenizer
