"""The self-instruct steps of the paper (§2.5, App. H), each resumable from its own journal in `out_dir`:

    1. questions   `batches` prompts to the question writer -> questions.jsonl (per batch: the parsed list)
    2. filter      normalised exact duplicates and questions too close to HumanEval/MBPP prompts are dropped
    3. tests       unit tests per question, [TESTS] with `# Test case n:` comments -> tests.jsonl
    4. solutions   `n_solutions` per question in [PYTHON], the solver seeing only the first test -> solutions.jsonl
    5. execution   every solution against all its question's tests in the sandbox -> verdicts.jsonl
    6. selection   the first passing solution per question -> dataset.jsonl (messages rows, what the instruct
                   stage reads), triples.jsonl (question, tests, solution, provenance), stats.json

Every random choice is seeded by the item (batch, question id, solution index), never by the batch it is
generated in, so a killed and resumed run writes exactly the rows of an uninterrupted one.
"""
from __future__ import annotations

import collections
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from codellama_recipe.core.atomic import write_json_atomic, write_text_atomic
from codellama_recipe.core.schema import SelfInstructConfig
from codellama_recipe.stages.selfinstruct.decontamination import Decontaminator
from codellama_recipe.stages.selfinstruct.generators import Sampling
from codellama_recipe.stages.selfinstruct.journal import Journal
from codellama_recipe.stages.selfinstruct.parsing import (normalize_question, parse_questions, parse_solution,
                                                          parse_tests)

REASONS = ("duplicate", "contaminated", "no_tests_parsed", "unparseable_solution", "failed", "timed_out", "error",
           "all_failed")


