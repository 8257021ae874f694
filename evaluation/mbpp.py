"""MBPP (Austin et al. 2021), 3-shot, with the prompt of the MBPP paper that Code Llama reports:

    You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:

    {test_list joined by newlines}
    [BEGIN]
    {code}
    [DONE]

Shots are tasks 2, 3 and 4 (as in the MBPP paper); the problem's own block ends after "[BEGIN]\n" and
generation stops at "[DONE]". The test split is tasks 11-510. Judged: the candidate
test_setup_code + "\n" + completion, then the tests "\n" + the test_list asserts. Rows use MBPP's own jsonl schema:
task_id, text, code, test_list, test_setup_code, challenge_test_list.
"""
from __future__ import annotations

from collections.abc import Sequence

from codellama_recipe.core.jsonl import read_jsonl
from codellama_recipe.evaluation.problems import Problem, evenly_spaced
from codellama_recipe.core.errors import InputError

MBPP_SHOT_IDS = (2, 3, 4)
MBPP_TEST_RANGE = (11, 510)
MBPP_STOP = ("[DONE]",)


def _clean(code: str) -> str:
    return code.replace("\r\n", "\n").strip()


def mbpp_block(row: dict, with_solution: bool) -> str:
    tests = "\n".join(row["test_list"])
    block = (f"You are an expert Python programmer, and here is your task: {row['text']} "
             f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")
    if with_solution:
        block += f"{_clean(row['code'])}\n[DONE]\n"
    return block


def mbpp_prompt(row: dict, shots: Sequence[dict]) -> str:
    return "".join(mbpp_block(s, True) for s in shots) + mbpp_block(row, False)


def mbpp_problem(row: dict, shots: Sequence[dict]) -> Problem:
    setup = (row.get("test_setup_code") or "").replace("\r\n", "\n")
    tests = "\n" + "\n".join(row["test_list"]) + "\n"
    return Problem(task_id=str(row["task_id"]), prompt=mbpp_prompt(row, shots), head=setup + "\n",
                   tail="", tests=tests, reference=_clean(row["code"]) + "\n", stop=MBPP_STOP)


def load_mbpp(path, limit: int | None = None, shot_ids: Sequence[int] = MBPP_SHOT_IDS,
              task_range: Sequence[int] | None = MBPP_TEST_RANGE) -> list[Problem]:
    if not path:
        raise FileNotFoundError("MBPP: set mbpp.path to mbpp.jsonl (google-research/mbpp, one task per line)")
    rows = read_jsonl(path)
    by_id = {int(r["task_id"]): r for r in rows}
    missing = [i for i in shot_ids if i not in by_id]
    if missing:
        raise InputError("mbpp.shot_ids", list(shot_ids), f"tasks {missing} are not in {path}")
    shots = [by_id[i] for i in shot_ids]
    if task_range is not None:
        lo, hi = task_range
        chosen = [r for r in rows if lo <= int(r["task_id"]) <= hi]
    else:
        chosen = [r for r in rows if int(r["task_id"]) not in shot_ids]
    if not chosen:
        raise InputError("mbpp.task_range", list(task_range or []), f"no task of {path} in that range")
    return [mbpp_problem(r, shots) for r in evenly_spaced(chosen, limit)]
