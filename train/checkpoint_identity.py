"""What a checkpoint must share with the run that resumes it: the resolved config's model and data sections,
the number of processes and the checkpoint format, compared key by key."""
from __future__ import annotations

import copy
import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from codellama_recipe.train.weight_formats import CheckpointError

# The config sections a checkpoint must agree with to be resumed (trainer/optim may change, e.g. max_steps).
RESUME_SECTIONS = ("model", "data")
# 2: the typed configuration (codellama_recipe 0.2) stores every schema key, defaults included, so a format-1
# identity differs from any format-2 one even when nothing that matters changed.
CHECKPOINT_FORMAT = 2


class ResumeRefused(CheckpointError):
    """The latest checkpoint was written with a different model/data config (or world size)."""


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def fingerprint(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Where a source's files live may change between sessions (moved data, another cache_dir); what they hold may
# not, and the data pipeline checks that itself when it loads its state.
LOCATION_KEYS = ("paths", "val_paths", "hub", "val_hub")


def resume_identity(full: dict, world_size: int) -> dict:
    """What a checkpoint must share with the run that resumes it; `full`: the resolved config (`resolved`)."""
    identity = {k: copy.deepcopy(full.get(k)) for k in RESUME_SECTIONS}
    sources = (identity.get("data") or {}).get("sources") or {}
    for spec in sources.values():
        if isinstance(spec, dict):
            for key in LOCATION_KEYS:
                spec.pop(key, None)
    identity["world_size"] = world_size
    identity["checkpoint_format"] = CHECKPOINT_FORMAT
    return identity


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]




def check_resumable(client_state: dict, identity: dict, allow_change: bool) -> list[str]:
    """Raise ResumeRefused naming the differing keys, unless allow_change; returns the differences."""
    written_format = client_state.get("identity", {}).get("checkpoint_format", 1)
    if written_format != CHECKPOINT_FORMAT and not allow_change:
        raise ResumeRefused(
            f"the latest checkpoint (step {client_state.get('step')}) has checkpoint format {written_format} (written "
            f"by an earlier codellama-recipe); this version writes format {CHECKPOINT_FORMAT}, whose configuration "
            f"record is not comparable. Its weights, optimizer and data position still load: resume with "
            f"trainer.allow_config_change=true, or use a new run_dir.")
    diffs = config_differences(client_state.get("identity", {}), identity)
    if diffs and not allow_change:
        shown = "\n  ".join(diffs[:12]) + (f"\n  … and {len(diffs) - 12} more" if len(diffs) > 12 else "")
        raise ResumeRefused(
            f"the latest checkpoint (step {client_state.get('step')}) was written with a different model/data "
            f"configuration or number of processes:\n  {shown}\n"
            f"Resume with the original settings, use a new run_dir, or set trainer.allow_config_change=true "
            f"to resume anyway (model and optimizer states must still fit; with another number of processes the "
            f"data pipeline starts from the beginning of its stream).")
    return diffs