def item_seed(seed: int, *parts) -> int:
    digest = hashlib.blake2b(json.dumps([seed, *parts]).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def fill(template: str, **fields: str) -> str:
    """Put each field into its {name} in one pass, so that a value containing another field's placeholder (a
    question that mentions "{test}") reaches the model unaltered."""
    return re.sub(r"\{(" + "|".join(map(re.escape, fields)) + r")\}", lambda m: fields[m.group(1)], template)


def prompt_version(prompts) -> str:
    return hashlib.blake2b(json.dumps(dict(prompts), sort_keys=True).encode(), digest_size=6).hexdigest()


def _progress(total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="item", disable=None, dynamic_ncols=True)


def _in_chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class SelfInstruct:
    def __init__(self, cfg: SelfInstructConfig, generator, judge_many: Callable, decontaminator: Decontaminator | None,
                 log=print):
        self.cfg, self.generator, self.judge_many, self.decontaminator, self.log = (
            cfg, generator, judge_many, decontaminator, log)
        self.out = Path(cfg.out_dir)
        self.stats: collections.Counter = collections.Counter()

    def _sampling(self, step) -> Sampling:
        return Sampling(max_new_tokens=step.max_new_tokens, temperature=step.temperature, top_p=step.top_p)

    def _generate(self, journal: Journal, items: list, prompt_of, seed_of, row_of, sampling: Sampling, what: str):
        """Generate the items not in the journal yet, `cfg.chunk` at a time, appending each as it is parsed."""
        pending = [item for item in items if journal.get(item[0]) is None]
        with _progress(len(pending), what) as bar:
            for chunk in _in_chunks(pending, int(self.cfg.chunk)):
                texts = self.generator.complete([(prompt_of(i), seed_of(i)) for i in chunk], sampling)
                for item, text in zip(chunk, texts):
                    journal.append(row_of(item, text))
                bar.update(len(chunk))

    # 1 ------------------------------------------------------------------------------------------------
    def questions(self) -> list[str]:
        q = self.cfg.questions
        if q.path:
            found = read_question_file(Path(str(q.path)))
            self.stats["questions_generated"] = len(found)
            return found
        journal = Journal(self.out / "questions.jsonl", ("batch",))
        self._generate(journal, [((b,), b) for b in range(q.batches)], lambda i: q.prompt,
                       lambda i: item_seed(self.cfg.seed, "questions", i[1]),
                       lambda i, text: {"batch": i[1], "questions": parse_questions(text), "raw": text},
                       self._sampling(q), "1/5 questions")
        journal.close()
        found = [question for b in range(q.batches) for question in journal.rows[(b,)]["questions"]]
        self.stats["questions_generated"] = len(found)
        return found

    # 2 ------------------------------------------------------------------------------------------------
    def filter(self, questions: list[str]) -> list[dict]:
        seen, kept = set(), []
        for question in questions:
            key = normalize_question(question)
            if key in seen:
                self.stats["rejected/duplicate"] += 1
                continue
            seen.add(key)
            if self.decontaminator is not None and self.decontaminator.contaminated(question):
                self.stats["rejected/contaminated"] += 1
                continue
            kept.append({"id": f"q{len(kept):06d}", "question": question})
        self.stats["questions_kept"] = len(kept)
        return kept

    # 3 ------------------------------------------------------------------------------------------------
    def tests(self, questions: list[dict]) -> dict[str, list[str]]:
        t = self.cfg.tests
        journal = Journal(self.out / "tests.jsonl", ("id",))
        self._generate(journal, [((q["id"],), q) for q in questions],
                       lambda i: fill(t.prompt, question=i[1]["question"]),
                       lambda i: item_seed(self.cfg.seed, "tests", i[1]["id"]),
                       lambda i, text: {"id": i[1]["id"], "tests": parse_tests(text), "raw": text},
                       self._sampling(t), "2/5 tests")
        journal.close()
        tests = {}
        for q in questions:
            parsed = journal.rows[(q["id"],)]["tests"]
            if parsed:
                tests[q["id"]] = parsed
            else:
                self.stats["rejected/no_tests_parsed"] += 1
        self.stats["questions_with_tests"] = len(tests)
        return tests

    # 4 ------------------------------------------------------------------------------------------------
    def solutions(self, questions: list[dict], tests: dict[str, list[str]]) -> dict[tuple, str]:
        s = self.cfg.solutions
        journal = Journal(self.out / "solutions.jsonl", ("id", "k"))
        items = [((q["id"], k), q) for q in questions if q["id"] in tests for k in range(s.n)]
        self._generate(journal, items,
                       lambda i: fill(s.prompt, question=i[1]["question"], test=tests[i[1]["id"]][0]),
                       lambda i: item_seed(self.cfg.seed, "solution", *i[0]),
                       lambda i, text: {"id": i[0][0], "k": i[0][1], "code": parse_solution(text), "raw": text},
                       self._sampling(s), "3/5 solutions")
        journal.close()
        codes = {}
        for key, _ in items:
            code = journal.rows[key]["code"]
            if code:
                codes[key] = code
            else:
                self.stats["rejected/unparseable_solution"] += 1
        self.stats["solutions_generated"] = len(items)
        return codes

    # 5 ------------------------------------------------------------------------------------------------
    def execute(self, codes: dict[tuple, str], tests: dict[str, list[str]]) -> dict[tuple, str]:
        journal = Journal(self.out / "verdicts.jsonl", ("id", "k"))
        pending = [key for key in codes if key not in journal]
        with _progress(len(pending), "4/5 execution") as bar:
            for chunk in _in_chunks(pending, int(self.cfg.chunk) * 4):
                results = self.judge_many([(codes[key], "\n".join(tests[key[0]]) + "\n") for key in chunk])
                for key, result in zip(chunk, results):
                    journal.append({"id": key[0], "k": key[1], "status": result.status, "message": result.message})
                bar.update(len(chunk))
        journal.close()
        statuses = {key: journal.rows[key]["status"] for key in codes}
        for status in statuses.values():
            self.stats["solutions_passed" if status == "passed" else f"rejected/{status}"] += 1
        return statuses

    # 6 ------------------------------------------------------------------------------------------------
    def select(self, questions, tests, codes, statuses) -> list[dict]:
        c = self.cfg
        version = prompt_version({"questions": c.questions.prompt, "tests": c.tests.prompt,
                                  "solutions": c.solutions.prompt})
        triples, rows = [], []
        for q in questions:
            if q["id"] not in tests:
                continue
            passing = [k for k in range(c.solutions.n) if statuses.get((q["id"], k)) == "passed"]
            if not passing:
                self.stats["rejected/all_failed"] += 1
                continue
            k = passing[0]
            solution, case_list = codes[(q["id"], k)], tests[q["id"]]
            answer = c.output.answer_template.replace("{solution}", solution.rstrip("\n"))
            if c.output.with_tests:
                answer += c.output.tests_template.replace("{tests}", "\n".join(case_list))
            rows.append({"messages": [{"role": "user", "content": fill(c.output.user_template, question=q["question"])}, {"role": "assistant", "content": answer}]})
            triples.append({"id": q["id"], "question": q["question"], "tests": case_list, "solution": solution,
                            "solution_index": k, "generator": self.generator.name, "prompt_version": version,
                            "seed": c.seed})
        self.stats["kept"] = len(rows)
        write_text_atomic(self.out / "dataset.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_text_atomic(self.out / "triples.jsonl",
                          "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in triples))
        return rows

    def run(self) -> dict:
        seconds = {}

        def timed(name, call, *args):
            started = time.perf_counter()
            result = call(*args)
            seconds[name] = round(time.perf_counter() - started, 2)
            return result
        questions = timed("filter", self.filter, timed("questions", self.questions))
        tests = timed("tests", self.tests, questions)
        codes = timed("solutions", self.solutions, questions, tests)
        statuses = timed("execution", self.execute, codes, tests)
        timed("selection", self.select, questions, tests, codes, statuses)
        # this session's time per step (a resumed run only counts what it did), apart from the counts
        write_json_atomic(self.out / "timings.json", seconds)
        self.seconds = seconds
        stats = {k: int(self.stats[k]) for k in sorted(self.stats)}
        for reason in REASONS:
            stats.setdefault(f"rejected/{reason}", 0)
        write_json_atomic(self.out / "stats.json", stats)
        return stats


def read_question_file(path: Path) -> list[str]:
    """Questions written elsewhere: one per line, or jsonl rows with a "question" field."""
    from codellama_recipe.core.errors import InputFileError

    if not path.is_file():
        raise InputFileError(path, None, "no such file (questions.path)")
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                found.append(str(json.loads(line)["question"]).strip())
            except (ValueError, KeyError, TypeError):
                raise InputFileError(path, number, 'expected {"question": "..."} or a plain line') from None
        else:
            found.append(line.strip())
    return found


def stats_table(stats: dict) -> str:
    rows = [("questions written", "questions_generated"), ("duplicates removed", "rejected/duplicate"),
            ("too close to HumanEval/MBPP", "rejected/contaminated"), ("questions kept", "questions_kept"),
            ("no tests parsed", "rejected/no_tests_parsed"), ("questions with tests", "questions_with_tests"),
            ("solutions written", "solutions_generated"), ("unparseable solutions", "rejected/unparseable_solution"),
            ("solutions that failed", "rejected/failed"), ("solutions that timed out", "rejected/timed_out"),
            ("solutions that could not run", "rejected/error"), ("solutions that passed", "solutions_passed"),
            ("questions with no passing solution", "rejected/all_failed"), ("rows kept", "kept")]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {stats.get(key, 0):>8,}" for label, key in rows)
