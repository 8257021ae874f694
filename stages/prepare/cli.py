"""codellama-prepare: raw code (local jsonl / parquet, or a hub dataset streamed) to the training sources code,
python, nl_code and nl, filtered, deduplicated and decontaminated on datatrove pipelines (conf/prepare.yaml;
docs/prepare.md).

    codellama-prepare input.paths=[raw/*.jsonl.gz] out_dir=runs/prepare
    codellama-prepare input.hub=bigcode/the-stack-dedup input.hub_limit=100000 executor.tasks=4 executor.workers=2

Rerunning the same command skips every datatrove task already completed.
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from codellama_recipe.core.cli import refuse, run_hydra_command
from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import PrepareConfig

PROG = "codellama-prepare"
SOURCES = ("code", "python", "nl_code", "nl")
EXECUTORS = ("local", "slurm")


def check(cfg: DictConfig) -> None:
    c = typed(PrepareConfig, cfg, "prepare")
    if not c.input.paths and not c.input.hub:
        raise ConfigError("input.paths", [], "give input files (jsonl / jsonl.gz / parquet) or input.hub")
    if c.executor.kind not in EXECUTORS:
        raise ConfigError("executor.kind", c.executor.kind, f"one of {list(EXECUTORS)}")
    for key, value in (("executor.tasks", c.executor.tasks), ("executor.workers", c.executor.workers),
                       ("dedup.ngram", c.dedup.ngram), ("dedup.num_buckets", c.dedup.num_buckets),
                       ("dedup.hashes_per_bucket", c.dedup.hashes_per_bucket),
                       ("decontamination.ngram", c.decontamination.ngram)):
        if value < 1:
            raise ConfigError(key, value, "must be >= 1")
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
            raise ConfigError("decontamination.paths", p, "no such file")


def load_tokenizer(path):
    from codellama_recipe.data.tokenizer import Tokenizer

    if path:
        return Tokenizer(path)
    try:
        from codellama_recipe.data.embedded import ensure_embedded

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
