"""Bounded waits on the other ranks: a frozen or lost peer ends the run with one line, never a hang.

- Every process group of the run (the world group and every group DeepSpeed creates) gets
  `trainer.collective_timeout_s` (`apply_collective_timeout`): a collective that waits longer raises on the ranks
  that wait (gloo applies the timeout to each operation).
- Every rank publishes a heartbeat (a counter, from a daemon thread) in the process group's key-value store.
  When a collective fails, the ranks whose heartbeat stopped are named (`PeerLost`): a rank that is stopped
  (SIGSTOP, a node that swaps or hangs in the kernel) or dead stops beating; a slow but live one does not.
- Work that only rank 0 does between collectives (the Hugging Face export at the end of a stage, publishing a
  checkpoint, a pipeline's per-stage evaluation) is `rank0_work`: the other ranks wait for it as long as rank 0's
  heartbeat goes on, however long the work takes, and stop with one line within `collective_timeout_s` when it
  stops.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

KEY_PREFIX = "codellama/peers/"


class PeerLost(RuntimeError):
    """A collective with another rank failed (timed out, or the connection closed); the message is one line."""


def apply_collective_timeout(timeout_s: float) -> int:
    """Set `timeout_s` on every process group that exists, and as the default of groups created later (DeepSpeed
    creates its own with `new_group`, which would otherwise get torch's default of 30 minutes, 10 under NCCL).
    Returns the number of groups set."""
    from torch.distributed import distributed_c10d as c10d

    timeout = timedelta(seconds=float(timeout_s))
    c10d.default_pg_timeout = timeout              # read by new_group when no timeout is given
    if hasattr(c10d, "default_pg_nccl_timeout"):
        c10d.default_pg_nccl_timeout = timeout
    groups = list(c10d._world.pg_map)
    for group in groups:
        c10d._set_pg_timeout(timeout, group)
    return len(groups)


# Messages of a failed collective (gloo, NCCL, the store): anything else is a bug and keeps its traceback.
LOST_MARKERS = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "Broken pipe",
                "gloo/transport", "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
                "Socket Timeout", "Connection refused")


def is_lost_peer(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, PeerLost):
            return True
        dist_error = getattr(torch.distributed, "DistError", None)
        if dist_error is not None and isinstance(error, dist_error):
            return True
        if isinstance(error, RuntimeError) and any(m in str(error) for m in LOST_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


class PeerWatch:
    """The heartbeats of every rank of the default process group, through its store."""

    def __init__(self, timeout_s: float):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.store = dist.PrefixStore(KEY_PREFIX, dist.distributed_c10d._get_default_store())
        self.timeout_s = float(timeout_s)
        self.beat = 0
        self.calls = 0
        self._stop = threading.Event()
        self.store.set(f"host/{self.rank}", socket.gethostname())
        self._publish()
        self._thread = threading.Thread(target=self._run, name="codellama-heartbeat", daemon=True)
        self._thread.start()

    @property
    def interval_s(self) -> float:
        return min(2.0, self.timeout_s / 4)

    def _publish(self) -> None:
        self.beat += 1
        self.store.set(f"beat/{self.rank}", str(self.beat))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._publish()
            except Exception:   # the store is gone: the next collective says so
                return

    def stop(self) -> None:
        """Stop the heartbeat and wait for its thread. A daemon thread still inside a store call when the
        interpreter exits is unwound through pybind11's GIL guard, and the process aborts ('terminate called
        without an active exception'); under load a beat is often in flight at that moment."""
        self._stop.set()
        self._thread.join(timeout=max(10.0, 2 * self.interval_s))

    def _beats(self, ranks) -> dict[int, int | None]:
        out = {}
        for r in ranks:
            try:
                out[r] = int(self.store.get(f"beat/{r}")) if self.store.check([f"beat/{r}"]) else None
            except Exception:
                out[r] = None
        return out

    def host_of(self, rank: int) -> str:
        try:
            return self.store.get(f"host/{rank}").decode()
        except Exception:
            return "?"

    def silent_ranks(self) -> list[int]:
        """The other ranks whose heartbeat does not advance over 2.5 heartbeat intervals."""
        others = [r for r in range(self.world_size) if r != self.rank]
        before = self._beats(others)
        time.sleep(2.5 * self.interval_s)
        after = self._beats(others)
        return [r for r in others if after[r] is None or after[r] == before[r]]

    def describe(self, error: BaseException, where: str) -> PeerLost:
        """The one line for a failed collective: which ranks stopped, and how it failed."""
        text = str(error)
        kind = (f"no answer within trainer.collective_timeout_s={self.timeout_s:g} s" if "Timed out" in text
                or "timeout" in text.lower() else "its connection closed")
        try:
            silent = self.silent_ranks()
        except Exception:
            silent = None
        if silent is None:
            who = "the rendezvous store (node of rank 0) is unreachable"
        elif silent:
            who = ", ".join(f"rank {r} ({self.host_of(r)})" for r in silent) + " stopped responding"
        else:
            who = "every rank still beats; a peer is slow or the network failed"
        return PeerLost(f"rank {self.rank}: lost a peer {where}: {who}, {kind}")

    def rank0_work(self, fn, what: str):
        """Rank 0 runs fn(); the other ranks wait as long as rank 0's heartbeat goes on. Every rank calls this at
        the same point. Returns fn()'s result on rank 0, None elsewhere."""
        self.calls += 1
        key = f"done/{self.calls}"
        if self.rank == 0:
            try:
                result = fn()
            except BaseException as e:
                self.store.set(key, f"failed: {type(e).__name__}")
                raise
            self.store.set(key, "ok")
            return result
        last, last_change = None, time.monotonic()
        while True:
            try:
                if self.store.check([key]):
                    outcome = self.store.get(key).decode()
                    if outcome != "ok":
                        raise PeerLost(f"rank {self.rank}: rank 0 failed while {what} ({outcome}); see rank 0's "
                                       f"message")
                    return None
                beat = self._beats([0])[0]
            except PeerLost:
                raise
            except Exception as e:
                raise PeerLost(f"rank {self.rank}: lost a peer while {what}: the rendezvous store is unreachable "
                               f"({type(e).__name__})") from None
            now = time.monotonic()
            if beat != last:
                last, last_change = beat, now
            elif now - last_change > self.timeout_s:
                raise PeerLost(f"rank {self.rank}: lost a peer while {what}: rank 0 ({self.host_of(0)}) stopped "
                               f"responding, no heartbeat for trainer.collective_timeout_s={self.timeout_s:g} s")
            time.sleep(min(0.5, self.interval_s))


_watch: PeerWatch | None = None


def start_watch(timeout_s: float) -> PeerWatch | None:
    """The process's PeerWatch (started once; a pipeline's later stages update its timeout). None without a
    process group."""
    global _watch
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if _watch is None:
        _watch = PeerWatch(timeout_s)
    _watch.timeout_s = float(timeout_s)
    return _watch


def stop_watch() -> None:
    global _watch
    if _watch is not None:
        _watch.stop()
        _watch = None


def rank0_work(fn, what: str):
    """`PeerWatch.rank0_work` when the watch runs; without one, fn() on rank 0 and a barrier."""
    running = dist.is_available() and dist.is_initialized()
    if _watch is not None and running:
        return _watch.rank0_work(fn, what)
    result = fn() if (dist.get_rank() if running else int(os.environ.get("RANK", "0"))) == 0 else None
    if running:
        dist.barrier()
    return result


def describe_lost(error: BaseException, where: str) -> PeerLost:
    if isinstance(error, PeerLost):
        return error
    if _watch is None:
        return PeerLost(f"lost a peer {where}: {str(error).splitlines()[0][:200]}")
    return _watch.describe(error, where)


def exit_lost(prog: str, error: PeerLost, code: int = 4) -> None:
    """Print the one line and end the process at once: a process group whose peer is gone can abort in its
    destructor ('terminate called without an active exception') or block in destroy_process_group."""
    import sys

    print(f"{prog}: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)
