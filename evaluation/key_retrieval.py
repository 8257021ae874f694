"""Key retrieval in long Python context (Code Llama paper §3.3 / App. G), built in-house.

An example of `length` tokens: Python source (files of the corpus or the user's, concatenated in a
seeded random order) in which, at relative position p, this function is inserted

    def my_function() -> int:
        \"\"\"Note that this function is used at the end
        \"\"\"
        return 42

(a random two-digit number), and the prompt ends with `assert my_function() == `. Greedy generation;
correct when the first integer of the completion equals the number. Accuracy per (length, position).
The position is measured in characters of the context and snapped to the nearest line start
(0 = first line, 1 = right before the assert).
"""
from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence

KEY_FUNCTION = 'def my_function() -> int:\n    """Note that this function is used at the end\n    """\n    return {value}\n'
QUESTION = "assert my_function() == "
MARGIN_TOKENS = 8   # tokenisation at the joins can add a few tokens


@dataclasses.dataclass
class RetrievalExample:
    prompt: str
    expected: int
    length: int                  # requested length in tokens (BOS included)
    position: float              # requested relative position
    key_offset: int              # character offset of the key function in the prompt
    context_chars: int           # characters of source text around the key (without key and question)


def _haystack(texts: Sequence[str], rng: random.Random, min_chars: int) -> str:
    order = list(range(len(texts)))
    rng.shuffle(order)
    parts, size = [], 0
    while size < min_chars:
        for i in order:
            parts.append(texts[i].rstrip("\n") + "\n\n")
            size += len(parts[-1])
            if size >= min_chars:
                break
    start = rng.randrange(0, max(1, size - min_chars + 1))
    joined = "".join(parts)
    # Start at a line boundary: the snippet should read as source from its first line.
    line_start = joined.find("\n", start) + 1 if start else 0
    return joined[line_start:]


def build_example(tokenizer, texts: Sequence[str], length: int, position: float,
                  rng: random.Random) -> RetrievalExample:
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"key position must be in [0, 1], got {position}")
    value = rng.randint(10, 99)
    key = KEY_FUNCTION.format(value=value)
    fixed = 1 + len(tokenizer.encode(key)) + len(tokenizer.encode(QUESTION)) + MARGIN_TOKENS
    budget = length - fixed
    if budget < 16:
        raise ValueError(f"length {length} is too short for a key-retrieval prompt (needs > {fixed + 16} tokens)")
    source = _haystack(texts, rng, min_chars=budget * 8)   # generously more characters than tokens
    ids = tokenizer.encode(source)
    if len(ids) < budget:
        raise ValueError(f"not enough source text for {length} tokens ({len(ids)} tokens available)")
    context = tokenizer.decode(ids[:budget])
    context = context[:context.rfind("\n") + 1] or context   # end on a line boundary
    line_starts = [0] + [i + 1 for i, ch in enumerate(context) if ch == "\n" and i + 1 < len(context)]
    line_starts.append(len(context))
    target = position * len(context)
    offset = min(line_starts, key=lambda s: abs(s - target))
    prompt = context[:offset] + key + "\n" + context[offset:] + QUESTION
    return RetrievalExample(prompt=prompt, expected=value, length=length, position=position,
                            key_offset=offset, context_chars=len(context))


def build_examples(tokenizer, texts: Sequence[str], lengths: Sequence[int], positions: Sequence[float],
                   n_examples: int, seed: int = 0) -> list[RetrievalExample]:
    if not texts:
        raise ValueError("key retrieval needs at least one source text")
    examples = []
    for length in lengths:
        for position in positions:
            # One stream per cell: changing the grid does not change the examples of a cell.
            rng = random.Random(f"{seed}/{length}/{position}")
            examples += [build_example(tokenizer, texts, length, position, rng) for _ in range(n_examples)]
    return examples


def parse_answer(completion: str) -> int | None:
    match = re.match(r"\s*(\d+)", completion)
    return int(match.group(1)) if match else None


def accuracy_grid(examples: Sequence[RetrievalExample], completions: Sequence[str],
                  lengths: Sequence[int], positions: Sequence[float]) -> dict:
    """{"lengths", "positions", "accuracy": [[acc per position] per length], "overall"}."""
    hits: dict[tuple, list[bool]] = {}
    for ex, completion in zip(examples, completions):
        hits.setdefault((ex.length, ex.position), []).append(parse_answer(completion) == ex.expected)
    grid = [[sum(hits.get((L, p), [])) / max(1, len(hits.get((L, p), []))) for p in positions] for L in lengths]
    overall = sum(sum(h) for h in hits.values()) / max(1, sum(len(h) for h in hits.values()))
    return {"lengths": list(lengths), "positions": list(positions), "accuracy": grid, "overall": overall}
