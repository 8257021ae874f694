"""codellama-prepare: raw code (local jsonl / parquet, or a hub dataset streamed) to the training sources code,
python, nl_code and nl, filtered, deduplicated and decontaminated on datatrove pipelines (conf/prepare.yaml;
docs/prepare.md).

    codellama-prepare input.paths=[raw/*.jsonl.gz] out_dir=runs/prepare
    codellama-prepare input.hub=bigcode/the-stack-dedup input.hub_limit=100000 executor.tasks=4 executor.workers=2

Rerunning the same command skips every datatrove task already completed.
"""
from __future__ import annotations

import importlib.util
import re
import sys

from omegaconf import DictConfig

from codellama_recipe.core.cli import refuse, run_hydra_command
from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError, InputError
from codellama_recipe.core.schema import PrepareConfig
from codellama_recipe.core.schema import HUB_KEYS   # the keys a training source's hub mapping takes

PROG = "codellama-prepare"
SOURCES = ("code", "python", "nl_code", "nl")
EXECUTORS = ("local", "slurm", "ray")
PROGRESS_BAR = ("auto", "true", "false")


def check(cfg: DictConfig) -> None:
    c = typed(PrepareConfig, cfg, "prepare")
    if not c.input.paths and not c.input.hub:
        raise ConfigError("input.paths", [], "give input files (jsonl / jsonl.gz / parquet) or input.hub")
    if c.input.hub is not None and not isinstance(c.input.hub, str):
        if not isinstance(c.input.hub, dict) or "path" not in c.input.hub or set(c.input.hub) - HUB_KEYS:
            raise ConfigError("input.hub", c.input.hub, f"a dataset id, or a mapping with path and any of "
                                                        f"{sorted(HUB_KEYS - {'path'})}")
    if c.input.hub_limit is not None and c.input.hub_limit < 1:
        raise ConfigError("input.hub_limit", c.input.hub_limit, "must be >= 1, or null for all")
    if str(c.progress_bar).lower() not in PROGRESS_BAR:
        raise ConfigError("progress_bar", c.progress_bar, f"one of {list(PROGRESS_BAR)}")
    if c.executor.kind not in EXECUTORS:
        raise ConfigError("executor.kind", c.executor.kind, f"one of {list(EXECUTORS)}")
    for key, value in (("executor.tasks", c.executor.tasks), ("executor.workers", c.executor.workers),
                       ("dedup.ngram", c.dedup.ngram), ("dedup.num_buckets", c.dedup.num_buckets),
                       ("dedup.hashes_per_bucket", c.dedup.hashes_per_bucket),
                       ("decontamination.ngram", c.decontamination.ngram)):
        if value < 1:
            raise ConfigError(key, value, "must be >= 1")
    if c.executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise InputError("executor.kind", "ray", "needs the ray package: pip install 'codellama-recipe[ray]'")
    if c.executor.kind == "slurm":
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", str(c.executor.time)):
            raise ConfigError("executor.time", c.executor.time, "a SLURM time: MM, HH:MM:SS or D-HH:MM:SS")
        if not str(c.executor.partition or "").strip():
            raise ConfigError("executor.partition", c.executor.partition, "a SLURM partition name")
        for key in ("cpus_per_task", "mem_per_cpu_gb"):
            if getattr(c.executor, key) < 1:
                raise ConfigError(f"executor.{key}", getattr(c.executor, key), "must be >= 1")
    if not 0 <= c.heldout_share < 1:
        raise ConfigError("heldout_share", c.heldout_share, "a share in [0, 1)")
    if not 0 <= c.filters.min_alnum_fraction <= 1:
        raise ConfigError("filters.min_alnum_fraction", c.filters.min_alnum_fraction, "a share in [0, 1]")
    for source, rule in c.routes.items():
        if source not in SOURCES:
            raise ConfigError(f"routes.{source}", "…", f"a source is one of {list(SOURCES)}")
        if not isinstance(rule, dict) or set(rule) - {"langs", "extensions"}:
            raise ConfigError(f"routes.{source}", rule, "a mapping with langs and/or extensions lists")
    if c.default_source is not None and c.default_source not in SOURCES:
        raise ConfigError("default_source", c.default_source, f"one of {list(SOURCES)} or null")
    import os
    for p in c.decontamination.paths:
        if not os.path.isfile(p):
            raise InputError("decontamination.paths", p, "no such file")


def load_tokenizer(path):
    from codellama_recipe.data.tokenizer import Tokenizer

    if path:
        return Tokenizer(path)
    try:
        from codellama_recipe.data.embedded.cache import ensure_embedded

        return Tokenizer(ensure_embedded(None).tokenizer_path)
    except Exception:
        return None


def run(cfg: DictConfig) -> dict:
    from codellama_recipe.stages.prepare.pipeline import prepare

    c = typed(PrepareConfig, cfg, "prepare")
    result = prepare(c, tokenizer=load_tokenizer(c.tokenizer))
    if result.get("submitted"):
        return result
    for source, row in result["sources"].items():
        steps = ", ".join(f"{k} {v['documents']}" for k, v in row.items() if k != "splits")
        print(f"[prepare] {source}: {steps}", flush=True)
    print(f"[prepare] removed: {result['removed_by_reason']}", flush=True)
    heldout = result["sources"].get("code", {}).get("splits", {}).get("heldout", 0)
    val = f"[{c.out_dir}/code/heldout/*.jsonl.gz]" if heldout else "null"
    print(f"[prepare] {c.out_dir}/manifest.json; training reads corpus.code.paths=[{c.out_dir}/code/train/*.jsonl.gz] "
          f"corpus.code.val_paths={val}", flush=True)
    return result


def task(cfg: DictConfig) -> int:
    try:
        run(cfg)
    except ConfigError as e:
        return refuse(PROG, str(e))
    except (ImportError, OSError, ValueError, RuntimeError) as e:   # a missing extra, an unwritable out_dir, a bad hub id
        text = str(e).strip().splitlines()
        return refuse(PROG, f"error: {type(e).__name__}: {text[0] if text else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_hydra_command(PROG, "prepare", task, check=check, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
