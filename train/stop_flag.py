"""Stop requests: SIGTERM / SIGUSR1 (a preemption; SLURM sends SIGUSR1 ahead of its SIGTERM) or a launcher that is
gone. A flag, read at step boundaries, never an exception: the run checkpoints and ends with one line.

Flags nest. A command that trains several stages in turn (the pipeline, the ablations) holds one for its whole
run, and each stage's trainer installs its own inside it: a signal that arrives between two stages is handed to
the next stage's trainer (which stops at its first step boundary, with a checkpoint), and one that arrives while
a trainer finishes its last step is handed back to the command, which stops before its next stage."""
from __future__ import annotations

import contextlib
import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Under torchrun or the deepspeed launcher a worker's parent is the launcher. torchrun starts each worker in a
# session of its own, so a killed launcher (kill -9, a lost ssh session) would leave the workers training.
_LAUNCHER = os.getppid() if "LOCAL_RANK" in os.environ else None


def launcher_gone() -> str:
    """'because its launcher (pid N) is gone' when this worker's launcher died, else ''."""
    if _LAUNCHER is not None and os.getppid() != _LAUNCHER:
        return f"because its launcher (pid {_LAUNCHER}) is gone"
    return ""


class StopFlag:
    LAUNCHER_GONE = int(signal.SIGHUP)

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def check_launcher(self) -> None:
        gone = launcher_gone()
        if gone and not self.signum:
            self.signum = self.LAUNCHER_GONE
            self.reason = gone

    @property
    def reason(self) -> str:
        return self.__dict__.get("_reason") or f"by signal {self.signum}"

    @reason.setter
    def reason(self, text: str) -> None:
        self._reason = text

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
            outer = _flag_of(self._previous[sig])
            if outer is not None and outer.signum and not self.signum:
                self.signum = outer.signum

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
            outer = _flag_of(handler)
            if outer is not None and self.signum and not outer.signum:
                outer.signum = self.signum
        self._previous = {}


def _flag_of(handler) -> StopFlag | None:
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, StopFlag) else None


@contextlib.contextmanager
def held_stop_signals():
    """A StopFlag installed for the duration of the block (the whole run of a multi-stage command)."""
    flag = StopFlag()
    flag.install()
    try:
        yield flag
    finally:
        flag.restore()
