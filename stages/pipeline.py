"""codellama-pipeline: run a chain of training stages (conf/pipeline/<name>.yaml), one codellama-train run each.

Each stage starts from the previous stage's Hugging Face export (fresh optimizer), or from
``pipeline.init_from`` for the first one. A finished stage is recorded in ``<run_dir>/pipeline_state.json``
with the fingerprint of its resolved config (chained with the previous stage's), so rerunning the same
command skips it; an interrupted stage resumes from its latest checkpoint (the engine does that); a finished
stage whose config changed is refused unless it is named in ``restart=[…]``. Planning, running and recording
are stages/stage_runner.py's, shared with codellama-ablate.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, ValidationError

from codellama_recipe.core.run_dir_lock import run_dir_lock
from codellama_recipe.core.cli import compose_checked
from codellama_recipe.core.config import allowed_keys, conf_dir, typed
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import PipelineRunConfig, TrainConfig
from codellama_recipe.stages.stage_runner import Job, PipelineError, PlannedJob, plan_jobs, run_jobs
from codellama_recipe.train.stop_flag import held_stop_signals

CONF_DIR = conf_dir()
STATE_FILE = "pipeline_state.json"


def typed_pipeline(composed: DictConfig) -> PipelineRunConfig:
    """The composed pipeline config as its dataclass. The stage entries stay as written: their interpolations
    (`${cache_dir}`, `${data.seq_len}`) resolve in each stage's codellama-train config, where those keys live."""
    stages = OmegaConf.to_container(composed.stages, resolve=False)
    rest = composed.copy()
    with open_dict(rest):
        del rest["stages"]
    pcfg = typed(PipelineRunConfig, rest, "pipeline")
    pcfg.stages = stages
    return pcfg


def validate_pipeline(cfg: PipelineRunConfig) -> list[Job]:
    """The chain's own keys checked, then every stage composed once (its keys against codellama-train's
    schema): the stages as the jobs the runner plans and runs."""
    order = list(cfg.pipeline.order)
    known = sorted(cfg.stages)
    for name in order:
        if name not in cfg.stages:
            raise ConfigError("pipeline.order", order, f"every stage needs an entry under `stages`; known: {known}")
        kind = ((cfg.stages[name] or {}).get("groups") or {}).get("stage")
        options = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))
        if kind not in options:
            raise ConfigError(f"stages.{name}.groups.stage", kind, f"one of {options}")
    for name in cfg.restart:
        if name not in order:
            raise ConfigError("restart", list(cfg.restart), f"stage names from pipeline.order {order}")
    return compose_chain(cfg)


def compose_chain(pcfg: PipelineRunConfig) -> list[Job]:
    """Every stage's codellama-train config in order, each starting from its parent's export."""
    run_dir, jobs, init_from, parent = Path(str(pcfg.run_dir)), [], pcfg.pipeline.init_from, None
    for name in pcfg.pipeline.order:
        jobs.append(Job(name, compose_stage(pcfg, name, init_from), parent))
        init_from, parent = str(run_dir / name / "hf"), name
    return jobs


def compose_stage(pcfg: PipelineRunConfig, name: str, init_from: str | None) -> DictConfig:
    """The full codellama-train config of one stage: groups, then the pipeline's values, then run wiring."""
    entry = copy.deepcopy(pcfg.stages[name])
    groups = entry.pop("groups", {})
    every = [o for o in pcfg.common if not str(o).lstrip("+").startswith("stages.")]
    overrides = [f"model={pcfg.pipeline.model}", *[f"{g}={v}" for g, v in groups.items()],
                 f"seed={pcfg.seed}", *every]
    base = compose_checked("train", overrides)
    try:
        cfg = OmegaConf.merge(base, entry)
    except (ConfigKeyError, ValidationError) as e:
        key = e.full_key or ""
        reason = allowed_keys(TrainConfig, key) if isinstance(e, ConfigKeyError) else str(e).splitlines()[0]
        value = OmegaConf.select(OmegaConf.create(entry), key, default="?")
        raise ConfigError.from_message(f"stages.{name}.{key}={value}: {reason}") from None
    # A key set for every stage (`common`, which the command line extends) wins over the value a preset gives
    # one stage: `trainer.max_steps=10` shortens every stage, `corpus.code.paths=[…]` reaches the stage that
    # reads pieces of the embedded corpus. A `stages.<name>.<key>=…` override wins over both.
    mine = {k.removeprefix(f"stages.{name}.") for k in _plain_keys(pcfg.common) if k.startswith(f"stages.{name}.")}
    for key in _plain_keys(every):
        if key not in mine and OmegaConf.select(base, key, default=_MISSING) is not _MISSING:
            OmegaConf.update(cfg, key, OmegaConf.select(base, key), merge=False)
    group = _wandb_group(pcfg)
    cfg.run_dir = str(Path(str(pcfg.run_dir)) / name)
    cfg.cache_dir = pcfg.cache_dir
    cfg.init_from = init_from
    cfg.wandb.mode = pcfg.wandb.mode
    cfg.wandb.project = pcfg.wandb.project
    cfg.wandb.entity = pcfg.wandb.entity
    cfg.wandb.group = group
    cfg.wandb.job_type = name
    cfg.wandb.name = f"{group}/{name}"
    return cfg


