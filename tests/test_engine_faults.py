"""Numerical faults and refusals, end to end: injected NaN (skipped on every rank and counted; persistent NaN
stops with a clear message), a checkpoint from another model/data config is refused, bad configs exit 2."""
import json

import pytest
import torch

import helpers_engine as H
from codellama_recipe.train.checkpoint_integrity import tag_for
from codellama_recipe.train.checkpoint_reading import load_consolidated

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BASE = H.TINY + ["trainer.batch_tokens=256", "trainer.log_every=1", "trainer.val_every=0", "data.num_workers=0",
                 "optim.warmup_steps=1", "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def nan_once(tmp_path_factory):
    """ZeRO stage 0, fp32 (the client GuardedAdamW guards the step), NaN loss on rank 1 only at step 2."""
    run_dir = tmp_path_factory.mktemp("nan") / "run"
    rc, out = H.run(BASE + [f"run_dir={run_dir}", "deepspeed=zero0", "trainer.max_steps=4",
                            "trainer.checkpoint_every=1", "trainer.keep_last=10"],
                    inject_nan_steps=[2], inject_nan_rank=1)
    assert rc == 0, out[-4000:]
    return run_dir, out


def test_nan_on_one_rank_skips_the_update_everywhere(nan_once):
    run_dir, out = nan_once
    rows = {m["step"]: m for m in H.metrics(run_dir)}
    assert [rows[s]["train/nonfinite_skipped"] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert rows[2]["train/nonfinite_microbatches"] == 1          # rank 1's micro-batch, counted over ranks
    assert all(isinstance(rows[s]["loss"], float) and rows[s]["loss"] == rows[s]["loss"] for s in rows)
    assert "step 2: non-finite loss or gradient norm; update skipped" in out
    weights = {s: load_consolidated(run_dir / "checkpoints" / tag_for(s))[1] for s in (1, 2, 3)}
    for name in weights[1]:
        assert torch.equal(weights[1][name], weights[2][name]), f"{name} changed by a skipped update"
        assert torch.isfinite(weights[3][name]).all()
    assert any(not torch.equal(weights[2][n], weights[3][n]) for n in weights[2])  # step 3 trained again
    assert json.loads((run_dir / "DONE.json").read_text())["nonfinite_skipped"] == 1


def test_persistent_nan_stops_with_a_clear_message(tmp_path):
    """bf16 + ZeRO-1 (DeepSpeed's own overflow check), one plain process."""
    run_dir = tmp_path / "run"
    rc, out = H.run(BASE + [f"run_dir={run_dir}", "deepspeed=zero1", "trainer.precision=bf16",
                            "trainer.max_steps=10", "trainer.checkpoint_every=2", "trainer.max_nonfinite_in_row=3"],
                    nproc=0, inject_nan_steps=range(1, 11))
    assert rc == 3, out[-4000:]
    assert "3 consecutive updates had a non-finite loss or gradient norm (last at step 3)" in out
    assert [m["train/nonfinite_skipped"] for m in H.metrics(run_dir)] == [1, 2, 3]
    assert not (run_dir / "DONE.json").exists()
    _, sd = load_consolidated(run_dir / "checkpoints" / tag_for(2))   # written: the weights stayed finite
    assert all(torch.isfinite(t).all() for t in sd.values())


def test_checkpoint_from_other_data_config_is_refused(nan_once):
    run_dir, _ = nan_once
    rc, out = H.run(BASE + [f"run_dir={run_dir}", "deepspeed=zero0", "trainer.max_steps=4",
                            "data.seq_len=64"], nproc=0)
    assert rc == 2, out[-3000:]
    assert "data.seq_len: 32 -> 64" in out and "trainer.allow_config_change=true" in out
    assert "[train] model" not in out                       # refused before anything was built


def test_bad_config_exits_2_naming_the_key(tmp_path):
    rc, out = H.run(BASE + [f"run_dir={tmp_path / 'run'}", "trainer.batch_tokens=1000"], nproc=0)
    assert rc == 2
    assert "config error: trainer.batch_tokens=1000 is invalid" in out
    assert not (tmp_path / "run").exists()


def test_logged_metric_names_are_those_of_the_workspace_panels(nan_once):
    import importlib.util

    spec = importlib.util.spec_from_file_location("wandb_workspace", H.REPO / "bench" / "wandb_workspace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run_dir, _ = nan_once
    rows = H.metrics(run_dir)
    keys = set().union(*rows)
    assert {"step", "loss", "lr", "tokens_per_s", "mfu"} <= keys
    sources = ["code", "nl_code", "nl"]                      # conf/data/code_mix.yaml
    panels = mod.sections_spec(sources)
    expected = {m for group in ("train", "perf", "data") for _, metrics in panels[group] for m in metrics
                if not m.startswith("train/loss/")}          # per-source / FIM losses appear only when present
    assert expected <= keys, sorted(expected - keys)
    assert "train/loss/code" in keys
    assert all(0 < r["mfu"] < 1 and r["tokens_per_s"] > 0 for r in rows)
