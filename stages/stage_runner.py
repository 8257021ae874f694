"""The one runner of chained training stages: plan (skip / resume / restart / refuse) → run → record.

codellama-pipeline runs a chain of stages and codellama-ablate a tree of arms; both are jobs here, each an
ordinary codellama-train run in its own folder that starts from its parent's Hugging Face export. A finished
job is recorded in the command's state file (`<run_dir>/pipeline_state.json`, `<run_dir>/ablate_state.json`:
one format) with the fingerprint of its resolved config chained with its parent's. Rerunning the same command
skips it; an interrupted job resumes from its checkpoint (the engine does that); a finished job whose config,
or whose parent, changed is refused, naming the keys, unless the command restarts it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from codellama_recipe.core.atomic import write_json_atomic
from codellama_recipe.train.checkpoint_identity import config_differences, fingerprint, resolved
from codellama_recipe.train.peers import rank0_work
from codellama_recipe.train.stop_flag import StopFlag

STATE_FORMAT = 2   # 2: typed configuration (codellama_recipe 0.2); earlier records are not comparable


class PipelineError(RuntimeError):
    """A plan that cannot run (a finished job whose configuration changed, ...): one line, exit 2."""


@dataclasses.dataclass
class Job:
    name: str
    cfg: DictConfig            # its codellama-train config: run_dir is the job's folder, init_from its parent's export
    parent: str | None = None  # the job it starts from; its fingerprint chains with the parent's


@dataclasses.dataclass
class PlannedJob:
    job: Job
    fingerprint: str
    resolved: dict             # the fingerprinted config, recorded when the job finishes
    action: str                # run | resume | skip | restart

    @property
    def folder(self) -> Path:
        return Path(str(self.job.cfg.run_dir))


def job_fingerprint(cfg: DictConfig, parent_fingerprint: str) -> tuple[str, dict]:
    """Hash of what the job computes, chained with its parent's fingerprint (which stands for the weights it
    starts from, so the path in init_from is left out)."""
    from codellama_recipe.train.trainer import fingerprinted_config

    config = fingerprinted_config(resolved(cfg))
    config.pop("init_from", None)
    return fingerprint({"config": config, "previous": parent_fingerprint}), config


def read_state(state_file: Path) -> dict:
    return json.loads(state_file.read_text()) if state_file.exists() else {}


def record_finished(state_file: Path, planned: PlannedJob) -> None:
    state = read_state(state_file)
    state[planned.job.name] = {"fingerprint": planned.fingerprint, "config": planned.resolved,
                               "state_format": STATE_FORMAT, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(state_file, state)


def plan_jobs(jobs: list[Job], state_file: Path, *, noun: str, remedy: str, restart: tuple[str, ...] = (),
              unversioned_format: int = 1) -> list[PlannedJob]:
    """What each job does, decided before anything runs. Parents come before their children in `jobs`; a job
    in `restart`, and every job after it, is trained again. `noun` ("stage", "arm") and `remedy` (what to do
    about a refused job) word the refusal; `unversioned_format`: the format of records written without one."""
    state, fingerprints, planned = read_state(state_file), {}, []
    names = [j.name for j in jobs]
    restart_from = min((names.index(n) for n in restart), default=len(jobs))
    for i, job in enumerate(jobs):
        fp, config = job_fingerprint(job.cfg, fingerprints.get(job.parent, ""))
        fingerprints[job.name] = fp
        folder, record = Path(str(job.cfg.run_dir)), state.get(job.name)
        if i >= restart_from:
            action = "restart" if folder.exists() else "run"
        elif record and record.get("state_format", unversioned_format) != STATE_FORMAT:
            raise PipelineError(
                f"{noun} '{job.name}' in {folder} was finished by an earlier codellama-recipe (state format "
                f"{record.get('state_format', unversioned_format)}, this version: {STATE_FORMAT}); its recorded "
                f"configuration is not comparable. {remedy.format(name=job.name, folder=folder)}")
        elif record and record["fingerprint"] == fp and (folder / "DONE.json").exists():
            action = "skip"
        elif record:
            diffs = config_differences(record["config"], config)
            diff = "\n  ".join(diffs[:8] + [f"… and {len(diffs) - 8} more"] * (len(diffs) > 8)) \
                or f"(an earlier {noun} changed)"
            raise PipelineError(f"{noun} '{job.name}' already finished in {folder} with a different configuration:"
                                f"\n  {diff}\n{remedy.format(name=job.name, folder=folder)}")
        else:
            action = "resume" if (folder / "checkpoints").exists() else "run"
        planned.append(PlannedJob(job, fp, config, action))
    return planned


def run_jobs(planned: list[PlannedJob], state_file: Path, *, noun: str, prefix: str, stop: StopFlag | None = None,
             after_finish: Callable[[PlannedJob], None] | None = None) -> bool:
    """Train every job that is not skipped, in order; record each one when it finishes (rank 0, then
    `after_finish`, e.g. an evaluation, while the other ranks wait as long as rank 0 is alive). False when a
    stop signal ended the run: during a job (its checkpoint written) or, seen by `stop`, between two."""
    from codellama_recipe.train.trainer import run as train_stage

    for p in planned:
        name, cfg = p.job.name, p.job.cfg
        if p.action == "skip":
            print(f"[{prefix}] {noun} '{name}': finished earlier with the same config, skipped", flush=True)
            continue
        if stop is not None and stop.signum:
            print(f"[{prefix}] stopped {stop.reason} before {noun} '{name}'; rerun the same command to resume",
                  flush=True)
            return False
        print(f"[{prefix}] {noun} '{name}': {p.action} → {cfg.run_dir}"
              + (f" (from {cfg.init_from})" if cfg.init_from else " (random init)"), flush=True)
        result = train_stage(cfg) or {}
        if "stopped" in result:   # SIGTERM / SIGUSR1: checkpointed; the same command resumes here
            print(f"[{prefix}] {noun} '{name}' stopped by signal {result['stopped']} after its checkpoint; "
                  "rerun the same command to resume", flush=True)
            return False

        def finish(p=p):
            record_finished(state_file, p)
            if after_finish is not None:
                after_finish(p)
        rank0_work(finish, f"finishing {noun} '{name}'")
    return True
