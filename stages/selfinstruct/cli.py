"""codellama-selfinstruct: questions, unit tests and solutions written by a model, kept when a solution passes
the tests (conf/selfinstruct.yaml; docs/selfinstruct.md).

    codellama-selfinstruct generator.url=http://localhost:8000 generator.model=codellama-7b out_dir=runs/si
    codellama-selfinstruct generator.kind=local generator.model_path=runs/tiny/instruct/hf questions.batches=2

Rerunning the same command continues where a killed run stopped (nothing finished is redone or lost).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from codellama_recipe.core.cli import refuse, run_hydra_command
from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError, InputError
from codellama_recipe.core.run_dir_lock import run_dir_lock
from codellama_recipe.core.schema import SelfInstructConfig

PROG = "codellama-selfinstruct"
KINDS = ("endpoint", "local")


def check(cfg: DictConfig) -> None:
    c = typed(SelfInstructConfig, cfg, "selfinstruct")
    if c.generator.kind not in KINDS:
        raise ConfigError("generator.kind", c.generator.kind, f"one of {list(KINDS)}")
    if c.generator.kind == "local" and not c.generator.model_path:
        raise ConfigError("generator.model_path", None, "generator.kind=local needs a model folder")
    if c.generator.kind == "endpoint" and not c.generator.url.startswith(("http://", "https://")):
        raise ConfigError("generator.url", c.generator.url, "an http:// or https:// base URL")
    for key, value in (("questions.batches", c.questions.batches), ("solutions.n", c.solutions.n),
                       ("chunk", c.chunk), ("generator.concurrency", c.generator.concurrency)):
        if value < 1:
            raise ConfigError(key, value, "must be >= 1")
    if "{question}" not in c.tests.prompt or "{question}" not in c.solutions.prompt or "{test}" not in c.solutions.prompt:
        raise ConfigError("tests.prompt / solutions.prompt", "…", "must contain {question} (and {test} for solutions)")
    if not 0 < c.decontamination.threshold <= 1:
        raise ConfigError("decontamination.threshold", c.decontamination.threshold, "a share in (0, 1]")
    if c.generator.api_key_env and c.generator.api_key_env not in os.environ:
        raise InputError("generator.api_key_env", c.generator.api_key_env, "no such environment variable")


def make_generator(g):
    from codellama_recipe.stages.selfinstruct.generators import Endpoint, LocalModel

    if g.kind == "local":
        return LocalModel(g.model_path, cache_dir=os.environ.get("CODELLAMA_CACHE",
                                                                 str(Path.home() / ".cache" / "codellama-recipe")),
                          device=g.device, dtype=g.dtype, batch_size=g.batch_size)
    return Endpoint(g.url, model=g.model, concurrency=g.concurrency, timeout_s=g.timeout_s, retries=g.retries,
                    api_key=os.environ.get(g.api_key_env) if g.api_key_env else None)


def run(composed: DictConfig) -> dict:
    from codellama_recipe.evaluation.sandbox import Sandbox
    from codellama_recipe.stages.selfinstruct.decontamination import Decontaminator, benchmark_prompts
    from codellama_recipe.stages.selfinstruct.steps import SelfInstruct, stats_table

    cfg = typed(SelfInstructConfig, composed, "selfinstruct")
    d = cfg.decontamination
    decontaminator = (Decontaminator(benchmark_prompts(d.humaneval_path, d.mbpp_path), d.ngram, d.threshold)
                      if d.enabled else None)
    with run_dir_lock(Path(cfg.out_dir)):
        sandbox = Sandbox(cfg.sandbox)
        runner = SelfInstruct(cfg, make_generator(cfg.generator), sandbox.judge_many, decontaminator)
        stats = runner.run()
    print(stats_table(stats), flush=True)
    print("seconds per step (this session): " + ", ".join(f"{k} {v:.1f}" for k, v in runner.seconds.items()),
          flush=True)
    print(f"[selfinstruct] {cfg.out_dir}/dataset.jsonl: {stats['kept']} rows "
          f"(instruct stage: corpus.instruct.paths=[{cfg.out_dir}/dataset.jsonl] "
          f"corpus.instruct.val_paths=null)", flush=True)
    return stats


def task(cfg: DictConfig) -> int:
    try:
        run(cfg)
    except ConfigError as e:
        return refuse(PROG, str(e))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_hydra_command(PROG, "selfinstruct", task, check=check, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
