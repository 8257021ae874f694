"""Training checkpoints: atomic visibility, retention, exact resume, config fingerprints, consolidation.

Layout under `<run_dir>/checkpoints/`:

    step_00000100/                    one complete checkpoint (a "tag")
        mp_rank_00_model_states.pt    DeepSpeed's files (module, and per rank its ZeRO partition of the
        *zero_pp_rank_*_optim_states.pt   fp32 master weights + Adam moments)
        client_state.json             step, tokens seen, elapsed time, wandb run id, resolved config,
                                      fingerprint, last losses (rank 0)
        client/rank_00000.json        every rank's data-pipeline state and RNG states (python, numpy,
                                      torch, CUDA), one file per rank
        codellama_checkpoint.json     marker: `train.pretrained.load_pretrained` reads this folder
        manifest.json                 every other file's size and CRC-32, written last (rank 0)
    latest                            the tag of the newest complete checkpoint (replaced atomically)

Checkpoints verify themselves: a resume (and load_pretrained on a checkpoints folder) takes the newest
checkpoint whose files match its manifest, says which file of a newer one is damaged, and skips it.

A checkpoint is written into `.tmp-step_…/`, every rank finishes (barrier), then rank 0 renames the folder
and replaces `latest` with `os.replace`: a crash at any point leaves the previous checkpoint as the latest,
and a half-written `.tmp-*` folder is deleted at the next start. All ranks must see the same filesystem.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.atomic import replace_dir_atomic, write_json_atomic, write_text_atomic
from codellama_recipe.train.distributed import all_reduce
from codellama_recipe.train.model import ModelConfig
from codellama_recipe.train.peers import rank0_work
from codellama_recipe.train.weight_formats import CHECKPOINT_MARKER, CheckpointError, load_hf

FORMAT_VERSION = 1
LATEST = "latest"
TAG_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
CLIENT_STATE = "client_state.json"
MANIFEST = "manifest.json"
# The config sections a checkpoint must agree with to be resumed (trainer/optim may change, e.g. max_steps).
RESUME_SECTIONS = ("model", "data")
# 2: the typed configuration (codellama_recipe 0.2) stores every schema key, defaults included, so a format-1
# identity differs from any format-2 one even when nothing that matters changed.
CHECKPOINT_FORMAT = 2


class ResumeRefused(CheckpointError):
    """The latest checkpoint was written with a different model/data config (or world size)."""


class NonFiniteWeights(RuntimeError):
    """Weights contain inf/NaN: the checkpoint is not written."""


# --------------------------------------------------------------------------------------------------------
# Markers
# --------------------------------------------------------------------------------------------------------

def write_marker(folder: Path, kind: str, model_config: dict, **extra) -> None:
    """`codellama_checkpoint.json`: tells load_pretrained that `folder` is one of ours, and what it holds."""
    write_json_atomic(Path(folder) / CHECKPOINT_MARKER,
                      {"kind": kind, "format_version": FORMAT_VERSION, "model_config": model_config, **extra})


# --------------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------------

def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def fingerprint(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Where a source's files live may change between sessions (moved data, another cache_dir); what they hold may
# not, and the data pipeline checks that itself when it loads its state.
LOCATION_KEYS = ("paths", "val_paths", "hub", "val_hub")


def resume_identity(cfg: DictConfig, world_size: int) -> dict:
    """What a checkpoint must share with the run that resumes it."""
    full = resolved(cfg)
    identity = {k: full.get(k) for k in RESUME_SECTIONS}
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


# --------------------------------------------------------------------------------------------------------
# Finding checkpoints
# --------------------------------------------------------------------------------------------------------

def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int:
    return int(tag[len(TAG_PREFIX):])


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of finished checkpoints (renamed out of .tmp-* and holding client_state.json), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir()
            if p.is_dir() and p.name.startswith(TAG_PREFIX) and (p / CLIENT_STATE).is_file()]
    return sorted(tags, key=step_of)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by `latest`; if that folder is gone (deleted by hand), the newest complete one."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        tag = pointer.read_text().strip()
        if (ckpt_dir / tag / CLIENT_STATE).is_file():
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def read_client_state(ckpt_dir: Path, tag: str) -> dict:
    return json.loads((Path(ckpt_dir) / tag / CLIENT_STATE).read_text())


def _crc32(path: Path) -> int:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            value = zlib.crc32(chunk, value)
    return value


def write_manifest(tag_dir: Path) -> None:
    """Size and CRC-32 of every file of a written checkpoint (rank 0, after every rank's files are written)."""
    tag_dir = Path(tag_dir)
    files = {str(p.relative_to(tag_dir)): [p.stat().st_size, _crc32(p)]
             for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_json_atomic(tag_dir / MANIFEST, {"files": files})


def damage(tag_dir: Path) -> str | None:
    """None when the checkpoint's files match its manifest, else what is wrong, naming the file. A checkpoint
    written before manifests existed is checked as far as it can be: its JSON files must parse."""
    tag_dir = Path(tag_dir)
    try:
        manifest = json.loads((tag_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        manifest = None
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    if manifest is None:
        for path in [tag_dir / CLIENT_STATE, *sorted((tag_dir / "client").glob("*.json"))]:
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                return f"{path.relative_to(tag_dir)} is missing or not valid JSON"
        return None
    for name, (size, crc) in manifest.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual:,} bytes, {size:,} when saved"
        if _crc32(path) != crc:
            return f"{name} does not match its checksum (same size, different bytes)"
    return None


def newest_intact_tag(ckpt_dir: Path) -> tuple[str | None, list[tuple[str, str]]]:
    """(the newest checkpoint that verifies, [(tag, what is damaged) for each newer one skipped]). The tag named
    by `latest` is tried first, then every complete checkpoint from the newest."""
    ckpt_dir = Path(ckpt_dir)
    candidates = complete_tags(ckpt_dir)[::-1]
    pointed = latest_tag(ckpt_dir)
    if pointed in candidates:
        candidates.remove(pointed)
        candidates.insert(0, pointed)
    damaged = []
    for tag in candidates:
        problem = damage(ckpt_dir / tag)
        if problem is None:
            return tag, damaged
        damaged.append((tag, problem))
    return None, damaged


def no_intact_checkpoint(ckpt_dir: Path, damaged: list[tuple[str, str]]) -> CheckpointError:
    listed = "; ".join(f"{tag}: {problem}" for tag, problem in damaged)
    return CheckpointError(f"no intact checkpoint in {ckpt_dir} ({listed}); nothing was loaded. Move the folder "
                           "aside to start from scratch, or restore a copy")


def remove_incomplete(ckpt_dir: Path) -> list[str]:
    """Delete `.tmp-*` folders left by a crash during a save (rank 0, before training starts)."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


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


# --------------------------------------------------------------------------------------------------------
# RNG states (JSON: base64 for the byte tensors)
# --------------------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# --------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------

def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def weights_are_finite(engine) -> bool:
    """All ranks agree; under ZeRO-3 each rank checks its own partition."""
    ok = True
    for p in engine.module.parameters():
        t = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
        if t.numel() and not bool(torch.isfinite(t).all()):
            ok = False
            break
    if dist.is_available() and dist.is_initialized():
        ok = bool(all_reduce(torch.tensor([1 if ok else 0], dtype=torch.int32), dist.ReduceOp.MIN).item())
    return ok


def save(engine, ckpt_dir: Path, step: int, client_state: dict, rank_state: dict, *, rank: int, keep_last: int,
         model_config: dict) -> str:
    """Write checkpoint `step` so that it appears complete or not at all. All ranks call this."""
    ckpt_dir = Path(ckpt_dir)
    if not weights_are_finite(engine):
        raise NonFiniteWeights(f"step {step}: the weights contain inf/NaN; refusing to write a checkpoint "
                               f"(the latest valid one stays {latest_tag(ckpt_dir)})")
    tag = tag_for(step)
    tmp_dir = ckpt_dir / (TMP_PREFIX + tag)
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    _barrier()
    failure = None
    try:
        write_files(engine, tmp_dir, step, client_state, rank_state, rank=rank, model_config=model_config)
    except (OSError, RuntimeError) as e:   # torch's writer reports a full disk as RuntimeError("file write failed")
        failure = write_failure(e, tmp_dir)
    if _any_rank(failure is not None):     # every rank's files are written, or every rank stops here
        if rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise CheckpointWriteFailed(f"{failure or 'another rank could not write its part'} while writing checkpoint "
                                    f"{tag} in {ckpt_dir}; nothing was lost: the latest checkpoint "
                                    f"({latest_tag(ckpt_dir) or 'none yet'}) is intact and rerunning the same "
                                    "command resumes from it")
    # Rank 0 writes the manifest (a CRC-32 pass over every file) and publishes; the others wait as long as it is
    # alive (train/peers.py), not a collective's timeout.
    rank0_work(lambda: publish(ckpt_dir, tag, keep_last), f"publishing checkpoint {tag}")
    return tag


class CheckpointWriteFailed(CheckpointError):
    """A checkpoint could not be written (disk full, I/O error); the previous one stays the latest."""


def write_failure(error: Exception, tmp_dir: Path) -> str:
    """What went wrong writing a checkpoint, in words: a full disk is named as such (with the path and the space
    left), whatever exception type reported it."""
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if not full:   # probe: can 1 MiB still be written next to the checkpoint?
        probe = Path(tmp_dir).parent / ".space-probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            full = e.errno == errno.ENOSPC
        finally:
            probe.unlink(missing_ok=True)
    if full:
        free = shutil.disk_usage(Path(tmp_dir).parent).free
        return f"no space left on the device of {Path(tmp_dir).parent} ({free / 2**20:.1f} MiB free)"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def _any_rank(flag: bool) -> bool:
    if dist.is_available() and dist.is_initialized():
        return bool(all_reduce(torch.tensor([int(flag)]), dist.ReduceOp.MAX).item())
    return flag


def write_files(engine, tmp_dir: Path, step: int, client_state: dict, rank_state: dict, *, rank: int,
                model_config: dict) -> None:
    """This rank's part of checkpoint `step` in its temporary folder: DeepSpeed's files and client/rank_*.json;
    rank 0 adds client_state.json and the marker."""
    engine.save_checkpoint(str(tmp_dir.parent), tag=tmp_dir.name, save_latest=False)
    (tmp_dir / "client").mkdir(parents=True, exist_ok=True)
    write_json_atomic(tmp_dir / "client" / f"rank_{rank:05d}.json", rank_state)
    if rank == 0:
        write_json_atomic(tmp_dir / CLIENT_STATE, {**client_state, "format_version": FORMAT_VERSION,
                                                   "tag": tag_for(step),
                                                   "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        write_marker(tmp_dir, "checkpoint", model_config, step=step,
                     zero_stage=engine.zero_optimization_stage(),
                     precision="bf16" if engine.bfloat16_enabled() else "fp32")


def publish(ckpt_dir: Path, tag: str, keep_last: int) -> None:
    """Rank 0, once every rank's files are written: the folder gets its final name, `latest` names it, and only
    the newest `keep_last` checkpoints stay."""
    # The same step may have been saved before (e.g. a resumed run that stopped at once).
    write_manifest(ckpt_dir / (TMP_PREFIX + tag))
    replace_dir_atomic(ckpt_dir / (TMP_PREFIX + tag), ckpt_dir / tag)
    write_text_atomic(ckpt_dir / LATEST, tag)
    for old in complete_tags(ckpt_dir)[:-keep_last]:
        if old != tag:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)


def load(engine, ckpt_dir: Path, tag: str, rank: int) -> tuple[dict, dict | None]:
    """Restore module + optimizer into `engine`; return (client_state, this rank's state or None)."""
    ckpt_dir = Path(ckpt_dir)
    with weights_only_loads():
        load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False, load_module_strict=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    client_state = read_client_state(ckpt_dir, tag)
    rank_file = ckpt_dir / tag / "client" / f"rank_{rank:05d}.json"
    rank_state = json.loads(rank_file.read_text()) if rank_file.is_file() else None
    return client_state, rank_state


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
