"""codellama-selfinstruct against an OpenAI-compatible server started on 127.0.0.1 that answers from a fixture of
realistic model outputs (good, wrong, malformed, missing tags, duplicate, contaminated, hostile code): every
count is checked, a killed run resumes to exactly the rows of an uninterrupted one, an unreachable endpoint is
one line and exit 2."""
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from codellama_recipe.core.config import compose, typed
from codellama_recipe.core.schema import SelfInstructConfig
from codellama_recipe.evaluation.humaneval import load_humaneval
from codellama_recipe.evaluation.sandbox import Sandbox, SandboxConfig
from codellama_recipe.stages.selfinstruct.decontamination import Decontaminator, benchmark_prompts
from codellama_recipe.stages.selfinstruct.generators import Endpoint
from codellama_recipe.stages.selfinstruct.parsing import parse_questions, parse_solution, parse_tests
from codellama_recipe.stages.selfinstruct.steps import SelfInstruct, item_seed

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.timeout(300)

HUMANEVAL_0 = load_humaneval()[0].prompt.split('"""')[1].strip()   # a benchmark question, reworded by nobody

QUESTIONS = [   # what the question writer answers, per batch
    "Here are the questions:\n1. Write a function that returns the sum of a list of integers.\n"
    "2. Write a function that reverses a string.\n3. Write a function that checks whether a number is prime.\n"
    f"4. {HUMANEVAL_0}\n5. write a function that REVERSES a string\n",
    "1. Write a function that returns the sum of a list of integers.\n2) Write a function that counts the vowels\n"
    "   in a string.\n3. Write a function that returns the factorial of n.\n"
    "4. Write a function that returns the largest element of a list.\n",
]
TESTS = {   # the test writer, per question (keyed by a word of it)
    "sum": "[TESTS]\n# Test case 1:\nassert sum_list([1, 2, 3]) == 6\n# Test case 2:\nassert sum_list([]) == 0\n[/TESTS]",
    "reverses": "[TESTS]\n# Test case 1:\nassert reverse('ab') == 'ba'\n# Test case 2:\nassert reverse('') == ''\n[/TESTS]",
    "prime": "assert is_prime(7)\nassert not is_prime(8)",                                   # missing tags
    "vowels": "[TESTS]\n# Test case 1:\nassert count_vowels('banana') == 3\n[/TESTS]",
    "factorial": "[TESTS]\n# Test case 1:\nassert factorial(3) == 6\n",                      # never closed
    "largest": "[TESTS]\n# Test case 1:\nassert largest([1, 5, 2]) == 5\n# Test case 2:\nassert largest([-1]) == -1\n[/TESTS]",
}
SOLUTIONS = {   # the solver: variants, the one answered is chosen by the request's seed
    "sum": ["[PYTHON]\ndef sum_list(xs):\n    return sum(xs)\n[/PYTHON]",
            "[PYTHON]\ndef sum_list(xs):\n    return 0\n[/PYTHON]"],                          # wrong
    "reverses": ["[PYTHON]\ndef reverse(s):\n    return s[::-1]\n[/PYTHON]",
                 "Here is the code: def reverse(s): return s[::-1]"],                       # no tags
    "vowels": ["[PYTHON]\ndef count_vowels(s):\n    return sum(c in 'aeiou' for c in s)\n[/PYTHON]",
               "[PYTHON]\ndef count_vowels(s)\n    return 3\n[/PYTHON]",                      # syntax error
               "[PYTHON]\nimport os\ndef count_vowels(s):\n    os._exit(0)\n[/PYTHON]"],     # hostile: exits 0
    "largest": ["[PYTHON]\ndef largest(xs):\n    while True:\n        pass\n[/PYTHON]",       # times out
                "[PYTHON]\ndef largest(xs):\n    return min(xs)\n[/PYTHON]"],                 # wrong
}
N_SOLUTIONS = 3


def _topic(text):
    return next(t for t in ("sum", "reverses", "prime", "vowels", "factorial", "largest") if t in text.lower())


