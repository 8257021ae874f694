"""The arms of an ablation as ordinary codellama-train stages: composed, checked, planned and run like the
stages of a pipeline (stages/pipeline.py), except that an arm starts from the export of its `parent` arm, so
the arms form a tree instead of a chain. Both run through stages/stage_runner.py.

An arm's training config is the chosen `settings.<kind>` entry, `scale.model` (the architecture for every arm)
and the arm's `set` keys on top, composed by the pipeline's `compose_stage`. Its fingerprint chains with its
parent's; `<run_dir>/ablate_state.json` records finished arms, so a rerun skips them, an interrupted arm
resumes from its checkpoint (the engine does that), and a finished arm whose config changed is refused.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.config import typed
from codellama_recipe.core.schema import AblateArm, AblateConfig, PipelineDef, PipelineRunConfig
from codellama_recipe.stages.pipeline import check_stage, compose_stage
from codellama_recipe.stages.stage_runner import STATE_FORMAT, Job, PlannedJob, plan_jobs, run_jobs
from codellama_recipe.train.stop_flag import StopFlag

STATE_FILE = "ablate_state.json"
PIPELINE_NAME = "ablate"
MODEL_PRESET = "tiny"     # scale.model changes its sizes for every arm


@dataclasses.dataclass
class Arm:
    name: str
    parent: str | None
    cfg: DictConfig           # the arm's full codellama-train config
    measure: list[str]
    curve: bool = False       # measured along its checkpoints too (measure.measure_curve)


def arm_order(arms: dict) -> list[str]:
    """Parents before children; unknown parents and cycles are refused."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ConfigError(f"arms.{name}.parent", arms[name]["parent"], "the arms' parents form a cycle")
        visiting.add(name)
        parent = arms[name]["parent"]
        if parent is not None:
            if parent not in arms:
                raise ConfigError(f"arms.{name}.parent", parent, f"one of the arms {sorted(arms)} or null")
            visit(parent)
        order.append(name)

    for name in arms:
        visit(name)
    return order


def arm_entries(acfg: AblateConfig, declared: dict[str, dict]) -> dict[str, dict]:
    """Each arm's codellama-train keys (as a pipeline stage entry), from its declaration (AblateArm's keys)."""
    settings, entries = acfg.settings, {}
    for name, arm in declared.items():
        if arm["settings"] not in settings:
            raise ConfigError(f"arms.{name}.settings", arm["settings"], f"one of {sorted(settings)}")
        entry = OmegaConf.create(copy.deepcopy(settings[arm["settings"]]))
        entry.model = OmegaConf.merge(acfg.scale.model, entry.get("model", {}))
        for key, value in arm["set"].items():
            OmegaConf.update(entry, key, value, force_add=True)
        entries[name] = OmegaConf.to_container(entry)
    return entries


def pipeline_view(acfg: AblateConfig, entries: dict, order: list[str], run_dir: Path | None = None,
                  seed: int | None = None) -> PipelineRunConfig:
    """The arms seen as the stages of a pipeline config, for the pipeline's compose_stage."""
    return PipelineRunConfig(
        run_dir=str(run_dir or acfg.run_dir), seed=acfg.seed if seed is None else seed, cache_dir=acfg.cache_dir,
        common=list(acfg.common), wandb=copy.deepcopy(acfg.wandb),
        pipeline=PipelineDef(name=PIPELINE_NAME, model=MODEL_PRESET, order=list(order)), stages=entries)


def compose_arms(acfg: AblateConfig) -> list[Arm]:
    """Every arm's training config, its values checked by codellama-train's checks (nothing is read or runs).
    With `more_seeds`, every arm below a root arm is repeated per seed as `<arm>@seed<k>` in run_dir/seed<k>/<arm>,
    trained with that seed from the same root arms (the general base is one model, as Llama 2 is for the real
    recipe)."""
    resolved_arms = {name: dataclasses.asdict(typed(AblateArm, arm, f"arms.{name}"))
                     for name, arm in acfg.arms.items()}
    order = arm_order(resolved_arms)
    entries = arm_entries(acfg, resolved_arms)
    run_dir = Path(str(acfg.run_dir))
    roots = {name for name in order if resolved_arms[name]["parent"] is None}
    if acfg.seed in acfg.more_seeds or len(set(acfg.more_seeds)) != len(acfg.more_seeds):
        raise ConfigError("more_seeds", list(acfg.more_seeds), f"distinct seeds other than seed={acfg.seed}")
    arms = []
    for seed in [None, *acfg.more_seeds]:
        seed_dir = run_dir if seed is None else run_dir / f"seed{seed}"
        view = pipeline_view(acfg, entries, order, run_dir=seed_dir, seed=seed)
        for name in order:
            if seed is not None and name in roots:
                continue
            declared = resolved_arms[name]
            parent = declared["parent"]
            if parent is None:
                init_from = None
            else:
                init_from = str((run_dir if parent in roots else seed_dir) / parent / "hf")
                parent = parent if seed is None or parent in roots else seed_arm(parent, seed)
            cfg = compose_stage(view, name, init_from)
            label = name if seed is None else seed_arm(name, seed)
            check_stage(cfg, label, first=parent is None, inputs=False)
            # the learning curve is read along the first seed's checkpoints only
            arms.append(Arm(label, parent, cfg, list(declared["measure"]), bool(declared["curve"]) and seed is None))
    return arms


def check_arm_inputs(arms: list[Arm]) -> None:
    """What every arm will read (files, tokenizer; the embedded corpus is built here), before any arm trains;
    compose_arms checked their values."""
    for arm in arms:
        check_stage(arm.cfg, arm.name, first=arm.parent is None)


def seed_arm(name: str, seed: int) -> str:
    return f"{name}@seed{seed}"


def plan(arms: list[Arm], run_dir: Path) -> list[PlannedJob]:
    """Per arm: skip (finished with the same chained fingerprint), run or resume (the engine resumes a
    checkpoint), or refuse (finished with another configuration)."""
    jobs = [Job(arm.name, arm.cfg, arm.parent) for arm in arms]
    # ablate_state.json records written before the shared runner carry no format; they are format 2.
    return plan_jobs(jobs, run_dir / STATE_FILE, noun="arm", unversioned_format=STATE_FORMAT,
                     remedy="Use another run_dir, or remove {folder} and every arm that starts from it.")


def train_arms(arms: list[Arm], run_dir: Path, stop: StopFlag) -> dict[str, str] | None:
    """Train every arm that is not finished; the arms' fingerprints, or None when a stop signal ended the run
    (`stop` is the command's flag: a signal between two arms ends the run before the next one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    planned = plan(arms, run_dir)
    if not run_jobs(planned, run_dir / STATE_FILE, noun="arm", prefix="ablate", stop=stop):
        return None
    return {p.job.name: p.fingerprint for p in planned}
