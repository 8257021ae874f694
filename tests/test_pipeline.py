"""codellama-pipeline end to end on CPU: every stage kind, chaining by weights, skip / resume / refuse on rerun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codellama_recipe.stages.pipeline import compose_stage
from codellama_recipe.stages.pipeline_cli import compose_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]


def pipeline_cmd(run_dir, *overrides, evaluate=False):
    return [sys.executable, "-m", "codellama_recipe.stages.pipeline_cli", "pipeline=smoke", f"run_dir={run_dir}",
            f"eval.enabled={str(evaluate).lower()}", *overrides]


def run_pipeline(run_dir, *overrides, timeout=600, evaluate=False):
    proc = subprocess.run(pipeline_cmd(run_dir, *overrides, evaluate=evaluate), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def initial_weights(stage_cfg):
    """The weights the engine starts a stage from, built by the engine's own code path."""
    from codellama_recipe.data.tokenizer import Tokenizer
    from codellama_recipe.train.config_checks import typed_train_config
    from codellama_recipe.train.engine_setup import build_model, prepare_model
    from codellama_recipe.train.trainer import resolve_tokenizer_path

    stage_cfg = typed_train_config(stage_cfg)
    vocab = Tokenizer(resolve_tokenizer_path(stage_cfg)).vocab_size
    setup = prepare_model(stage_cfg, vocab)
    return setup.config, build_model(setup, seed=0, activation_checkpointing=False).state_dict()


def exported_weights(hf_dir):
    from codellama_recipe.train.pretrained import load_pretrained

    return load_pretrained(str(hf_dir))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    out = run_pipeline(run_dir, evaluate=True)
    return run_dir, out


def test_every_stage_kind_runs_and_chains_weights(smoke_run):
    run_dir, out = smoke_run
    pcfg = compose_pipeline(["pipeline=smoke", f"run_dir={run_dir}"])
    order = list(pcfg.pipeline.order)
    assert order == ["code", "python", "long_context", "instruct"]
    for i, name in enumerate(order):
        done = json.loads((run_dir / name / "DONE.json").read_text())
        assert done["steps"] == pcfg.stages[name]["trainer"]["max_steps"]
        assert (run_dir / name / "hf" / "config.json").exists()
        lines = (run_dir / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, done["steps"] + 1))
        if i == 0:
            continue
        previous = run_dir / order[i - 1] / "hf"
        stage_cfg = compose_stage(pcfg, name, str(previous))
        config, start = initial_weights(stage_cfg)
        _, prev_state = exported_weights(previous)
        assert set(start) == set(prev_state)
        for key, tensor in prev_state.items():
            assert torch.equal(start[key].float(), tensor.float()), f"{name} does not start from {previous}: {key}"
        if name == "long_context":
            assert config.rope_theta == 1e6
            assert stage_cfg.data.seq_len > compose_stage(pcfg, "code", None).data.seq_len
            hf_config = json.loads((run_dir / name / "hf" / "config.json").read_text())
            assert hf_config["rope_theta"] == 1e6
        if i == len(order) - 1:  # the per-stage evaluation ran after every stage; the last report compares them
            results = json.loads((run_dir / name / "eval" / "results.json").read_text())
            assert results["label"] == name and "humaneval/pass@1" in results["metrics"]
            assert len(results["config"]["report"]["compare"]) == len(order) - 1
    for name in order:
        assert (run_dir / name / "eval" / "results.json").exists(), name
    summary = (run_dir / "summary.md").read_text()
    for name in order:
        assert f"| {name} |" in summary
    # the final table puts each stage's held-out infilling figures side by side (code has FIM, so all modes)
    code_metrics = json.loads((run_dir / "code" / "eval" / "results.json").read_text())["metrics"]
    assert {f"corpus_infilling/{m}/{k}" for m in ("psm", "spm", "ar") for k in ("loss", "exact_match")} <= set(code_metrics)
    assert "| metric | " + " | ".join(order) + " |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| held-out infilling: middle loss, PSM"))
    assert row.split(" | ")[1] == f"{code_metrics['corpus_infilling/psm/loss']:.3f}"


def test_rerun_skips_finished_stages_and_refuses_changed_ones(smoke_run):
    run_dir, _ = smoke_run
    mtimes = {p: p.stat().st_mtime for p in run_dir.glob("*/DONE.json")}
    out = run_pipeline(run_dir, timeout=120)
    assert out.count("finished earlier with the same config, skipped") == 4
    assert {p: p.stat().st_mtime for p in run_dir.glob("*/DONE.json")} == mtimes
    proc = subprocess.run(pipeline_cmd(run_dir, "stages.python.optim.lr=0.5"), cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "stage 'python' already finished" in proc.stderr and "optim.lr" in proc.stderr
    assert "restart=[python]" in proc.stderr
    state_file = run_dir / "pipeline_state.json"
    state = json.loads(state_file.read_text())
    earlier = {name: {k: v for k, v in record.items() if k != "state_format"} for name, record in state.items()}
    state_file.write_text(json.dumps(earlier))          # as written by version 0.1
    try:
        proc = subprocess.run(pipeline_cmd(run_dir), cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        state_file.write_text(json.dumps(state))
    assert proc.returncode == 2 and "finished by an earlier codellama-recipe" in proc.stderr
    assert "restart=[code]" in proc.stderr


def test_kill_during_second_stage_then_rerun_resumes_it(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["pipeline.order=[code,python]", "stages.python.trainer.max_steps=8",
                 "stages.python.trainer.checkpoint_every=2"]
    proc = subprocess.Popen(pipeline_cmd(run_dir, *overrides), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = run_dir / "python" / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not (latest.exists() and latest.read_text().strip()):
        assert proc.poll() is None, "the pipeline ended before the second stage checkpointed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "python" / "DONE.json").exists()
    code_done = (run_dir / "code" / "DONE.json").stat().st_mtime

    out = run_pipeline(run_dir, *overrides)
    assert "stage 'code': finished earlier with the same config, skipped" in out
    assert (run_dir / "code" / "DONE.json").stat().st_mtime == code_done
    assert "resumed from" in out and "python/checkpoints/step_" in out
    steps = [json.loads(line)["step"] for line in (run_dir / "python" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_launch_scripts_parse():
    for script in sorted((REPO / "launch").iterdir()):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_cpu_launcher_runs_a_short_stage_with_two_processes(tmp_path):
    run_dir = tmp_path / "code"
    proc = subprocess.run(
        ["bash", "launch/cpu.sh", "2", "model=tiny", "stage=code", f"run_dir={run_dir}", "data.seq_len=64",
         "trainer.micro_batch_size=2", "trainer.batch_tokens=256", "trainer.max_steps=2",
         "trainer.checkpoint_every=0", "trainer.val_every=0", "trainer.log_every=1", "wandb.mode=disabled"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "2 process(es)" in out
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["steps"] == 2 and done["tokens"] == 2 * 256
    assert (run_dir / "hf" / "model.safetensors").exists()
