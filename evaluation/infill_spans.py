"""Held-out infilling examples cut from source files along whole lines.

Middles start at the beginning of a line after the first one: the prefix then ends with "\\n", so the
left-to-right reading Enc(prefix) + EncNoSpace(middle) is exactly how the file itself is encoded (no token
spans a newline), and an AR model reading the prefix is not penalised by an unusual tokenisation.
"""
from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class Span:
    prefix: str
    middle: str
    suffix: str


def line_spans(text: str, n: int, max_lines: int, rng: random.Random) -> list[Span]:
    """n middles of 1..max_lines whole lines (their newlines included), each starting after line 0."""
    lines = text.splitlines(keepends=True)
    if len(lines) < 2:
        return []
    spans = []
    for _ in range(n):
        start = rng.randrange(1, len(lines))
        count = rng.randint(1, min(max_lines, len(lines) - start))
        spans.append(Span("".join(lines[:start]), "".join(lines[start:start + count]),
                          "".join(lines[start + count:])))
    return spans


def removed_lines(text: str, n: int, rng: random.Random) -> list[Span]:
    """Up to n distinct non-blank lines (after line 0) removed one at a time: the middle is the line without
    its newline, which stays at the start of the suffix (a single-line infilling problem)."""
    lines = text.splitlines(keepends=True)
    candidates = [i for i in range(1, len(lines)) if lines[i].strip()]
    chosen = sorted(rng.sample(candidates, min(n, len(candidates))))
    spans = []
    for i in chosen:
        content = lines[i].rstrip("\n")
        spans.append(Span("".join(lines[:i]), content, lines[i][len(content):] + "".join(lines[i + 1:])))
    return spans


def exact_match(completion: str, line: str) -> bool:
    """The completion's first line equals the removed line (trailing whitespace ignored)."""
    return completion.split("\n", 1)[0].rstrip() == line.rstrip()
