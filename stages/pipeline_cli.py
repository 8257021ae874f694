"""codellama-pipeline's command line: the overrides routed to the pipeline's own keys, to one stage or to every
stage, the chain composed and checked, run (stages/pipeline.py), and its summary table printed and written to
<run_dir>/summary.md.

    codellama-pipeline pipeline=tiny                   # the demo chain (make demo)
    codellama-pipeline pipeline=codellama stages.long_context.trainer.max_steps=100
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from codellama_recipe.core.cli import compose_checked, read_composed_command_line, refuse
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import PipelineRunConfig
from codellama_recipe.stages.pipeline import (CONF_DIR, check_eval, format_summary, process_rank, run_pipeline,
                                              typed_pipeline, validate_pipeline)
from codellama_recipe.stages.stage_runner import PipelineError
from codellama_recipe.train.peers import PeerLost, exit_lost

PROG = "codellama-pipeline"


def compose_pipeline(overrides: list[str]) -> PipelineRunConfig:
    """The chain as its typed config (compose_pipeline_node, then typed_pipeline); its stages are composed and
    checked by validate_pipeline."""
    return typed_pipeline(compose_pipeline_node(overrides))


def compose_pipeline_node(overrides: list[str]) -> DictConfig:
    """Overrides of the pipeline's own keys (conf/run_pipeline.yaml), ``stages.<stage>.<key>=value`` for one
    stage, and any other override (``deepspeed=zero3``, ``trainer.precision=bf16``, ``corpus.code.paths=[…]``)
    for every stage's training config, composed (what `--cfg job` prints)."""
    own = {f.name for f in dataclasses.fields(PipelineRunConfig)} | {"hydra"}
    top = lambda a: a.lstrip("+~").split("=", 1)[0].split(".", 1)[0]  # noqa: E731
    per_stage = [a for a in overrides if top(a) == "stages"]
    every_stage = [a for a in overrides if top(a) not in own]
    cfg = compose_checked("run_pipeline", [a for a in overrides if top(a) in own and top(a) != "stages"])
    cfg.common = [*cfg.common, *every_stage, *per_stage]   # per-stage ones are kept to rank them above the rest
    for override in per_stage:
        key, _, value = override.lstrip("+~").partition("=")
        name = key.split(".")[1] if key.count(".") >= 1 else ""
        if name not in cfg.stages:
            raise ConfigError(key, value, f"no stage '{name}' in pipeline '{cfg.pipeline.name}'; its stages: "
                                          f"{', '.join(cfg.stages)}")
    if per_stage:
        with open_dict(cfg.stages):   # validate_pipeline checks a stage's keys against codellama-train's schema
            cfg.stages = OmegaConf.merge(cfg.stages, OmegaConf.from_dotlist(
                [a.lstrip("+").removeprefix("stages.") for a in per_stage]))
    return cfg


def main(argv: list[str] | None = None) -> int:
    line = read_composed_command_line(PROG, sys.argv[1:] if argv is None else argv, usage,
                                      "a pipeline runs one chain; sweep one stage with codellama-train -m")
    if isinstance(line, int):
        return line
    from codellama_recipe.data.record_readers import BadInputError
    from codellama_recipe.train.engine_setup import shutdown_distributed
    from codellama_recipe.train.weight_formats import CheckpointError

    try:
        if line.show_config:
            line.print_config(compose_pipeline_node(line.overrides))
            return 0
        pcfg = compose_pipeline(line.overrides)
        stages = validate_pipeline(pcfg)   # every stage composed once, here, before the run folder is locked
        if pcfg.eval.enabled:
            check_eval(pcfg)
        rows = run_pipeline(pcfg, stages)
    except (ConfigError, PipelineError, CheckpointError) as e:
        return refuse(PROG, str(e))
    except BadInputError as e:
        return refuse(PROG, e.one_line())
    except PeerLost as e:   # a frozen or dead rank: one line, the process ends at once
        exit_lost(PROG, e, 4)
    finally:
        shutdown_distributed()  # the stages share one process group; it ends with the pipeline
    if rows is None:
        return 0
    if process_rank() == 0:
        table = format_summary(rows, Path(str(pcfg.run_dir)))
        (Path(str(pcfg.run_dir)) / "summary.md").write_text(table + "\n")
        print("\n" + table, flush=True)
    return 0


def usage() -> str:
    pipelines = ", ".join(sorted(p.stem for p in (CONF_DIR / "pipeline").glob("*.yaml")))
    return (f"{__doc__}\nusage: {PROG} [--help] [--cfg job [--resolve]] [overrides ...]\n\n"
            f"pipeline=<name>   one of: {pipelines}\n"
            f"stages.<stage>.<key>=<value>   one stage's codellama-train key, e.g. "
            f"stages.long_context.trainer.max_steps=100\n"
            f"any other codellama-train override goes to every stage, e.g. deepspeed=zero3 "
            f"trainer.precision=bf16\n\nthe pipeline's own keys:\n"
            + OmegaConf.to_yaml(OmegaConf.structured(PipelineRunConfig)))


if __name__ == "__main__":
    sys.exit(main())
