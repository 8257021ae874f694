"""What a cluster does to a run, on 2 CPU processes (torchrun + gloo): the launcher is sent SIGTERM (it forwards the
signal to the process group of every rank, DataLoader workers included)."""
import os
import signal

import pytest

import helpers_engine as H

pytestmark = [pytest.mark.timeout(300)]

BASE = H.TINY + ["trainer.batch_tokens=256", "trainer.log_every=1", "trainer.val_every=0",
                 "trainer.checkpoint_every=0", "optim.warmup_steps=1", "optim.lr=3e-3"]


def _wait_hanging(proc, run_dir, what, ranks=(0, 1)):
    H.wait_for(lambda: all(H.hang_marker(run_dir, r).exists() for r in ranks), proc, what=what)


def test_sigterm_to_torchrun_with_dataloader_workers_checkpoints_and_resumes(tmp_path):
    """torchrun forwards SIGTERM with killpg: the DataLoader worker of each rank receives it too. The worker must
    leave the decision to its rank (which checkpoints at the step boundary and exits 0), not die and take the
    rank down with 'DataLoader worker … killed by signal: Terminated'."""
    run_dir, codes = tmp_path / "run", tmp_path / "exit_codes"
    overrides = BASE + [f"run_dir={run_dir}", "data.num_workers=1", "trainer.max_steps=4"]
    proc = H.launch(overrides, hang_at_step=2, exit_codes_dir=codes)
    _wait_hanging(proc, run_dir, "the hang after step 2")
    os.kill(proc.pid, signal.SIGTERM)          # the launcher, as a scheduler or a user would
    proc.wait(timeout=120)
    out = H.output(proc)
    assert "killed by signal" not in out, out[-4000:]
    assert H.exit_codes(codes) == {0: 0, 1: 0}, out[-4000:]
    assert "stopped by signal 15 at step 2" in out, out[-4000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000002"

    rc, out = H.run(overrides)                 # the same command resumes
    assert rc == 0, out[-4000:]
    assert "resumed from" in out and "step 2" in out
    assert [m["step"] for m in H.metrics(run_dir)] == [1, 2, 3, 4]
    assert (run_dir / "DONE.json").is_file()
