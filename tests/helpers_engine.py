"""Helpers for the engine tests: launch codellama-train under torchrun, kill it, read what it wrote.

Run as a script (`torchrun … tests/helpers_engine.py [overrides]`) it is codellama-train with what a test asked
for through environment variables (`launch` sets them):
- TEST_SYNTHETIC_DATA=1 (`synthetic=True`): a synthetic data loader, deterministic random batches with the data
  pipeline's interface, so that engine behaviour is tested independently of the data pipeline;
- faults (`launch(..., inject_nan_steps=[2], hang_at_step=4, ...)`, see `fault_callbacks`), injected through the
  training loop's callbacks (train/callbacks.py), the interface any program that embeds codellama-train has:
  production code has no fault hooks.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable


class SyntheticLoader:
    """Infinite deterministic batches: input_ids/labels random, two sources, a third of the rows FIM."""

    source_names = ["code", "nl"]

    def __init__(self, seq_len: int, micro_batch_size: int, rank: int, world_size: int, vocab_size: int,
                 seed: int = 0):
        self.seq_len, self.mb, self.rank, self.world = seq_len, micro_batch_size, rank, world_size
        self.vocab, self.seed, self.index = vocab_size, seed, 0

    def _batch(self, index: int) -> dict:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * self.world + self.rank)
        B, T = self.mb, self.seq_len
        # A learnable pattern (next token = previous + 1 mod 97) so that the loss moves.
        start = torch.randint(0, 97, (B, 1), generator=g)
        tokens = (start + torch.arange(T + 1)) % 97 + 3
        input_ids, labels = tokens[:, :-1].clone(), tokens[:, 1:].clone()
        labels[:, :2] = -100
        source_ids = (torch.arange(B)[:, None] % 2).expand(B, T).clone()
        is_fim = (torch.arange(B)[:, None] % 3 == 0).expand(B, T).clone()
        return {"input_ids": input_ids, "labels": labels, "loss_mask": labels != -100,
                "source_ids": source_ids, "doc_ids": torch.zeros(B, T, dtype=torch.long), "is_fim": is_fim}

    def __iter__(self):
        while True:
            batch = self._batch(self.index)
            self.index += 1
            yield batch

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, sd: dict) -> None:
        self.index = int(sd["index"])

    def metrics(self) -> dict:
        return {"data/share/code": 0.5, "data/share/nl": 0.5, "data/skipped/too_long": float(self.rank)}


class SyntheticVal:
    def __init__(self, loader: SyntheticLoader, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        for i in range(self.n):
            yield self.loader._batch(10_000_000 + i)


def synthetic_loaders(cfg, tokenizer, rank, world_size, plan):
    train = SyntheticLoader(plan.seq_len, plan.micro_batch_size, rank, world_size, tokenizer.vocab_size, cfg.seed)
    val = {"code": SyntheticVal(train, int(cfg.trainer.val_batches))} if cfg.trainer.val_every else {}
    return train, val


TINY = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=32",
        "trainer.micro_batch_size=4", "wandb.mode=offline", "trainer.progress_bar=false"]


def compose(overrides: list[str]):
    """The composed codellama-train config, as the CLI would build it."""
    from codellama_recipe.core.config import compose as compose_config

    return compose_config("train", overrides)


# --------------------------------------------------------------------------------------------------------
# Fault injection (in the launched processes)
# --------------------------------------------------------------------------------------------------------

FAULTS = ("inject_nan_steps", "inject_nan_rank", "hang_at_step", "hang_in_save_at_step", "break_compile",
          "export_delay_s", "sigterm_in_step")


def fault_env(faults: dict) -> dict:
    """`launch`'s fault keywords as TEST_* environment variables (lists as comma-separated numbers)."""
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise TypeError(f"unknown faults {unknown}; known: {FAULTS}")
    return {f"TEST_{name.upper()}": ",".join(map(str, value)) if isinstance(value, (list, tuple, range)) else str(value)
            for name, value in faults.items()}


def hang_marker(run_dir, rank: int) -> pathlib.Path:
    """Written by a rank when it starts to hang (hang_at_step, hang_in_save_at_step)."""
    return pathlib.Path(run_dir) / f"test_hang_rank{rank}"


def _hang(run_dir, rank: int, where: str, until=lambda: False) -> None:
    hang_marker(run_dir, rank).write_text(where)
    while not until():
        time.sleep(0.05)


