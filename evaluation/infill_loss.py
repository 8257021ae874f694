"""Infilling loss: the mean loss of the true middle's tokens, EncNoSpace(middle), given
    psm: the PSM inference prompt  [BOS, PRE] Enc(prefix) [SUF] EncNoSpace(suffix) [MID]
    spm: the SPM inference prompt  [BOS, PRE, SUF] EncNoSpace(suffix) [MID] Enc(prefix)
    ar:  the prefix only           [BOS] Enc(prefix)
    psm_nosuffix / spm_nosuffix: the PSM / SPM prompt with the suffix emptied (the same prefix and middle)
    psm_othersuffix / spm_othersuffix: the PSM / SPM prompt with another file's suffix in place of the true one
         (the caller swaps it in: evaluation/corpus_infilling.py)
The suffix gain is loss(..._nosuffix) / loss(...) or loss(..._othersuffix) / loss(...). Emptying the suffix also
brings the prefix next to <MID> in PSM and shortens the prompt, which helps a model that reads mostly nearby
tokens; another file's suffix keeps the prompt's shape and length and takes away only the true suffix's content.
Every mode scores the same target tokens, so the losses compare directly (the paper's Table 5 measures
infilling with and without FIM training this way, on held-out code). <EOT> is not a target: a model
trained without FIM has no use for it.
"""
from __future__ import annotations

from collections.abc import Sequence

from codellama_recipe.data.fim import fim_prompt
from codellama_recipe.evaluation.infill_spans import Span
from codellama_recipe.evaluation.target_losses import target_losses

MODES = ("psm", "spm", "ar", "psm_nosuffix", "spm_nosuffix", "psm_othersuffix", "spm_othersuffix")
NO_SUFFIX, OTHER_SUFFIX = "_nosuffix", "_othersuffix"


def infill_prompt(tokenizer, span: Span, mode: str) -> list[int]:
    if mode.endswith(NO_SUFFIX) and mode in MODES:
        return infill_prompt(tokenizer, Span(span.prefix, span.middle, ""), mode[:-len(NO_SUFFIX)])
    if mode.endswith(OTHER_SUFFIX) and mode in MODES:   # the span's suffix is already another file's
        return infill_prompt(tokenizer, span, mode[:-len(OTHER_SUFFIX)])
    if mode == "ar":
        return tokenizer.encode(span.prefix, bos=True)
    if mode in ("psm", "spm"):
        return fim_prompt(tokenizer, span.prefix, span.suffix, spm=mode == "spm")
    raise ValueError(f"infilling mode {mode!r}: one of {MODES}")


def middle_losses(model, tokenizer, spans: Sequence[Span], mode: str, batch_size: int = 16) -> list:
    """Per span, the losses of the middle's tokens (a numpy array each)."""
    prompts = [infill_prompt(tokenizer, s, mode) for s in spans]
    middles = [tokenizer.encode_no_space(s.middle) for s in spans]
    return target_losses(model, [p + m for p, m in zip(prompts, middles)], [len(p) for p in prompts],
                         tokenizer.pad_id, batch_size)
