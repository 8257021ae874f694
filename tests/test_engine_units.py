"""Engine pieces in one process: schedules, AdamW groups and guard, losses, config checks, resume checks,
metrics file truncation. Fast (no DeepSpeed engine)."""
import json
import math
import os
import random
import threading
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

from helpers_engine import TINY, compose
from codellama_recipe.train import checkpoint_identity as ckpt_identity
from codellama_recipe.train import checkpoint_integrity as ckpt_integrity
from codellama_recipe.train import checkpoints as ckpt
from codellama_recipe.train.config_checks import check_config, typed_train_config
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.train.loss import chunked_token_losses, mean_loss, token_losses, valid_tokens
from codellama_recipe.train.metrics import IntervalMetrics, truncate_jsonl
from codellama_recipe.train.model import Llama, ModelConfig
from codellama_recipe.train.optim import GuardedAdamW, lr_at, param_groups
from codellama_recipe.train.trainer import combine_data_metrics

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------- schedules
def test_cosine_schedule_matches_the_formula():
    kw = dict(lr=3e-4, schedule="cosine", warmup_steps=10, max_steps=110, final_lr_ratio=1 / 30)
    assert lr_at(0, **kw) == pytest.approx(3e-5)           # first warm-up update: lr / warmup
    assert lr_at(9, **kw) == pytest.approx(3e-4)           # end of warm-up: the peak
    assert lr_at(10, **kw) == pytest.approx(3e-4)          # decay starts at the peak
    assert lr_at(109, **kw) == pytest.approx(1e-5)         # last update: peak / 30
    mid = 10 + 99 / 2                                       # progress 0.5 -> halfway between peak and floor
    assert lr_at(int(mid), **kw) == pytest.approx(1e-5 + (3e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    values = [lr_at(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_linear_and_constant_schedules():
    lin = dict(lr=1.0, schedule="linear", warmup_steps=0, max_steps=11, final_lr_ratio=0.0)
    assert [round(lr_at(s, **lin), 6) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    const = dict(lr=2e-5, schedule="constant", warmup_steps=4, max_steps=100, final_lr_ratio=1.0)
    assert lr_at(1, **const) == pytest.approx(1e-5) and lr_at(50, **const) == 2e-5


# ---------------------------------------------------------------------------- optimizer
def _tiny_model():
    torch.manual_seed(0)
    return Llama(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16))


def test_no_weight_decay_on_norms():
    model = _tiny_model()
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = sorted(names[id(p)] for p in groups["no_decay"]["params"])
    assert no_decay == sorted(n for n in names.values() if "norm" in n)
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    assert len(groups["decay"]["params"]) + len(no_decay) == len(list(model.parameters()))


def test_guarded_adamw_skips_nonfinite_and_clips_like_torch():
    a, b = _tiny_model(), _tiny_model()
    opt_a = GuardedAdamW(param_groups(a, 0.1), lr=1e-2, max_grad_norm=0.5, guard=True)
    opt_b = torch.optim.AdamW(param_groups(b, 0.1), lr=1e-2)
    tokens = torch.randint(0, 50, (2, 8))
    for m in (a, b):
        m(tokens).float().pow(2).mean().backward()
    torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    opt_a.step()
    opt_b.step()
    assert not opt_a.overflow
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)

    before = [p.detach().clone() for p in a.parameters()]
    opt_a.zero_grad()
    a(tokens).float().mean().backward()
    next(a.parameters()).grad[0, 0] = float("nan")
    opt_a.step()
    assert opt_a.overflow and not math.isfinite(opt_a._global_grad_norm)
    assert all(torch.equal(x, p) for x, p in zip(before, a.parameters()))


# ---------------------------------------------------------------------------- losses
def test_token_losses_match_log_softmax_and_respect_the_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 0] = -100
    loss_mask = torch.ones(2, 5, dtype=torch.bool)
    loss_mask[1, 3] = False
    got = token_losses(logits, labels, loss_mask)
    ref = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    valid = valid_tokens(labels, loss_mask)
    assert got[~valid].abs().sum() == 0
    torch.testing.assert_close(got[valid], ref[valid])
    torch.testing.assert_close(mean_loss(got, valid), ref[valid].mean())


def test_chunked_loss_equals_full_loss_with_gradients_and_bounded_chunks():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=False).double()
    seen_rows = []
    head.register_forward_pre_hook(lambda m, args: seen_rows.append(args[0].shape[0]))
    hidden = torch.randn(3, 10, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 97, (3, 10))
    labels[:, :2] = -100
    full = token_losses(head(hidden), labels)
    g_full = torch.autograd.grad(full.sum(), [hidden, head.weight])
    seen_rows.clear()
    chunked = chunked_token_losses(hidden, head, labels, chunk_size=7)
    g_chunk = torch.autograd.grad(chunked.sum(), [hidden, head.weight])
    torch.testing.assert_close(chunked, full.float() if chunked.dtype == torch.float32 else full)
    for x, y in zip(g_full, g_chunk):
        torch.testing.assert_close(x, y)
    assert max(seen_rows) <= 7  # never the whole [30 x 97] logits at once, also not in the recomputation


# ---------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("override, key", [
    ("trainer.batch_tokens=1000", "trainer.batch_tokens"),
    ("deepspeed.zero_optimization.stage=5", "deepspeed.zero_optimization.stage"),
    ("init_from=/nonexistent/llama-2-7b", "init_from"),
    ("trainer.precision=fp16", "trainer.precision"),
    ("optim.schedule=exponential", "optim.schedule"),
    ("wandb.mode=sometimes", "wandb.mode"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("trainer.collective_timeout_s=0", "trainer.collective_timeout_s"),
    ("trainer.collective_timeout_s=-5", "trainer.collective_timeout_s"),
    ("trainer.collective_timeout_s=inf", "trainer.collective_timeout_s"),
])
def test_bad_config_names_the_key(override, key):
    cfg = compose(TINY + ["trainer.batch_tokens=512", override])
    with pytest.raises(ConfigError) as e:
        check_config(cfg, world_size=2)
    assert e.value.key == key and key in str(e.value)


