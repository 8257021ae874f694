"""What a cluster does to a run, on 2 CPU processes (torchrun + gloo): the launcher is sent SIGTERM (it forwards the
signal to the process group of every rank, DataLoader workers included); one of two torchrun "nodes" freezes
(SIGSTOP) or dies (kill -9): the other ends within trainer.collective_timeout_s with one line; rank 0 exports
alone while the other ranks wait on its heartbeat, however long the export takes."""
import os
import signal
import time

import pytest
import torch

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


# ------------------------------------------------------------------------------------------------------------
# A frozen or lost node: two torchrun "nodes" of one rank each, joined by a c10d rendezvous on 127.0.0.1
# ------------------------------------------------------------------------------------------------------------

TIMEOUT_S = 10   # trainer.collective_timeout_s of these tests


def _two_nodes_training(tmp_path):
    """Two nodes that have trained past their first checkpoints; (nodes, run_dir, log_dir)."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    overrides = BASE + [f"run_dir={run_dir}", "trainer.max_steps=100000", "trainer.checkpoint_every=3",
                        f"trainer.collective_timeout_s={TIMEOUT_S}", "trainer.peak_flops_per_device=1e12"]
    nodes = H.launch_nodes(overrides, logs)

    def trained_past_a_checkpoint():
        latest = run_dir / "checkpoints" / "latest"
        return latest.exists() and latest.read_text().strip() >= "step_00000003" and len(H.metrics(run_dir)) >= 4
    try:
        H.wait_for(trained_past_a_checkpoint, nodes[0], timeout=120, what="a checkpoint on two nodes")
        H.wait_for(trained_past_a_checkpoint, nodes[1], timeout=1, what="a checkpoint on two nodes")
    except BaseException:
        for node in nodes:
            H.kill_tree(node)
        raise
    return nodes, run_dir, logs


def _one_line_about(survivor_output: str, lost_rank: int) -> str:
    assert "Traceback" not in survivor_output, survivor_output[-4000:]
    lines = [line for line in survivor_output.splitlines() if "lost a peer" in line]
    assert len(lines) == 1, survivor_output[-4000:]
    line = lines[0]
    assert line.startswith("codellama-train: rank "), line
    assert f"rank {lost_rank} (" in line and " step " in line, line
    assert "is intact and rerunning the same command resumes from it" in line, line
    return line


def _checkpoint_intact(run_dir):
    from codellama_recipe.train import checkpoint_integrity as ckpt

    tag, damaged = ckpt.newest_intact_tag(run_dir / "checkpoints")
    assert tag is not None and tag == ckpt.latest_tag(run_dir / "checkpoints") and not damaged, (tag, damaged)


def _finish(nodes, timeout=240):
    for node in nodes:
        node.wait(timeout=timeout)
    assert [node.returncode for node in nodes] == [0, 0], [H.output(node)[-3000:] for node in nodes]


@pytest.mark.slow
def test_two_nodes_killed_mid_run_resume_exactly(tmp_path):
    """kill -9 of both nodes (a lost allocation) after a checkpoint; the same two commands again resume from it,
    and the losses and the exported weights equal those of an uninterrupted two-node run, bit for bit."""
    steps = BASE + ["trainer.max_steps=8", "trainer.checkpoint_every=3", "trainer.peak_flops_per_device=1e12"]
    whole = tmp_path / "whole"
    _finish(H.launch_nodes(steps + [f"run_dir={whole}"], tmp_path / "logs_whole"))

    cut = tmp_path / "cut"
    nodes = H.launch_nodes(steps + [f"run_dir={cut}"], tmp_path / "logs_cut")
    try:
        H.wait_for(lambda: (cut / "checkpoints" / "latest").exists() and len(H.metrics(cut)) >= 4, nodes[0],
                   timeout=120, what="a checkpoint and a step past it")
    finally:
        for node in nodes:
            H.kill_tree(node)
    assert not (cut / "DONE.json").exists()
    _finish(H.launch_nodes(steps + [f"run_dir={cut}"], tmp_path / "logs_resumed"))
    assert "resumed from" in H.rank_output(tmp_path / "logs_resumed", 0)

    def losses(run_dir):
        return [(m["step"], m["train/loss"]) for m in H.metrics(run_dir)]
    assert losses(cut) == losses(whole) and len(losses(whole)) == 8
    a, b = H.hf_weights(whole), H.hf_weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(180)
def test_frozen_node_ends_the_run_within_the_collective_timeout_with_one_line(tmp_path):
    """SIGSTOP the rank of one node mid-training (a node that hangs): the other rank's next collective times out
    after trainer.collective_timeout_s (not torch's 30 minutes, for DeepSpeed's own process groups too), it names
    the silent rank and the step in one line, exits 4, and the latest checkpoint stays intact."""
    nodes, run_dir, logs = _two_nodes_training(tmp_path)
    try:
        frozen_pid = H.worker_pids(nodes[1])[0]
        frozen_rank = H.rank_of(frozen_pid)
        os.kill(frozen_pid, signal.SIGSTOP)
        started = time.monotonic()
        nodes[0].wait(timeout=TIMEOUT_S + 40)
        took = time.monotonic() - started
        node_log = H.output(nodes[0])
        assert nodes[0].returncode != 0
        assert "exitcode  : 4" in node_log, node_log[-3000:]
        line = _one_line_about(H.rank_output(logs, 1 - frozen_rank), frozen_rank)
        assert "no answer within trainer.collective_timeout_s=10 s" in line, line
        # the timeout, the heartbeat check (2.5 × 2 s) and the exit; a 30-minute default would fail here
        assert TIMEOUT_S <= took < TIMEOUT_S + 25, took
        print(f"frozen peer: the surviving node ended {took:.1f} s after SIGSTOP: {line}")
        _checkpoint_intact(run_dir)
    finally:
        for node in nodes:
            H.kill_tree(node)


@pytest.mark.timeout(180)
def test_dead_node_ends_the_run_with_one_line(tmp_path):
    """kill -9 of one node (its torchrun and its rank): the other rank ends at once with one line naming the lost
    rank, exit 4, no traceback; the latest checkpoint stays intact."""
    nodes, run_dir, logs = _two_nodes_training(tmp_path)
    try:
        lost_rank = H.rank_of(H.worker_pids(nodes[1])[0])
        H.kill_tree(nodes[1])
        started = time.monotonic()
        nodes[0].wait(timeout=TIMEOUT_S + 40)
        took = time.monotonic() - started
        assert nodes[0].returncode != 0
        assert "exitcode  : 4" in H.output(nodes[0]), H.output(nodes[0])[-3000:]
        line = _one_line_about(H.rank_output(logs, 1 - lost_rank), lost_rank)
        assert took < TIMEOUT_S + 15, took
        print(f"dead peer: the surviving node ended {took:.1f} s after kill -9: {line}")
        _checkpoint_intact(run_dir)
    finally:
        for node in nodes:
            H.kill_tree(node)


# ------------------------------------------------------------------------------------------------------------
# Rank 0's work at the end of a stage (the export; a pipeline's evaluation waits the same way, train/peers.py)
# ------------------------------------------------------------------------------------------------------------

END = BASE + ["trainer.max_steps=2", "trainer.collective_timeout_s=4", "trainer.peak_flops_per_device=1e12"]


@pytest.mark.timeout(180)
def test_rank0_export_longer_than_the_collective_timeout_does_not_fail_the_other_ranks(tmp_path):
    """The other ranks wait for rank 0's export as long as rank 0 is alive, not collective_timeout_s: a 70B export
    takes longer than any sensible collective timeout."""
    run_dir = tmp_path / "run"
    proc = H.launch(END + [f"run_dir={run_dir}"], synthetic=True, export_delay_s=10)
    proc.wait(timeout=150)
    out = H.output(proc)
    assert proc.returncode == 0, out[-4000:]
    assert "lost a peer" not in out and (run_dir / "DONE.json").is_file()


@pytest.mark.timeout(180)
def test_rank0_frozen_in_the_export_ends_the_other_ranks_within_the_timeout(tmp_path):
    run_dir = tmp_path / "run"
    proc = H.launch(END + [f"run_dir={run_dir}"], synthetic=True, export_delay_s=1000)
    try:
        H.wait_for(lambda: H.hang_marker(run_dir, 0).exists(), proc, timeout=120, what="rank 0 in the export")
        rank0 = next(pid for pid in H.worker_pids(proc) if H.rank_of(pid) == 0)
        os.kill(rank0, signal.SIGSTOP)
        started = time.monotonic()
        H.wait_for(lambda: "lost a peer" in H.output(proc), proc, timeout=30, what="rank 1's line")
        took = time.monotonic() - started
        out = H.output(proc)
        (line,) = [x for x in out.splitlines() if "lost a peer" in x]
        assert line.startswith("codellama-train: rank 1: lost a peer while exporting the weights: rank 0 ("), line
        assert "stopped responding, no heartbeat for trainer.collective_timeout_s=4 s" in line, line
        assert took < 4 + 6, took
    finally:
        H.kill_tree(proc)
