"""DeepSpeed's CPU communication op, built before DeepSpeed asks for it, so that start-up never waits silently.

On CPU, DeepSpeed JIT-compiles a shared-memory comm op the first time a process group starts (~30 s, then
cached in TORCH_EXTENSIONS_DIR). torch guards the build with a `lock` file that names no process: a run killed
during the build leaves it behind, and every later run sleeps forever waiting for it. Here every process of
this project builds the op while holding a kernel lock (flock, released when the process dies) on
`<extensions root>/.codellama-build.flock`: whoever holds that lock and still finds a `lock` file knows it is
stale (its builder is dead), says so and removes it. Waits for another process's build are announced.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

FLOCK_NAME = ".codellama-build.flock"
ANNOUNCE_AFTER_S = 2.0


def _builder():
    """DeepSpeed's shared-memory comm op builder when this run will use it (CPU accelerator), else None."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return None
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    return builder


def _build_directory(name: str) -> Path:
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(name, verbose=False))


def _acquire(fd: int, what: str, log) -> None:
    started = time.monotonic()
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not announced and time.monotonic() - started > ANNOUNCE_AFTER_S:
                log(f"waiting for another process that is building {what}")
                announced = True
            time.sleep(0.2)


def prepare_cpu_comm_op(log=print) -> None:
    """Build (or load) DeepSpeed's CPU comm op under the project's build lock, clearing a stale torch build lock
    first. A no-op on GPU."""
    builder = _builder()
    if builder is None:
        return
    build_dir = _build_directory(builder.NAME)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(build_dir.parent / FLOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, f"DeepSpeed's {builder.NAME} in {build_dir}", log)
        stale = build_dir / "lock"
        if stale.exists():   # no live builder of ours holds the build lock: the run that made this file is dead
            stale.unlink()
            log(f"removed a stale build lock {stale} (left by a run killed while building {builder.NAME})")
        if not (build_dir / f"{builder.NAME}.so").exists():
            log(f"building DeepSpeed's CPU comm op {builder.NAME} once (~30 s on 2 cores) in {build_dir}")
        builder.load(verbose=False)
    finally:
        os.close(fd)