def test_gradient_accumulation_is_derived_from_tokens():
    plan = check_config(compose(TINY + ["trainer.batch_tokens=1024"]), world_size=2)
    assert plan.grad_accum == 1024 // (32 * 4 * 2) == 4
    with pytest.raises(ConfigError, match="32 × 4 × 3 = 384"):
        check_config(compose(TINY + ["trainer.batch_tokens=1024"]), world_size=3)


def test_value_checks_read_no_file_and_input_checks_refuse_what_is_missing(tmp_path):
    from codellama_recipe.train.config_checks import check_inputs, check_values

    cache = tmp_path / "cache"      # the embedded corpus would be built here by an input check
    cfg = compose(TINY + ["trainer.batch_tokens=1024", f"cache_dir={cache}", f"run_dir={tmp_path / 'run'}",
                          f"corpus.code.paths=[{tmp_path / 'missing'}/*.jsonl]"])
    plan = check_values(cfg, world_size=2)
    assert plan.grad_accum == 4 and not cache.exists() and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError) as e:
        check_inputs(cfg, plan)
    assert e.value.key == "data.sources.code.paths"


def test_run_fails_before_any_process_group(tmp_path):
    from codellama_recipe.train.trainer import run

    cfg = compose(TINY + [f"run_dir={tmp_path}", "trainer.batch_tokens=1000"])
    with pytest.raises(ConfigError, match="trainer.batch_tokens"):
        run(cfg)
    assert not dist.is_initialized()
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- resume checks
def resolved_config(overrides):
    return ckpt_identity.resolved(compose(overrides))


def typed_config(overrides):
    return typed_train_config(compose(overrides))


def test_changed_model_or_data_config_is_refused_with_the_keys():
    old = ckpt_identity.resume_identity(resolved_config(TINY), 2)
    new = ckpt_identity.resume_identity(resolved_config(TINY + ["data.seq_len=64", "model.rope_theta=1e6"]), 2)
    with pytest.raises(ckpt_identity.ResumeRefused) as e:
        ckpt_identity.check_resumable({"identity": old, "step": 3}, new, allow_change=False)
    msg = str(e.value)
    assert "data.seq_len: 32 -> 64" in msg and "model.rope_theta" in msg and "allow_config_change" in msg
    assert len(ckpt_identity.check_resumable({"identity": old}, new, allow_change=True)) == 2
    optim_only = ckpt_identity.resume_identity(
        resolved_config(TINY + ["optim.lr=1e-3", "trainer.max_steps=1000"]), 2)
    assert ckpt_identity.check_resumable({"identity": old}, optim_only, allow_change=False) == []
    moved = ckpt_identity.resume_identity(resolved_config(TINY + ["cache_dir=/elsewhere"]), 2)   # data moved, same content
    assert ckpt_identity.check_resumable({"identity": old}, moved, allow_change=False) == []
    with pytest.raises(ckpt_identity.ResumeRefused, match="world_size: 2 -> 4"):
        ckpt_identity.check_resumable({"identity": old}, ckpt_identity.resume_identity(resolved_config(TINY), 4),
                                      allow_change=False)