class FixtureServer:
    def __init__(self):
        self.requests = []
        fixture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fixture.requests.append(body)
                time.sleep(fixture.delay_s)
                prompt = body["prompt"]
                if "programming interview questions" in prompt:
                    text = QUESTIONS[fixture.question_batch[body["seed"]]]
                elif "[PYTHON] and [/PYTHON]" in prompt:
                    question = prompt.rsplit("Problem: ", 1)[1]
                    variants = SOLUTIONS[_topic(question.split("\n")[0])]
                    text = variants[body["seed"] % len(variants)]
                else:
                    text = TESTS[_topic(prompt.rsplit("Problem: ", 1)[1])]
                answer = json.dumps({"choices": [{"text": text}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.delay_s = 0.0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.question_batch = {item_seed(0, "questions", b): b for b in range(len(QUESTIONS))}
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server():
    s = FixtureServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def sandbox():
    # the CPU limit, not the wall clock, ends the infinite loop whatever the load: verdict messages are compared
    return Sandbox(SandboxConfig(timeout_s=20, cpu_s=2, workers=2))


def config(out_dir, url):
    cfg = compose("selfinstruct", [f"out_dir={out_dir}", f"generator.url={url}", f"questions.batches={len(QUESTIONS)}",
                                   f"solutions.n={N_SOLUTIONS}", "chunk=2"])
    return typed(SelfInstructConfig, cfg, "selfinstruct")


def expected_counts():
    """The fixture's counts, worked out here from its own rules."""
    kept_questions = ["sum", "reverses", "prime", "vowels", "factorial", "largest"]   # in order; ids q000000..
    counts = {"questions_generated": 9, "rejected/duplicate": 2, "rejected/contaminated": 1, "questions_kept": 6,
              "rejected/no_tests_parsed": 2, "questions_with_tests": 4, "solutions_generated": 4 * N_SOLUTIONS,
              "rejected/unparseable_solution": 0, "rejected/failed": 0, "rejected/timed_out": 0,
              "rejected/error": 0, "solutions_passed": 0, "rejected/all_failed": 0, "kept": 0}
    kept_rows = []
    for index, topic in enumerate(kept_questions):
        if topic not in SOLUTIONS:
            continue
        passing = []
        for k in range(N_SOLUTIONS):
            variant = item_seed(0, "solution", f"q{index:06d}", k) % len(SOLUTIONS[topic])
            outcome = {("sum", 0): "passed", ("sum", 1): "failed", ("reverses", 0): "passed",
                       ("reverses", 1): "unparseable", ("vowels", 0): "passed", ("vowels", 1): "unparseable",
                       ("vowels", 2): "failed", ("largest", 0): "timed_out", ("largest", 1): "failed"}[(topic, variant)]
            key = {"passed": "solutions_passed", "failed": "rejected/failed", "timed_out": "rejected/timed_out",
                   "unparseable": "rejected/unparseable_solution"}[outcome]
            counts[key] += 1
            if outcome == "passed":
                passing.append(k)
        if passing:
            counts["kept"] += 1
            kept_rows.append(topic)
        else:
            counts["rejected/all_failed"] += 1
    return counts, kept_rows


def test_parsers_read_the_formats_and_refuse_the_rest():
    assert parse_questions(QUESTIONS[1])[1] == "Write a function that counts the vowels in a string."
    assert parse_tests(TESTS["sum"]) == ["assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0"]
    assert parse_tests(TESTS["prime"]) is None and parse_tests(TESTS["factorial"]) is None
    assert parse_tests("[TESTS]\n# Test case 1:\nassert f(1) ==\n[/TESTS]") is None      # does not compile
    assert parse_solution(SOLUTIONS["reverses"][0]) == "def reverse(s):\n    return s[::-1]\n"
    assert parse_solution(SOLUTIONS["reverses"][1]) is None and parse_solution(SOLUTIONS["vowels"][1]) is None


def test_decontamination_catches_a_benchmark_question_and_keeps_others():
    d = Decontaminator(benchmark_prompts(), n=6, threshold=0.5)
    assert d.contaminated(HUMANEVAL_0)
    assert not d.contaminated("Write a function that returns the sum of a list of integers.")


def test_every_count_against_the_fixture_server(server, sandbox, tmp_path):
    cfg = config(tmp_path / "si", server.url)
    decontaminator = Decontaminator(benchmark_prompts(), 6, 0.5)
    stats = SelfInstruct(cfg, Endpoint(server.url, model="fixture"), sandbox.judge_many, decontaminator).run()
    counts, kept_topics = expected_counts()
    assert {k: stats[k] for k in counts} == counts
    rows = [json.loads(line) for line in (tmp_path / "si" / "dataset.jsonl").read_text().splitlines()]
    assert [_topic(r["messages"][0]["content"]) for r in rows] == kept_topics
    assert all(r["messages"][1]["content"].startswith("[PYTHON]\n") for r in rows)
    triples = [json.loads(line) for line in (tmp_path / "si" / "triples.jsonl").read_text().splitlines()]
    assert all(t["generator"] == f"fixture @ {server.url}" and t["prompt_version"] and t["tests"] for t in triples)
    assert json.loads((tmp_path / "si" / "stats.json").read_text()) == stats
    # the instruct stage reads it as a chat source (corpus.instruct.paths=[…/dataset.jsonl]): answers are trained
    from helpers_data import ByteTokenizer
    from codellama_recipe.data.pipeline import build_train_loader

    data = {"seq_len": 64, "seed": 0, "num_workers": 0, "max_epochs": 1, "fim": {"enabled": False},
            "sources": {"instruct": {"weight": 1, "format": "chat", "paths": [str(tmp_path / "si" / "dataset.jsonl")]}}}
    loader = build_train_loader(data, ByteTokenizer(), 0, 1, 2)
    trained = sum(int(b["loss_mask"].sum()) for b in loader)
    assert trained > 0 and not any(v for k, v in loader.metrics().items() if k.startswith("data/skipped/"))


class KilledAfter:
    """A generator that dies (as a killed process would) after `calls` requests went through."""

    def __init__(self, inner, calls):
        self.inner, self.calls, self.name = inner, calls, inner.name

    def complete(self, requests, sampling):
        if self.calls <= 0:
            raise KeyboardInterrupt("killed")
        self.calls -= 1
        return self.inner.complete(requests, sampling)


@pytest.mark.parametrize("calls", [1, 4, 7])
def test_a_killed_run_resumes_to_exactly_the_rows_of_an_uninterrupted_one(server, sandbox, tmp_path, calls):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    endpoint, decontaminator = Endpoint(server.url, model="fixture"), Decontaminator(benchmark_prompts(), 6, 0.5)
    SelfInstruct(config(whole, server.url), endpoint, sandbox.judge_many, decontaminator).run()
    with pytest.raises(KeyboardInterrupt):
        SelfInstruct(config(cut, server.url), KilledAfter(endpoint, calls), sandbox.judge_many, decontaminator).run()
    journals = sorted(p.name for p in cut.glob("*.jsonl"))
    with open(cut / journals[-1], "ab") as f:
        f.write(b'{"id": "q0000')                        # the kill cut a line short
    asked = len(server.requests)
    SelfInstruct(config(cut, server.url), endpoint, sandbox.judge_many, decontaminator).run()
    for name in ("dataset.jsonl", "triples.jsonl", "stats.json"):
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name
    for name in ("questions.jsonl", "tests.jsonl", "solutions.jsonl", "verdicts.jsonl"):
        lines = (cut / name).read_text().splitlines()
        assert sorted(lines) == sorted((whole / name).read_text().splitlines()), name     # nothing redone or lost
    assert len(server.requests) - asked < 2 * N_SOLUTIONS * 6 + 2 + 6    # only what the cut run had not done


def test_an_unreachable_endpoint_is_one_line_and_exit_2(tmp_path, capsys):
    import socket

    from codellama_recipe.stages.selfinstruct.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # closed again: nothing listens there
    code = main([f"out_dir={tmp_path / 'si'}", f"generator.url=http://127.0.0.1:{port}", "generator.retries=1",
                 "decontamination.enabled=false", "questions.batches=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no answer after 2 tries" in err[0] and "Connection refused" in err[0], err


def test_questions_from_a_file_skip_the_question_writer(server, sandbox, tmp_path):
    from codellama_recipe.core.errors import InputFileError

    questions = tmp_path / "q.txt"
    questions.write_text('Write a function that returns the sum of a list of integers.\n\n'
                         '{"question": "Write a function that reverses a string."}\n')
    cfg = config(tmp_path / "si", server.url)
    cfg.questions.path = str(questions)
    asked = len(server.requests)
    stats = SelfInstruct(cfg, Endpoint(server.url, model="fixture"), sandbox.judge_many, None).run()
    assert stats["questions_generated"] == 2 and stats["questions_with_tests"] == 2
    assert not any("programming interview questions" in r["prompt"] for r in server.requests[asked:])
    questions.write_text('{"not a question": 1}\n')
    with pytest.raises(InputFileError, match=r"q\.txt:1"):
        SelfInstruct(cfg, Endpoint(server.url, model="fixture"), sandbox.judge_many, None).run()


def test_the_command_killed_with_sigkill_resumes_to_the_same_rows(server, tmp_path):
    args = [f"generator.url={server.url}", f"questions.batches={len(QUESTIONS)}", f"solutions.n={N_SOLUTIONS}",
            "chunk=1", "sandbox.timeout_s=2", "sandbox.cpu_s=2", "sandbox.workers=2"]

    def command(out):
        return [sys.executable, "-m", "codellama_recipe.stages.selfinstruct.cli", f"out_dir={out}", *args]
    done = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    server.delay_s = 0.3
    proc = subprocess.Popen(command(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        solutions = tmp_path / "cut" / "solutions.jsonl"
        if solutions.exists() and len(solutions.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    proc.kill()                                   # SIGKILL mid-way through the solutions
    proc.wait()
    server.delay_s = 0.0
    done = subprocess.run(command(tmp_path / "cut"), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("dataset.jsonl", "triples.jsonl", "stats.json"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert "rows kept" in done.stdout


def test_a_question_that_mentions_a_placeholder_reaches_the_solver_unaltered(server, sandbox, tmp_path):
    question = "Write a function that returns the sum of a list; its docstring says {test} and {question} literally."
    questions = tmp_path / "q.txt"
    questions.write_text(question + "\n")
    cfg = config(tmp_path / "si", server.url)
    cfg.questions.path = str(questions)
    asked = len(server.requests)
    SelfInstruct(cfg, Endpoint(server.url, model="fixture"), sandbox.judge_many, None).run()
    solver = [r["prompt"] for r in server.requests[asked:] if "[PYTHON] and [/PYTHON]" in r["prompt"]]
    assert solver and all(question in p for p in solver)
    assert all(TESTS["sum"].split("\n")[2] in p for p in solver)     # the test itself went in too
