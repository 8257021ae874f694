"""Code Llama infilling (fill-in-the-middle) as in RECIPE.md §4.

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
from typing import Mapping

from train.errors import ConfigError

_U64 = 1 << 64


@dataclasses.dataclass(frozen=True)
class FimConfig:
    enabled: bool = False
    rate: float = 0.9          # share of eligible documents transformed (paper: 0.9)
    spm_rate: float = 0.5      # share of transformed documents in SPM (paper: half)
    bos: bool = True           # OPEN: BOS before <PRE>
    eos: bool = True           # OPEN: EOS after <EOT>
    max_deferred: int = 16     # packer: FIM documents waiting for a row with room (see data/packing.py)
    in_val: bool = False       # validation streams apply FIM too (default: plain next-token loss)

    @classmethod
    def from_cfg(cls, cfg: Mapping | None) -> "FimConfig":
        cfg = dict(cfg or {})
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - allowed
        if unknown:
            raise ConfigError("data.fim", sorted(unknown), f"unknown key(s); allowed: {sorted(allowed)}")
        out = cls(**cfg)
        for key in ("rate", "spm_rate"):
            v = getattr(out, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"data.fim.{key}", v, "expected a probability in [0, 1]")
        if not isinstance(out.max_deferred, int) or out.max_deferred < 1:
            raise ConfigError("data.fim.max_deferred", out.max_deferred, "expected an integer >= 1")
        return out


@dataclasses.dataclass(frozen=True)
class FimPlan:
    spm: bool
    lo: int     # prefix = text[:lo]
    hi: int     # middle = text[lo:hi], suffix = text[hi:]


def fim_plan(seed: int, source: str, key, num_chars: int, rate: float, spm_rate: float) -> FimPlan | None:
    """None (keep the document as it is) or how to transform it; a pure function of its arguments."""
    digest = hashlib.blake2b(repr((int(seed), "fim", source, tuple(key))).encode("utf-8"), digest_size=32).digest()
    u_apply, u_spm, u_lo, u_hi = (int.from_bytes(digest[i:i + 8], "little") for i in range(0, 32, 8))
    if u_apply >= rate * _U64:
        return None
    # (u * n) >> 64 is uniform on {0..n-1} up to a bias below n / 2^64.
    a, b = (u_lo * (num_chars + 1)) >> 64, (u_hi * (num_chars + 1)) >> 64
    return FimPlan(spm=u_spm < spm_rate * _U64, lo=min(a, b), hi=max(a, b))


def check_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "has_infilling", False):
        raise ConfigError("data.fim.enabled", True, "the tokenizer has no infilling pieces (<PRE> <SUF> <MID> <EOT>); "
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
    """Inference prompt of the reference generation code (generation stops at <EOT>)."""
    if spm:
        return [tokenizer.bos_id, tokenizer.prefix_id, tokenizer.suffix_id] + tokenizer.encode_no_space(suffix) \
            + [tokenizer.middle_id] + tokenizer.encode(prefix)
    return [tokenizer.bos_id, tokenizer.prefix_id] + tokenizer.encode(prefix) + [tokenizer.suffix_id] \
        + tokenizer.encode_no_space(suffix) + [tokenizer.middle_id]