def test_checkpoint_of_an_earlier_format_is_refused_saying_so():
    current = ckpt_identity.resume_identity(resolved_config(TINY), 2)
    earlier = {k: v for k, v in current.items() if k != "checkpoint_format"}   # what version 0.1 wrote
    with pytest.raises(ckpt_identity.ResumeRefused,
                       match=r"checkpoint format 1 .*writes format 2.*allow_config_change"):
        ckpt_identity.check_resumable({"identity": earlier, "step": 7}, current, allow_change=False)
    diffs = ckpt_identity.check_resumable({"identity": earlier}, current, allow_change=True)
    assert len(diffs) == 1 and diffs[0].startswith("checkpoint_format") and diffs[0].endswith("2")
    assert ckpt_identity.check_resumable({"identity": current}, current, allow_change=False) == []


def test_rng_states_round_trip_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_latest_ignores_incomplete_folders(tmp_path):
    for step in (3, 6):
        (tmp_path / ckpt_integrity.tag_for(step)).mkdir()
        (tmp_path / ckpt_integrity.tag_for(step) / ckpt_integrity.CLIENT_STATE).write_text("{}")
    (tmp_path / (ckpt_integrity.TMP_PREFIX + ckpt_integrity.tag_for(9))).mkdir()
    (tmp_path / ckpt_integrity.LATEST).write_text(ckpt_integrity.tag_for(6))
    assert ckpt_integrity.latest_tag(tmp_path) == "step_00000006"
    (tmp_path / ckpt_integrity.LATEST).write_text(ckpt_integrity.tag_for(9))   # pointer to a folder that is gone
    assert ckpt_integrity.latest_tag(tmp_path) == "step_00000006"
    assert ckpt_integrity.remove_incomplete(tmp_path) == [".tmp-step_00000009"]


# ---------------------------------------------------------------------------- metrics
def test_truncate_jsonl_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert truncate_jsonl(path, 4) == 4
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_interval_metrics_are_reduced_in_one_piece_and_leave_nonfinite_microbatches_out(tmp_path, monkeypatch):
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    is_fim = torch.tensor([[True] * 3, [False] * 3])
    source_ids = torch.tensor([[1] * 3, [0] * 3])
    interval = IntervalMetrics(["code", "nl"], torch.device("cpu"))
    interval.add_microbatch(losses, valid, torch.tensor(True), is_fim, source_ids)
    interval.add_microbatch(losses * 100, valid, torch.tensor(False), is_fim, source_ids)  # only counted
    interval.steps, interval.time_s, interval.skipped_steps = 2, 0.5, 1
    reduced_sizes, all_reduce = [], dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, **kw: reduced_sizes.append(t.numel()) or all_reduce(t, **kw))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        total = interval.all_reduced()
    finally:
        dist.destroy_process_group()
    assert reduced_sizes == [7 + 2 * 2]                     # one collective for every sum
    assert total.mean_loss() == pytest.approx((1 + 2 + 4 + 5 + 6) / 5)
    assert total.loss_breakdown() == pytest.approx({"train/loss/fim": 1.5, "train/loss/plain": 5.0,
                                                    "train/loss/code": 5.0, "train/loss/nl": 1.5})
    assert int(total.nonfinite_microbatches) == 1 and int(total.tokens) == 5
    assert (total.steps, total.time_s, total.skipped_steps) == (2, 0.5, 1)
    assert IntervalMetrics(["code"], torch.device("cpu")).loss_breakdown() == {}


def test_data_metrics_average_shares_and_sum_counts():
    got = combine_data_metrics([{"data/share/code": 0.8, "data/skipped/too_long": 2, "data/epoch/code": 1},
                                {"data/share/code": 0.6, "data/skipped/too_long": 3, "data/epoch/code": 2}])
    assert got == {"data/share/code": pytest.approx(0.7), "data/skipped/too_long": 5, "data/epoch/code": 1.5}


# ---------------------------------------------------------------------------- model construction
def _saved_hf(tmp_path, vocab=100):
    from codellama_recipe.train.weight_formats import save_hf

    torch.manual_seed(1)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, multiple_of=64)
    model = Llama(cfg)
    save_hf(model.state_dict(), cfg, tmp_path / "hf")
    return tmp_path / "hf", model.state_dict()


