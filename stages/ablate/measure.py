"""What codellama-ablate measures on each arm's export (the arm's `measure` list), on held-out data of the
embedded corpus (validation splits; key-retrieval haystacks also from the train split, as codellama-eval).

Measurements keep per-document values (summed losses and token counts, hits and attempts), so that the
report can compute any ratio with a paired bootstrap over documents. They are saved per arm in
`<arm>/ablate_measurements.json` as soon as each is done, under a key made of the arm's fingerprint and the
evaluation settings: a rerun recomputes nothing that is already there.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from codellama_recipe.core.atomic import write_json_atomic
from codellama_recipe.core.errors import ConfigError, InputError
from codellama_recipe.core.schema import AblateConfig
from codellama_recipe.evaluation.corpus_infilling import exact_match_hits, fitting_files, infill_loss_sums
from codellama_recipe.evaluation.document_loss import document_losses
from codellama_recipe.evaluation.generation import Generator, GenerationParams
from codellama_recipe.evaluation.key_retrieval import build_examples, parse_answer
from codellama_recipe.evaluation.long_files import corpus_dir_for, corpus_texts
from codellama_recipe.evaluation.perplexity import loss_sums_by_context_length
from codellama_recipe.evaluation.model_loading import ModelToLoad, load_model_and_tokenizer
from codellama_recipe.train.checkpoint_identity import fingerprint
from codellama_recipe.train.checkpoint_integrity import tag_for

MEASUREMENTS_FILE = "ablate_measurements.json"
VAL_SOURCES = ("code", "python", "nl_code", "nl")
KNOWN = ("infill:psm", "infill:spm", "infill:ar", "infill:psm_nosuffix", "infill:spm_nosuffix",
         "infill:psm_othersuffix", "infill:spm_othersuffix", "exact:psm", "exact:spm", "exact:ar", "val_loss",
         "perplexity", "key_retrieval")
CURVE_KINDS = ("infill", "exact")       # what an arm with `curve: true` also measures along its checkpoints
INFILLING_SOURCE, INFILLING_SPLIT = "infilling", "heldout"   # data/embedded/corpus.py: the held-out infilling set


@dataclasses.dataclass
class HeldOut:
    """The evaluation documents, chosen once for every arm."""
    infill_docs: list[str]
    val_docs: dict[str, list[str]]
    long_files: list[str]
    haystacks: list[str]


def check_measurements(arms, acfg: AblateConfig | None = None) -> None:
    for arm in arms:
        for name in arm.measure:
            if name not in KNOWN:
                raise ConfigError(f"arms.{arm.name}.measure", name, f"one of {list(KNOWN)}")
    if acfg is not None:
        if acfg.eval.device not in ("cpu", "cuda", "auto"):
            raise ConfigError("eval.device", acfg.eval.device, "one of cpu, cuda, auto")
        if any(arm.curve for arm in arms):
            curve_steps(acfg)


def curve_steps(acfg: AblateConfig) -> list[int]:
    """The twins' steps at eval.curve_fractions; each must be a checkpoint (a multiple of scale.checkpoint_every,
    or the last step)."""
    steps, every = acfg.scale.base_steps, acfg.scale.checkpoint_every
    out = []
    for f in acfg.eval.curve_fractions:
        step = int(round(float(f) * steps))
        if not 0 < float(f) <= 1 or step < 1 or (step != steps and step % every):
            raise ConfigError("eval.curve_fractions", list(acfg.eval.curve_fractions),
                              f"fractions in (0, 1] whose steps (of scale.base_steps={steps}) are multiples of "
                              f"scale.checkpoint_every={every}")
        out.append(step)
    return sorted(set(out))


def context_lengths(acfg: AblateConfig, factors) -> list[int]:
    return [max(1, int(round(float(f) * acfg.scale.seq_len))) for f in factors]


def held_out(acfg: AblateConfig, tokenizer) -> HeldOut:
    ev, seq_len = acfg.eval, acfg.scale.seq_len
    corpus_dir = corpus_dir_for(acfg.cache_dir)
    infill_docs = fitting_files((text for _, text in corpus_texts(corpus_dir, INFILLING_SOURCE, [INFILLING_SPLIT])),
                                tokenizer, acfg.scale.base_max_doc_chars, seq_len, ev.infill_docs)
    val_docs = {s: [t for _, t in itertools.islice(corpus_texts(corpus_dir, s, ["val"]), ev.val_docs_per_source)]
                for s in VAL_SOURCES}
    longest = max(context_lengths(acfg, ev.ppl_length_factors))
    long_enough = (text for s in ev.ppl_sources for _, text in corpus_texts(corpus_dir, s, ["val"])
                   if len(text) > longest and len(tokenizer.encode(text)) >= longest + 1)
    long_files = list(itertools.islice(long_enough, ev.ppl_files))
    haystacks = [t for _, t in itertools.islice(corpus_texts(corpus_dir, "python", ["val", "train"]), 300)]
    if not infill_docs or not long_files:
        raise InputError("eval", dataclasses.asdict(ev), f"no held-out code file fits in {seq_len} tokens, or "
                                                               f"none has {longest} tokens")
    return HeldOut(infill_docs, val_docs, long_files, haystacks)


def measure_infill(model, tokenizer, acfg, docs, mode) -> dict:
    return infill_loss_sums(model, tokenizer, docs, mode, spans_per_doc=acfg.eval.spans_per_doc,
                            max_span_lines=acfg.eval.max_span_lines, seed=acfg.seed, batch_size=acfg.eval.batch_size)


def measure_exact(model, tokenizer, acfg, docs, mode) -> dict:
    return exact_match_hits(model, tokenizer, docs, mode, lines_per_doc=acfg.eval.lines_per_doc, seed=acfg.seed,
                            max_new_tokens=acfg.eval.max_new_tokens, batch_size=acfg.eval.batch_size)


def measure_val_loss(model, tokenizer, acfg, held: HeldOut) -> dict:
    out = {}
    for source, texts in held.val_docs.items():
        sums, counts = document_losses(model, tokenizer, texts, acfg.scale.seq_len, acfg.eval.val_windows_per_doc,
                                       acfg.eval.batch_size)
        out[source] = {"sums": sums.tolist(), "counts": counts.tolist()}
    return out


def measure_perplexity(model, tokenizer, acfg, held: HeldOut) -> dict:
    lengths = context_lengths(acfg, acfg.eval.ppl_length_factors)
    return {"lengths": lengths, "sums": loss_sums_by_context_length(model, tokenizer, held.long_files, lengths)}


def measure_key_retrieval(model, tokenizer, acfg, held: HeldOut) -> dict:
    ev = acfg.eval
    lengths = context_lengths(acfg, ev.retrieval_length_factors)
    positions = [float(p) for p in ev.retrieval_positions]
    examples = build_examples(tokenizer, held.haystacks, lengths, positions, ev.retrieval_examples, acfg.seed)
    completions = Generator(model, tokenizer, batch_size=ev.batch_size).complete(
        [e.prompt for e in examples], GenerationParams(max_new_tokens=4, stop=("\n",)))
    hits = {f"{L}/{p}": [] for L in lengths for p in positions}
    for example, completion in zip(examples, completions):
        hits[f"{example.length}/{example.position}"].append(int(parse_answer(completion) == example.expected))
    return {"lengths": lengths, "positions": positions, "hits": hits}


def _load(model_path: Path, acfg: AblateConfig, tokenizer_path: Path | None = None):
    return load_model_and_tokenizer(ModelToLoad(
        model_path=str(model_path), tokenizer_path=None if tokenizer_path is None else str(tokenizer_path),
        cache_dir=acfg.cache_dir, device=acfg.eval.device, dtype="float32"))


def _measure_one(name, model, tokenizer, acfg, held):
    kind, _, mode = name.partition(":")
    if kind == "infill":
        return measure_infill(model, tokenizer, acfg, held.infill_docs, mode)
    if kind == "exact":
        return measure_exact(model, tokenizer, acfg, held.infill_docs, mode)
    if kind == "val_loss":
        return measure_val_loss(model, tokenizer, acfg, held)
    if kind == "perplexity":
        return measure_perplexity(model, tokenizer, acfg, held)
    return measure_key_retrieval(model, tokenizer, acfg, held)


def measure_curve(arm, acfg: AblateConfig, held: HeldOut, results: dict, save, log=print) -> dict:
    """{step: {measure: per-document values}} for the arm's infill:/exact: measures at its curve steps: the
    retained checkpoints along training (the last step is the arm's export, measured already)."""
    run_dir = Path(str(arm.cfg.run_dir))
    names = [m for m in arm.measure if m.partition(":")[0] in CURVE_KINDS]
    curve = results.setdefault("curve", {})
    final = acfg.scale.base_steps
    for step in curve_steps(acfg):
        done = curve.setdefault(str(step), {})
        missing = [m for m in names if m not in done]
        if not missing:
            continue
        if step == final:
            done.update({m: results[m] for m in missing})
            save()
            continue
        tag_dir = run_dir / "checkpoints" / tag_for(step)
        if not tag_dir.is_dir():
            raise InputError("eval.curve_fractions", list(acfg.eval.curve_fractions),
                              f"arm '{arm.name}' has no checkpoint {tag_dir} (keep more: trainer.keep_last)")
        model, tokenizer = _load(tag_dir, acfg, run_dir / "hf" / "tokenizer.model")
        for name in missing:
            log(f"[ablate] measuring {name} on arm '{arm.name}' at step {step}")
            done[name] = _measure_one(name, model, tokenizer, acfg, held)
            save()
    return curve


def measure_arm(arm, arm_fingerprint: str, acfg: AblateConfig, held: HeldOut, log=print) -> dict:
    """The arm's measurements (and, for an arm with `curve`, those along its checkpoints), computing only those
    not saved under the same key."""
    path = Path(str(arm.cfg.run_dir)) / MEASUREMENTS_FILE
    key = fingerprint({"arm": arm_fingerprint, "eval": dataclasses.asdict(acfg.eval),
                       "seq_len": acfg.scale.seq_len, "seed": acfg.seed})
    saved = json.loads(path.read_text()) if path.exists() else {}
    results = saved.get("results", {}) if saved.get("key") == key else {}
    missing = [m for m in arm.measure if m not in results]

    def save():
        write_json_atomic(path, {"key": key, "results": results}, indent=None)

    if missing:
        model, tokenizer = _load(Path(str(arm.cfg.run_dir)) / "hf", acfg)
        for name in missing:
            log(f"[ablate] measuring {name} on arm '{arm.name}'")
            results[name] = _measure_one(name, model, tokenizer, acfg, held)
            save()
    if arm.curve:
        measure_curve(arm, acfg, held, results, save, log)
    return results