_MISSING = object()


def _plain_keys(overrides) -> list[str]:
    """The dotted keys that overrides set (`a.b=…`, `+a.b=…`); config-group choices (`deepspeed=zero3`) and
    deletions (`~a.b`) are Hydra's, applied when the stage's config is composed."""
    keys = []
    for override in overrides:
        key, sep, _ = str(override).partition("=")
        if sep and not key.startswith("~") and ("." in key or not (CONF_DIR / key.lstrip("+")).is_dir()):
            keys.append(key.lstrip("+"))
    return keys


def _wandb_group(pcfg: PipelineRunConfig) -> str:
    return pcfg.wandb.group or f"{pcfg.pipeline.name}-{Path(str(pcfg.run_dir)).resolve().name}"


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _wait_until(predicate, what: str, timeout_s: float = 600.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise PipelineError(f"timed out waiting for rank 0: {what}")
        time.sleep(0.5)


def plan(pcfg: PipelineRunConfig, jobs: list[Job]) -> list[PlannedJob]:
    """Decide, before anything runs, what each stage does: skip (finished, same config), run/resume, restart
    (named in `restart`, or after one that is), or refuse (finished with another config)."""
    for i, job in enumerate(jobs):     # every stage's values first (pure), then what each stage will read
        check_stage(job.cfg, job.name, first=i == 0, inputs=False)
    for i, job in enumerate(jobs):
        check_stage(job.cfg, job.name, first=i == 0)
    return plan_jobs(jobs, Path(str(pcfg.run_dir)) / STATE_FILE, noun="stage", restart=tuple(pcfg.restart),
                     remedy="Rerun with restart=[{name}] to train it (and every stage after it) again, or use "
                            "another run_dir.")


def check_stage(cfg: DictConfig, name: str, first: bool, *, inputs: bool = True) -> None:
    """codellama-train's checks, before anything runs: the values (pure), and with `inputs` what the stage will
    read (files, tokenizer; the embedded corpus is built here). A later stage starts from weights the pipeline
    has not written yet, so its init_from is left out of the check."""
    from codellama_recipe.train.config_checks import check_inputs, check_values

    try:
        plan = check_values(cfg)
        if inputs:
            check_inputs(cfg, plan, init_from_pending=not first)
    except ConfigError as e:
        raise e.within(f"stage '{name}'") from None


def check_eval(pcfg: PipelineRunConfig) -> None:
    """The per-stage evaluation's config (preset + overrides): refused before the first stage trains, not after."""
    from codellama_recipe.evaluation.run import load_config, validate_config

    try:
        validate_config(load_config(pcfg.eval.overrides, pcfg.eval.preset))
    except ConfigError as e:
        raise e.within("eval") from None


def run_pipeline(pcfg: PipelineRunConfig, jobs: list[Job]) -> list[dict] | None:
    """Run the stages (`validate_pipeline`'s jobs) in order; returns one summary row per stage (None when a
    signal stopped it)."""
    run_dir = Path(str(pcfg.run_dir))
    # A signal between two stages is held and handed to the next stage's trainer, whose ranks agree to stop at
    # its first step boundary (with a checkpoint); without this the default action would kill the command.
    with run_dir_lock(run_dir, enabled=process_rank() == 0), held_stop_signals():
        return _run_stages(pcfg, jobs, run_dir)


def _run_stages(pcfg: PipelineRunConfig, jobs: list[Job], run_dir: Path) -> list[dict] | None:
    planned = plan(pcfg, jobs)
    for p in planned:
        if p.action == "restart":
            if process_rank() == 0:
                shutil.rmtree(p.folder)
            _wait_until(lambda d=p.folder: not d.exists(), f"removing {p.folder}")

    def evaluate(p: PlannedJob) -> None:
        if pcfg.eval.enabled:
            evaluate_stage(pcfg, p.job.name, p.folder)
    if not run_jobs(planned, run_dir / STATE_FILE, noun="stage", prefix="pipeline", after_finish=evaluate):
        return None
    return [summary_row(p.job.name, p.folder) for p in planned]


def evaluate_stage(pcfg: PipelineRunConfig, name: str, stage_dir: Path) -> None:
    """The fast evaluation of one stage's export; earlier stages' results feed the metric-by-stage plot."""
    from codellama_recipe.evaluation.run import evaluate

    order = list(pcfg.pipeline.order)
    earlier = [Path(str(pcfg.run_dir)) / s / "eval" / "results.json" for s in order[: order.index(name)]]
    overrides = OmegaConf.merge(pcfg.eval.overrides, {
        "label": name, "out_dir": str(stage_dir / "eval"), "cache_dir": pcfg.cache_dir,
        "report": {"compare": [str(p) for p in earlier if p.exists()]},
        "wandb": {"mode": pcfg.wandb.mode, "project": pcfg.wandb.project, "entity": pcfg.wandb.entity,
                  "group": _wandb_group(pcfg), "name": f"{_wandb_group(pcfg)}/{name}/eval"}})
    results = evaluate(stage_dir / "hf", overrides, preset=pcfg.eval.preset)
    shown = {k: round(v, 3) for k, v in results["metrics"].items() if isinstance(v, (int, float))}
    print(f"[pipeline] stage '{name}' evaluation: {shown}", flush=True)


def summary_row(name: str, stage_dir: Path) -> dict:
    done = json.loads((stage_dir / "DONE.json").read_text()) if (stage_dir / "DONE.json").exists() else {}
    evaluation = stage_dir / "eval" / "results.json"
    return {"stage": name, "dir": str(stage_dir), **done,
            "eval": json.loads(evaluation.read_text()) if evaluation.exists() else {}}


def format_summary(rows: list[dict], run_dir: Path) -> str:
    sources = sorted({s for r in rows for s in (r.get("val_loss") or {})})
    header = ["stage", "steps", "tokens", "time", "train loss"] + [f"val {s}" for s in sources]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        val = r.get("val_loss") or {}
        cells = [r["stage"], str(r.get("steps", "?")), f"{r.get('tokens', 0):,}",
                 f"{r.get('time_s', 0):.0f}s", _fmt(r.get("train_loss"))] + [_fmt(val.get(s)) for s in sources]
        lines.append("| " + " | ".join(cells) + " |")
    lines += format_eval_summary(rows)
    lines += ["", f"Outputs under {run_dir}/<stage>/:",
              "  checkpoints/   DeepSpeed checkpoints (resume: rerun the same command)",
              "  hf/            Hugging Face export of the stage's final weights (the next stage starts from it)",
              "  metrics.jsonl  every logged step",
              "  wandb/         the stage's wandb run (offline runs: `wandb sync <dir>` uploads them)",
              "  eval/          per-stage evaluation results and report"]
    return "\n".join(lines)


# The evaluation figures of the final table, in this order (perplexity by length follows). The held-out
# infilling loss and exact match move for models far too small for pass@k to leave 0.
HEADLINE_METRICS = (
    ("humaneval/pass@1", "HumanEval pass@1"), ("mbpp/pass@1", "MBPP pass@1"),
    ("infilling_single/psm/pass@1", "HumanEval single-line infilling pass@1 (PSM)"),
    ("infilling_single/spm/pass@1", "HumanEval single-line infilling pass@1 (SPM)"),
    ("corpus_infilling/psm/loss", "held-out infilling: middle loss, PSM prompt"),
    ("corpus_infilling/spm/loss", "held-out infilling: middle loss, SPM prompt"),
    ("corpus_infilling/ar/loss", "held-out infilling: middle loss, prefix only"),
    ("corpus_infilling/psm_nosuffix/loss", "held-out infilling: middle loss, PSM prompt with the suffix emptied"),
    ("corpus_infilling/psm/suffix_gain", "held-out infilling: suffix gain (PSM loss without / with the suffix)"),
    ("corpus_infilling/psm/exact_match", "held-out single-line exact match, PSM"),
    ("corpus_infilling/spm/exact_match", "held-out single-line exact match, SPM"),
    ("corpus_infilling/ar/exact_match", "held-out single-line exact match, prefix only"),
    ("key_retrieval/accuracy", "key retrieval accuracy"),
)


def format_eval_summary(rows: list[dict]) -> list[str]:
    """Each stage's evaluation next to the others: one row per metric, one column per stage."""
    metrics = [r.get("eval", {}).get("metrics", {}) for r in rows]
    if not any(metrics):
        return []
    lengths = sorted({int(k.split("@")[1]) for m in metrics for k in m if k.startswith("perplexity/ppl@")})
    languages = sorted({k.split("/")[1] for m in metrics for k in m
                        if k.startswith("multipl_e/") and k.endswith("/pass@1") and "/sampled/" not in k},
                       key=lambda x: (x == "mean", x))
    wanted = [*HEADLINE_METRICS, *((f"multipl_e/{x}/pass@1", f"MultiPL-E {x} pass@1" if x != "mean"
                                    else "MultiPL-E pass@1, mean over languages") for x in languages),
              *((f"perplexity/ppl@{L}", f"perplexity of held-out files at {L} tokens") for L in lengths)]
    lines = ["", "Per-stage evaluation (codellama-eval on each stage's export; details in <stage>/eval/report.md):", "",
             "| metric | " + " | ".join(r["stage"] for r in rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for key, label in wanted:
        if any(key in m for m in metrics):
            lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key)) for m in metrics) + " |")
    return lines


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"



if __name__ == "__main__":   # the command line moved to its own module; say so rather than do nothing
    raise SystemExit("codellama-pipeline: run `codellama-pipeline` or `python -m codellama_recipe.stages.pipeline_cli`")