def test_init_from_grows_vocab_and_applies_the_configured_rope_theta(tmp_path):
    from codellama_recipe.train.engine_setup import build_model, prepare_model

    path, original = _saved_hf(tmp_path)
    setup = prepare_model(typed_config(TINY + [f"init_from={path}", "model.rope_theta=1000000.0"]), vocab_size=120)
    assert setup.config.vocab_size == 120 and setup.config.rope_theta == 1e6
    assert setup.config.max_seq_len >= 32
    assert any("rope_theta: 10000 in" in n and "-> 1e+06" in n for n in setup.notes)
    assert any("vocab_size: 100 in the checkpoint -> 120" in n for n in setup.notes)
    model = build_model(setup, seed=0, activation_checkpointing=False)
    sd = model.state_dict()
    for name, t in original.items():
        if name in ("tok_embeddings.weight", "output.weight"):
            torch.testing.assert_close(sd[name][:100], t)
            torch.testing.assert_close(sd[name][100:], t.mean(0, keepdim=True).expand(20, -1))
        else:
            torch.testing.assert_close(sd[name], t)
    assert model.cfg.rope_theta == 1e6


def test_init_from_with_another_architecture_is_a_config_error(tmp_path):
    from codellama_recipe.train.engine_setup import prepare_model

    path, _ = _saved_hf(tmp_path)
    with pytest.raises(ConfigError) as e:
        prepare_model(typed_config(TINY + [f"init_from={path}", "model.n_layers=3"]), vocab_size=100)
    assert e.value.key == "model.n_layers" and "n_layers=2" in str(e.value)


def test_checkpoint_with_nonfinite_weights_is_never_written(tmp_path):
    class FakeEngine:
        module = _tiny_model()

        def save_checkpoint(self, *a, **k):
            raise AssertionError("must not be reached")

    with torch.no_grad():
        next(FakeEngine.module.parameters())[0, 0] = float("inf")
    with pytest.raises(ckpt.NonFiniteWeights, match="inf/NaN"):
        ckpt.save(FakeEngine(), tmp_path / "checkpoints", 5, {}, {}, rank=0, keep_last=2, model_config={})
    assert not (tmp_path / "checkpoints").exists()


def test_workspace_sections_use_the_metric_groups():
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "wandb_workspace", pathlib.Path(__file__).resolve().parents[1] / "bench" / "wandb_workspace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sections = mod.sections_spec(["code", "nl"])
    assert list(sections) == ["train", "val", "perf", "data", "eval"]
    for group, panels in sections.items():
        assert all(m.startswith(group + "/") for _, metrics in panels for m in metrics)


def test_mfu_above_one_is_reported_as_a_measurement_problem_not_logged():
    from codellama_recipe.train.metrics import mfu_metrics

    assert mfu_metrics(40e9, 100e9) == ({"perf/mfu": 0.4}, None)
    metrics, problem = mfu_metrics(142e9, 100e9)
    assert "perf/mfu" not in metrics and metrics["perf/achieved_over_peak"] == pytest.approx(1.42)
    assert "MFU would be 1.42 > 1" in problem and "trainer.peak_flops_per_device" in problem


def test_cpu_peak_keeps_the_best_measurement_so_a_busy_sample_never_lowers_it(tmp_path, monkeypatch):
    import codellama_recipe.train.metrics as metrics

    samples = iter([100e9, 30e9, 120e9])     # idle, busy, idle
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda *a, **k: next(samples))
    assert [metrics.cpu_peak_flops(tmp_path) for _ in range(3)] == [100e9, 100e9, 120e9]


def test_the_chunked_loss_is_the_default_where_full_logits_would_be_large():
    from codellama_recipe.train.engine_setup import loss_chunk_tokens

    assert loss_chunk_tokens(None, 16384, 32016) == 8192        # 16k tokens x 32k vocabulary: 2.1 GB of fp32 logits
    assert loss_chunk_tokens(None, 8 * 512, 4096) == 0          # the CPU demo: 67 MB, the plain loss
    assert loss_chunk_tokens(0, 16384, 32016) == 0 and loss_chunk_tokens(1024, 8, 8) == 1024   # as configured


# ---------------------------------------------------------------------------- validation data of your own sources
def _own_code_files(tmp_path):
    (tmp_path / "mine").mkdir(exist_ok=True)
    (tmp_path / "mine" / "train-0.jsonl").write_text('{"text": "def f():\\n    return 1\\n"}\n')
    (tmp_path / "mine" / "val-0.jsonl").write_text('{"text": "def g():\\n    return 2\\n"}\n')
    return str(tmp_path / "mine" / "train-*.jsonl"), str(tmp_path / "mine" / "val-*.jsonl")


