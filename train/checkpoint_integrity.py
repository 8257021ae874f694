"""The checkpoint folder's layout and integrity: tags, the `latest` pointer, manifests, damage, leftovers.

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
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

from codellama_recipe.core.atomic import write_json_atomic
from codellama_recipe.train.weight_formats import CheckpointError

LATEST = "latest"
TAG_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
CLIENT_STATE = "client_state.json"
MANIFEST = "manifest.json"


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
