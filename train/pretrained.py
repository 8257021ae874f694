"""Load weights from any folder a user can point at: a Hugging Face export, a Meta download, or one of this
project's training folders (a checkpoint, its checkpoints/ folder, or a run_dir)."""
from __future__ import annotations

from pathlib import Path

import torch

from codellama_recipe.train.checkpoint_reading import load_consolidated
from codellama_recipe.train.model import ModelConfig
from codellama_recipe.train.weight_formats import CHECKPOINT_MARKER, CheckpointError, load_hf, load_meta, meta_shard_paths


def detect_format(path) -> str:
    """'project', 'meta' or 'hf'; CheckpointError naming what was found otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a file; expected a folder (Meta, Hugging Face or "
                              f"project checkpoint)")
    if (path / CHECKPOINT_MARKER).is_file():
        return "project"
    if (path / "params.json").is_file() and meta_shard_paths(path):
        return "meta"
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors"))
                                             or (path / "model.safetensors.index.json").is_file()):
        return "hf"
    found = sorted(p.name for p in path.iterdir())[:10]
    raise CheckpointError(
        f"unknown checkpoint format in {path}: expected params.json + consolidated.*.pth (Meta), config.json + "
        f"*.safetensors (Hugging Face) or {CHECKPOINT_MARKER} (project checkpoint); found {found}")


def load_pretrained(path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    fmt = detect_format(path)
    if fmt == "project":
        return load_consolidated(path)
    return load_meta(path) if fmt == "meta" else load_hf(path)
