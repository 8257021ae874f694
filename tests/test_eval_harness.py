"""Benchmarks end to end through the sandbox: the benchmarks' own solutions score 100%, empty ones 0%."""
import pytest
from conftest import infilling_dir

from codellama_recipe.evaluation.humaneval import default_humaneval_path, load_humaneval
from codellama_recipe.evaluation.infilling import INFILLING_FILES, load_infilling
from codellama_recipe.evaluation.mbpp import load_mbpp, mbpp_prompt
from codellama_recipe.core.jsonl import read_jsonl
from codellama_recipe.evaluation.problems import score_completions
from codellama_recipe.evaluation.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.timeout(300)

MBPP_FIXTURE = "tests/fixtures/mbpp_sample.jsonl"


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxConfig(timeout_s=20, workers=2))


@pytest.fixture(scope="module")
def benchmarks_dir():
    d = infilling_dir()
    if d is None:
        pytest.skip("HumanEval-infilling files not found: set CODELLAMA_INFILLING_DIR to their folder")
    return d


def test_humaneval_found_in_installed_package():
    assert default_humaneval_path().name == "HumanEval.jsonl.gz"
    assert len(load_humaneval()) == 164


def test_humaneval_all_canonical_solutions_pass(sandbox):
    problems = load_humaneval()
    scored = score_completions(problems, {p.task_id: [p.reference] for p in problems}, sandbox)
    assert scored["status_counts"]["passed"] == 164, [s for s in scored["samples"] if s["status"] != "passed"][:2]
    assert scored["metrics"] == {"pass@1": 1.0}


def test_humaneval_empty_bodies_fail_and_mixed_samples_give_pass_at_k(sandbox):
    problems = load_humaneval(limit=20)
    assert len({p.task_id for p in problems}) == 20
    empty = score_completions(problems, {p.task_id: [""] for p in problems}, sandbox)
    assert empty["metrics"] == {"pass@1": 0.0}
    assert empty["status_counts"]["failed"] == 20
    # 3 samples per task, one correct: pass@1 = 1/3, pass@2 = 1 - C(2,2)/C(3,2) = 2/3, pass@3 = 1.
    few = problems[:4]
    mixed = score_completions(few, {p.task_id: ["", p.reference, "    return None\n"] for p in few}, sandbox,
                              ks=[1, 2, 3])
    assert mixed["metrics"] == pytest.approx({"pass@1": 1 / 3, "pass@2": 2 / 3, "pass@3": 1.0})


@pytest.mark.parametrize("kind", sorted(INFILLING_FILES))
def test_infilling_true_middles_pass_and_empty_middles_fail(kind, sandbox, benchmarks_dir):
    problems = load_infilling(kind, benchmarks_dir, limit=10)
    assert all(p.suffix is not None for p in problems)
    true = score_completions(problems, {p.task_id: [p.reference] for p in problems}, sandbox)
    assert true["metrics"] == {"pass@1": 1.0}, [s for s in true["samples"] if s["status"] != "passed"][:1]
    empty = score_completions(problems, {p.task_id: [""] for p in problems}, sandbox)
    # A few single lines are redundant for the tests (e.g. HumanEval/124 L1: `date = date.strip()`),
    # so an empty middle can pass there; nowhere else in these subsets.
    assert empty["metrics"]["pass@1"] <= (0.1 if kind == "single" else 0.0)


def test_infilling_program_is_prefix_middle_suffix_then_test(benchmarks_dir):
    row = read_jsonl(benchmarks_dir / INFILLING_FILES["multi"])[0]
    problem = load_infilling("multi", benchmarks_dir, limit=1)[0]
    assert problem.program("MID") == (row["prompt"] + "MID" + row["suffix"] + "\n" + row["test"] + "\n"
                                      + f"check({row['entry_point']})\n")


def test_mbpp_loader_prompt_and_scoring(sandbox):
    rows = {r["task_id"]: r for r in read_jsonl(MBPP_FIXTURE)}
    problems = load_mbpp(MBPP_FIXTURE, task_range=(11, 510))
    assert [p.task_id for p in problems] == ["11", "12", "13", "14", "15"]
    # The prompt by hand: three solved shots (tasks 2, 3, 4), then the task up to [BEGIN].
    def block(r, solved):
        text = ("You are an expert Python programmer, and here is your task: " + r["text"]
                + " Your code should pass these tests:\n\n" + "\n".join(r["test_list"]) + "\n[BEGIN]\n")
        return text + (r["code"].replace("\r\n", "\n").strip() + "\n[DONE]\n" if solved else "")
    expected = block(rows[2], True) + block(rows[3], True) + block(rows[4], True) + block(rows[11], False)
    assert problems[0].prompt == expected == mbpp_prompt(rows[11], [rows[2], rows[3], rows[4]])
    assert problems[0].stop == ("[DONE]",)
    # Task 13 needs its test_setup_code (an import) to pass.
    solved = score_completions(problems, {p.task_id: [p.reference] for p in problems}, sandbox)
    assert solved["metrics"] == {"pass@1": 1.0}
    empty = score_completions(problems, {p.task_id: ["def unrelated():\n    pass\n"] for p in problems}, sandbox)
    assert empty["metrics"] == {"pass@1": 0.0}
    assert load_mbpp(MBPP_FIXTURE, limit=2, task_range=None)[0].task_id == "11"


def test_mbpp_missing_shot_is_a_clear_error(tmp_path):
    rows = [r for r in read_jsonl(MBPP_FIXTURE) if r["task_id"] != 3]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("\n".join(__import__("json").dumps(r) for r in rows))
    with pytest.raises(ValueError, match="mbpp.shot_ids"):
        load_mbpp(path)
