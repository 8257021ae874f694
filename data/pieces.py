"""Cutting a long source file into pieces of at most `max_chars` characters along its top-level structure.

Used where whole files are longer than a small model's context: a piece is what the miniature trains and
evaluates infilling on, the way the paper's 4,096-token contexts hold whole files. Cuts fall on line boundaries,
at the last top-level boundary that leaves the piece at least a third of `max_chars` long (a blank line followed
by a line that starts in column 0, such as a `def`, a `class` or a C function), else at the last blank line,
else at the last line that fits. A single line longer than `max_chars` is a piece of its own (the data pipeline
skips it as too long).
"""
from __future__ import annotations

CLOSERS = (" ", "\t", "\n", "\r", "}", ")", "]")


def _cut(lines: list[str], max_chars: int) -> int:
    offsets, total = [], 0
    for line in lines:
        offsets.append(total)
        total += len(line)
    long_enough = [i for i in range(1, len(lines)) if offsets[i] >= max_chars / 3 and not lines[i - 1].strip()]
    top_level = [i for i in long_enough if lines[i].strip() and not lines[i].startswith(CLOSERS)]
    if top_level:
        return top_level[-1]
    return long_enough[-1] if long_enough else len(lines)


def split_into_pieces(text: str, max_chars: int) -> list[str]:
    """The text itself when it fits, else consecutive pieces whose concatenation is the text minus blank-only
    pieces."""
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} must be >= 1")
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if len(line) > max_chars:
            if current:
                pieces.append("".join(current))
            pieces.append(line)
            current, size = [], 0
            continue
        if size + len(line) > max_chars:
            k = _cut(current, max_chars)
            pieces.append("".join(current[:k]))
            current = current[k:]
            size = sum(map(len, current))
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current))
    return [p for p in pieces if p.strip()]
