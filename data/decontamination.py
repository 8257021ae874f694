"""Benchmark n-grams shared by the two decontaminations: codellama-selfinstruct (a question's share of one
benchmark prompt's n-grams) and codellama-prepare (a training document that contains any n-gram of a
benchmark prompt or solution is removed, the rule of the StarCoder / The Stack decontamination)."""
from __future__ import annotations

import re
from collections.abc import Iterable

WORD = re.compile(r"[a-z0-9_]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


class NgramIndex:
    """All word n-grams of the benchmark texts, each mapped to the first benchmark item that has it."""

    def __init__(self, items: Iterable[tuple[str, str]], n: int):
        self.n = n
        self.index: dict[tuple[str, ...], str] = {}
        for name, text in items:
            for g in ngrams(text, n):
                self.index.setdefault(g, name)

    def match(self, text: str) -> str | None:
        """The benchmark item one of whose n-grams the text contains, else None."""
        w = words(text)
        for i in range(len(w) - self.n + 1):
            hit = self.index.get(tuple(w[i:i + self.n]))
            if hit is not None:
                return hit
        return None


def benchmark_items(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(item id, prompt + solution) from HumanEval-style (prompt, canonical_solution, task_id) or MBPP-style
    (text, code, task_id) jsonl files."""
    import gzip
    import json

    items = []
    for path in paths:
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                row = json.loads(line)
                text = "\n".join(str(row.get(k, "")) for k in ("prompt", "canonical_solution", "text", "code")
                                 if row.get(k))
                items.append((f"{path}:{row.get('task_id', i)}", text))
    return items
