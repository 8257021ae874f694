"""torch.compile per transformer block inside the DeepSpeed engine (trainer.compile), on CPU: the same losses as
eager, exact resume with compile on, and a compiler failure falls back to eager with one warning."""
import signal

import pytest
import torch

import helpers_engine as H

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BASE = H.TINY + ["trainer.batch_tokens=256", "trainer.log_every=1", "trainer.val_every=0", "data.num_workers=0",
                 "optim.warmup_steps=1", "optim.lr=3e-3", "deepspeed=zero1", "trainer.checkpoint_every=2",
                 "wandb.mode=disabled"]


def _run(run_dir, *extra, **faults):
    rc, out = H.run(BASE + [f"run_dir={run_dir}", *extra], nproc=0, synthetic=True, **faults)
    assert rc == 0, out[-4000:]
    return out


def _losses(run_dir):
    return [m["loss"] for m in H.metrics(run_dir)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    outs = {"eager": _run(root / "eager", "trainer.max_steps=4", "trainer.compile=false"),
            "compiled": _run(root / "compiled", "trainer.max_steps=4", "trainer.compile=true")}
    proc = H.launch(BASE + [f"run_dir={root / 'resumed'}", "trainer.max_steps=4", "trainer.compile=true"], nproc=0,
                    synthetic=True, hang_at_step=2)   # stopped by SIGTERM after step 2, as a preemption
    H.wait_for(lambda: H.hang_marker(root / "resumed", 0).exists(), proc, what="step 2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, H.output(proc)[-3000:]
    outs["resumed"] = _run(root / "resumed", "trainer.max_steps=4", "trainer.compile=true")
    outs["broken"] = _run(root / "broken", "trainer.max_steps=4", "trainer.compile=true", break_compile=1)
    return root, outs


def test_compiled_blocks_train_as_eager_ones(runs):
    root, outs = runs
    assert "torch.compile per transformer block" in outs["compiled"]
    assert "torch.compile per transformer block" not in outs["eager"]
    assert _losses(root / "compiled") == pytest.approx(_losses(root / "eager"), rel=1e-4, abs=1e-5)
    ours, ref = H.hf_weights(root / "compiled"), H.hf_weights(root / "eager")
    assert all(torch.allclose(ours[k], ref[k], rtol=1e-3, atol=1e-5) for k in ref)


def test_resume_with_compile_on_is_exact(runs):
    root, outs = runs
    assert "resumed from" in outs["resumed"]
    assert _losses(root / "resumed") == _losses(root / "compiled")
    ours, ref = H.hf_weights(root / "resumed"), H.hf_weights(root / "compiled")
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(runs):
    root, outs = runs
    assert outs["broken"].count("WARNING: torch.compile failed") == 1
    assert "injected compiler failure" in outs["broken"]
    assert _losses(root / "broken") == _losses(root / "eager")
    ours, ref = H.hf_weights(root / "broken"), H.hf_weights(root / "eager")
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
