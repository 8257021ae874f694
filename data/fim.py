"""Code Llama infilling (fill-in-the-middle) as in the paper's §2.3 (docs/recipe.md#infilling).

Training layouts (B = BOS, E = EOS; whether they surround a FIM document is OPEN in the paper, our
default is yes and both are config values `fim.bos` / `fim.eos`):
    PSM: [B] <PRE> Enc(prefix) <SUF> EncNoSpace(suffix) <MID> EncNoSpace(middle) <EOT> [E]
    SPM: [B] <PRE> <SUF> EncNoSpace(suffix) <MID> Enc(prefix + middle) <EOT> [E]   ("compatible" SPM)
Every token of the reordered document, <EOT> included, is a training target.

The two cut points are character (code point) positions drawn independently and uniformly from
{0, ..., len(text)} and sorted; prefix = text[:lo], middle = text[lo:hi], suffix = text[hi:].

Every random decision (transform or not, PSM or SPM, both cut points) is a pure function of
(seed, source name, document key) through a cryptographic hash, so it does not depend on the number
of ranks or DataLoader workers, on resume, or on anything read before the document.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from codellama_recipe.core.errors import InputError

_U64 = 1 << 64


@dataclasses.dataclass(frozen=True)
class FimPlan:
    spm: bool
    lo: int     # prefix = text[:lo]
    hi: int     # middle = text[lo:hi], suffix = text[hi:]


def fim_plan(seed: int, source: str, key, num_chars: int, rate: float, spm_rate: float) -> FimPlan | None:
    """None (keep the document as it is) or how to transform it; a pure function of its arguments."""
    digest = hashlib.blake2b(f"{int(seed)}|fim|{source}|{'/'.join(map(str, key))}".encode("utf-8"),
                             digest_size=32).digest()
    u_apply, u_spm, u_lo, u_hi = (int.from_bytes(digest[i:i + 8], "little") for i in range(0, 32, 8))
    if u_apply >= rate * _U64:
        return None
    # (u * n) >> 64 is uniform on {0..n-1} up to a bias below n / 2^64.
    a, b = (u_lo * (num_chars + 1)) >> 64, (u_hi * (num_chars + 1)) >> 64
    return FimPlan(spm=u_spm < spm_rate * _U64, lo=min(a, b), hi=max(a, b))


def check_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "has_infilling", False):
        raise InputError("data.fim.enabled", True, "the tokenizer has no infilling pieces (<PRE> <SUF> <MID> <EOT>); "
                                                    "use a tokenizer with them or set data.fim.enabled=false")


def fim_tokens(tokenizer, text: str, plan: FimPlan, *, bos: bool = True, eos: bool = True,
               max_tokens: int | None = None) -> list[int] | None:
    """The training tokens of `text` transformed by `plan`. With `max_tokens`, None as soon as the
    result is known to be longer (saves encoding the rest)."""
    prefix, middle, suffix = text[:plan.lo], text[plan.lo:plan.hi], text[plan.hi:]
    budget = float("inf") if max_tokens is None else max_tokens
    out = [tokenizer.bos_id] if bos else []
    if plan.spm:
        out += (tokenizer.prefix_id, tokenizer.suffix_id)
        parts = ((tokenizer.encode_no_space, suffix, tokenizer.middle_id), (tokenizer.encode, prefix + middle, tokenizer.eot_id))
    else:
        out.append(tokenizer.prefix_id)
        parts = ((tokenizer.encode, prefix, tokenizer.suffix_id), (tokenizer.encode_no_space, suffix, tokenizer.middle_id),
                 (tokenizer.encode_no_space, middle, tokenizer.eot_id))
    for encode, part, sentinel in parts:
        out += encode(part)
        out.append(sentinel)
        if len(out) > budget:
            return None
    if eos:
        out.append(tokenizer.eos_id)
    return None if len(out) > budget else out


def fim_prompt(tokenizer, prefix: str, suffix: str, spm: bool = False) -> list[int]:
    """The inference prompt of the reference generation code (the model then writes the middle and <EOT>):
        PSM: [BOS, PRE] + Enc(prefix) + [SUF] + EncNoSpace(suffix) + [MID]
        SPM: [BOS, PRE, SUF] + EncNoSpace(suffix) + [MID] + Enc(prefix)
    """
    if not tokenizer.has_infilling:
        raise ValueError(f"tokenizer {tokenizer.path!r} has no infilling pieces (<PRE> <SUF> <MID> <EOT>); "
                         "infilling needs a model trained with FIM and its tokenizer")
    if spm:
        return [tokenizer.bos_id, tokenizer.prefix_id, tokenizer.suffix_id] + tokenizer.encode_no_space(suffix) \
            + [tokenizer.middle_id] + tokenizer.encode(prefix)
    return [tokenizer.bos_id, tokenizer.prefix_id] + tokenizer.encode(prefix) + [tokenizer.suffix_id] \
        + tokenizer.encode_no_space(suffix) + [tokenizer.middle_id]


class FimBuilder:
    """FIM tokens derived from the document's plain encoding, so that a document costs one encode.

    Exactness rests on a property of the tokenizer that is checked when the builder is made: no
    piece contains "\\n" and "\\n" is one token. Then no token spans a newline, the text after a
    newline is encoded as EncNoSpace, and Enc(text) is the concatenation, line by line, of
    Enc(first line), <nl>, EncNoSpace(line 2), <nl>, ... So Enc(text[:c]) and EncNoSpace(text[a:b])
    are slices of the plain encoding plus fresh encodings of the (at most two) partial lines at the
    cuts. The result equals `fim_tokens` exactly (tests compare them on real tokenizers); when the
    property does not hold, or a document surprises it, `fim_tokens` is used.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.newline = self._newline_id(tokenizer)

    @staticmethod
    def _newline_id(tok):
        for i in range(tok.vocab_size):
            if "\n" in tok.piece(i):
                return None
        ids = tok.encode_no_space("\n")
        if len(ids) != 1:
            return None
        nl = ids[0]
        probe = "a b\n  c\n\nd\n"
        expected = tok.encode("a b") + [nl] + tok.encode_no_space("  c") + [nl, nl] + tok.encode_no_space("d") + [nl]
        return nl if tok.encode(probe) == expected else None

    def build(self, text: str, plain: np.ndarray, plan: FimPlan, *, bos: bool, eos: bool,
              max_tokens: int | None = None) -> np.ndarray | None:
        """Same result as fim_tokens(...) as an int32 array; `plain` = Enc(text) as an int32 array."""
        tok = self.tok
        nl_pos = None
        if self.newline is not None:
            nl_pos = np.flatnonzero(plain == self.newline)
            if len(nl_pos) != text.count("\n"):
                nl_pos = None
        if nl_pos is None:
            out = fim_tokens(tok, text, plan, bos=bos, eos=eos, max_tokens=max_tokens)
            return None if out is None else np.asarray(out, np.int32)
        lo, hi = plan.lo, plan.hi
        head = [tok.bos_id] if bos else []
        if plan.spm:
            parts = [head + [tok.prefix_id, tok.suffix_id], *self._no_space(text, plain, nl_pos, hi, len(text)),
                     [tok.middle_id], *self._with_space(text, plain, nl_pos, hi), [tok.eot_id]]
        else:
            parts = [head + [tok.prefix_id], *self._with_space(text, plain, nl_pos, lo), [tok.suffix_id],
                     *self._no_space(text, plain, nl_pos, hi, len(text)), [tok.middle_id],
                     *self._no_space(text, plain, nl_pos, lo, hi), [tok.eot_id]]
        if eos:
            parts.append([tok.eos_id])
        if max_tokens is not None and sum(len(p) for p in parts) > max_tokens:
            return None
        return np.concatenate([np.asarray(p, np.int32) for p in parts])

    def _with_space(self, text, plain, nl_pos, c):
        """Enc(text[:c])."""
        j = text.count("\n", 0, c)
        if j == 0:
            return [self.tok.encode(text[:c])]
        line_start = text.rfind("\n", 0, c) + 1
        return [plain[:nl_pos[j - 1] + 1], self.tok.encode_no_space(text[line_start:c])]

    def _no_space(self, text, plain, nl_pos, a, b):
        """EncNoSpace(text[a:b])."""
        ja = text.count("\n", 0, a)
        jb = ja + text.count("\n", a, b)
        if ja == jb:
            return [self.tok.encode_no_space(text[a:b])]
        end_a = text.find("\n", a)
        start_b = text.rfind("\n", 0, b) + 1
        # up to the end of the text, the last line is a whole line of the plain encoding (every suffix)
        tail = plain[nl_pos[jb - 1] + 1:] if b == len(text) else self.tok.encode_no_space(text[start_b:b])
        return [self.tok.encode_no_space(text[a:end_a]), plain[nl_pos[ja]:nl_pos[jb - 1] + 1], tail]
