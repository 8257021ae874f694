"""One process per run_dir: `<run_dir>/.lock`, held with flock(2) for as long as the run lives.

The kernel releases the lock when the holder exits in any way (kill -9 included), so a lock left behind never
blocks; the file itself only tells who holds it (pid, host, since, command). A second command on a run_dir in
use is refused at once, naming the holder. In a multi-process job the launcher's rank 0 holds it for its ranks.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from codellama_recipe.core.errors import ConfigError

LOCK_FILE = ".lock"


class RunDirBusy(ConfigError):
    """Another live process holds the run_dir."""

    def __init__(self, run_dir: Path, holder: dict):
        self.key, self.value, self.holder = "run_dir", str(run_dir), holder
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
               + (f" ({holder['command']})" if holder.get("command") else ""))
        self.allowed = f"it is in use by {who}; two processes never share a run_dir: wait for it, stop it, or use " \
                       "another run_dir"
        ValueError.__init__(self, f"config error: run_dir={str(run_dir)!r} {self.allowed}")


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_dir_lock(run_dir, enabled: bool = True):
    """Hold `<run_dir>/.lock` for the block (created with the folder); RunDirBusy if another process has it.
    `enabled=False` (ranks other than 0) holds nothing."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(run_dir, _holder(path)) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)      # releases the lock (the file stays: it only names the last holder)
