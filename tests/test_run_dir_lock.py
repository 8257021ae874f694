"""One process per run_dir, and no orphaned workers: a second command on a run_dir in use exits 2 at once naming
the holder; a lock left by a killed run never blocks; workers stop when their launcher is killed."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import helpers_engine as H
from codellama_recipe.core.run_dir_lock import LOCK_FILE, RunDirBusy, run_dir_lock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

BASE = H.TINY + ["trainer.batch_tokens=256", "trainer.log_every=1", "trainer.val_every=0", "data.num_workers=0",
                 "optim.warmup_steps=1", "deepspeed=zero0"]

HOLD = """
import sys, time
from codellama_recipe.core.run_dir_lock import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_dir_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirBusy) as e:
            with run_dir_lock(tmp_path / "run"):
                pass
        assert f"in use by pid {holder.pid} on " in str(e.value) and str(tmp_path / "run") in str(e.value)
    finally:
        holder.kill()      # kill -9: no cleanup runs, the kernel drops the lock
        holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid   # the file is left behind
    with run_dir_lock(tmp_path / "run"):
        pass


def _metrics_steps(run_dir):
    return [m["step"] for m in H.metrics(run_dir)]


def test_simultaneous_starts_one_trains_the_other_exits_2(tmp_path):
    run_dir = tmp_path / "run"
    overrides = BASE + [f"run_dir={run_dir}", "trainer.max_steps=6", "trainer.checkpoint_every=3"]
    first = H.launch(overrides, nproc=0, log_path=tmp_path / "a.log")
    second = H.launch(overrides, nproc=0, log_path=tmp_path / "b.log")
    codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    outs = H.output(first) + H.output(second)
    assert codes == [0, 2], outs[-4000:]
    assert "is in use by pid" in outs
    assert _metrics_steps(run_dir) == list(range(1, 7))                     # one run's steps, once each
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1        # one wandb run


def test_a_second_start_mid_run_exits_2_at_once_and_leaves_the_first_run_alone(tmp_path):
    run_dir = tmp_path / "run"
    overrides = BASE + [f"run_dir={run_dir}", "trainer.max_steps=12", "trainer.checkpoint_every=2",
                        "trainer.keep_last=2"]
    first = H.launch(overrides, nproc=2, log_path=tmp_path / "a.log", hang_at_step=4)   # mid-run, after step 4
    try:
        H.wait_for(lambda: H.hang_marker(run_dir, 0).exists(), first, what="the first run at step 4")
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        started = time.time()
        rc, out = H.run(overrides, nproc=2)
        # the worker exits 2; torchrun reports any failed worker as its own exit 1
        assert rc == 1 and "exitcode  : 2" in out and "is in use by pid" in out, out[-4000:]
        assert time.time() - started < 60
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == checkpoints    # untouched
        for pid in H.worker_pids(first):           # the first run checkpoints and stops as usual (preemption)
            os.kill(pid, signal.SIGTERM)
        assert first.wait(timeout=300) == 0, H.output(first)[-4000:]
    finally:
        if first.poll() is None:
            H.kill_tree(first)
    assert _metrics_steps(run_dir) == [1, 2, 3, 4]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    proc = H.launch(BASE + [f"run_dir={run_dir}", "trainer.max_steps=100000", "trainer.checkpoint_every=1000"],
                    nproc=2, log_path=tmp_path / "a.log")
    H.wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(H.metrics(run_dir)) >= 2, proc,
               what="two logged steps")
    workers = [psutil.Process(pid) for pid in H.worker_pids(proc)]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)         # the launcher only, as a lost ssh session or a crashed shell does
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    for p in alive:                           # never leave them behind, even when the test fails
        p.kill()
    assert not alive, f"workers still running after their launcher died: {[p.pid for p in alive]}"
    assert "because its launcher (pid" in H.output(proc)
    with run_dir_lock(run_dir):       # their lock went with them: the run_dir is free for the next command
        pass


def test_a_run_killed_during_the_comm_op_build_does_not_block_the_next_one(tmp_path, monkeypatch):
    """torch's JIT build lock names no process; a run killed while DeepSpeed builds its CPU comm op leaves it
    behind, and the next run used to wait for it forever in silence."""
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    first = H.launch(BASE + [f"run_dir={tmp_path / 'a'}", "trainer.max_steps=2"], nproc=0, log_path=tmp_path / "a.log")
    lock = extensions / "deepspeed_shm_comm" / "lock"
    H.wait_for(lock.exists, first, timeout=120, what="the comm op build")
    H.kill_tree(first)
    assert lock.exists()
    rc, out = H.run(BASE + [f"run_dir={tmp_path / 'b'}", "trainer.max_steps=2"], nproc=0, timeout=300)
    assert rc == 0, out[-3000:]
    assert f"removed a stale build lock {lock}" in out and "building DeepSpeed's CPU comm op" in out
