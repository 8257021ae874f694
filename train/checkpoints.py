"""Saving and loading training checkpoints: atomic visibility, retention, RNG states, a full disk named as such.

A checkpoint is written into `.tmp-step_…/`, every rank finishes (barrier), then rank 0 writes the manifest,
renames the folder and replaces `latest` with `os.replace`: a crash at any point leaves the previous checkpoint
as the latest, and a half-written `.tmp-*` folder is deleted at the next start. All ranks must see the same
filesystem. The layout and integrity checks are in checkpoint_integrity.py, what a resume must match in
checkpoint_identity.py, reading without unpickling and consolidation in checkpoint_reading.py.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from codellama_recipe.core.atomic import replace_dir_atomic, write_json_atomic, write_text_atomic
from codellama_recipe.train.checkpoint_integrity import (CLIENT_STATE, LATEST, TMP_PREFIX, complete_tags,
                                                         latest_tag, read_client_state, tag_for, write_manifest)
from codellama_recipe.train.checkpoint_reading import weights_only_loads
from codellama_recipe.train.distributed import all_reduce
from codellama_recipe.train.peers import rank0_work
from codellama_recipe.train.weight_formats import CHECKPOINT_MARKER, CheckpointError

FORMAT_VERSION = 1


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
         model_config: dict, files_written=None) -> str:
    """Write checkpoint `step` so that it appears complete or not at all. All ranks call this.
    files_written(tmp_dir): called once this rank's files are written, before the folder is published."""
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
    if failure is None and files_written is not None:
        files_written(tmp_dir)
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
