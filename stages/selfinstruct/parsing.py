"""Reading what the generator wrote: numbered questions, [TESTS] blocks with `# Test case n:` comments, [PYTHON]
blocks. A block that cannot be read gives None (the step counts it as a rejection); nothing here raises."""
from __future__ import annotations

import ast
import re

_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s+(.*\S)\s*$")
_TEST_CASE = re.compile(r"^\s*#\s*Test case\s*\d+\s*:?\s*$", re.IGNORECASE)


def parse_questions(text: str) -> list[str]:
    """The items of a numbered list ("1. …", "2) …"); an item's continuation lines are joined to it."""
    questions: list[str] = []
    current = None
    for line in text.splitlines():
        numbered = _NUMBERED.match(line)
        if numbered:
            if current:
                questions.append(current)
            current = numbered.group(2)
        elif current is not None and line.strip() and not line.lstrip().startswith("["):
            current += " " + line.strip()
        elif not line.strip() and current:
            questions.append(current)
            current = None
    if current:
        questions.append(current)
    return [q for q in questions if len(q) >= 10]


def normalize_question(question: str) -> str:
    """The key of the exact-duplicate removal: case, whitespace and trailing punctuation do not count."""
    return re.sub(r"\s+", " ", question.lower()).strip().rstrip(".?!:; ")


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return text[i + len(start):j] if j >= 0 else None


def _compiles(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def parse_tests(text: str) -> list[str] | None:
    """The asserts of a [TESTS] … [/TESTS] block, one per `# Test case n:` comment (each must compile and hold
    an assert); None when there is no complete block or no such test."""
    block = _between(text, "[TESTS]", "[/TESTS]")
    if block is None:
        return None
    tests, current = [], None
    for line in block.splitlines():
        if _TEST_CASE.match(line):
            if current is not None:
                tests.append(current)
            current = []
        elif current is not None and line.strip():
            current.append(line.rstrip())
    if current is not None:
        tests.append(current)
    cases = ["\n".join(lines) for lines in tests if lines]
    cases = [c for c in cases if "assert" in c and _compiles(c)]
    return cases or None


def parse_solution(text: str) -> str | None:
    """The code of a [PYTHON] … [/PYTHON] block, when it compiles."""
    block = _between(text, "[PYTHON]", "[/PYTHON]")
    if block is None:
        return None
    code = block.strip("\n")
    return code + "\n" if code.strip() and _compiles(code) else None