@pytest.mark.parametrize("where", ["paths", "hub"])
def test_own_training_data_with_the_embedded_validation_split_is_refused(tmp_path, where):
    """corpus.code.paths (or .hub) set to your data and corpus.code.val_paths left at its default used to validate
    on the embedded demo corpus without a word."""
    train, _ = _own_code_files(tmp_path)
    source = [f"corpus.code.paths=[{train}]"] if where == "paths" else \
        ["corpus.code.paths=null", "corpus.code.hub=bigcode/the-stack-dedup"]
    cfg = compose(TINY + ["trainer.batch_tokens=512", f"run_dir={tmp_path / 'run'}", *source])
    with pytest.raises(ConfigError) as e:
        check_config(cfg, world_size=2)
    assert e.value.key == "data.sources.code.val_paths", str(e.value)
    assert "points at the embedded demo corpus" in str(e.value) and "corpus.code.val_paths=null" in str(e.value)
    assert (where == "hub") == ("bigcode/the-stack-dedup" in str(e.value))


@pytest.mark.parametrize("extra", [["corpus.code.val_paths=null"], ["corpus.code.val_paths=[VAL]"],
                                   ["corpus.code.val_hub={path: x/y, split: validation}", "corpus.code.val_paths=null"],
                                   ["trainer.val_every=0"], []])
def test_own_validation_data_or_none_is_accepted(tmp_path, extra):
    from codellama_recipe.data.pipeline import data_config
    from codellama_recipe.train.config_checks import check_validation_sources

    train, val = _own_code_files(tmp_path)
    own = [f"corpus.code.paths=[{train}]"] if extra else []   # []: the embedded corpus for training and validation
    cfg = compose(TINY + own + [o.replace("VAL", val) for o in extra])
    check_validation_sources(cfg, data_config(cfg.data))


def test_own_training_data_with_the_embedded_validation_split_exits_2_in_one_line(tmp_path):
    import subprocess
    import sys

    train, _ = _own_code_files(tmp_path)
    r = subprocess.run([sys.executable, "-m", "codellama_recipe.train.cli", *TINY, f"run_dir={tmp_path / 'run'}",
                        f"corpus.code.paths=[{train}]"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "data.sources.code.val_paths" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- collective timeouts
def test_collective_timeout_reaches_groups_made_before_and_after(tmp_path):
    """Groups created with new_group (as DeepSpeed does, without a timeout) get torch's 30-minute default unless
    apply_collective_timeout has set it; groups that exist are set too."""
    from datetime import timedelta

    from torch.distributed import distributed_c10d as c10d
    from codellama_recipe.train.peers import apply_collective_timeout

    def timeouts():
        return sorted(g._get_backend(torch.device("cpu")).options._timeout.total_seconds() for g in c10d._world.pg_map)

    saved = c10d.default_pg_timeout
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    try:
        dist.new_group([0])
        assert timeouts() == [60.0, 1800.0]       # what DeepSpeed's groups got before
        assert apply_collective_timeout(7) == 2
        dist.new_group([0])                       # created later (DeepSpeed creates some lazily)
        assert timeouts() == [7.0, 7.0, 7.0]
    finally:
        c10d.default_pg_timeout = saved
        dist.destroy_process_group()


def test_the_heartbeat_thread_has_ended_when_the_watch_stops(tmp_path):
    """A heartbeat thread still in a store call at interpreter exit aborts the process (pybind11's GIL guard is
    unwound by the thread's forced exit), so stop_watch waits for it."""
    from codellama_recipe.train.peers import start_watch, stop_watch

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for _ in range(5):
            start_watch(0.04)                  # a beat every 10 ms: one is often in flight when it stops
            time.sleep(0.05)
            stop_watch()
            assert not [t for t in threading.enumerate() if t.name == "codellama-heartbeat"]
    finally:
        stop_watch()
        dist.destroy_process_group()


@pytest.mark.parametrize("error, lost", [
    (RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation"), True),
    (RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:38281"), True),
    (RuntimeError("CUDA out of memory"), False),
    (ValueError("Timed out waiting"), False),
])
def test_lost_peer_errors_are_told_from_bugs(error, lost):
    from codellama_recipe.train.peers import is_lost_peer

    assert is_lost_peer(error) is lost