def fault_callbacks(env) -> list:
    """The faults asked for in `env` (TEST_* variables, see `fault_env`), as callbacks of the training loop
    (train/callbacks.py) and, for the compiler, a broken torch.compile backend:
    - inject_nan_steps (+ inject_nan_rank, -1 = every rank): the loss of every micro-batch of these steps is
      multiplied by NaN, on that rank, before the backward pass;
    - hang_at_step: after that step (its metrics and checkpoint written) every rank blocks until a stop signal
      arrives;
    - hang_in_save_at_step: inside that step's checkpoint save, every rank's files written but the folder not yet
      published, every rank blocks (until killed);
    - break_compile: torch.compile's backend raises, as a compiler failure would;
    - export_delay_s: the final Hugging Face export (rank 0 alone) first waits that long (hang marker written);
    - sigterm_in_step=[S, K]: rank 0 sends itself SIGTERM during micro-batch K (1-based) of step S, as a signal
      arriving in the middle of a step under gradient accumulation would."""
    from codellama_recipe.train.callbacks import Callback

    if env.get("TEST_BREAK_COMPILE"):   # torch's own entry point, as a failing compiler would break it
        import torch

        compile_module = torch.nn.Module.compile

        def broken(gm, example_inputs):
            raise RuntimeError("injected compiler failure")

        torch.nn.Module.compile = lambda self, *args, **kwargs: compile_module(self, backend=broken)

    nan_steps = {int(s) for s in env.get("TEST_INJECT_NAN_STEPS", "").split(",") if s}
    nan_rank = int(env.get("TEST_INJECT_NAN_RANK", "-1"))
    hang_step = int(env["TEST_HANG_AT_STEP"]) if "TEST_HANG_AT_STEP" in env else None
    save_hang_step = int(env["TEST_HANG_IN_SAVE_AT_STEP"]) if "TEST_HANG_IN_SAVE_AT_STEP" in env else None
    signal_at = tuple(int(x) for x in env["TEST_SIGTERM_IN_STEP"].split(",")) if env.get("TEST_SIGTERM_IN_STEP") \
        else None
    export_delay = float(env["TEST_EXPORT_DELAY_S"]) if "TEST_EXPORT_DELAY_S" in env else None

    class Faults(Callback):
        def on_microbatch_loss(self, ctx, index, loss):
            step = ctx.state.step + 1
            if signal_at == (step, index + 1) and ctx.rank == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            if step in nan_steps and nan_rank in (-1, ctx.rank):
                return loss * float("nan")
            return loss

        def on_step_end(self, ctx):
            if ctx.state.step == hang_step:
                _hang(ctx.run_dir, ctx.rank, f"after step {hang_step}", until=lambda: ctx.stop.signum)

        def on_checkpoint_files_written(self, ctx, tmp_dir):
            if ctx.state.step == save_hang_step:
                _hang(ctx.run_dir, ctx.rank, f"in the save of step {save_hang_step}")

        def on_export_start(self, ctx):
            if export_delay is not None:
                hang_marker(ctx.run_dir, 0).write_text("in the export")
                time.sleep(export_delay)

    return [Faults()]


# --------------------------------------------------------------------------------------------------------
# Launching and killing
# --------------------------------------------------------------------------------------------------------

def engine_env() -> dict:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")))
    env.pop("WANDB_MODE", None)  # the config's wandb.mode decides
    return env


def launch(overrides: list[str], nproc: int = 2, synthetic: bool = False, log_path=None,
           exit_codes_dir=None, **faults) -> subprocess.Popen:
    """torchrun (not the deepspeed launcher, which sets LOCAL_SIZE so that every rank leaves a 66 MB
    /dev/shm/deepspeed_allreduce_buffer_* file behind) in its own process group; stdout and stderr go to a log
    file (a pipe could fill up and block the ranks); `output(proc)` reads it.

    synthetic: the synthetic data loader instead of the data pipeline; faults: see `fault_callbacks`;
    exit_codes_dir: every rank writes its exit status to exit_codes_dir/rank<N> (`exit_codes`), which torchrun does
    not report when it was itself stopped by a signal. Any of them runs this file as the entry point, otherwise it
    is codellama-train itself."""
    import tempfile

    env = engine_env()
    env.update(fault_env(faults))
    if synthetic:
        env["TEST_SYNTHETIC_DATA"] = "1"
    if exit_codes_dir is not None:
        pathlib.Path(exit_codes_dir).mkdir(parents=True, exist_ok=True)
        env["TEST_EXIT_CODES_DIR"] = str(exit_codes_dir)
    helper = synthetic or faults or exit_codes_dir is not None
    target = [str(REPO / "tests" / "helpers_engine.py")] if helper else ["-m", "codellama_recipe.train.cli"]
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, *overrides]
    if nproc == 0:  # one plain process, no torchrun
        cmd = [PYTHON, *target, *overrides]
    if log_path is None:  # next to the run_dir: <run_dir>.<n>.log
        run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")), None)
        if run_dir:
            n = len(list(pathlib.Path(run_dir).parent.glob(pathlib.Path(run_dir).name + ".*.log")))
            log_path = f"{run_dir}.{n}.log"
        else:
            log_path = tempfile.NamedTemporaryFile(prefix="engine-", suffix=".log", delete=False).name
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
    proc.log_path = log_path
    return proc


