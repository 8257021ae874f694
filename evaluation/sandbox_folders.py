"""The sandbox's temporary folders, and what a killed evaluator left behind.

Every Sandbox holds an exclusive flock on its own owner file in the temporary root for as long as its process
lives, and names each folder it makes after that owner. The kernel drops the lock when the process dies, by
SIGKILL too, so a later Sandbox that can take an owner's lock knows the owner is gone and removes its folders.
A lock, not a pid, decides: pids are reused and are not visible across containers that share one /tmp.
"""
from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "codellama-sandbox-"
OWNER_SUFFIX = ".owner"


def remove_tree(path: Path) -> None:
    """rmtree that also removes what the program made unwritable (chmod 0), never touching anything
    outside `path` (and doing nothing when it is already gone)."""
    root = Path(path)
    if not os.path.lexists(root):
        return

    def inside(p: str) -> bool:
        return Path(p) == root or root in Path(p).parents

    def make_writable_and_retry(func, p, exc_info):
        parent = os.path.dirname(p)
        if not inside(parent):
            return
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(root, onerror=make_writable_and_retry)
    if os.path.lexists(root) and os.path.isdir(root) and not os.path.islink(root):
        shutil.rmtree(root, ignore_errors=True)   # second pass once permissions are fixed


class SandboxFolders:
    """Makes this sandbox's folders under `root`; on creation, removes those of sandboxes whose process died."""

    def __init__(self, root: str | None):
        self.root = Path(root or tempfile.gettempdir())
        self.removed_orphans = remove_orphans(self.root)
        self.token = secrets.token_hex(6)
        lock_path = self.root / f"{PREFIX}{self.token}{OWNER_SUFFIX}"
        unlocked = self.root / f".{lock_path.name}.new"   # locked before it takes a name a sweeper looks for
        fd = os.open(unlocked, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(unlocked, lock_path)
        weakref.finalize(self, _release, fd, lock_path)

    def make(self, kind: str) -> Path:
        """A fresh folder, e.g. make("work") -> <root>/codellama-sandbox-<token>-work-XXXX."""
        return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.token}-{kind}-", dir=self.root))


def _release(fd: int, lock_path: Path) -> None:
    try:
        os.unlink(lock_path)
    except OSError:
        pass
    os.close(fd)


def remove_orphans(root: Path) -> int:
    """Remove the folders of every owner whose lock can be taken (its process is gone); the count removed."""
    removed = 0
    try:
        owners = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(OWNER_SUFFIX)]
    except OSError:
        return 0
    for owner in owners:
        token = owner.name[len(PREFIX):-len(OWNER_SUFFIX)]
        try:
            fd = os.open(owner, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue   # its process is alive
            for folder in root.glob(f"{PREFIX}{token}-*"):
                remove_tree(folder)
                removed += 1
            os.unlink(owner)
        except OSError:
            continue
        finally:
            os.close(fd)
    if removed:
        log.warning("sandbox: removed %d folder(s) left in %s by an evaluator that was killed", removed, root)
    return removed
