"""codellama-ablate: train the ablation arms (conf/ablate.yaml), measure them, write the report.

    codellama-ablate                       # the full miniature ablations (ablate=full), runs/ablate
    codellama-ablate ablate=smoke run_dir=/tmp/smoke   # a few minutes; effects not expected

Rerunning the same command skips finished arms and measurements and resumes an interrupted arm. It runs in
one process (2 CPU threads); every arm is an ordinary codellama-train run (train.trainer.run).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from codellama_recipe.core.run_dir_lock import run_dir_lock
from codellama_recipe.core.cli import compose_checked, read_composed_command_line, refuse
from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import AblateConfig
from codellama_recipe.stages.ablate.arms import check_arm_inputs, compose_arms, train_arms
from codellama_recipe.train.stop_flag import held_stop_signals
from codellama_recipe.stages.ablate.measure import check_measurements, held_out, measure_arm
from codellama_recipe.stages.ablate.report import across_seeds, claims, write_outputs
from codellama_recipe.stages.ablate.roles import ablation_roles
from codellama_recipe.stages.ablate.statistics import curve_figures, fim_figures, lcft_figures, python_figures
from codellama_recipe.stages.stage_runner import PipelineError

PROG = "codellama-ablate"


def load_ablate_config(overrides: list[str]) -> AblateConfig:
    """conf/ablate.yaml composed with the overrides, checked against its schema, as the typed AblateConfig."""
    return typed(AblateConfig, compose_checked("ablate", overrides), "ablate")


def roles_of(acfg: AblateConfig, arms) -> dict[str, dict[str, str]]:
    """The arms' measurements checked, and each ablation's {role: arm} (stages/ablate/roles.py)."""
    check_measurements(arms, acfg)
    return ablation_roles(acfg.ablations, {arm.name: arm.measure for arm in arms})


def corpus_fingerprint(acfg: AblateConfig) -> str | None:
    from codellama_recipe.evaluation.long_files import corpus_dir_for

    manifest = Path(corpus_dir_for(acfg.cache_dir)) / "manifest.json"
    return json.loads(manifest.read_text()).get("fingerprint") if manifest.is_file() else None


def ablation_figures(measured: dict, roles: dict, acfg: AblateConfig) -> dict:
    """The figures of each declared ablation from one seed's measurements (keyed by arm name)."""
    n, seed = acfg.eval.bootstrap_samples, acfg.seed
    by_role = {ablation: {role: measured[arm] for role, arm in arms.items()} for ablation, arms in roles.items()}
    out = {}
    if "fim" in by_role:
        fim = by_role["fim"]
        out["fim"] = fim_figures(fim["fim"], fim["ar"], n, seed, fim.get("psm_only"))
    if "lcft" in by_role:
        out["lcft"] = lcft_figures(by_role["lcft"], n, seed, acfg.scale.seq_len)
    if "python" in by_role:
        out["python"] = python_figures(by_role["python"]["python"], by_role["python"]["code"], n, seed)
    return out


def fim_curves(measured: dict, roles: dict, arms, acfg: AblateConfig) -> dict:
    """The learning curves of the FIM ablation's arms declared with `curve: true`."""
    fim = roles.get("fim")
    if fim is None:
        return {}
    with_curve = {arm.name for arm in arms if arm.curve}
    curved = {name: measured[name] for role, name in fim.items() if role != "ar" and name in with_curve}
    return curve_figures(curved, measured[fim["ar"]], acfg.scale.batch_tokens, acfg.eval.bootstrap_samples,
                         acfg.seed)


def arm_summary(arm, declared: dict) -> dict:
    done_file = Path(str(arm.cfg.run_dir)) / "DONE.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    return {"parent": arm.parent, "settings": declared["settings"], "set": declared["set"],
            "steps": done.get("steps"), "tokens": done.get("tokens", 0), "time_s": done.get("time_s", 0.0),
            "train_loss": done.get("train_loss")}


def run_ablations(acfg: AblateConfig, arms, roles: dict) -> int:
    """Train the arms (composed and checked by compose_arms and roles_of), measure them, write the report."""
    with run_dir_lock(Path(acfg.run_dir)):
        return _run_ablations(acfg, arms, roles)


def _run_ablations(acfg: AblateConfig, arms, roles: dict) -> int:
    from codellama_recipe.data.tokenizer import Tokenizer
    from codellama_recipe.train.engine_setup import shutdown_distributed

    started = time.time()
    run_dir = Path(acfg.run_dir)
    with held_stop_signals() as stop:
        try:
            fingerprints = train_arms(arms, run_dir, stop)
        finally:
            shutdown_distributed()
        if fingerprints is None:
            return 0
        root = arms[0]      # every arm shares the root arm's tokenizer and its model shape (scale.model)
        tokenizer = Tokenizer(Path(str(root.cfg.run_dir)) / "hf" / "tokenizer.model")
        held = held_out(acfg, tokenizer)
        measured = {}
        for arm in (a for a in arms if a.measure):
            if stop.signum:   # what is measured is saved; the same command measures the rest
                print(f"[ablate] stopped {stop.reason} before measuring arm '{arm.name}'; rerun the same "
                      "command to resume", flush=True)
                return 0
            measured[arm.name] = measure_arm(arm, fingerprints[arm.name], acfg, held)
    results = {
        "setup": {"preset": acfg.preset, "seq_len": acfg.scale.seq_len, "batch_tokens": acfg.scale.batch_tokens,
                  "model": OmegaConf.to_container(root.cfg.model, resolve=True),
                  "eval": dataclasses.asdict(acfg.eval),
                  "corpus_fingerprint": corpus_fingerprint(acfg), "seeds": [acfg.seed, *acfg.more_seeds]},
        "arms": {arm.name: arm_summary(arm, acfg.arms[arm.name.split("@")[0]]) for arm in arms},
        "roles": roles,
        **ablation_figures(measured, roles, acfg),
        "fim_curve": fim_curves(measured, roles, arms, acfg),
    }
    if acfg.more_seeds:
        by_seed = {acfg.seed: claims(results)}
        for s in acfg.more_seeds:
            of_seed = {name.split("@")[0]: m for name, m in measured.items() if "@" not in name}
            of_seed.update({name.split("@")[0]: m for name, m in measured.items() if name.endswith(f"@seed{s}")})
            by_seed[s] = claims(ablation_figures(of_seed, roles, acfg))
        results["seeds"] = across_seeds(by_seed)
    lines = write_outputs(results, run_dir)
    print(f"[ablate] report: {run_dir / 'report.md'} (this session: {time.time() - started:.0f}s)", flush=True)
    print("\n".join(lines), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Composed with Hydra's compose API, like codellama-pipeline (not @hydra.main, whose global state would
    refuse the compose calls that build each arm's config)."""
    line = read_composed_command_line(PROG, sys.argv[1:] if argv is None else list(argv), usage,
                                      "an ablation runs once; give more training seeds with more_seeds=[...]")
    if isinstance(line, int):
        return line
    try:
        if line.show_config:
            line.print_config(compose_checked("ablate", line.overrides))
            return 0
        acfg = load_ablate_config(line.overrides)
        arms = compose_arms(acfg)
        roles = roles_of(acfg, arms)
        check_arm_inputs(arms)
        return run_ablations(acfg, arms, roles)
    except (ConfigError, PipelineError) as e:
        return refuse(PROG, str(e))


def usage() -> str:
    return f"{__doc__}\nusage: {PROG} [--help] [--cfg job [--resolve]] [overrides ...]  (conf/ablate.yaml)"


if __name__ == "__main__":
    sys.exit(main())
