"""Infilling measured on held-out source files (the embedded corpus's validation split, or the user's files):
figures that move for models far too small to pass a HumanEval test.

- loss: the mean loss of a true middle's tokens (1..max_span_lines whole lines) given the PSM prompt, the SPM
  prompt, or the prefix alone (`ar`, left-to-right infilling), per file as (sum, count);
- exact match: one non-blank line removed at a time, greedy generation until <EOT> or a newline, a hit when the
  first line written equals the removed one (per file as hits / attempts).

codellama-eval (benchmark `corpus_infilling`) and codellama-ablate both measure with these functions; the random
choices are a function of (seed, file index), so two models are always measured on the same spans and lines.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence

from codellama_recipe.evaluation.generation import Generator, GenerationParams
from codellama_recipe.evaluation.infill_loss import MODES, OTHER_SUFFIX, middle_losses
from codellama_recipe.evaluation.infill_spans import Span, exact_match, line_spans, removed_lines

FIM_FRAME_TOKENS = 6     # BOS <PRE> <SUF> <MID> <EOT> EOS around a transformed document


def fitting_files(texts: Iterable[str], tokenizer, max_chars: int, max_tokens: int, n: int) -> list[str]:
    """The first n texts of at least two lines that are at most max_chars long and, FIM-framed, fit in max_tokens
    (the recipe transforms only documents that fit in one context)."""
    fits = (text for text in texts
            if len(text) <= max_chars and "\n" in text.strip()
            and len(tokenizer.encode(text)) + FIM_FRAME_TOKENS <= max_tokens)
    return list(itertools.islice(fits, n))


def infill_loss_sums(model, tokenizer, docs: Sequence[str], mode: str, *, spans_per_doc: int, max_span_lines: int,
                     seed: int, batch_size: int = 16) -> dict:
    """{"sums": [...], "counts": [...]}: the middles' summed loss and token count per file. In the *_othersuffix
    modes the k-th span of file d gets the suffix of the k-th span of file d + 1 (cyclically)."""
    if mode not in MODES:
        raise ValueError(f"infilling mode {mode!r}: one of {MODES}")
    all_spans = [line_spans(text, spans_per_doc, max_span_lines, random.Random(f"{seed}/infill/{d}"))
                 for d, text in enumerate(docs)]
    sums, counts = [], []
    for d, spans in enumerate(all_spans):
        if mode.endswith(OTHER_SUFFIX) and len(docs) > 1:
            donors = all_spans[(d + 1) % len(docs)]
            spans = [Span(s.prefix, s.middle, donors[k % len(donors)].suffix if donors else "")
                     for k, s in enumerate(spans)]
        losses = middle_losses(model, tokenizer, spans, mode, batch_size)
        sums.append(float(sum(v.sum() for v in losses)))
        counts.append(int(sum(len(v) for v in losses)))
    return {"sums": sums, "counts": counts}


def exact_match_hits(model, tokenizer, docs: Sequence[str], mode: str, *, lines_per_doc: int, seed: int,
                     max_new_tokens: int, batch_size: int = 16, n_examples: int = 6) -> dict:
    """{"hits": [...], "n": [...], "examples": [...]}: per file, lines filled exactly and lines tried."""
    if mode not in ("psm", "spm", "ar"):
        raise ValueError(f"single-line infilling mode {mode!r}: one of psm, spm, ar")
    owners, spans = [], []
    for d, text in enumerate(docs):
        for span in removed_lines(text, lines_per_doc, random.Random(f"{seed}/line/{d}")):
            owners.append(d)
            spans.append(span)
    generator = Generator(model, tokenizer, batch_size=batch_size)
    params = GenerationParams(max_new_tokens=max_new_tokens, stop=("\n",))
    if mode == "ar":
        completions = generator.complete([s.prefix for s in spans], params)
    else:
        completions = generator.infill([s.prefix for s in spans], [s.suffix for s in spans], params,
                                       suffix_first=mode == "spm")
    hits, n = [0] * len(docs), [0] * len(docs)
    for d, span, completion in zip(owners, spans, completions):
        hits[d] += int(exact_match(completion, span.middle))
        n[d] += 1
    examples = [{"line": s.middle, "completion": c} for s, c in zip(spans[:n_examples], completions[:n_examples])]
    return {"hits": hits, "n": n, "examples": examples}
