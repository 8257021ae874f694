"""The arms of an ablation as ordinary codellama-train stages: composed, checked, planned and run like the
stages of a pipeline (stages/pipeline.py), except that an arm starts from the export of its `parent` arm, so
the arms form a tree instead of a chain.

An arm's training config is the chosen `settings.<kind>` entry, `scale.model` (the architecture for every arm)
and the arm's `set` keys on top, composed by the pipeline's `compose_stage`. Its fingerprint chains with its
parent's; `<run_dir>/ablate_state.json` records finished arms, so a rerun skips them, an interrupted arm
resumes from its checkpoint (the engine does that), and a finished arm whose config changed is refused.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.atomic import write_json_atomic
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.config import typed
from codellama_recipe.core.schema import AblateArm, PipelineRunConfig
from codellama_recipe.stages.pipeline import PipelineError, check_stage, compose_stage, stage_fingerprint
from codellama_recipe.train.checkpoints import config_differences
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


def arm_entries(acfg: DictConfig) -> dict[str, dict]:
    """Each arm's codellama-train keys (as a pipeline stage entry), interpolations resolved."""
    resolved = OmegaConf.to_container(acfg, resolve=True)
    settings, entries = resolved["settings"], {}
    for name, raw in resolved["arms"].items():
        arm = dataclasses.asdict(typed(AblateArm, raw, f"arms.{name}"))
        if arm["settings"] not in settings:
            raise ConfigError(f"arms.{name}.settings", arm["settings"], f"one of {sorted(settings)}")
        entry = OmegaConf.create(copy.deepcopy(settings[arm["settings"]]))
        entry.model = OmegaConf.merge(resolved["scale"]["model"], entry.get("model", {}))
        for key, value in arm["set"].items():
            OmegaConf.update(entry, key, value, force_add=True)
        entries[name] = OmegaConf.to_container(entry)
    return entries


def pipeline_view(acfg: DictConfig, entries: dict, order: list[str]) -> DictConfig:
    """The arms seen as the stages of a pipeline config, for the pipeline's compose_stage."""
    view = OmegaConf.structured(PipelineRunConfig)
    return OmegaConf.merge(view, {
        "run_dir": acfg.run_dir, "seed": acfg.seed, "cache_dir": acfg.cache_dir, "common": list(acfg.common),
        "wandb": OmegaConf.to_container(acfg.wandb, resolve=True),
        "pipeline": {"name": PIPELINE_NAME, "model": MODEL_PRESET, "order": order}, "stages": entries})


def compose_arms(acfg: DictConfig) -> list[Arm]:
    """Every arm's training config, checked by codellama-train's checks (nothing runs)."""
    resolved_arms = {name: dataclasses.asdict(typed(AblateArm, arm, f"arms.{name}"))
                     for name, arm in OmegaConf.to_container(acfg.arms, resolve=True).items()}
    order = arm_order(resolved_arms)
    view = pipeline_view(acfg, arm_entries(acfg), order)
    run_dir = Path(str(acfg.run_dir))
    arms = []
    for name in order:
        parent = resolved_arms[name]["parent"]
        cfg = compose_stage(view, name, None if parent is None else str(run_dir / parent / "hf"))
        check_stage(cfg, name, first=parent is None)
        arms.append(Arm(name, parent, cfg, list(resolved_arms[name]["measure"]), bool(resolved_arms[name]["curve"])))
    return arms


def read_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def plan(arms: list[Arm], run_dir: Path) -> list[dict]:
    """Per arm: skip (finished with the same chained fingerprint) or run (the engine resumes a checkpoint)."""
    state, fingerprints, steps = read_state(run_dir), {}, []
    for arm in arms:
        fp, resolved = stage_fingerprint(arm.cfg, fingerprints.get(arm.parent, ""))
        fingerprints[arm.name] = fp
        record = state.get(arm.name)
        if record and record["fingerprint"] == fp and (run_dir / arm.name / "DONE.json").exists():
            action = "skip"
        elif record:
            diffs = config_differences(record["config"], resolved)[:8] or ["(a parent arm changed)"]
            raise PipelineError(f"arm '{arm.name}' already finished in {run_dir / arm.name} with a different "
                                f"configuration:\n  " + "\n  ".join(diffs) + "\nUse another run_dir, or remove "
                                f"{run_dir / arm.name} and every arm that starts from it.")
        else:
            action = "resume" if (run_dir / arm.name / "checkpoints").exists() else "run"
        steps.append({"arm": arm, "fingerprint": fp, "resolved": resolved, "action": action})
    return steps


def train_arms(arms: list[Arm], run_dir: Path, stop: StopFlag) -> dict[str, str] | None:
    """Train every arm that is not finished; the arms' fingerprints, or None when a stop signal ended the run
    (`stop` is the command's flag: a signal between two arms ends the run before the next one)."""
    from codellama_recipe.train.trainer import run as train_stage

    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = {}
    for step in plan(arms, run_dir):
        arm = step["arm"]
        fingerprints[arm.name] = step["fingerprint"]
        if step["action"] == "skip":
            print(f"[ablate] arm '{arm.name}': finished earlier with the same config, skipped", flush=True)
            continue
        if stop.signum:
            print(f"[ablate] stopped {stop.reason} before arm '{arm.name}'; rerun the same command to resume",
                  flush=True)
            return None
        print(f"[ablate] arm '{arm.name}': {step['action']} → {arm.cfg.run_dir}"
              + (f" (from {arm.cfg.init_from})" if arm.cfg.init_from else " (random init)"), flush=True)
        result = train_stage(arm.cfg) or {}
        if "stopped" in result:
            print(f"[ablate] arm '{arm.name}' stopped by signal {result['stopped']} after its checkpoint; "
                  "rerun the same command to resume", flush=True)
            return None
        state = read_state(run_dir)
        state[arm.name] = {"fingerprint": step["fingerprint"], "config": step["resolved"],
                           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(run_dir / STATE_FILE, state)
    return fingerprints
