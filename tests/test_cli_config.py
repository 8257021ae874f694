"""Every command refuses a configuration mistake the same way: exit 2, one line that names the key, the value
and what is allowed, no traceback, before any process group or training starts. And the Hydra flags work.

The commands run as a user runs them (their console scripts, in a subprocess, from an empty folder).
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_engine import engine_env  # noqa: E402

pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent
SMALL = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=64",
         "trainer.micro_batch_size=2", "trainer.batch_tokens=128", "trainer.max_steps=2", "trainer.val_every=0",
         "wandb.mode=disabled", "trainer.progress_bar=false", "data.num_workers=0"]


def command(name: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=engine_env())


MISTAKES = [
    # (command, arguments, what the one line must contain; "input error: ..." for a problem found while reading)
    ("codellama-train", ["trainer.max_step=2"], "trainer.max_step=2: unknown key; trainer has: max_steps"),
    ("codellama-train", ["+trainer.max_step=2"], "trainer.max_step=2: unknown key; trainer has: max_steps"),
    ("codellama-train", ["+foo=1"], "foo=1: unknown key; the top level has: seed"),
    ("codellama-train", ["trainer.max_steps=abc"], "trainer.max_steps=abc: Value 'abc'"),
    ("codellama-train", ["model=nope"], "model=nope: no such option; available: 13b, 34b, 70b, 7b, tiny"),
    ("codellama-train", ["data.sources.code.weigth=1"], "data.sources.code has: weight, paths"),
    ("codellama-train", ["data.sources.code.name=python"], "data.sources.code.name='python' is invalid; a source is named"),
    ("codellama-train", ["trainer.precision=fp16"], "trainer.precision='fp16' is invalid"),
    ("codellama-train", ["optim.lr=1e-3,3e-4"], "a sweep needs -m"),
    ("codellama-train", ["-m", "optim.lr=1e-3,-1"], "optim.lr=-1.0 is invalid; must be > 0"),
    ("codellama-train", ["tokenizer_path=/etc/hostname"], "input error: is not a SentencePiece tokenizer model"),
    ("codellama-train", ["data.sources.code.paths=[/nonexistent/*.jsonl]"],
     "input error: data.sources.code.paths='/nonexistent/*.jsonl': matches no file"),
    ("codellama-pipeline", ["pipeline=nope"], "pipeline=nope: no such option; available: codellama"),
    ("codellama-pipeline", ["stages.nope.trainer.max_steps=1"], "no stage 'nope' in pipeline 'tiny'"),
    ("codellama-pipeline", ["stages.code.trainer.max_step=3"], "stages.code.trainer.max_step=3: unknown key"),
    ("codellama-pipeline", ["+foo=1"], "foo=1: unknown key"),
    ("codellama-pipeline", ["-m", "optim.lr=1,2"], "a pipeline runs one chain"),
    ("codellama-pipeline", ["eval.preset=multilingual", "+eval.overrides.multipl_e.languages=[cpp,cobol]"],
     "eval: multipl_e.languages=['cpp', 'cobol'] is invalid; distinct, each one of ['cpp'"),
    ("codellama-eval", ["samples=x.jsonl", "benchmark=nope"], "benchmark='nope' is invalid; one of ['humaneval'"),
    ("codellama-eval", ["generation.n_samples=abc"], "generation.n_samples=abc"),
    ("codellama-eval", ["sandbox.netwrk=allow"], "sandbox.netwrk=allow: unknown key; sandbox has: timeout_s"),
    ("codellama-eval", ["benchmarks=[multipl_e]", "multipl_e.languages=[rust]"], "multipl_e.languages=['rust']"),
    ("codellama-eval", ["benchmarks=[multipl_e]", "+multipl_e.compile_s.cobol=5"],
     "multipl_e.compile_s="),
    ("codellama-preview", ["preview.x=1"], "preview.x='1' is invalid; unknown option"),
    ("codellama-preview", ["trainer.max_step=2"], "trainer.max_step=2: unknown key"),
]


def test_every_mistake_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cases = MISTAKES + [("codellama-train", [f"run_dir={tmp_path / 'file'}"], "input error: is a file; expected a folder")]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: command(case[0], *case[1], cwd=tmp_path), cases))
    for (prog, args, expected), proc in zip(cases, results):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (prog, args, proc.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (prog, args, proc.stderr[-2000:])
        kind = "input error" if expected.startswith("input error") else "config error"
        assert lines[0].startswith(f"{prog}: {kind}: ") and expected.removeprefix("input error: ") in lines[0], \
            (prog, args, lines[0])
    assert not (tmp_path / "runs").exists()   # nothing started


def test_a_value_mistake_in_any_stage_or_arm_is_refused_before_anything_is_read_or_built(tmp_path):
    """Every stage's (every arm's) values are checked before the first stage's inputs: the embedded corpus, which
    the first stage reads, is not built for a run that a later stage's value refuses."""
    cases = [("codellama-pipeline", ["pipeline=tiny", "stages.instruct.optim.lr=-1"], "stage 'instruct': optim.lr"),
             ("codellama-ablate", ["ablate=smoke", "eval.device=tpu"], "eval.device='tpu' is invalid")]
    for i, (prog, args, expected) in enumerate(cases):
        cache = tmp_path / f"cache{i}"
        proc = command(prog, *args, f"cache_dir={cache}", f"run_dir={tmp_path / f'run{i}'}", cwd=tmp_path)
        assert proc.returncode == 2 and expected in proc.stderr, (prog, proc.stderr[-2000:])
        assert not cache.exists(), f"{prog} built {sorted(p.name for p in cache.iterdir())} before refusing"


