"""Atomic file writes: a reader sees the old content or the new one, never a partial file.

Write to a temporary name in the same folder, flush and fsync, then rename over the target (and fsync the
folder so the rename itself survives a crash).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def replace_dir_atomic(tmp_dir, final_dir) -> None:
    """Move a fully written folder into place, replacing an older one (the swap itself is two renames: the old
    folder is moved aside first, so `final_dir` never holds a mixture of both)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
    if final_dir.exists():
        os.rename(final_dir, old)
    os.rename(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
