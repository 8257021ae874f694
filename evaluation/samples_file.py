"""A samples file to score (`codellama-eval samples=FILE benchmark=NAME`): jsonl or jsonl.gz rows
{"task_id": str, "completion": str} (other keys are kept out of scoring), several rows per task for pass@k.
Every mistake is refused before anything runs, naming the file, the line and what is wrong."""
from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Collection
from pathlib import Path

from codellama_recipe.core.errors import InputFileError

EXPECTED = 'expected one JSON object per line: {"task_id": "...", "completion": "..."}'


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from enumerate(f, 1)


def read_samples(path, benchmark: str, task_ids: Collection[str]) -> dict[str, list[str]]:
    """{task_id: [completion, ...]} in file order; InputFileError (exit 2 on the command line) on any mistake."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, None, "no such file")
    completions: dict[str, list[str]] = {}
    known = set(task_ids)
    try:
        for number, line in _lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(path, number, f"not valid JSON ({e.msg} at column {e.colno}); {EXPECTED}") from None
            if not isinstance(row, dict):
                raise InputFileError(path, number, f"a JSON {type(row).__name__}, not an object; {EXPECTED}")
            for key in ("task_id", "completion"):
                if key not in row:
                    raise InputFileError(path, number, f"no {key!r} key; {EXPECTED}")
            if not isinstance(row["completion"], str):
                raise InputFileError(path, number, f"'completion' is a {type(row['completion']).__name__}, "
                                                   "expected a string")
            task_id = str(row["task_id"])
            if task_id not in known:
                example = next(iter(sorted(known)), "")
                raise InputFileError(path, number, f"task_id {task_id!r} is not a {benchmark} task "
                                                   f"({len(known)} tasks, e.g. {example!r})")
            completions.setdefault(task_id, []).append(row["completion"])
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
        raise InputFileError(path, None, f"cannot be read as UTF-8 jsonl{' (gzip)' if path.suffix == '.gz' else ''}: "
                                         f"{type(e).__name__}: {e}") from None
    if not completions:
        raise InputFileError(path, None, f"no completions in the file; {EXPECTED}")
    return completions
