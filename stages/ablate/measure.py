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

from omegaconf import DictConfig, OmegaConf

from codellama_recipe.core.atomic import write_json_atomic
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.evaluation.corpus_infilling import exact_match_hits, fitting_files, infill_loss_sums
from codellama_recipe.evaluation.document_loss import document_losses
from codellama_recipe.evaluation.generation import Generator, GenerationParams
from codellama_recipe.evaluation.key_retrieval import build_examples, parse_answer
from codellama_recipe.evaluation.long_files import corpus_dir_for, corpus_texts
from codellama_recipe.evaluation.perplexity import loss_sums_by_context_length
from codellama_recipe.evaluation.run import load_model_and_tokenizer
from codellama_recipe.train.checkpoints import fingerprint

MEASUREMENTS_FILE = "ablate_measurements.json"
VAL_SOURCES = ("code", "python", "nl_code", "nl")
KNOWN = ("infill:psm", "infill:spm", "infill:ar", "exact:psm", "exact:spm", "exact:ar", "val_loss", "perplexity",
         "key_retrieval")


@dataclasses.dataclass
class HeldOut:
    """The evaluation documents, chosen once for every arm."""
    infill_docs: list[str]
    val_docs: dict[str, list[str]]
    long_files: list[str]
    haystacks: list[str]


def check_measurements(arms) -> None:
    for arm in arms:
        for name in arm.measure:
            if name not in KNOWN:
                raise ConfigError(f"arms.{arm.name}.measure", name, f"one of {list(KNOWN)}")


def context_lengths(acfg: DictConfig, factors) -> list[int]:
    return [max(1, int(round(float(f) * acfg.scale.seq_len))) for f in factors]


def held_out(acfg: DictConfig, tokenizer) -> HeldOut:
    ev, seq_len = acfg.eval, acfg.scale.seq_len
    corpus_dir = corpus_dir_for(acfg.cache_dir)
    infill_docs = fitting_files((text for _, text in corpus_texts(corpus_dir, "code", ["val"])), tokenizer,
                                acfg.scale.base_max_doc_chars, seq_len, ev.infill_docs)
    val_docs = {s: [t for _, t in itertools.islice(corpus_texts(corpus_dir, s, ["val"]), ev.val_docs_per_source)]
                for s in VAL_SOURCES}
    longest = max(context_lengths(acfg, ev.ppl_length_factors))
    long_enough = (text for s in ev.ppl_sources for _, text in corpus_texts(corpus_dir, s, ["val"])
                   if len(text) > longest and len(tokenizer.encode(text)) >= longest + 1)
    long_files = list(itertools.islice(long_enough, ev.ppl_files))
    haystacks = [t for _, t in itertools.islice(corpus_texts(corpus_dir, "python", ["val", "train"]), 300)]
    if not infill_docs or not long_files:
        raise ConfigError("eval", OmegaConf.to_container(ev), f"no held-out code file fits in {seq_len} tokens, or "
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


def measure_arm(arm, arm_fingerprint: str, acfg: DictConfig, held: HeldOut, log=print) -> dict:
    """The arm's measurements, computing only those not saved under the same key."""
    path = Path(str(arm.cfg.run_dir)) / MEASUREMENTS_FILE
    key = fingerprint({"arm": arm_fingerprint, "eval": OmegaConf.to_container(acfg.eval, resolve=True),
                       "seq_len": acfg.scale.seq_len, "seed": acfg.seed})
    saved = json.loads(path.read_text()) if path.exists() else {}
    results = saved.get("results", {}) if saved.get("key") == key else {}
    missing = [m for m in arm.measure if m not in results]
    if not missing:
        return results
    model, tokenizer = load_model_and_tokenizer(OmegaConf.create({
        "model_path": str(Path(str(arm.cfg.run_dir)) / "hf"), "tokenizer_path": None, "cache_dir": acfg.cache_dir,
        "device": "cpu", "dtype": "float32"}))
    for name in missing:
        log(f"[ablate] measuring {name} on arm '{arm.name}'")
        kind, _, mode = name.partition(":")
        if kind == "infill":
            results[name] = measure_infill(model, tokenizer, acfg, held.infill_docs, mode)
        elif kind == "exact":
            results[name] = measure_exact(model, tokenizer, acfg, held.infill_docs, mode)
        elif kind == "val_loss":
            results[name] = measure_val_loss(model, tokenizer, acfg, held)
        elif kind == "perplexity":
            results[name] = measure_perplexity(model, tokenizer, acfg, held)
        else:
            results[name] = measure_key_retrieval(model, tokenizer, acfg, held)
        write_json_atomic(path, {"key": key, "results": results}, indent=None)
    return results
