"""`codellama-eval [Hydra overrides]` (config: conf/eval.yaml).

  codellama-eval model_path=runs/code/hf benchmarks=[humaneval,infilling_single] limit=20
  codellama-eval samples=samples.jsonl benchmark=humaneval          # completions written by any model
  codellama-eval report_from=[a/results.json,b/results.json] out_dir=report
"""
from __future__ import annotations

import json
import logging
import sys

from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.cli import run_hydra_command
from codellama_recipe.core.schema import EvalConfig
from codellama_recipe.evaluation.run import evaluate, load_config, score_samples_file


def run(cfg: DictConfig) -> int:
    from codellama_recipe.core.cli import refuse
    from codellama_recipe.core.errors import ConfigError
    from codellama_recipe.train.weight_formats import CheckpointError

    try:
        return _run(load_config(_plain(cfg)))
    except (ConfigError, CheckpointError) as e:   # a model folder that cannot be used: one line, exit 2
        return refuse("codellama-eval", str(e))


def _run(cfg: EvalConfig) -> int:
    if cfg.report_from:
        from codellama_recipe.evaluation.report import write_report
        print(f"report: {write_report(list(cfg.report_from), cfg.out_dir)}")
        return 0
    if cfg.samples:
        result = score_samples_file(cfg.samples, cfg.benchmark, cfg)
        for k, v in result["metrics"].items():
            print(f"{cfg.benchmark} {k} = {v:.4f}")
        print(f"tasks {result['n_tasks']}, samples {result['n_samples']}, statuses {result['status_counts']}")
        for name, why in result["skipped"].items():
            print(f"skipped {name}: {why}")
        print(f"sandbox: {result['sandbox']['summary']}")
        return 0
    results = evaluate(None, cfg)
    print(json.dumps(results["metrics"], indent=2))
    if "multipl_e" in results["details"]:
        from codellama_recipe.evaluation.report import multipl_e_table
        print(multipl_e_table(results))
    for name, why in results["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"results: {cfg.out_dir}/results.json")
    return 0


def check(composed: DictConfig) -> None:
    """What can be refused before a model is loaded (exit 2 with one line)."""
    from codellama_recipe.core.errors import ConfigError
    from codellama_recipe.evaluation.run import validate_config

    cfg = load_config(_plain(composed))
    validate_config(cfg)
    if cfg.samples and not cfg.benchmark:
        raise ConfigError("benchmark", None, "samples=FILE needs benchmark=NAME")
    if cfg.samples:
        from codellama_recipe.evaluation.run import every_problem
        from codellama_recipe.evaluation.samples_file import read_samples

        try:
            problems = every_problem(cfg.benchmark, cfg)
        except FileNotFoundError as e:
            raise ConfigError.from_message(f"benchmark={cfg.benchmark}: {e}") from None
        read_samples(cfg.samples, cfg.benchmark, [p.task_id for p in problems])


def _plain(cfg: DictConfig) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.pop("hydra", None)
    return cfg


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_hydra_command("codellama-eval", "eval", run, check=check))


if __name__ == "__main__":
    main()