@pytest.mark.parametrize("prog", ["codellama-train", "codellama-pipeline", "codellama-eval", "codellama-preview"])
def test_cfg_job_and_help(prog, tmp_path):
    shown = command(prog, "--cfg", "job", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "seed:" in shown.stdout
    helped = command(prog, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and prog in helped.stdout, helped.stderr[-2000:]


def test_sweep_runs_every_job_in_its_own_run_dir(tmp_path):
    proc = command("codellama-train", "-m", "optim.lr=1e-3,3e-4", *SMALL, f"run_dir={tmp_path / 'sweep'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0_optim.lr=0.001", "1_optim.lr=0.0003"]
    for job in jobs:
        assert (tmp_path / "sweep" / job / "DONE.json").is_file()
        assert f"lr: {job.split('=')[1]}" in (tmp_path / "sweep" / job / "config.yaml").read_text()


def test_eval_sweep_checks_every_job_first(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n')
    proc = command("codellama-eval", "-m", "generation.temperature=0.0,-1", "samples=x.jsonl",
                   "benchmark=humaneval", cwd=tmp_path)
    assert proc.returncode == 2 and "generation.temperature=-1.0 is invalid" in proc.stderr, proc.stderr[-2000:]
    assert os.listdir(tmp_path) == ["x.jsonl"]            # the first job did not run either


def test_a_single_run_gets_the_configuration_its_check_saw_composed_once(monkeypatch, tmp_path):
    """Without -m the preflight's composed and checked configuration is the one the command runs (Hydra does
    not compose it a second time); with -m every job is composed again by Hydra's launcher."""
    from codellama_recipe.core import cli

    monkeypatch.chdir(tmp_path)   # Hydra's -m writes multirun/ into the working directory
    composed, checked, ran = [], [], []
    real_compose = cli.compose
    monkeypatch.setattr(cli, "compose", lambda *a, **k: composed.append(real_compose(*a, **k)) or composed[-1])
    task = lambda cfg: ran.append(cfg) or 0  # noqa: E731
    assert cli.run_hydra_command("codellama-eval", "eval", task, check=checked.append, argv=["limit=3"]) == 0
    assert len(composed) == 1 and ran[0] is composed[0] and checked[0] is composed[0] and ran[0].limit == 3

    composed.clear(), ran.clear()
    assert cli.run_hydra_command("codellama-eval", "eval", task, argv=["-m", "limit=3,4"]) == 0
    assert len(composed) == 2 and [cfg.limit for cfg in ran] == [3, 4]
    assert all(cfg is not first for cfg, first in zip(ran, composed))
