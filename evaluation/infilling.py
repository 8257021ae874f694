"""HumanEval infilling (Bavarian et al. 2022): single-line, multi-line, random span (and its light
version). Rows: task_id, entry_point, prompt (the prefix), suffix, canonical_solution (the middle), test.

Judged: the candidate prefix + middle + suffix, then the tests "\n" + test + "\n" + f"check({entry_point})".
No package ships these files: they are read from `infilling.dir` (file names below) or explicit paths.
The model sees the reference inference prompt in PSM or SPM (data.fim.fim_prompt).
"""
from __future__ import annotations

from pathlib import Path

from codellama_recipe.core.jsonl import read_jsonl
from codellama_recipe.evaluation.problems import Problem, evenly_spaced


INFILLING_FILES = {
    "single": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random_span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random_span_light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
MODES = ("psm", "spm")


def infilling_path(kind: str, directory=None, path=None) -> Path:
    if kind not in INFILLING_FILES:
        raise ValueError(f"infilling kind {kind!r}: one of {sorted(INFILLING_FILES)}")
    if path:
        return Path(path)
    if not directory:
        raise FileNotFoundError(f"infilling_{kind}: set infilling.dir to the folder holding "
                                f"{INFILLING_FILES[kind]} (from openai/human-eval-infilling), "
                                f"or infilling.paths.{kind}")
    return Path(directory) / INFILLING_FILES[kind]


def infilling_problem(row: dict) -> Problem:
    tests = "\n" + row["test"] + "\n" + f"check({row['entry_point']})\n"
    return Problem(task_id=row["task_id"], prompt=row["prompt"], head=row["prompt"], tail=row["suffix"], tests=tests,
                   reference=row["canonical_solution"], suffix=row["suffix"])


def load_infilling(kind: str, directory=None, path=None, limit: int | None = None) -> list[Problem]:
    rows = read_jsonl(infilling_path(kind, directory, path))
    return [infilling_problem(r) for r in evenly_spaced(rows, limit)]
