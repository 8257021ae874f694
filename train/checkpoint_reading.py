"""Reading checkpoints without unpickling them, and consolidating one into a full fp32 state dict (what
load_pretrained reads from a project folder, and the final HF export)."""
from __future__ import annotations

import contextlib
import json
import pickle
import re
from pathlib import Path

import torch

from codellama_recipe.train.checkpoint_integrity import newest_intact_tag, no_intact_checkpoint
from codellama_recipe.train.model import ModelConfig
from codellama_recipe.train.weight_formats import CHECKPOINT_MARKER, CheckpointError, load_hf


# --------------------------------------------------------------------------------------------------------
# Loading without unpickling
# --------------------------------------------------------------------------------------------------------

def deepspeed_record_types() -> list:
    """The plain classes DeepSpeed stores in its checkpoint files besides tensors and containers (allow-listed
    for torch.load(weights_only=True), which rebuilds them field by field and never calls arbitrary code)."""
    found = []
    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return found


@contextlib.contextmanager
def weights_only_loads():
    """Every torch.load inside the block, DeepSpeed's own included (it asks for weights_only=False), reads
    tensors, containers and DeepSpeed's allow-listed records only: loading a checkpoint never runs code from it.
    A file holding anything else is refused with a CheckpointError naming the file and the object's type."""
    real = torch.load
    allowed = deepspeed_record_types()

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return real(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            detail = f"a {found.group(1)}" if found else "an object that is not a tensor"
            raise CheckpointError(f"{f}: refused: it holds {detail}, not only tensors and DeepSpeed's records; "
                                  "checkpoint files are loaded with torch.load(weights_only=True), never unpickled") from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


# --------------------------------------------------------------------------------------------------------
# Consolidation (load_pretrained's branch for project folders, and the final HF export)
# --------------------------------------------------------------------------------------------------------

def _consolidate_tag(tag_dir: Path, marker: dict) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of one checkpoint folder, on CPU."""
    stage, precision = marker.get("zero_stage", 0), marker.get("precision", "fp32")
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if stage in (1, 2) and precision == "fp32" or stage == 0:
        # The module weights are complete in the model-states file (fp32 master copy for fp32 training;
        # for bf16 with ZeRO stage 0 the bf16 weights, widened to fp32).
        with weights_only_loads():
            module = torch.load(model_file, map_location="cpu")["module"]
        return {k: v.float() for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_loads():
        sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return {k: v.float() for k, v in sd.items()}


def load_consolidated(path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, fp32 state dict) from a project folder holding `codellama_checkpoint.json`:
    a checkpoint tag folder, the `checkpoints/` folder (its latest), or a run_dir (its HF export when the
    run finished, else its latest checkpoint)."""
    path = Path(path)
    marker_file = path / CHECKPOINT_MARKER
    if not marker_file.is_file():
        raise CheckpointError(f"{path}: no {CHECKPOINT_MARKER} (not a codellama-train folder)")
    marker = json.loads(marker_file.read_text())
    kind = marker.get("kind")
    if kind == "run":
        if (path / "DONE.json").is_file() and (path / "hf" / "config.json").is_file():
            return load_hf(path / "hf")
        return load_consolidated(path / "checkpoints")
    if kind == "checkpoints":
        tag, damaged = newest_intact_tag(path)
        if tag is None:
            if damaged:
                raise no_intact_checkpoint(path, damaged)
            raise CheckpointError(f"{path}: no complete checkpoint yet")
        return load_consolidated(path / tag)
    if kind == "checkpoint":
        cfg = ModelConfig.from_dict(marker["model_config"]).validate()
        return cfg, _consolidate_tag(path, marker)
    raise CheckpointError(f"{marker_file}: unknown kind {kind!r}")