def launch_nodes(overrides: list[str], log_dir, nnodes: int = 2, **faults) -> list[subprocess.Popen]:
    """`nnodes` torchrun "nodes" of one rank each on this machine, joined by a c10d rendezvous on 127.0.0.1, as
    a multi-node job starts them (`launch/multinode.sh`); synthetic data. Each node's torchrun output goes to
    log_dir/node<N>.log, and each rank's own output to log_dir/rank<R>.log (`rank_output`). Ranks are given out
    in the order the nodes join, not by node number: `rank_of` tells. Node 0 hosts the rendezvous store (whose
    loss ends every node, as on a cluster)."""
    import socket

    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = engine_env()
    env.update(fault_env(faults), TEST_SYNTHETIC_DATA="1", TEST_RANK_LOG_DIR=str(log_dir))
    procs = []
    for node in range(nnodes):
        cmd = [PYTHON, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc_per_node=1",
               f"--node_rank={node}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
               "--rdzv_id=test-nodes", f"--rdzv_conf=is_host={'true' if node == 0 else 'false'}",
               str(REPO / "tests" / "helpers_engine.py"), *overrides]
        with open(log_dir / f"node{node}.log", "w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True)
        proc.log_path = str(log_dir / f"node{node}.log")
        procs.append(proc)
    return procs


def rank_of(worker_pid: int) -> int:
    import psutil

    return int(psutil.Process(worker_pid).environ()["RANK"])


def rank_output(log_dir, rank: int) -> str:
    path = pathlib.Path(log_dir) / f"rank{rank}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def exit_codes(exit_codes_dir) -> dict[int, int]:
    """{rank: exit status} written by the ranks of a launch(..., exit_codes_dir=...)."""
    return {int(p.name[4:]): int(p.read_text()) for p in pathlib.Path(exit_codes_dir).glob("rank*")}


def output(proc: subprocess.Popen) -> str:
    return pathlib.Path(proc.log_path).read_text(errors="replace")


def run(overrides, nproc=2, synthetic=False, timeout=300, **faults) -> tuple[int, str]:
    proc = launch(overrides, nproc, synthetic, **faults)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise AssertionError(f"timed out after {timeout}s:\n{output(proc)[-4000:]}")
    return proc.returncode, output(proc)


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The training processes (torchrun's children running Python)."""
    import psutil

    return [c.pid for c in psutil.Process(proc.pid).children(recursive=False)]


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 torchrun and every descendant (the ranks and their DataLoader workers)."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = output(proc)
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{out[-4000:]}")
        if time.time() > deadline:
            kill_tree(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def metrics(run_dir) -> list[dict]:
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hf_weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(pathlib.Path(run_dir) / "hf" / "model.safetensors"))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    loaders = None
    if os.environ.get("TEST_SYNTHETIC_DATA") == "1":
        from helpers_tokenizer import small_tokenizer_path

        loaders = synthetic_loaders
        if not any(arg.startswith("tokenizer_path=") for arg in sys.argv[1:]):
            sys.argv.append(f"tokenizer_path={small_tokenizer_path()}")
    if os.environ.get("TEST_RANK_LOG_DIR"):   # this rank's own output, apart from its launcher's
        rank_log = open(pathlib.Path(os.environ["TEST_RANK_LOG_DIR"]) / f"rank{os.environ.get('RANK', '0')}.log", "w")
        os.dup2(rank_log.fileno(), 1)
        os.dup2(rank_log.fileno(), 2)
    from codellama_recipe.train.cli import main

    callbacks = fault_callbacks(os.environ)
    if not os.environ.get("TEST_EXIT_CODES_DIR"):
        main(callbacks, loaders)
    else:
        status = 1   # an exception that escapes main() ends the process with 1
        try:
            main(callbacks, loaders)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            raise
        finally:
            path = pathlib.Path(os.environ["TEST_EXIT_CODES_DIR"]) / f"rank{os.environ.get('RANK', '0')}"
            path.write_text(str(status))
